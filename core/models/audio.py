"""Audio classifiers: a log-mel front end inside the model, then a small CNN.

The front end takes the raw waveform (float32 [batch, samples] at the run's rate). Its STFT is
framing by reshape and slices and one matrix product with fixed cosine and sine rows of a
periodic Hann window: plain ops that ONNX Runtime runs as fast as PyTorch, where the ONNX STFT
operator is 20-60x slower than torch.stft on the CPU (bench/inference.py measures both). The
mel filter bank is Slaney's, as librosa builds it by default; frames are centred with zero
padding as librosa's `center=True`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from core.config import RunConfig
from core.models import register_model

AUDIO = ("audio-classification",)
N_FFT = 400  # 25 ms at 16 kHz
HOP = 160  # 10 ms
LOG_FLOOR = 1e-6


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    mel = f / (200.0 / 3)
    log_part = f >= 1000.0
    mel[log_part] = 15.0 + np.log(f[log_part] / 1000.0) / (np.log(6.4) / 27.0)
    return mel


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f = m * (200.0 / 3)
    log_part = m >= 15.0
    f[log_part] = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m[log_part] - 15.0))
    return f


def mel_filterbank(
    rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] triangular filters, area-normalised (Slaney)."""
    fmax = rate / 2 if fmax is None else fmax
    freqs = np.linspace(0, rate / 2, n_fft // 2 + 1)
    mel_f = _mel_to_hz(
        np.linspace(_hz_to_mel(np.array([fmin]))[0], _hz_to_mel(np.array([fmax]))[0], n_mels + 2)
    )
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, None]
    return weights.astype(np.float32)


class LogMel(nn.Module):
    """float32 [batch, samples] -> natural-log mel power [batch, n_mels, frames].

    Frames are cut without an index: the centred wave is reshaped into HOP-long blocks, and
    frame f is blocks f, f + 1, ... (the last one cut short) side by side. An index
    (`padded[:, index]`) exports as GatherND, which ONNX Runtime ran slower than all the
    rest of the front end together (0.45 of 0.7 ms for one 1.1 s clip).
    """

    def __init__(self, rate: int, samples: int, n_mels: int = 64) -> None:
        super().__init__()
        self.frames = 1 + samples // HOP
        self.parts = math.ceil(N_FFT / HOP)  # blocks spanned by one frame
        self.blocks = self.frames + self.parts - 1
        # Zero padding of N_FFT // 2 on the left (centred frames); on the right up to whole
        # blocks: the frames read no further than the N_FFT // 2 zeros that centring adds.
        self.pad = (N_FFT // 2, self.blocks * HOP - N_FFT // 2 - samples)
        k = np.arange(N_FFT // 2 + 1)[:, None]
        n = np.arange(N_FFT)[None, :]
        window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann
        basis = (
            np.concatenate([np.cos(2 * np.pi * k * n / N_FFT), -np.sin(2 * np.pi * k * n / N_FFT)]) * window
        )
        mel = mel_filterbank(rate, N_FFT, n_mels).T
        self.register_buffer("basis", torch.from_numpy(basis.T.astype(np.float32)), persistent=False)
        # Mel rows twice: (spectrum ** 2) @ [mel; mel] sums real ** 2 and imaginary ** 2 too.
        self.register_buffer("mel", torch.from_numpy(np.concatenate([mel, mel])), persistent=False)

    basis: torch.Tensor
    mel: torch.Tensor

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        blocks = nn.functional.pad(wave, self.pad).reshape(wave.shape[0], self.blocks, HOP)
        f = self.frames
        frames = torch.cat(
            [blocks[:, j : j + f, : min(HOP, N_FFT - j * HOP)] for j in range(self.parts)], dim=2
        )  # [batch, frames, n_fft]
        spectrum = frames @ self.basis  # [batch, frames, 2 * bins]: real then imaginary parts
        return torch.log((spectrum * spectrum) @ self.mel + LOG_FLOOR).transpose(1, 2)


class SpecAugment(nn.Module):
    """Random frequency and time masks on [batch, n_mels, frames], in training only."""

    def __init__(self, freq: int = 8, time: int = 12, masks: int = 2) -> None:
        super().__init__()
        self.freq, self.time, self.masks = freq, time, masks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        b, f, t = x.shape
        fill = x.mean(dim=(1, 2), keepdim=True)
        keep = torch.ones_like(x, dtype=torch.bool)
        for _ in range(self.masks):
            for size, length, axis in ((self.freq, f, 1), (self.time, t, 2)):
                width = torch.randint(0, size + 1, (b, 1, 1), device=x.device)
                start = (torch.rand(b, 1, 1, device=x.device) * (length - width).clamp(min=1)).long()
                pos = torch.arange(length, device=x.device).view((1, -1, 1) if axis == 1 else (1, 1, -1))
                keep &= ~((pos >= start) & (pos < start + width))
        return torch.where(keep, x, fill)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class AudioClassifier(nn.Module):
    """Waveform -> log-mel -> (SpecAugment) -> normalisation -> 4 conv blocks -> logits."""

    def __init__(
        self, classes: int, rate: int, samples: int, n_mels: int, augment: bool, dropout: float
    ) -> None:
        super().__init__()
        self.front = LogMel(rate, samples, n_mels)
        self.augment = SpecAugment() if augment else nn.Identity()
        self.norm = nn.BatchNorm2d(1)
        self.body = nn.Sequential(_block(1, 16), _block(16, 32), _block(32, 64), _block(64, 128))
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(128, classes)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = self.augment(self.front(wave))
        x = self.body(self.norm(x.unsqueeze(1)))
        return self.head(self.drop(x.mean(dim=(2, 3))))

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())


@register_model(
    tasks=AUDIO,
    name="audio-cnn",
    description="log-mel front end + 4-block CNN, from scratch (SpecAugment)",
    default=True,
    defaults={"lr": 3e-3, "batch_size": 32, "epochs": 25, "patience": 8, "weight_decay": 1e-3},
)
def audio_cnn(num_classes: int, cfg: RunConfig, samples: int) -> AudioClassifier:
    return AudioClassifier(num_classes, cfg.sample_rate, samples, cfg.n_mels, cfg.augment, cfg.dropout)


@torch.no_grad()
def log_mel(wave: np.ndarray, rate: int, n_mels: int = 64) -> np.ndarray:
    """The front end's log-mel [n_mels, frames] of one prepared clip (for pictures)."""
    front = LogMel(rate, len(wave), n_mels)
    return front(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))[None])[0].numpy()


def frames_for(samples: int) -> int:
    return 1 + samples // HOP


def seconds_to_samples(seconds: float, rate: int) -> int:
    return math.ceil(seconds * rate)
