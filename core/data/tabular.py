"""Reading and checking tables (CSV, TSV, Parquet) and describing them.

`inspect_table` returns the schema the tabular task trains from and the quality report shown
to the user, or raises DatasetError with a message that says what to fix.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pandas as pd

from core.errors import DatasetError
from core.runtime import as_category

TABLE_SUFFIXES = {".csv", ".tsv", ".txt", ".parquet", ".pq"}
# A text column with more distinct values than this (or unique on nearly every row) is an
# identifier or free text, not a category.
MAX_CATEGORIES = 1000
# A numeric target with more distinct values than this (or any fractional value) is regression.
MAX_CLASSES_AUTO = 20
_TARGET_NAMES = ("target", "label", "labels", "class", "y")


def read_table(path: Path) -> pd.DataFrame:
    """Read a table, turning every way a file can fail to be one into a DatasetError."""
    suffix = path.suffix.lower()
    if suffix in {".parquet", ".pq"}:
        try:
            df = pd.read_parquet(path)
        except Exception as exc:
            raise DatasetError(
                f"{path.name} is not a readable Parquet file ({type(exc).__name__}); "
                "export it again or upload a CSV"
            ) from exc
    else:
        df = _read_text_table(path, "\t" if suffix == ".tsv" else None)
    df.columns = [str(c).strip() for c in df.columns]
    if len(df.columns) < 2:
        raise DatasetError(
            f"{path.name} has {len(df.columns)} column; a table needs a target column and at "
            "least one feature column (is the separator a comma?)"
        )
    if len(df) == 0:
        raise DatasetError(f"{path.name} has a header but no rows")
    return df


def _read_text_table(path: Path, sep: str | None) -> pd.DataFrame:
    try:
        with path.open(encoding="utf-8-sig", errors="strict") as f:
            head = f.read(64 * 1024)
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"{path.name} is not UTF-8 text (byte {exc.start} cannot be decoded); save it as UTF-8 CSV"
        ) from exc
    if not head.strip():
        raise DatasetError(f"{path.name} is empty; upload a table with a header row")
    if "\x00" in head:
        raise DatasetError(f"{path.name} looks like a binary file, not a CSV table")
    if sep is None:
        try:
            sep = csv.Sniffer().sniff(head.splitlines()[0], delimiters=",;\t|").delimiter
        except csv.Error:
            sep = ","
    try:
        return pd.read_csv(path, sep=sep, encoding="utf-8-sig", encoding_errors="strict")
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"{path.name} is not UTF-8 text (a byte past the start cannot be decoded); save it as UTF-8 CSV"
        ) from exc
    except pd.errors.EmptyDataError as exc:
        raise DatasetError(f"{path.name} has no columns; upload a table with a header row") from exc
    except pd.errors.ParserError as exc:
        raise DatasetError(f"{path.name} is not a consistent table: {exc}".strip()) from exc


def choose_target(df: pd.DataFrame, target: str | None) -> str:
    if target is not None:
        if target not in df.columns:
            shown = ", ".join(map(str, df.columns[:20]))
            raise DatasetError(f"no column named '{target}'; the columns are: {shown}")
        return target
    for name in df.columns:
        if name.lower() in _TARGET_NAMES:
            return str(name)
    return str(df.columns[-1])


def detect_task(y: pd.Series) -> str:
    """Classification for text, booleans and few integer values; regression otherwise."""
    if pd.api.types.is_bool_dtype(y) or not pd.api.types.is_numeric_dtype(y):
        return "tabular-classification"
    values = y.astype(float)
    fractional = bool((values != values.round()).any())
    if fractional or values.nunique() > MAX_CLASSES_AUTO:
        return "tabular-regression"
    return "tabular-classification"


def _describe_feature(col: pd.Series, n_rows: int) -> tuple[dict[str, Any] | None, str | None]:
    """The feature spec of a column, or None with the reason it cannot be used."""
    present = col.dropna()
    if present.empty:
        return None, "every value is missing"
    if present.nunique() <= 1:
        return None, "constant"
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        return {"name": col.name, "kind": "numeric"}, None
    cats = present.map(as_category)
    counts = cats.value_counts()
    if len(counts) > MAX_CATEGORIES or (n_rows >= 50 and len(counts) > 0.9 * n_rows):
        return None, f"{len(counts)} distinct text values: an identifier or free text"
    return {"name": col.name, "kind": "categorical", "categories": list(map(str, counts.index))}, None


def inspect_table(
    df: pd.DataFrame, target: str | None, task: str | None
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Validate a table and return (task, schema, quality report)."""
    target = choose_target(df, target)
    y_all = df[target]
    missing_target = int(y_all.isna().sum())
    y = y_all.dropna()
    if y.empty:
        raise DatasetError(f"every value of the target column '{target}' is missing")
    detected = detect_task(y)
    task = task or detected
    if task not in ("tabular-classification", "tabular-regression"):
        raise DatasetError(
            f"task '{task}' does not take a table; use tabular-classification or tabular-regression"
        )
    n_rows = len(df)
    report: dict[str, Any] = {
        "rows": n_rows,
        "columns": len(df.columns),
        "target": target,
        "task_detected": detected,
        "rows_missing_target": missing_target,
        "duplicate_rows": int(df.duplicated().sum()),
        "missing_per_column": {str(c): int(v) for c, v in df.isna().sum().items()},
        "missing_cells": int(df.isna().sum().sum()),
    }
    schema: dict[str, Any] = {"target": target, "task": task}
    if task == "tabular-classification":
        labels = y.map(as_category)
        counts = labels.value_counts()
        if len(counts) < 2:
            raise DatasetError(
                f"the target column '{target}' has only one class ('{counts.index[0]}'); "
                "a classifier needs at least two"
            )
        if len(counts) > MAX_CATEGORIES:
            raise DatasetError(
                f"the target column '{target}' has {len(counts)} classes; for a numeric "
                "target use --task tabular-regression"
            )
        classes = sorted(counts.index, key=_class_order)
        schema["classes"] = classes
        report["class_counts"] = {c: int(counts[c]) for c in classes}
        report["imbalance_ratio"] = round(float(counts.max() / counts.min()), 3)
    else:
        if pd.api.types.is_bool_dtype(y) or not pd.api.types.is_numeric_dtype(y):
            raise DatasetError(
                f"the target column '{target}' is not numeric, so it cannot be regressed; "
                "use --task tabular-classification"
            )
        yf = y.astype(float)
        report["target_stats"] = {
            "mean": float(yf.mean()),
            "std": float(yf.std()),
            "min": float(yf.min()),
            "max": float(yf.max()),
        }

    features, dropped, kinds = [], {}, {}
    for name in df.columns:
        if name == target:
            continue
        spec, reason = _describe_feature(df[name], n_rows)
        kinds[str(name)] = spec["kind"] if spec else "dropped"
        if spec is None:
            dropped[str(name)] = reason
        else:
            features.append(spec)
    report["column_kinds"] = kinds
    report["constant_columns"] = [c for c, r in dropped.items() if r == "constant"]
    report["dropped_columns"] = dropped
    if not features:
        why = "; ".join(f"{c}: {r}" for c, r in dropped.items()) or "the table has only the target"
        raise DatasetError(f"no usable feature column besides the target '{target}' ({why})")
    schema["features"] = features
    return task, schema, report


def _class_order(label: str) -> tuple[int, float, str]:
    """Numeric labels in numeric order, then text labels alphabetically."""
    try:
        value = float(label)
    except ValueError:
        return (1, 0.0, label)
    return (0, value if math.isfinite(value) else 0.0, label)
