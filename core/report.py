"""The run report: what the best model gets right and wrong on the validation split."""

from __future__ import annotations

from typing import Any

import torch

MAX_POINTS = 500


def build_report(out: torch.Tensor, y: torch.Tensor, extra: dict[str, Any]) -> dict[str, Any]:
    """Confusion matrix and per-class scores, or for regression residuals and sample points."""
    out, y = out.float().cpu(), y.cpu()
    classes: list[str] = extra.get("classes") or []
    if classes and out.shape[1] == len(classes):
        k = len(classes)
        pred = out.argmax(1)
        confusion = torch.bincount(y * k + pred, minlength=k * k).reshape(k, k)
        tp = confusion.diag().float()
        predicted, actual = confusion.sum(0).float(), confusion.sum(1).float()
        precision = tp / predicted.clamp(min=1)
        recall = tp / actual.clamp(min=1)
        f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
        return {
            "kind": "classification",
            "labels": classes,
            "confusion": confusion.tolist(),
            "per_class": [
                {
                    "label": c,
                    "precision": float(precision[i]),
                    "recall": float(recall[i]),
                    "f1": float(f1[i]),
                    "support": int(actual[i]),
                }
                for i, c in enumerate(classes)
            ],
        }
    mean, std = float(extra.get("y_mean", 0.0)), float(extra.get("y_std", 1.0))
    pred = out.squeeze(1) * std + mean
    true = y.float() * std + mean
    err = pred - true
    step = max(1, len(true) // MAX_POINTS)
    return {
        "kind": "regression",
        "residuals": {
            "mean": float(err.mean()),
            "std": float(err.std()) if len(err) > 1 else 0.0,
            "max_abs": float(err.abs().max()),
        },
        "points": [[float(t), float(p)] for t, p in zip(true[::step], pred[::step], strict=True)],
    }
