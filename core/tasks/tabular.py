"""Tables: classification and regression from numeric and categorical columns.

The model takes raw values: numeric columns as float32 (NaN for missing), categorical columns
as int64 codes (0 = missing or unseen, i + 1 = the i-th category in the schema). Imputation,
standardisation and, for regression, the target's scale are inside the exported graph.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from core.config import RunConfig
from core.errors import DatasetError
from core.export import check_parity, export_onnx
from core.models import get_model
from core.models.tabular import TabularNet
from core.runtime import as_category
from core.tasks import (
    ExportCheck,
    Reference,
    TaskData,
    TensorBatches,
    classification_metrics,
    cross_entropy,
    split_indices,
)
from db.queries import DatasetInfo

TASKS: tuple[str, ...] = ("tabular-classification", "tabular-regression")


def encode_features(df: pd.DataFrame, schema: dict[str, Any]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Raw model inputs: float32 numbers with NaN, int64 category codes."""
    feats = schema["features"]
    num_cols = [f["name"] for f in feats if f["kind"] == "numeric"]
    cat_feats = [f for f in feats if f["kind"] == "categorical"]
    numeric = (
        df[num_cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float32, na_value=np.nan)
        if num_cols
        else None
    )
    categorical = None
    if cat_feats:
        cols = []
        for f in cat_feats:
            table = {c: i + 1 for i, c in enumerate(f["categories"])}
            cols.append(
                df[f["name"]].map(lambda v, t=table: t.get(as_category(v) or "", 0)).to_numpy(np.int64)
            )
        categorical = np.stack(cols, axis=1)
    return numeric, categorical


def prepare(dataset: DatasetInfo, cfg: RunConfig, device: str, run_dir: Path | None = None) -> TaskData:
    torch.manual_seed(cfg.seed)  # model initialisation is part of the run's seed
    schema = dataset.schema
    target = schema["target"]
    classification = cfg.task == "tabular-classification"
    if cfg.task != dataset.task:
        raise DatasetError(f"dataset {dataset.id} is {dataset.task}, not {cfg.task}")
    try:
        df = pd.read_parquet(Path(dataset.path) / "data.parquet")
    except Exception as exc:
        raise DatasetError(
            f"dataset {dataset.id}'s stored table cannot be read ({type(exc).__name__}: {exc}); "
            "add the file again"
        ) from exc
    labelled = df[target].notna().to_numpy()
    rows = np.flatnonzero(labelled)  # dataset item ids: positions in the stored table
    df = df[labelled].reset_index(drop=True)
    numeric, categorical = encode_features(df, schema)
    if classification:
        index = {c: i for i, c in enumerate(schema["classes"])}
        y = df[target].map(lambda v: index[as_category(v)]).to_numpy(np.int64)
    else:
        y = pd.to_numeric(df[target]).to_numpy(np.float32)
    train_idx, val_idx = split_indices(
        y, stratify=classification, val_fraction=cfg.val_fraction, seed=cfg.seed
    )
    if len(val_idx) == 0 or len(train_idx) == 0:
        raise DatasetError(
            f"dataset {dataset.id} has too few rows ({len(y)}) to split into train and validation"
        )

    n_numeric = 0 if numeric is None else numeric.shape[1]
    cards = [len(f["categories"]) + 1 for f in schema["features"] if f["kind"] == "categorical"]
    out_dim = len(schema["classes"]) if classification else 1
    spec = get_model(cfg.model, cfg.task)
    body = spec.build(TabularNet.in_dim(n_numeric, cards), out_dim, cfg)
    net = TabularNet(n_numeric, cards, body)
    extra: dict[str, Any] = {
        "task": cfg.task,
        "classes": schema.get("classes", []),
        "y_mean": 0.0,
        "y_std": 1.0,
    }
    if numeric is not None:
        with np.errstate(all="ignore"):
            mean = np.nan_to_num(np.nanmean(numeric[train_idx], axis=0))
            std = np.nan_to_num(np.nanstd(numeric[train_idx], axis=0))
        std[std < 1e-12] = 1.0
        net.num_mean.copy_(torch.from_numpy(mean))
        net.num_std.copy_(torch.from_numpy(std))
    if not classification:
        y_mean, y_std = float(y[train_idx].mean()), float(y[train_idx].std()) or 1.0
        extra.update(y_mean=y_mean, y_std=y_std)
        y = (y - y_mean) / y_std

    def tensors(idx: np.ndarray) -> tuple[tuple[torch.Tensor | None, ...], torch.Tensor]:
        def put(a: np.ndarray | None) -> torch.Tensor | None:
            return None if a is None else torch.from_numpy(a[idx]).to(device)

        return (put(numeric), put(categorical)), torch.from_numpy(y[idx]).to(device)

    train_in, train_y = tensors(train_idx)
    val_in, val_y = tensors(val_idx)
    return TaskData(
        model=net,
        train=TensorBatches(train_in, train_y, cfg.batch_size, shuffle=True, seed=cfg.seed),
        val=TensorBatches(val_in, val_y, max(cfg.batch_size, 1024), shuffle=False),
        n_train=len(train_idx),
        n_val=len(val_idx),
        val_ids=rows[val_idx],
        loss_fn=cross_entropy if classification else _mse,
        evaluate=classification_metrics
        if classification
        else _regression_metrics(extra["y_mean"], extra["y_std"]),
        main_metric="val_f1_macro" if classification else "val_rmse",
        mode="max" if classification else "min",
        extra=extra,
    )


def _mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out.float().squeeze(1), y)


def _regression_metrics(y_mean: float, y_std: float):  # type: ignore[no-untyped-def]
    def metrics(out: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        pred = out.float().squeeze(1) * y_std + y_mean
        true = y * y_std + y_mean
        err = pred - true
        ss_tot = float(((true - true.mean()) ** 2).sum())
        return {
            "val_rmse": float(err.pow(2).mean().sqrt()),
            "val_mae": float(err.abs().mean()),
            "val_r2": 1.0 - float(err.pow(2).sum()) / ss_tot if ss_tot > 0 else 0.0,
        }

    return metrics


class TabularExport(nn.Module):
    """The exported graph: raw inputs in, probabilities (or the target's value) out."""

    def __init__(
        self,
        net: TabularNet,
        *,
        has_numeric: bool,
        has_categorical: bool,
        regression: bool,
        y_mean: float,
        y_std: float,
    ) -> None:
        super().__init__()
        self.net = net
        self.has_numeric, self.has_categorical, self.regression = has_numeric, has_categorical, regression
        self.y_mean, self.y_std = y_mean, y_std

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        numeric = inputs[0] if self.has_numeric else None
        categorical = inputs[-1] if self.has_categorical else None
        out = self.net(numeric, categorical)
        if self.regression:
            return out.squeeze(1) * self.y_std + self.y_mean
        return torch.softmax(out, dim=1)


def export(data: TaskData, cfg: RunConfig, dataset: DatasetInfo, path: Path, run_id: int) -> ExportCheck:
    """Write model.onnx per the export contract and check it on the validation split."""
    schema = dataset.schema
    feats = schema["features"]
    num_cols = [f["name"] for f in feats if f["kind"] == "numeric"]
    cat_feats = [f for f in feats if f["kind"] == "categorical"]
    regression = cfg.task == "tabular-regression"
    ref = reference(data, cfg, dataset)
    wrapper, val_inputs = ref.module, ref.inputs
    spec: list[dict[str, Any]] = []
    names: list[str] = []
    if num_cols:
        names.append("numeric")
        spec.append(
            {"name": "numeric", "dtype": "float32", "shape": ["batch", len(num_cols)], "columns": num_cols}
        )
    if cat_feats:
        names.append("categorical")
        spec.append(
            {
                "name": "categorical",
                "dtype": "int64",
                "shape": ["batch", len(cat_feats)],
                "columns": [f["name"] for f in cat_feats],
                "codes": {f["name"]: f["categories"] for f in cat_feats},
            }
        )
    metadata = {
        "ascent.task": cfg.task,
        "ascent.labels": json.dumps(schema.get("classes", [])),
        "ascent.inputs": json.dumps(spec),
        "ascent.preprocess": (
            "numeric: raw float32 values, NaN for missing; categorical: int64 code of the value "
            "in ascent.inputs codes (position + 1; 0 for missing or unseen)"
        ),
        "ascent.run": json.dumps(
            {"run_id": run_id, "model": cfg.model, "dataset": dataset.name, "target": schema["target"]}
        ),
        "ascent.output": "value" if regression else "probabilities",
    }
    example = tuple(torch.from_numpy(x[: min(len(x), 4)].copy()) for x in val_inputs)
    if len(example[0]) < 2:
        example = tuple(torch.cat([e, e]) for e in example)
    export_onnx(
        wrapper,
        example,
        path,
        input_names=names,
        output_name="value" if regression else "probabilities",
        metadata=metadata,
    )
    return check_parity(path, wrapper, val_inputs, classification=not regression)


def reference(data: TaskData, cfg: RunConfig, dataset: DatasetInfo) -> Reference:
    feats = dataset.schema["features"]
    net = data.model
    assert isinstance(net, TabularNet) and isinstance(data.val, TensorBatches)
    regression = cfg.task == "tabular-regression"
    wrapper = TabularExport(
        net.to("cpu"),
        has_numeric=any(f["kind"] == "numeric" for f in feats),
        has_categorical=any(f["kind"] == "categorical" for f in feats),
        regression=regression,
        y_mean=data.extra["y_mean"],
        y_std=data.extra["y_std"],
    ).eval()
    inputs = tuple(x.cpu().numpy() for x in data.val.inputs if x is not None)
    targets = data.val.target.cpu().numpy()
    if regression:  # back to the target's units, as the file predicts them
        targets = targets * data.extra["y_std"] + data.extra["y_mean"]
    return Reference(wrapper, inputs, targets, classification=not regression)
