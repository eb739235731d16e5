"""Reading and checking tables (CSV, TSV, Parquet) and describing them.

`inspect_table` returns the schema the tabular task trains from and the quality report shown
to the user, or raises DatasetError with a message that says what to fix.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pandas as pd

from core.config import get_settings
from core.errors import DatasetError
from core.runtime import as_category

TABLE_SUFFIXES = {".csv", ".tsv", ".txt", ".parquet", ".pq"}
# A categorical column keeps its this many most frequent values as categories; rarer values
# share the code of unseen ones (0) and are only counted in the report. A column whose kept
# values cover under half of its rows (nearly every value unique) is an identifier or free
# text, not a category.
MAX_CATEGORIES = 1000
MIN_CATEGORY_COVERAGE = 0.5
# A value longer than this is text, not a category.
MAX_CATEGORY_CHARS = 200
# A numeric target with more distinct values than this (or any fractional value) is regression.
MAX_CLASSES_AUTO = 20
_TARGET_NAMES = ("target", "label", "labels", "class", "y")


def check_columns(names: list[str], source: str) -> list[str]:
    """Column names as used (trimmed): within the column limit, each one distinct."""
    limit = get_settings().max_columns
    if len(names) > limit:
        raise DatasetError(
            f"{source} has {len(names):,} columns, over the limit of {limit:,} (ASCENT_MAX_COLUMNS); "
            "keep the columns the model should learn from"
        )
    clean = [str(n).strip() for n in names]
    twice = [n for n, k in Counter(clean).items() if k > 1]
    if twice:
        where = [i + 1 for i, n in enumerate(clean) if n == twice[0]]
        raise DatasetError(
            f"{source}: columns {', '.join(map(str, where[:-1]))} and {where[-1]} have the same name "
            f"'{twice[0][:60]}' (spaces around names are trimmed); give each column its own name"
        )
    return clean


def check_cells(df: pd.DataFrame, source: str, lists: Collection[str] = ()) -> None:
    """No text cell longer than ASCENT_MAX_CELL_CHARS, and no lists or objects in cells (but in
    the columns named in `lists`, whose items their reader checks)."""
    limit = get_settings().max_cell_chars
    for column in df.columns:
        values = df[column]
        if str(column).lower() in lists:
            continue
        if not (pd.api.types.is_object_dtype(values.dtype) or pd.api.types.is_string_dtype(values.dtype)):
            continue
        nested = values.map(lambda v: isinstance(v, (list, dict, tuple, set)) or hasattr(v, "__array__"))
        if nested.any():
            row = int(nested.to_numpy().argmax())
            raise DatasetError(
                f"{source}: column '{column}' holds lists or objects (row {row + 1}); "
                "a table takes one number or text per cell: flatten it first"
            )
        lengths = values.map(lambda v: len(v) if isinstance(v, (str, bytes)) else 0)
        if len(lengths) and int(lengths.max()) > limit:
            row = int(lengths.to_numpy().argmax())
            raise DatasetError(
                f"{source}: row {row + 1} of column '{column}' holds {int(lengths.max()):,} characters, "
                f"over the limit of {limit:,} per cell (ASCENT_MAX_CELL_CHARS)"
            )


def _parquet_columns(path: Path) -> list[str]:
    """The columns of a Parquet file from its footer, refusing nested ones before any rows load."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception as exc:
        raise DatasetError(
            f"{path.name} is not a readable Parquet file ({type(exc).__name__}); export it again or upload a CSV"
        ) from exc
    names = check_columns(schema.names, path.name)
    nested = [f.name for f in schema if pa.types.is_nested(f.type) or pa.types.is_binary(f.type)]
    if nested:
        raise DatasetError(
            f"{path.name}: column '{nested[0]}' holds lists, structs or binary values; "
            "a table takes one number or text per cell: flatten it first"
        )
    return names


def read_table(path: Path, nrows: int | None = None, *, fields: int = 2) -> pd.DataFrame:
    """Read a table (its first `nrows` rows when given), turning every way a file can fail to
    be one into a DatasetError. It needs `fields` columns (a target and a feature)."""
    suffix = path.suffix.lower()
    if suffix in {".parquet", ".pq"}:
        names = _parquet_columns(path)
        try:
            df = _read_parquet(path, nrows)
        except Exception as exc:
            raise DatasetError(
                f"{path.name} is not a readable Parquet file ({type(exc).__name__}); "
                "export it again or upload a CSV"
            ) from exc
        df.columns = names
    else:
        df = _read_text_table(path, "\t" if suffix == ".tsv" else None, nrows)
    check_cells(df, path.name)
    if len(df.columns) < fields:
        raise DatasetError(
            f"{path.name} has {len(df.columns)} column; a table needs a target column and at "
            "least one feature column (is the separator a comma?)"
        )
    if len(df) == 0:
        raise DatasetError(f"{path.name} has a header but no rows")
    return df


def _read_parquet(path: Path, nrows: int | None) -> pd.DataFrame:
    if nrows is None:
        return pd.read_parquet(path)
    import pyarrow.parquet as pq

    first = next(pq.ParquetFile(path).iter_batches(batch_size=nrows), None)
    return pd.read_parquet(path).head(0) if first is None else first.to_pandas()


def _read_text_table(path: Path, sep: str | None, nrows: int | None = None) -> pd.DataFrame:
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
            sep = csv.Sniffer().sniff(head.splitlines()[0][: 64 * 1024], delimiters=",;\t|").delimiter
        except csv.Error:
            sep = ","
    names = check_columns(_header(path, sep), path.name)
    try:
        df = pd.read_csv(
            path, sep=sep, encoding="utf-8-sig", encoding_errors="strict", header=0, names=names, nrows=nrows
        )
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"{path.name} is not UTF-8 text (a byte past the start cannot be decoded); save it as UTF-8 CSV"
        ) from exc
    except pd.errors.EmptyDataError as exc:
        raise DatasetError(f"{path.name} has no columns; upload a table with a header row") from exc
    except pd.errors.ParserError as exc:
        raise DatasetError(f"{path.name} is not a consistent table: {exc}".strip()) from exc
    return df


def _header(path: Path, sep: str) -> list[str]:
    """The header row alone, so a table of too many columns is refused before its rows load."""
    limit = get_settings().max_cell_chars
    csv.field_size_limit(max(limit, 128 * 1024))
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            return next(csv.reader(f, delimiter=sep), [])
    except csv.Error as exc:
        raise DatasetError(f"{path.name}: the header row cannot be read ({exc})") from exc


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
    if (n_rows >= 50 and len(counts) > 0.9 * n_rows) or (
        counts.iloc[:MAX_CATEGORIES].sum() < MIN_CATEGORY_COVERAGE * len(present)
    ):
        return None, f"{len(counts)} distinct text values: an identifier or free text"
    longest = max(len(str(v)) for v in counts.index)
    if longest > MAX_CATEGORY_CHARS:
        return None, f"values up to {longest:,} characters long: free text, not categories"
    spec: dict[str, Any] = {
        "name": col.name,
        "kind": "categorical",
        "categories": list(map(str, counts.index[:MAX_CATEGORIES])),
    }
    if len(counts) > MAX_CATEGORIES:
        rest = counts.iloc[MAX_CATEGORIES:]
        # Not stored: the rarer values are coded like unseen ones.
        spec["rare"] = {"values": len(rest), "rows": int(rest.sum())}
    return spec, None


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
        long = next((c for c in counts.index if len(c) > MAX_CATEGORY_CHARS), None)
        if long is not None:
            raise DatasetError(
                f"the target column '{target}' holds a value of {len(long):,} characters "
                f"('{long[:40]}…'); class labels are at most {MAX_CATEGORY_CHARS}: is it the right column?"
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
    report["rare_categories"] = {f["name"]: f["rare"] for f in features if "rare" in f}
    check_size(schema, "schema", _levels_hint(features))
    check_size(report, "quality report", "")
    return task, schema, report


def _levels_hint(features: list[dict[str, Any]]) -> str:
    cats = sorted((f for f in features if f["kind"] == "categorical"), key=lambda f: -len(f["categories"]))[
        :3
    ]
    shown = ", ".join(f"{f['name']} ({len(f['categories'])} values)" for f in cats)
    return f"; the columns with the most categories: {shown}" if shown else ""


def check_size(document: dict[str, Any], what: str, hint: str) -> None:
    """A schema or report over ASCENT_MAX_SCHEMA_BYTES of JSON is refused (pages load them)."""
    size = len(json.dumps(document, default=str))
    limit = get_settings().max_schema_bytes
    if size > limit:
        raise DatasetError(
            f"the dataset's {what} would be {size / 1e6:.1f} MB of JSON, over the limit of "
            f"{limit / 1e6:.1f} MB (ASCENT_MAX_SCHEMA_BYTES){hint}; drop or group such columns"
        )


def _class_order(label: str) -> tuple[int, float, str]:
    """Numeric labels in numeric order, then text labels alphabetically."""
    try:
        value = float(label)
    except ValueError:
        return (1, 0.0, label)
    return (0, value if math.isfinite(value) else 0.0, label)
