"""Audio datasets: a zip with one folder per class of WAV or FLAC clips.

Unpacked with the same checks as image zips (no path escapes, links or bombs). Every clip is
decoded once here: unreadable ones (empty, not audio, a corrupt header, 0 samples) are listed
by name and left out. The report counts clips per class, durations, sample rates and channel
counts met, silent clips and clipped clips. Training resamples and mixes to mono itself.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from core.data import images
from core.errors import DatasetError
from core.runtime import AUDIO_SUFFIXES, RuntimeInputError, load_audio

# A clip whose peak stays under this is silent; one with more than CLIPPED_SHARE of its
# samples at full scale is clipped.
SILENT_PEAK = 1e-3
FULL_SCALE = 0.999
CLIPPED_SHARE = 0.001


@dataclass(frozen=True)
class Clip:
    path: str  # relative to the dataset's clips/ folder
    label: str
    seconds: float
    sample_rate: int
    channels: int


def inspect_zip(path: Path, limits: images.ZipLimits) -> tuple[dict[str, bytes], list[Clip], dict[str, Any]]:
    """Validate an audio zip. Returns (files to store by relative path, clips, report)."""
    files = images._strip_top_folder(images.read_zip(path, limits))
    audio = {p: b for p, b in files.items() if p.suffix.lower() in AUDIO_SUFFIXES}
    skipped = sorted(str(p) for p in files if p not in audio)
    if not audio:
        raise DatasetError(
            f"{path.name} holds no .wav or .flac clip; zip one folder per class (e.g. yes/1.wav, no/2.flac)"
        )
    at_top = [str(p) for p in audio if len(p.parts) < 2]
    if at_top:
        raise DatasetError(
            f"put every clip in a folder named after its class ({', '.join(at_top[:3])} is not)"
        )
    clips: list[Clip] = []
    unreadable: dict[str, str] = {}
    silent: list[str] = []
    clipped: list[str] = []
    for p in sorted(audio, key=str):
        try:
            data, rate = load_audio(audio[p])
        except RuntimeInputError as exc:
            unreadable[str(p)] = str(exc)[:200]
            continue
        peak = float(np.abs(data).max())
        if peak < SILENT_PEAK:
            silent.append(str(p))
        if float((np.abs(data) >= FULL_SCALE).mean()) > CLIPPED_SHARE:
            clipped.append(str(p))
        clips.append(Clip(str(p), p.parts[0], data.shape[0] / rate, rate, data.shape[1]))
    if not clips:
        shown = "; ".join(f"{k} ({v})" for k, v in list(unreadable.items())[:3])
        raise DatasetError(f"no readable clip in {path.name}: {shown}")
    counts = Counter(c.label for c in clips)
    if len(counts) < 2:
        raise DatasetError(
            f"only one class ('{next(iter(counts))}') has readable clips; a classifier needs at least two"
        )
    seconds = np.array([c.seconds for c in clips])
    hist, edges = np.histogram(seconds, bins=min(20, len(clips)))
    classes = sorted(counts)
    report: dict[str, Any] = {
        "clips": len(clips),
        "class_counts": {c: counts[c] for c in classes},
        "imbalance_ratio": round(max(counts.values()) / min(counts.values()), 3),
        "unreadable": unreadable,
        "skipped_files": skipped[:100],
        "skipped_count": len(skipped),
        "seconds": {
            "min": float(seconds.min()),
            "median": float(statistics.median(seconds.tolist())),
            "p95": float(np.percentile(seconds, 95)),
            "max": float(seconds.max()),
            "histogram": {"counts": hist.tolist(), "edges": [float(e) for e in edges]},
        },
        "sample_rates": {str(k): v for k, v in sorted(Counter(c.sample_rate for c in clips).items())},
        "channels": {str(k): v for k, v in sorted(Counter(c.channels for c in clips).items())},
        "silent": silent[:100],
        "silent_count": len(silent),
        "clipped": clipped[:100],
        "clipped_count": len(clipped),
    }
    keep = {c.path: audio[PurePosixPath(c.path)] for c in clips}
    return keep, clips, report


def clip_seconds(p95: float) -> float:
    """Clip length from the data: the 95th percentile of durations, rounded up to 0.1 s, in [0.5, 10]."""
    return float(min(10.0, max(0.5, np.ceil(p95 * 10) / 10)))
