"""Parallel text for translation: a table of source and target sentences.

A CSV, TSV, Parquet or JSON Lines table holds one pair per row. The two columns are named with
--source-column and --target-column, or found: `source` and `target` (or src/tgt), or two
columns named by language (ISO 639 codes such as en/es or eng/spa, or English names), the first
read as the source.

Rows with an empty side are left out and counted. The quality report counts pairs, duplicates,
pairs whose target equals the source (untranslated?), and pairs whose lengths look misaligned
(one side over three times the other's characters, past a few characters), with examples.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.errors import DatasetError

TASK = "translation"
SOURCE_NAMES = ("source", "src", "source_text", "input_text")
TARGET_NAMES = ("target", "tgt", "target_text", "output_text")
# Column names read as languages: ISO 639-1 and 639-3 codes and English names of common ones.
LANGUAGES = {
    "en": "English", "eng": "English", "english": "English",
    "es": "Spanish", "spa": "Spanish", "spanish": "Spanish",
    "fr": "French", "fra": "French", "fre": "French", "french": "French",
    "de": "German", "deu": "German", "ger": "German", "german": "German",
    "it": "Italian", "ita": "Italian", "italian": "Italian",
    "pt": "Portuguese", "por": "Portuguese", "portuguese": "Portuguese",
    "nl": "Dutch", "nld": "Dutch", "dutch": "Dutch",
    "ca": "Catalan", "cat": "Catalan", "catalan": "Catalan",
    "ro": "Romanian", "ron": "Romanian", "romanian": "Romanian",
    "pl": "Polish", "pol": "Polish", "polish": "Polish",
    "sv": "Swedish", "swe": "Swedish", "swedish": "Swedish",
    "fi": "Finnish", "fin": "Finnish", "finnish": "Finnish",
    "ru": "Russian", "rus": "Russian", "russian": "Russian",
    "uk": "Ukrainian", "ukr": "Ukrainian", "ukrainian": "Ukrainian",
    "tr": "Turkish", "tur": "Turkish", "turkish": "Turkish",
    "ar": "Arabic", "ara": "Arabic", "arabic": "Arabic",
    "he": "Hebrew", "heb": "Hebrew", "hebrew": "Hebrew",
    "hi": "Hindi", "hin": "Hindi", "hindi": "Hindi",
    "zh": "Chinese", "zho": "Chinese", "chinese": "Chinese",
    "ja": "Japanese", "jpn": "Japanese", "japanese": "Japanese",
    "ko": "Korean", "kor": "Korean", "korean": "Korean",
    "eu": "Basque", "eus": "Basque", "basque": "Basque",
    "gl": "Galician", "glg": "Galician", "galician": "Galician",
}  # fmt: skip
RATIO = 3.0  # one side over RATIO times the other's characters looks misaligned...
RATIO_FLOOR = 12  # ...when the longer side has at least this many characters
MAX_EXAMPLES_SHOWN = 5
MIN_PAIRS = 4  # a run needs pairs to train on and to validate with


def language(column: str) -> str | None:
    """The language a column's name gives (None when the name is no language)."""
    return LANGUAGES.get(column.strip().lower())


def find_columns(columns: list[str]) -> tuple[str, str] | None:
    """(source, target) found by name: source/target (src/tgt), or the first two columns named
    by language; None when neither is there."""
    lower = {c.lower(): c for c in columns}
    source = next((lower[n] for n in SOURCE_NAMES if n in lower), None)
    target = next((lower[n] for n in TARGET_NAMES if n in lower), None)
    if source is not None and target is not None:
        return source, target
    named = [c for c in columns if language(c) is not None]
    if len(named) == 2 and language(named[0]) != language(named[1]):
        return named[0], named[1]
    return None


def choose_columns(columns: list[str], source: str | None, target: str | None, name: str) -> tuple[str, str]:
    """The source and target columns: the ones named (each must exist) or the ones found."""
    for given in (source, target):
        if given is not None and given not in columns:
            raise DatasetError(
                f"{name} has no column '{given}' (it has: {', '.join(columns[:10])}); "
                "name the columns with --source-column and --target-column"
            )
    if source is not None and target is not None:
        if source == target:
            raise DatasetError("--source-column and --target-column name the same column; name two")
        return source, target
    found = find_columns(columns)
    if found is None:
        if source is not None or target is not None:
            raise DatasetError("name both columns: --source-column and --target-column")
        raise DatasetError(
            f"{name} has no source and target columns (it has: {', '.join(columns[:10])}); name them "
            "source and target, or by language (en, es), or give --source-column and --target-column"
        )
    if (source is not None and source != found[0]) or (target is not None and target != found[1]):
        raise DatasetError("name both columns: --source-column and --target-column")
    return found


def read(path: Path) -> pd.DataFrame:
    from core.data import text

    if path.suffix.lower() not in text.TEXT_SUFFIXES:
        raise DatasetError(f"{path.name}: {TASK} takes a CSV, TSV, Parquet or JSON Lines table")
    return text.read_table(path)


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return " ".join(str(value).split())


def misaligned(source: str, target: str) -> bool:
    """Whether one side is over RATIO times the other's length (past RATIO_FLOOR characters)."""
    short, long = sorted((len(source), len(target)))
    return long >= RATIO_FLOOR and long > RATIO * max(short, 1)


def inspect(
    frame: pd.DataFrame, source_column: str, target_column: str, name: str
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """Stored rows (columns source, target), the schema and the quality report."""
    from core.config import get_settings
    from core.data.text import length_summary

    limit = get_settings().max_cell_chars
    pairs: list[tuple[str, str]] = []
    dropped: Counter[str] = Counter()
    for src, tgt in zip(frame[source_column], frame[target_column], strict=True):
        s, t = _cell(src), _cell(tgt)
        if not s or not t:
            dropped["an empty source or target"] += 1
        elif max(len(s), len(t)) > limit:
            dropped[f"a side over {limit:,} characters (ASCENT_MAX_CELL_CHARS)"] += 1
        else:
            pairs.append((s, t))
    if len(pairs) < MIN_PAIRS:
        reasons = ", ".join(f"{n} with {why}" for why, n in dropped.most_common())
        raise DatasetError(
            f"{name} holds {len(pairs)} usable pair{'s' * (len(pairs) != 1)}"
            + (f" ({reasons})" if reasons else "")
            + f"; translation needs at least {MIN_PAIRS}"
        )
    counts = Counter(pairs)
    odd = [p for p in pairs if misaligned(*p)]
    same = [p for p in pairs if p[0].lower() == p[1].lower()]
    words = [np.array([len(p[i].split()) for p in pairs]) for i in (0, 1)]
    languages = [language(source_column), language(target_column)]
    report = {
        "rows": len(frame),
        "pairs": len(pairs),
        "columns": {"source": source_column, "target": target_column},
        "languages": {"source": languages[0], "target": languages[1]},
        "left_out": dict(dropped),
        "duplicate_pairs": sum(n - 1 for n in counts.values()),
        "untranslated": len(same),
        "misaligned": len(odd),
        "misaligned_shown": [{"source": s, "target": t} for s, t in odd[:MAX_EXAMPLES_SHOWN]],
        "length_words": {"source": length_summary(words[0]), "target": length_summary(words[1])},
        "length_bins": _common_bins(words[0], words[1]),
        "pairs_shown": [{"source": s[:300], "target": t[:300]} for s, t in pairs[:MAX_EXAMPLES_SHOWN]],
    }
    schema = {
        "task": TASK,
        "columns": {"source": source_column, "target": target_column},
        "languages": {"source": languages[0], "target": languages[1]},
        "source": name,
    }
    data = pd.DataFrame({"source": [s for s, _ in pairs], "target": [t for _, t in pairs]})
    return data, schema, report


def _common_bins(source: np.ndarray, target: np.ndarray) -> dict[str, list[float]]:
    """Counts of both sides' lengths in the same (at most 20) bins, for one chart."""
    both = np.concatenate([source, target])
    edges = np.histogram_bin_edges(both, bins=min(20, max(1, int(both.max() - both.min()) + 1)))
    return {
        "edges": [float(e) for e in edges],
        "source": np.histogram(source, edges)[0].tolist(),
        "target": np.histogram(target, edges)[0].tolist(),
    }


def load(path: Path) -> tuple[list[str], list[str]]:
    """A stored dataset's source and target sentences."""
    frame = pd.read_parquet(path / "data.parquet")
    return [str(s) for s in frame["source"]], [str(t) for t in frame["target"]]
