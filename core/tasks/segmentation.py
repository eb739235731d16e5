"""Semantic segmentation: a class for every pixel, scored by mean IoU and pixel accuracy.

Targets are index masks [N, S, S] at the model's size (255 = ignore). The model's logits come at
stride 8 and are resized to the mask for the loss and the metrics; the exported file resizes
them to the input image's own size and returns the class mask and each pixel's confidence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from core.config import RunConfig
from core.errors import ExportError
from core.export import ExportConfig
from core.models.dense import LRASPP
from core.tasks import ExportCheck, Reference, TaskData
from core.tasks.dense import (
    IGNORE,
    export_scenes,
    prepare_scenes,
    resize_in_graph,
    scene_reference,
    task_data,
)
from db.queries import DatasetInfo

TASKS: tuple[str, ...] = ("semantic-segmentation",)


def _logits_at(out: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    return F.interpolate(out.float(), size=size, mode="bilinear", align_corners=False)


def segmentation_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per pixel at the mask's size; ignored pixels count for nothing."""
    return F.cross_entropy(_logits_at(out, tuple(y.shape[-2:])), y.long(), ignore_index=IGNORE)


def confusion(out: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """[k, k] pixel counts, true class by predicted class (torchmetrics), ignored pixels left out."""
    return pixel_confusion(_logits_at(out, tuple(y.shape[-2:])).argmax(1), y, k)


def pixel_confusion(pred: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """[k, k] pixel counts of predicted class indices against true ones (255 ignored)."""
    from torchmetrics.functional.classification import multiclass_confusion_matrix

    return multiclass_confusion_matrix(
        pred.long().flatten(), y.long().flatten(), k, ignore_index=IGNORE, validate_args=False
    )


def scores(matrix: torch.Tensor) -> dict[str, Any]:
    """IoU per class (None for a class neither in the labels nor predicted), their mean, and
    pixel accuracy."""
    m = matrix.double()
    tp = m.diag()
    union = m.sum(0) + m.sum(1) - tp
    iou = [float(t / u) if u > 0 else None for t, u in zip(tp, union, strict=True)]
    present = [v for v in iou if v is not None]
    total = float(m.sum())
    return {
        "iou": iou,
        "miou": float(np.mean(present)) if present else float("nan"),
        "pixel_accuracy": float(tp.sum()) / total if total else float("nan"),
    }


def metrics_for(k: int) -> Any:
    def evaluate(out: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        result = scores(confusion(out, y, k))
        return {"val_miou": result["miou"], "val_pixel_accuracy": result["pixel_accuracy"]}

    return evaluate


def segmentation_report(
    out: torch.Tensor, y: torch.Tensor, classes: list[str], files: list[tuple[Path, Path]]
) -> dict[str, Any]:
    """IoU per class, the pixel confusion matrix and the worst validation images (lowest mean
    IoU of their own classes), each with its true mask, for the run's detail page."""
    k = len(classes)
    matrix = confusion(out, y, k)
    result = scores(matrix)
    worst = []
    for i in range(len(y)):
        own = scores(confusion(out[i : i + 1], y[i : i + 1], k))
        worst.append((own["miou"] if not np.isnan(own["miou"]) else 1.0, i))
    worst.sort()
    return {
        "kind": "segmentation",
        "labels": classes,
        "miou": result["miou"],
        "pixel_accuracy": result["pixel_accuracy"],
        "confusion": matrix.tolist(),
        "per_class": [
            {"label": c, "iou": None if v is None else round(v, 4)}
            for c, v in zip(classes, result["iou"], strict=True)
        ],
        "worst": [
            {"file": str(files[i][0]), "mask": str(files[i][1]), "miou": round(v, 4)} for v, i in worst[:6]
        ],
    }


def prepare(dataset: DatasetInfo, cfg: RunConfig, device: str, run_dir: Path | None = None) -> TaskData:
    classes: list[str] = dataset.schema["classes"]
    prepared = prepare_scenes(dataset, cfg, device)
    files = [(prepared.scenes.files[i], prepared.scenes.mask_files[i]) for i in prepared.val_idx]
    return task_data(
        prepared,
        cfg,
        classes,
        loss_fn=segmentation_loss,
        evaluate=metrics_for(len(classes)),
        main_metric="val_miou",
        report=lambda out, y: segmentation_report(out, y, classes, files),
    )


class Segmenter(nn.Module):
    """What model.onnx computes: uint8 NHWC RGB of any size in; `mask` [N, H, W] (uint8 class
    index per pixel of the input) and `confidence` [N, H, W] (that class's probability)."""

    def __init__(self, model: LRASPP, size: int) -> None:
        super().__init__()
        self.model, self.size = model, size

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (image,) = inputs  # `*inputs`: the convention core.export.export_onnx traces with
        out = self.model(resize_in_graph(image, self.size))
        logits = F.interpolate(
            out.float(), size=(image.shape[1], image.shape[2]), mode="bilinear", align_corners=False
        )
        # The top class's probability without a full softmax: 1 / sum(exp(logit - top logit)).
        # ONNX Runtime ran softmax-then-max at the input's size 3.4x slower than this.
        top = logits.max(dim=1)
        confidence = 1.0 / torch.exp(logits - top.values[:, None]).sum(dim=1)
        return top.indices.to(torch.uint8), confidence


MAX_PARITY_IMAGES = 64
MIN_PIXEL_AGREEMENT = 0.99


def export(data: TaskData, cfg: RunConfig, dataset: DatasetInfo, path: Path, run_id: int) -> ExportCheck:
    """model.onnx: raw images in, a class mask at the input's size out; checked on original
    validation images by pixel agreement and the largest confidence difference."""
    assert isinstance(data.model, LRASPP)
    module = Segmenter(data.model.to("cpu").to(memory_format=torch.contiguous_format), cfg.image_size).eval()
    outputs = {
        "mask": "[batch, height, width] uint8 class index into ascent.labels, at the input's size",
        "confidence": "[batch, height, width] probability of that class",
    }
    compared = export_scenes(
        module, data, cfg, dataset, path, run_id, outputs=outputs, limit=MAX_PARITY_IMAGES
    )
    same = sum(int((e[0] == g[0]).sum()) for e, g in compared.pairs)
    total = sum(e[0].size for e, _ in compared.pairs)
    diff = max(float(np.abs(e[1] - g[1]).max()) for e, g in compared.pairs)
    agreement = same / total if total else 1.0
    check = ExportCheck(
        path=str(path),
        max_abs_diff=diff,
        top1_agreement=agreement,
        n_samples=compared.n,
        provider=compared.provider,
        bytes=path.stat().st_size,
        agreement="pixel_agreement",
    )
    if agreement < MIN_PIXEL_AGREEMENT or diff > ExportConfig().tolerance * 10:
        raise ExportError(
            f"ONNX Runtime agrees with PyTorch on {agreement:.2%} of pixels (confidence differs by up to {diff:.3g})"
        )
    return check


def reference(data: TaskData, cfg: RunConfig, dataset: DatasetInfo) -> Reference:
    """The certificate's view: the Segmenter on validation images at the model's size, each
    variant judged by the share of pixels of the same class as PyTorch's and by mean IoU against
    the true masks."""
    assert isinstance(data.model, LRASPP)
    k = len(dataset.schema["classes"])
    module = Segmenter(data.model.to("cpu").to(memory_format=torch.contiguous_format), cfg.image_size)
    ref = scene_reference(data, cfg, module, agreement="pixel_agreement", compared_output=1)
    truth = torch.from_numpy(ref.targets)
    ref.agree = lambda expected, got: float((expected[0] == got[0]).mean())
    ref.score = lambda out: ("miou", scores(pixel_confusion(torch.from_numpy(out[0]), truth, k))["miou"])
    return ref
