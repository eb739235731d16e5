"""Speech datasets: a zip of clips with their transcripts, for speech recognition.

Two layouts, found by their files:

- Hugging Face's audiofolder: `metadata.csv` with a `file_name` column (the clip's path from the
  CSV's folder) and a transcript column (`transcription`, or `text`, `sentence`, `transcript`);
- LibriSpeech: `*.trans.txt` files, each line `UTTERANCE-ID transcript`, the clips
  `UTTERANCE-ID.flac` (or .wav) beside them.

Unpacked with the same checks as other zips (no path escapes, links or bombs). Clips are read as
for audio classification (unreadable ones and ones over the clip limit, at most 30 s for
Whisper's window, left out and named). Rows with an empty transcript, rows whose clip is
missing and clips without a transcript are left out and counted. The report adds words per
transcript and the speaking rate: clips whose words per second look impossible (a transcript
that belongs to another clip, or a clip cut short) are named.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from core.config import get_settings
from core.data import images
from core.data.audio import check_clips, duration_summary
from core.errors import DatasetError
from core.runtime import AUDIO_SUFFIXES

TRANSCRIPT_COLUMNS = ("transcription", "text", "sentence", "transcript")
METADATA = "metadata.csv"
LIBRISPEECH = ".trans.txt"
WHISPER_SECONDS = 30.0  # Whisper reads 30 s windows; a longer clip would lose its end
# Words per second outside this range do not look like speech with its own transcript.
SLOWEST, FASTEST = 0.3, 6.0
MAX_TRANSCRIPT_CHARS = 2_000


@dataclass(frozen=True)
class Utterance:
    path: str  # relative to the dataset's clips/ folder
    transcript: str
    seconds: float
    sample_rate: int
    channels: int


def layout_of(names: list[str]) -> str | None:
    """ "audiofolder" or "librispeech" when the zip's file names show one, else None."""
    lowered = [n.lower() for n in names]
    if any(n.rsplit("/", 1)[-1] == METADATA for n in lowered):
        return "audiofolder"
    if any(n.endswith(LIBRISPEECH) for n in lowered):
        return "librispeech"
    return None


def _clean(text: str) -> str:
    return " ".join(str(text).split())


Transcripts = tuple[dict[PurePosixPath, str], dict[str, int], set[PurePosixPath]]


def _audiofolder(files: dict[PurePosixPath, Path]) -> Transcripts:
    """Transcripts by clip path from every metadata.csv, rows left out by reason, and every
    clip a row names."""
    found: dict[PurePosixPath, str] = {}
    named: set[PurePosixPath] = set()
    left: Counter[str] = Counter()
    for meta in sorted(p for p in files if p.name.lower() == METADATA):
        raw = files[meta].read_bytes().decode("utf-8-sig", errors="replace")
        reader = csv.DictReader(io.StringIO(raw))
        columns = {c.strip().lower(): c for c in reader.fieldnames or []}
        column = next((columns[c] for c in TRANSCRIPT_COLUMNS if c in columns), None)
        if "file_name" not in columns or column is None:
            raise DatasetError(
                f"{meta} needs a file_name column and a transcript column "
                f"({', '.join(TRANSCRIPT_COLUMNS)}); it has: {', '.join(reader.fieldnames or []) or 'none'}"
            )
        for row in reader:
            name = (row.get(columns["file_name"]) or "").strip()
            text = _clean(row.get(column) or "")
            if not name:
                left["rows without a file_name"] += 1
                continue
            clip = PurePosixPath(*meta.parent.parts, *PurePosixPath(name).parts)
            named.add(clip)
            _keep(found, left, clip, text)
    return found, dict(left), named


def _librispeech(files: dict[PurePosixPath, Path]) -> Transcripts:
    """Transcripts by clip path from every *.trans.txt, lines left out by reason, and every
    clip a line names."""
    clips_by_stem = {(p.parent, p.stem): p for p in files if p.suffix.lower() in AUDIO_SUFFIXES}
    found: dict[PurePosixPath, str] = {}
    named: set[PurePosixPath] = set()
    left: Counter[str] = Counter()
    for listing in sorted(p for p in files if p.name.lower().endswith(LIBRISPEECH)):
        for line in files[listing].read_bytes().decode("utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            key, _, text = line.strip().partition(" ")
            text = _clean(text)
            clip = clips_by_stem.get((listing.parent, key))
            if clip is not None:
                named.add(clip)
            if clip is None and text:
                left["transcripts without a clip"] += 1
            else:
                _keep(found, left, clip, text)
    return found, dict(left), named


def _keep(found: dict[PurePosixPath, str], left: Counter[str], clip: PurePosixPath | None, text: str) -> None:
    """Keep a clip's transcript, or count why not."""
    if not text or clip is None:
        left["empty transcripts"] += 1
    elif len(text) > MAX_TRANSCRIPT_CHARS:
        left[f"transcripts over {MAX_TRANSCRIPT_CHARS} characters"] += 1
    elif clip in found:
        left["clips listed twice (the first kept)"] += 1
    else:
        found[clip] = text


def inspect_zip(
    path: Path, limits: images.ZipLimits, dest: Path
) -> tuple[dict[PurePosixPath, Path], list[Utterance], dict[str, Any]]:
    """Unpack a speech zip under `dest` and validate it. Returns (its files on disk by relative
    path, the usable utterances, the report)."""
    files = images._strip_top_folder(images.unpack_zip(path, limits, dest))
    layout = layout_of([str(p) for p in files])
    if layout is None:
        raise DatasetError(
            f"{path.name} has no transcripts: put a {METADATA} (file_name,transcription) beside the clips, "
            f"or LibriSpeech {LIBRISPEECH} files"
        )
    transcripts, left, named = (_audiofolder if layout == "audiofolder" else _librispeech)(files)
    audio = {p: files[p] for p in files if p.suffix.lower() in AUDIO_SUFFIXES}
    missing = sorted(str(p) for p in transcripts if p not in audio)
    if missing:
        left["rows whose clip is not in the zip"] = len(missing)
    untranscribed = sorted(str(p) for p in audio if p not in named)
    listed = {p: audio[p] for p in transcripts if p in audio}
    if not listed:
        raise DatasetError(
            f"no clip in {path.name} has a transcript"
            + (f" (rows name clips the zip lacks, e.g. {missing[0]})" if missing else "")
        )
    limit = min(get_settings().max_clip_seconds, WHISPER_SECONDS)
    checked = check_clips(listed, limit)
    kept = [Utterance(str(p), transcripts[p], *facts) for p, facts in checked.readable.items()]
    if not kept:
        shown = "; ".join(
            [f"{k} ({v})" for k, v in list(checked.unreadable.items())[:3]]
            + [f"{k} ({v:g} s, over the {limit:g} s limit)" for k, v in list(checked.too_long.items())[:3]]
        )
        raise DatasetError(f"no readable clip with a transcript in {path.name}: {shown}")
    seconds = np.array([u.seconds for u in kept])
    words = np.array([len(u.transcript.split()) for u in kept])
    rate = words / np.maximum(seconds, 1e-3)
    odd = {u.path: round(float(r), 2) for u, r in zip(kept, rate, strict=True) if not SLOWEST <= r <= FASTEST}
    vocabulary = Counter(w.lower().strip(".,;:!?\"'()") for u in kept for w in u.transcript.split())
    report: dict[str, Any] = {
        "layout": layout,
        "clips": len(kept),
        "minutes": round(float(seconds.sum()) / 60, 2),
        "seconds": duration_summary(seconds),
        "words": {
            "total": int(words.sum()),
            "median": float(np.median(words)),
            "max": int(words.max()),
            "vocabulary": len(vocabulary),
            "most_common": [w for w, _ in vocabulary.most_common(20)],
        },
        "words_per_second": {"median": round(float(np.median(rate)), 2)},
        "odd_rate": dict(list(odd.items())[: images.REPORT_ITEMS]),
        "odd_rate_count": len(odd),
        "left_out": left,
        "untranscribed": untranscribed[: images.REPORT_ITEMS],
        "untranscribed_count": len(untranscribed),
        "missing_clips": missing[: images.REPORT_ITEMS],
        "unreadable": images.capped(checked.unreadable),
        "unreadable_count": len(checked.unreadable),
        "too_long": dict(list(checked.too_long.items())[: images.REPORT_ITEMS]),
        "too_long_count": len(checked.too_long),
        "max_clip_seconds": limit,
        "sample_rates": {str(k): v for k, v in sorted(Counter(u.sample_rate for u in kept).items())},
        "channels": {str(k): v for k, v in sorted(Counter(u.channels for u in kept).items())},
        "silent": checked.silent[: images.REPORT_ITEMS],
        "silent_count": len(checked.silent),
        "clipped": checked.clipped[: images.REPORT_ITEMS],
        "clipped_count": len(checked.clipped),
        "examples_shown": [{"clip": u.path, "transcript": u.transcript} for u in kept[:10]],
    }
    return files, kept, report
