"""Two runs on one dataset, sample by sample: the validation predictions each run stores, and
where they differ.

Each classification or regression run writes `predictions.parquet` when it finishes: one row per
validation item (`item`: its row in the dataset's table or index), the true and predicted
label with the model's class probabilities, or the true and predicted value. `diff` joins two
runs' files on the items both held back: which run is right where they disagree, the samples
the second run fixed (the first got them wrong, the second right) and broke (the reverse), per
class; for regression, which run came closer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from core.errors import ConfigError

PREDICTIONS = "predictions.parquet"
SHOWN = 200  # disagreements a diff lists unless asked for more


def _read(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """A dataset's stored table or index, or a DatasetError saying to add it again."""
    from core.errors import DatasetError

    try:
        return pd.read_parquet(path, columns=columns)
    except Exception as exc:
        raise DatasetError(
            f"the dataset's stored {path.name} cannot be read ({type(exc).__name__}); add the dataset again"
        ) from exc


def _columns(path: Path) -> list[str]:
    """A stored table's column names, from its Parquet footer alone (the page asks on each run)."""
    import pyarrow.parquet as pq

    from core.errors import DatasetError

    try:
        return list(pq.read_schema(path).names)
    except Exception as exc:
        raise DatasetError(
            f"the dataset's stored {path.name} cannot be read ({type(exc).__name__}); add the dataset again"
        ) from exc


def write_predictions(
    path: Path, outputs: torch.Tensor, targets: torch.Tensor, items: np.ndarray, extra: dict[str, Any]
) -> None:
    """The validation predictions of a run's best model, by dataset item (atomically)."""
    from core import atomic

    out = outputs.float().cpu()
    classes: list[str] = extra.get("classes") or []
    if classes and out.shape[1] == len(classes):
        probabilities = torch.softmax(out, dim=1).numpy()
        predicted = probabilities.argmax(1)
        frame = pd.DataFrame(
            {
                "item": items.astype(np.int64),
                "true": [classes[int(t)] for t in targets.cpu()],
                "predicted": [classes[int(p)] for p in predicted],
                "confidence": probabilities.max(1).astype(np.float64),
                "probabilities": [row.astype(np.float64) for row in probabilities],
            }
        )
    else:
        mean, std = float(extra.get("y_mean", 0.0)), float(extra.get("y_std", 1.0))
        frame = pd.DataFrame(
            {
                "item": items.astype(np.int64),
                "true": (targets.float().cpu().numpy() * std + mean).astype(np.float64),
                "predicted": (out[:, 0].numpy() * std + mean).astype(np.float64),
            }
        )
    atomic.write_with(path, lambda p: frame.to_parquet(p, index=False))


@dataclass
class Stored:
    run_id: int
    dataset_id: int
    frame: pd.DataFrame

    @property
    def classification(self) -> bool:
        return "probabilities" in self.frame.columns


def read_predictions(run_id: int) -> Stored:
    """A finished run's stored validation predictions, or ConfigError saying why there are none."""
    from core import jobs

    run = jobs.get_run(run_id)
    path = jobs.run_dir(run_id) / PREDICTIONS
    if not path.is_file():
        why = (
            f"it is {run.status}"
            if run.status != "succeeded"
            else f"its task ({run.task}) keeps none yet, or it was trained before Ascent kept them"
        )
        raise ConfigError(f"run {run_id} has no stored validation predictions: {why}")
    if run.dataset_id is None:
        raise ConfigError(f"run {run_id}'s dataset was deleted; compare runs of a dataset that is there")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:
        raise ConfigError(f"run {run_id}'s stored predictions cannot be read ({type(exc).__name__})") from exc
    return Stored(run_id, run.dataset_id, frame)


def diff(a: int, b: int, label: str | None = None, limit: int = SHOWN) -> dict[str, Any]:
    """Runs `a` and `b` on the validation items both held back: counts, per class, and the
    items where they disagree (for regression, where the second came closer or not)."""
    if a == b:
        raise ConfigError("give two different runs to compare")
    first, second = read_predictions(a), read_predictions(b)
    if first.dataset_id != second.dataset_id:
        raise ConfigError(
            f"run {a} trained on dataset {first.dataset_id} and run {b} on dataset {second.dataset_id}; "
            "compare runs of one dataset"
        )
    if first.classification != second.classification:
        raise ConfigError(f"runs {a} and {b} predict different kinds of target; compare runs of one task")
    joined = first.frame.merge(second.frame, on="item", suffixes=("_a", "_b"))
    if joined.empty:
        raise ConfigError(
            f"runs {a} and {b} share no validation item (their splits differ: another seed or "
            "validation fraction); train them with the same seed to compare them sample by sample"
        )
    if (joined["true_a"] != joined["true_b"]).any():
        raise ConfigError(f"runs {a} and {b} disagree on the true labels: the dataset changed between them")
    base = {
        "a": a,
        "b": b,
        "dataset": first.dataset_id,
        "common": len(joined),
        "only_a": len(first.frame) - len(joined),
        "only_b": len(second.frame) - len(joined),
    }
    if not first.classification:
        return {**base, **_regression(joined, limit)}
    if label is not None:
        labels = sorted(set(joined["true_a"]) | set(joined["predicted_a"]) | set(joined["predicted_b"]))
        if label not in labels:
            raise ConfigError(f"'{label}' is no label of these runs; labels: {', '.join(labels)}")
    return {**base, **_classification(joined, label, limit)}


def _classification(joined: pd.DataFrame, label: str | None, limit: int) -> dict[str, Any]:
    right_a = joined["predicted_a"] == joined["true_a"]
    right_b = joined["predicted_b"] == joined["true_b"]
    per_class = []
    for name, rows in joined.groupby("true_a", sort=True):
        ra, rb = right_a[rows.index], right_b[rows.index]
        per_class.append(
            {
                "label": str(name),
                "support": len(rows),
                "right_a": int(ra.sum()),
                "right_b": int(rb.sum()),
                "fixed": int((~ra & rb).sum()),
                "broken": int((ra & ~rb).sum()),
            }
        )
    differ = joined[joined["predicted_a"] != joined["predicted_b"]]
    if label is not None:
        differ = differ[
            (differ["true_a"] == label) | (differ["predicted_a"] == label) | (differ["predicted_b"] == label)
        ]
    samples = [
        {
            "item": int(r.item),
            "true": r.true_a,
            "a": r.predicted_a,
            "b": r.predicted_b,
            "confidence_a": float(r.confidence_a),
            "confidence_b": float(r.confidence_b),
            "right": "a" if r.predicted_a == r.true_a else "b" if r.predicted_b == r.true_b else "neither",
        }
        for r in differ.sort_values("item").itertuples()
    ]
    return {
        "kind": "classification",
        "accuracy_a": float(right_a.mean()),
        "accuracy_b": float(right_b.mean()),
        "both_right": int((right_a & right_b).sum()),
        "both_wrong": int((~right_a & ~right_b).sum()),
        "fixed": int((~right_a & right_b).sum()),
        "broken": int((right_a & ~right_b).sum()),
        "disagree": int((joined["predicted_a"] != joined["predicted_b"]).sum()),
        "per_class": per_class,
        "label": label,
        "shown": min(len(samples), limit),
        "samples": samples[:limit],
    }


def _regression(joined: pd.DataFrame, limit: int) -> dict[str, Any]:
    err_a = (joined["predicted_a"] - joined["true_a"]).abs()
    err_b = (joined["predicted_b"] - joined["true_b"]).abs()
    change = err_b - err_a
    order = change.abs().sort_values(ascending=False).index
    samples = [
        {
            "item": int(joined.at[i, "item"]),
            "true": float(joined.at[i, "true_a"]),
            "a": float(joined.at[i, "predicted_a"]),
            "b": float(joined.at[i, "predicted_b"]),
            "closer": "b" if change[i] < 0 else "a" if change[i] > 0 else "same",
        }
        for i in order[:limit]
    ]
    return {
        "kind": "regression",
        "mae_a": float(err_a.mean()),
        "mae_b": float(err_b.mean()),
        "closer_b": int((change < 0).sum()),
        "closer_a": int((change > 0).sum()),
        "same": int((change == 0).sum()),
        "shown": len(samples),
        "samples": samples,
    }


@dataclass
class Items:
    """What a dataset's items are, for showing them beside predictions: `kind` "row" (`rows`, the
    table's rows without the target), "image" or "clip" (`paths`), or "text" (`texts`)."""

    kind: str
    rows: pd.DataFrame | None = None
    paths: list[Path] | None = None
    texts: list[str] | None = None


def items(dataset_id: int, ids: list[int]) -> Items:
    """The content of a dataset's items `ids` (rows of its table or index), in that order."""
    from core.data.ingest import get_dataset

    dataset = get_dataset(dataset_id)
    root = Path(dataset.path)
    if dataset.task.startswith("tabular-"):
        frame = _read(root / "data.parquet")
        target = dataset.schema.get("target")
        return Items("row", rows=frame.iloc[ids].drop(columns=[target] if target in frame else []))
    if dataset.task == "text-classification":
        texts = _read(root / "data.parquet")["text"]
        return Items("text", texts=[str(texts.iloc[i]) for i in ids])
    index = _read(root / "index.parquet")
    folder = "images" if dataset.task == "image-classification" else "clips"
    return Items(
        "image" if folder == "images" else "clip", paths=[root / folder / index["path"].iloc[i] for i in ids]
    )


SLICE_CATEGORIES = 8  # a categorical column's commonest values get a slice each; the rest "other"


def slice_choices(dataset_id: int) -> list[str]:
    """What a run of this dataset can be sliced by: "class" (or the target's value range), the
    text length or clip duration, and a table's columns."""
    from core.data.ingest import get_dataset

    dataset = get_dataset(dataset_id)
    found = ["class"]
    if dataset.task == "text-classification":
        found.append("length")
    if dataset.task == "audio-classification":
        found.append("duration")
    if dataset.task.startswith("tabular-"):
        target = dataset.schema.get("target")
        found += [str(c) for c in _columns(Path(dataset.path) / "data.parquet") if c != target]
    return found


def _binned(values: pd.Series, bins: int) -> pd.Series:
    """Numbers in up to `bins` ranges of about equal counts, labelled "low – high"."""
    cut = pd.qcut(values.astype(float), q=bins, duplicates="drop")
    return cut.map(lambda iv: f"{iv.left:.4g} – {iv.right:.4g}" if pd.notna(iv) else "(missing)").astype(str)


def _slice_keys(dataset_id: int, joined: pd.DataFrame, by: str, bins: int, classification: bool) -> pd.Series:
    from core.data.ingest import get_dataset

    dataset = get_dataset(dataset_id)
    root = Path(dataset.path)
    ids = joined["item"].to_numpy()
    choices = slice_choices(dataset_id)
    if by not in choices:
        raise ConfigError(f"'{by}' is no slice of dataset {dataset_id}; slice by: {', '.join(choices)}")
    if by == "class":
        return joined["true"].astype(str) if classification else _binned(joined["true"], bins)
    if by == "length":
        texts = _read(root / "data.parquet")["text"].iloc[ids]
        words = texts.map(lambda t: len(str(t).split())).reset_index(drop=True)
        return _binned(words, bins).rename("words")
    if by == "duration":
        seconds = _read(root / "index.parquet")["seconds"].iloc[ids].reset_index(drop=True)
        return _binned(seconds, bins)
    column = _read(root / "data.parquet", [by])[by].iloc[ids].reset_index(drop=True)
    if pd.api.types.is_numeric_dtype(column) and column.nunique() > bins:
        return _binned(column, bins)
    text = column.astype(str).where(column.notna(), "(missing)")
    common = text.value_counts().index[:SLICE_CATEGORIES]
    return text.where(text.isin(common), "other")


def slices(run_ids: list[int], by: str = "class", bins: int = 4) -> dict[str, Any]:
    """One or two runs' validation metrics per slice of the items both held back: accuracy (or
    mean absolute error) and count per class, per range of a table column's values (or its
    commonest values), per text length or per clip duration."""
    if not 1 <= len(run_ids) <= 2 or len(set(run_ids)) != len(run_ids):
        raise ConfigError("give one run, or two different runs of one dataset, to slice")
    if not 2 <= bins <= 20:
        raise ConfigError(f"--bins must be between 2 and 20, not {bins}")
    stored = [read_predictions(r) for r in run_ids]
    if len(stored) == 2:
        diff(run_ids[0], run_ids[1], limit=1)  # the same refusals: another dataset, no shared item
    joined = stored[0].frame[["item", "true"]]
    for s in stored:
        joined = joined.merge(
            s.frame[["item", "predicted"]].rename(columns={"predicted": f"run {s.run_id}"}), on="item"
        )
    joined = joined.reset_index(drop=True)
    classification = stored[0].classification
    keys = _slice_keys(stored[0].dataset_id, joined, by, bins, classification).to_numpy()
    metric = "accuracy" if classification else "mae"
    rows = []
    order = sorted({str(k) for k in keys}, key=_slice_rank)
    for key in order:
        part = joined[keys == key]
        row: dict[str, Any] = {"slice": str(key), "items": len(part)}
        for s in stored:
            predicted = part[f"run {s.run_id}"]
            row[f"run {s.run_id}"] = (
                float((predicted == part["true"]).mean())
                if classification
                else float((predicted - part["true"]).abs().mean())
            )
        rows.append(row)
    return {
        "runs": run_ids,
        "dataset": stored[0].dataset_id,
        "by": by,
        "metric": metric,
        "items": len(joined),
        "slices": rows,
    }


def _slice_rank(key: str) -> tuple[int, float, str]:
    """Ranges by their low end (numeric labels by value), then named values, then "(missing)"
    and "other"."""
    head = key.split(" – ")[0]
    try:
        return (0, float(head), key)
    except ValueError:
        return (2 if key in ("other", "(missing)") else 1, 0.0, key)
