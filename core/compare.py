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
    return Stored(run_id, run.dataset_id, pd.read_parquet(path))


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
        frame = pd.read_parquet(root / "data.parquet")
        target = dataset.schema.get("target")
        return Items("row", rows=frame.iloc[ids].drop(columns=[target] if target in frame else []))
    if dataset.task == "text-classification":
        texts = pd.read_parquet(root / "data.parquet")["text"]
        return Items("text", texts=[str(texts.iloc[i]) for i in ids])
    index = pd.read_parquet(root / "index.parquet")
    folder = "images" if dataset.task == "image-classification" else "clips"
    return Items(
        "image" if folder == "images" else "clip", paths=[root / folder / index["path"].iloc[i] for i in ids]
    )
