"""Translation models: a small Marian transformer from scratch, or pretrained Marian (opus-mt)
or T5 weights.

`marian-small` learns a byte-pair tokenizer shared by both languages on the run's training
pairs (`tokenizers`), then trains transformers' `MarianMTModel` of a small shape from random
weights. `hf-marian` fine-tunes any Marian model from a folder or the Hugging Face hub
(`--weights`, such as Helsinki-NLP's opus-mt models) with its own tokenizer; `hf-t5` any T5
(t5-small, flan-t5) the same way.

`encoder_of` and `step_of` give each family's two graphs, what the export writes and what
validation decodes with: `MarianEncode` and the decoding step (core.models.seq2seq.DecoderStep)
for Marian; `T5Encode` and `T5Step` for T5, whose relative position biases are computed from
the cache's length.
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


# The pretrained families a translation run takes, by their config's model_type.
FAMILIES = {"marian": "hf-marian", "t5": "hf-t5"}


def load_pretrained(source: str, family: str | None = None) -> TranslationModel:
    """A Marian or T5 model and its tokenizer from a folder or the hub ("hub:ID", or an id that
    is not a folder here); `family` ("marian", "t5") refuses the other in one line."""
    from transformers import AutoConfig, AutoTokenizer, MarianMTModel, T5ForConditionalGeneration

    quiet()
    try:
        where, _ = locate(source)
        kind = str(AutoConfig.from_pretrained(where).model_type)
        if kind not in FAMILIES:
            raise ConfigError(
                f"'{source}' is a {kind} model; translation takes Marian (hf-marian) or T5 (hf-t5) models"
            )
        if family is not None and kind != family:
            raise ConfigError(f"'{source}' is a {kind} model; train it with --model {FAMILIES[kind]}")
        tokenizer = AutoTokenizer.from_pretrained(where)
        model_class = T5ForConditionalGeneration if kind == "t5" else MarianMTModel
        model = model_class.from_pretrained(where, dtype=torch.float32)
    except (OSError, ValueError, ImportError) as exc:
        raise load_failed(source, "translation model", exc) from exc
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise ConfigError(f"'{source}' has no fast tokenizer (tokenizer.json); Ascent needs one to export")
    return TranslationModel(model.eval(), tokenizer, str(where))


def check_family(source: str, family: str) -> None:
    """Refuse a local folder whose config.json names another kind of model than `family` (a hub
    id is checked when the run loads it)."""
    import json
    from pathlib import Path

    found = Path(source).expanduser() / "config.json"
    if source.startswith("hub:") or not found.is_file():
        return
    try:
        kind = str(json.loads(found.read_text()).get("model_type", ""))
    except (OSError, ValueError, AttributeError):
        return  # the load says what is wrong with it
    if kind in FAMILIES and kind != family:
        raise ConfigError(f"'{source}' is a {kind} model; train it with --model {FAMILIES[kind]}")
    if kind and kind not in FAMILIES:
        raise ConfigError(
            f"'{source}' is a {kind} model; translation takes Marian (hf-marian) or T5 (hf-t5) models"
        )


def load_marian(source: str) -> TranslationModel:
    return load_pretrained(source, "marian")


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


def is_t5(config: Any) -> bool:
    return getattr(config, "model_type", "") == "t5"


def t5_split(proj: Any, x: torch.Tensor, heads: int) -> torch.Tensor:
    """A T5 key or value projection of x as [batch, heads, length, d_kv] (T5's inner width,
    heads × d_kv, may differ from its model width)."""
    batch, length, _ = x.shape
    return proj(x).view(batch, length, heads, -1).transpose(1, 2)


def t5_attend(attention: Any, heads: int, x: torch.Tensor, keys: Any, values: Any, bias: Any) -> torch.Tensor:
    """T5 attention of queries from x over keys and values: unscaled scores plus `bias` (the
    relative positions' and the mask's), then the output projection."""
    batch, new, _ = x.shape
    query = t5_split(attention.q, x, heads)
    out = nn.functional.scaled_dot_product_attention(query, keys, values, attn_mask=bias, scale=1.0)
    return attention.o(out.transpose(1, 2).reshape(batch, new, -1))


def t5_position_bias(
    attention: Any, queries: torch.Tensor, keys: torch.Tensor, bidirectional: bool
) -> torch.Tensor:
    """The relative position bias [1, heads, queries, keys] of a T5 stack's first attention for
    query and key positions (bucketed as transformers' T5Attention does)."""
    from transformers.models.t5.modeling_t5 import T5Attention

    relative = keys[None, :] - queries[:, None]
    buckets = T5Attention._relative_position_bucket(
        relative,
        bidirectional=bidirectional,
        num_buckets=attention.relative_attention_num_buckets,
        max_distance=attention.relative_attention_max_distance,
    )
    return attention.relative_attention_bias(buckets).permute(2, 0, 1)[None]


def mask_bias(mask: torch.Tensor) -> torch.Tensor:
    """A source's attention mask [batch, length] as an additive bias [batch, 1, 1, length]."""
    return torch.where(mask[:, None, None, :] > 0, 0.0, torch.finfo(torch.float32).min)


class T5Encode(nn.Module):
    """(token ids, attention mask) -> each decoder layer's cross-attention keys and values: T5's
    encoder (pre-norm RMS layers, relative position biases) written out, then the projections."""

    embed: Any
    blocks: Any
    norm: Any
    cross: Any

    def __init__(self, model: Any) -> None:
        super().__init__()
        encoder = model.encoder
        self.embed, self.blocks, self.norm = encoder.embed_tokens, encoder.block, encoder.final_layer_norm
        self.cross = model.decoder.block
        self.heads = int(model.config.num_heads)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.embed(ids)
        positions = torch.arange(ids.shape[1], device=ids.device)
        bias = t5_position_bias(self.blocks[0].layer[0].SelfAttention, positions, positions, True)
        bias = bias + mask_bias(mask)
        for block in self.blocks:
            attention, feed = block.layer[0], block.layer[-1]
            h = attention.layer_norm(x)
            keys = t5_split(attention.SelfAttention.k, h, self.heads)
            values = t5_split(attention.SelfAttention.v, h, self.heads)
            x = x + t5_attend(attention.SelfAttention, self.heads, h, keys, values, bias)
            x = x + feed.DenseReluDense(feed.layer_norm(x))
        x = self.norm(x)
        out = []
        for block in self.cross:
            cross = block.layer[1].EncDecAttention
            out += [t5_split(cross.k, x, self.heads), t5_split(cross.v, x, self.heads)]
        return tuple(out)


class T5Step(nn.Module):
    """T5's decoding step with a self-attention cache, with the same inputs and outputs as
    core.models.seq2seq.DecoderStep (token ids, caches, cross keys and values, the source's
    mask): the relative position bias of the new tokens over every cached and new one is
    computed from the cache's length, so positions continue across steps."""

    embed: Any
    blocks: Any
    norm: Any
    output: Any

    def __init__(self, model: Any) -> None:
        super().__init__()
        decoder = model.decoder
        self.embed, self.blocks, self.norm = decoder.embed_tokens, decoder.block, decoder.final_layer_norm
        self.output = model.lm_head
        config = model.config
        self.heads = int(config.num_heads)
        scaled = getattr(config, "scale_decoder_outputs", config.tie_word_embeddings)
        self.scale = float(config.d_model) ** -0.5 if scaled else 1.0

    def forward(self, ids: torch.Tensor, *rest: torch.Tensor) -> tuple[torch.Tensor, ...]:
        layers = len(self.blocks)
        past, cross, source_mask = rest[: 2 * layers], rest[2 * layers : 4 * layers], rest[4 * layers]
        cached, new = past[0].shape[2], ids.shape[1]
        queries = torch.arange(new, device=ids.device) + cached
        keys_at = torch.arange(cached + new, device=ids.device)
        bias = t5_position_bias(self.blocks[0].layer[0].SelfAttention, queries, keys_at, False)
        bias = bias.masked_fill(
            keys_at[None, None, None, :] > queries[None, None, :, None], torch.finfo(torch.float32).min
        )
        cross_bias = mask_bias(source_mask)
        x = self.embed(ids)
        grown: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            attention, encdec, feed = block.layer
            h = attention.layer_norm(x)
            keys = torch.cat([past[2 * i], t5_split(attention.SelfAttention.k, h, self.heads)], dim=2)
            values = torch.cat([past[2 * i + 1], t5_split(attention.SelfAttention.v, h, self.heads)], dim=2)
            grown += [keys, values]
            x = x + t5_attend(attention.SelfAttention, self.heads, h, keys, values, bias)
            h = encdec.layer_norm(x)
            x = x + t5_attend(
                encdec.EncDecAttention, self.heads, h, cross[2 * i], cross[2 * i + 1], cross_bias
            )
            x = x + feed.DenseReluDense(feed.layer_norm(x))
        return (self.output(self.norm(x) * self.scale), *grown)


def encoder_of(model: Any) -> nn.Module:
    """The graph from the source's ids and mask to the cross-attention keys and values."""
    return T5Encode(model) if is_t5(model.config) else MarianEncode(model)


def step_of(model: Any) -> nn.Module:
    """The decoding step with a cache, the source's mask its last input."""
    return T5Step(model) if is_t5(model.config) else marian_step(model)


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
    "lora_lr": 5e-4,  # with --finetune lora
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


@register_model(
    tasks=TRANSLATION,
    name="hf-t5",
    description="any T5 model (such as t5-small, flan-t5): --weights FOLDER or hub id",
    defaults={**FINETUNE_DEFAULTS, "lr": 3e-4, "lora_lr": 1e-3},
)
def hf_t5(cfg: RunConfig, texts: list[str], tokenizer: Any = None) -> TranslationModel:
    if cfg.weights in WEIGHT_WORDS:
        raise ConfigError(
            "hf-t5 needs --weights: a local T5 folder or a Hugging Face hub id such as t5-small"
        )
    return load_pretrained(cfg.weights, "t5")
