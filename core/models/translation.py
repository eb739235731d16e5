"""Translation models: a small Marian transformer from scratch, or Marian weights (opus-mt).

`marian-small` learns a byte-pair tokenizer shared by both languages on the run's training
pairs (`tokenizers`), then trains transformers' `MarianMTModel` of a small shape from random
weights. `hf-marian` fine-tunes any Marian model from a folder or the Hugging Face hub
(`--weights`, such as Helsinki-NLP's opus-mt models) with its own tokenizer.

`MarianEncode` and the decoding step (core.models.seq2seq.DecoderStep) are what the export
writes and what validation decodes with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.config import WEIGHT_WORDS, RunConfig
from core.errors import ConfigError
from core.models import register_model
from core.models.offline import load_failed, locate, quiet
from core.models.seq2seq import DecoderStep, attend, cross_keys_values, split_heads

TRANSLATION = ("translation",)
PAD, END, UNK = "<pad>", "</s>", "<unk>"
# marian-small's shape: about 7M weights beside its embeddings, trainable on a CPU.
SMALL: dict[str, Any] = {
    "d_model": 256,
    "encoder_layers": 3,
    "decoder_layers": 3,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 1024,
    "decoder_ffn_dim": 1024,
    "max_position_embeddings": 256,
}
VOCABULARY = 8000  # at most; a small corpus learns fewer merges


@dataclass
class TranslationModel:
    module: Any  # a transformers MarianMTModel in float32
    tokenizer: Any  # its transformers fast tokenizer (source and target alike)
    source: str  # "scratch", or the folder or hub id the weights came from


def train_tokenizer(texts: list[str], vocab_size: int = VOCABULARY) -> Any:
    """A byte-pair tokenizer learnt on `texts` (both languages): NFKC, words marked by a leading
    ▁ as SentencePiece does, <pad> 0, </s> 1, <unk> 2; each encoded text ends with </s>."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=[PAD, END, UNK], show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"$A {END}", special_tokens=[(END, 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=END, unk_token=UNK)


def load_tokenizer(path: str) -> Any:
    """A tokenizer train_tokenizer learnt, from its tokenizer.json."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=path, pad_token=PAD, eos_token=END, unk_token=UNK)


def small_marian(tokenizer: Any, dropout: float) -> Any:
    from transformers import MarianConfig, MarianMTModel

    config = MarianConfig(
        vocab_size=len(tokenizer),
        decoder_vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        forced_eos_token_id=tokenizer.eos_token_id,
        dropout=dropout,
        scale_embedding=True,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
        **SMALL,
    )
    return MarianMTModel(config)


def load_marian(source: str) -> TranslationModel:
    """A Marian model and its tokenizer from a folder or the hub ("hub:ID", or an id that is
    not a folder here)."""
    from transformers import AutoTokenizer, MarianMTModel

    quiet()
    try:
        where, _ = locate(source)
        tokenizer = AutoTokenizer.from_pretrained(where)
        model = MarianMTModel.from_pretrained(where, dtype=torch.float32)
    except (OSError, ValueError, ImportError) as exc:
        raise load_failed(source, "translation model", exc) from exc
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise ConfigError(f"'{source}' has no fast tokenizer (tokenizer.json); Ascent needs one to export")
    return TranslationModel(model.eval(), tokenizer, str(where))


class MarianEncode(nn.Module):
    """(token ids [batch, length], attention mask [batch, length]) -> each decoder layer's
    cross-attention keys and values [batch, heads, length, head size]: Marian's encoder (scaled
    embeddings, sinusoidal positions, post-norm layers) written out, then the projections every
    decoding step would otherwise repeat."""

    embed: Any
    positions: Any
    layers: Any
    cross: Any

    def __init__(self, model: Any) -> None:
        super().__init__()
        encoder = model.model.encoder
        self.embed, self.positions, self.layers = (
            encoder.embed_tokens,
            encoder.embed_positions,
            encoder.layers,
        )
        self.cross = model.model.decoder.layers
        config = model.config
        self.scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.heads = int(config.encoder_attention_heads)
        self.cross_heads = int(config.decoder_attention_heads)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.embed(ids) * self.scale + self.positions.weight[: ids.shape[1]]
        allowed = mask[:, None, None, :] > 0
        for layer in self.layers:
            attention = layer.self_attn
            keys, values = (
                split_heads(attention.k_proj, x, self.heads),
                split_heads(attention.v_proj, x, self.heads),
            )
            x = layer.self_attn_layer_norm(x + attend(attention, self.heads, x, keys, values, allowed))
            x = layer.final_layer_norm(x + layer.fc2(layer.activation_fn(layer.fc1(x))))
        return cross_keys_values(self.cross, x, self.cross_heads)


def marian_step(model: Any) -> DecoderStep:
    """Marian's decoding step: scaled embeddings, post-norm layers, the output layer and its
    bias, the source's mask as the last input."""
    decoder = model.model.decoder
    config = model.config
    return DecoderStep(
        decoder,
        int(config.decoder_attention_heads),
        scale=math.sqrt(config.d_model) if config.scale_embedding else 1.0,
        post_norm=True,
        output=model.lm_head,
        bias=model.final_logits_bias,
        masked=True,
    )


# A transformer from scratch on a few thousand pairs: a brisk rate, label smoothing in the
# task, patience for the slow start.
SCRATCH_DEFAULTS = {
    "lr": 1e-3,
    "batch_size": 32,
    "epochs": 30,
    "weight_decay": 0.01,
    "warmup_fraction": 0.1,
    "patience": 6,
    "dropout": 0.1,
    "finetune": "full",
}
FINETUNE_DEFAULTS = {
    "lr": 5e-5,
    "batch_size": 16,
    "epochs": 5,
    "weight_decay": 0.0,
    "warmup_fraction": 0.1,
    "patience": 0,
    "finetune": "full",
}


@register_model(
    tasks=TRANSLATION,
    name="marian-small",
    description="small Marian transformer from scratch with its own byte-pair tokenizer",
    default=True,
    defaults=SCRATCH_DEFAULTS,
)
def marian_small(cfg: RunConfig, texts: list[str], tokenizer: Any = None) -> TranslationModel:
    if cfg.weights not in WEIGHT_WORDS:
        raise ConfigError("marian-small trains from scratch; for pretrained weights use --model hf-marian")
    tokenizer = tokenizer if tokenizer is not None else train_tokenizer(texts)
    return TranslationModel(small_marian(tokenizer, cfg.dropout), tokenizer, "scratch")


@register_model(
    tasks=TRANSLATION,
    name="hf-marian",
    description="any Marian model (such as opus-mt): --weights FOLDER or hub id",
    defaults=FINETUNE_DEFAULTS,
)
def hf_marian(cfg: RunConfig, texts: list[str], tokenizer: Any = None) -> TranslationModel:
    if cfg.weights in WEIGHT_WORDS:
        raise ConfigError(
            "hf-marian needs --weights: a local Marian folder (opus-mt) or a Hugging Face hub id"
        )
    return load_marian(cfg.weights)
