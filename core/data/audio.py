"""Audio datasets: a zip with one folder per class of WAV or FLAC clips.

Unpacked with the same checks as image zips (no path escapes, links or bombs), streamed to
disk. Every clip's header is read first: clips longer than ASCENT_MAX_CLIP_SECONDS are listed
and left out undecoded. The rest are decoded once here: unreadable ones (empty, not audio, a
corrupt header, 0 samples) are listed by name and left out. The report counts clips per class, durations, sample rates and channel
counts met, silent clips and clipped clips. Training resamples and mixes to mono itself.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from core.config import get_settings
from core.data import images, stages
from core.errors import DatasetError
from core.runtime import AUDIO_SUFFIXES, RuntimeInputError, clip_info, load_audio

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


def inspect_zip(
    path: Path, limits: images.ZipLimits, dest: Path
) -> tuple[dict[PurePosixPath, Path], list[Clip], dict[str, Any]]:
    """Unpack an audio zip under `dest` and validate it. Returns (its files on disk by
    relative path, the readable clips, the report)."""
    files = images._strip_top_folder(images.unpack_zip(path, limits, dest))
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
    checked = check_clips(audio, get_settings().max_clip_seconds)
    clips = [Clip(str(p), p.parts[0], *facts) for p, facts in checked.readable.items()]
    unreadable, too_long, silent, clipped = (
        checked.unreadable,
        checked.too_long,
        checked.silent,
        checked.clipped,
    )
    limit = checked.limit
    if not clips:
        shown = "; ".join(
            [f"{k} ({v})" for k, v in list(unreadable.items())[:3]]
            + [f"{k} ({v:g} s, over the {limit:g} s limit)" for k, v in list(too_long.items())[:3]]
        )
        raise DatasetError(f"no readable clip in {path.name}: {shown}")
    counts = Counter(c.label for c in clips)
    if len(counts) < 2:
        raise DatasetError(
            f"only one class ('{next(iter(counts))}') has readable clips; a classifier needs at least two"
        )
    images.check_classes(counts, "clips")
    seconds = np.array([c.seconds for c in clips])
    classes = sorted(counts)
    report: dict[str, Any] = {
        "clips": len(clips),
        "class_counts": {c: counts[c] for c in classes},
        "imbalance_ratio": round(max(counts.values()) / min(counts.values()), 3),
        "unreadable": images.capped(unreadable),
        "unreadable_count": len(unreadable),
        "too_long": dict(list(too_long.items())[: images.REPORT_ITEMS]),
        "too_long_count": len(too_long),
        "max_clip_seconds": limit,
        "skipped_files": skipped[:100],
        "skipped_count": len(skipped),
        "seconds": duration_summary(seconds),
        "sample_rates": {str(k): v for k, v in sorted(Counter(c.sample_rate for c in clips).items())},
        "channels": {str(k): v for k, v in sorted(Counter(c.channels for c in clips).items())},
        "silent": silent[:100],
        "silent_count": len(silent),
        "clipped": clipped[:100],
        "clipped_count": len(clipped),
    }
    return files, clips, report


@dataclass
class CheckedClips:
    """What reading every clip found: the readable ones' (seconds, sample rate, channels) by
    path, and the others by reason."""

    readable: dict[PurePosixPath, tuple[float, int, int]]
    unreadable: dict[str, str]  # path: why
    too_long: dict[str, float]  # path: seconds
    silent: list[str]
    clipped: list[str]
    limit: float


def check_clips(audio: dict[PurePosixPath, Path], limit: float) -> CheckedClips:
    """Read each clip's header, then decode it once: clips over `limit` seconds are left out
    undecoded, unreadable ones (empty, not audio, a corrupt header, 0 samples) left out with
    why; silent and clipped ones are named."""
    found = CheckedClips({}, {}, {}, [], [], limit)
    for p in stages.each("reading clips", sorted(audio, key=str)):
        try:
            duration, _, _ = clip_info(audio[p])
            if duration > limit:
                found.too_long[str(p)] = round(duration, 1)
                continue
            data, rate = load_audio(audio[p])
        except RuntimeInputError as exc:
            found.unreadable[str(p)] = str(exc)[:200]
            continue
        peak = float(np.abs(data).max())
        if peak < SILENT_PEAK:
            found.silent.append(str(p))
        if float((np.abs(data) >= FULL_SCALE).mean()) > CLIPPED_SHARE:
            found.clipped.append(str(p))
        found.readable[p] = (data.shape[0] / rate, rate, data.shape[1])
    return found


def duration_summary(seconds: np.ndarray) -> dict[str, Any]:
    """Durations for a report: min, median, 95th percentile, max and a histogram."""
    hist, edges = np.histogram(seconds, bins=min(20, len(seconds)))
    return {
        "min": float(seconds.min()),
        "median": float(statistics.median(seconds.tolist())),
        "p95": float(np.percentile(seconds, 95)),
        "max": float(seconds.max()),
        "histogram": {"counts": hist.tolist(), "edges": [float(e) for e in edges]},
    }


def clip_seconds(p95: float) -> float:
    """Clip length from the data: the 95th percentile of durations, rounded up to 0.1 s, in [0.5, 10]."""
    return float(min(10.0, max(0.5, np.ceil(p95 * 10) / 10)))
