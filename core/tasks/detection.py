"""Object detection: CenterNet-style heatmaps trained with a focal loss, scored with COCO mAP.

Targets are padded boxes [N, slots, 5] (label, x1, y1, x2, y2 at the model's size). The model's
dense output is decoded by peaks of the class heatmap (3x3 max-pool), the top K of them and
their box sizes: fixed-size outputs with no NonMaxSuppression, the same in PyTorch and ONNX.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from core.config import RunConfig
from core.export import ExportConfig
from core.models.dense import STRIDE, CenterNet
from core.runtime import DEFAULT_THRESHOLD
from core.tasks import ExportCheck, Reference, TaskData
from core.tasks.dense import export_scenes, prepare_scenes, resize_in_graph, scene_reference, task_data
from db.queries import DatasetInfo

TASKS: tuple[str, ...] = ("object-detection",)
TOP_K = 100  # detections the model returns per image, best first
MIN_SCORE = 0.01  # detections below this score are left out of metrics and predictions
MATCH_IOU = 0.9  # a PyTorch and an ONNX box agree at this IoU with the same label
AGREEMENT_MIN_BOXES = 1  # boxes of each image the agreement checks at least, whatever their score


def _render(y: torch.Tensor, k: int, h: int, w: int) -> dict[str, torch.Tensor]:
    """CenterNet targets from padded boxes: a Gaussian per box on its class heatmap, and each
    box's centre cell, log size and offset within the cell."""
    valid = y[..., 0] >= 0
    label = y[..., 0].clamp(min=0).long()
    x1, y1, x2, y2 = y[..., 1], y[..., 2], y[..., 3], y[..., 4]
    bw, bh = (x2 - x1).clamp(min=1.0), (y2 - y1).clamp(min=1.0)
    cx, cy = (x1 + x2) / 2 / STRIDE, (y1 + y2) / 2 / STRIDE
    ix, iy = cx.floor().clamp(0, w - 1), cy.floor().clamp(0, h - 1)
    # TTFNet's elliptical Gaussian: spread in proportion to the box's sides.
    sx = (0.54 * bw / STRIDE / 6).clamp(min=0.5)
    sy = (0.54 * bh / STRIDE / 6).clamp(min=0.5)
    gx = torch.arange(w, device=y.device, dtype=y.dtype).view(1, 1, 1, w)
    gy = torch.arange(h, device=y.device, dtype=y.dtype).view(1, 1, h, 1)
    gauss = torch.exp(
        -((gx - ix[..., None, None]) ** 2) / (2 * sx[..., None, None] ** 2)
        - (gy - iy[..., None, None]) ** 2 / (2 * sy[..., None, None] ** 2)
    )
    gauss = gauss * valid[..., None, None]
    n, m = y.shape[:2]
    heat = torch.zeros(n, k, h * w, device=y.device, dtype=y.dtype)
    index = label[..., None].expand(n, m, h * w)
    heat = heat.scatter_reduce(1, index, gauss.reshape(n, m, h * w), reduce="amax", include_self=True)
    return {
        "heat": heat.view(n, k, h, w),
        "valid": valid,
        "cell": (iy * w + ix).long(),
        "size": torch.stack([torch.log(bw / STRIDE), torch.log(bh / STRIDE)], -1),
        "offset": torch.stack([cx - ix, cy - iy], -1),
    }


def detection_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CenterNet's focal loss on the heatmap plus L1 on log box size and centre offset."""
    out = out.float()
    _, channels, h, w = out.shape
    k = channels - 4
    t = _render(y.float(), k, h, w)
    logits = out[:, :k]
    pos = (t["heat"] >= 1.0 - 1e-4).float()
    num_pos = pos.sum().clamp(min=1.0)
    log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
    p = torch.sigmoid(logits)
    focal = (
        -((log_p * (1 - p) ** 2 * pos).sum() + (log_not_p * p**2 * (1 - t["heat"]) ** 4 * (1 - pos)).sum())
        / num_pos
    )
    reg = out[:, k:].flatten(2)  # [N, 4, h*w]
    at = reg.gather(2, t["cell"][:, None, :].expand(-1, 4, -1)).permute(0, 2, 1)  # [N, slots, 4]
    valid = t["valid"][..., None].float()
    boxes = valid.sum().clamp(min=1.0)
    size = (F.l1_loss(at[..., :2], t["size"], reduction="none") * valid).sum() / boxes
    offset = (F.l1_loss(torch.sigmoid(at[..., 2:]), t["offset"], reduction="none") * valid).sum() / boxes
    return focal + 0.5 * size + offset


def peaks(out: torch.Tensor, top_k: int = TOP_K) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scores [N, K], labels [N, K], cells [N, K]) of the dense output's heatmap peaks (3x3
    max-pool), best first; a cell is its flat index (row * width + column) in the output grid."""
    _, channels, h, w = out.shape
    k = channels - 4
    heat = torch.sigmoid(out[:, :k].float())
    peak = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat).to(heat.dtype)
    scores, index = peak.flatten(1).topk(min(top_k, k * h * w), dim=1)
    labels = torch.div(index, h * w, rounding_mode="floor")
    return scores, labels, index - labels * (h * w)


def decode(out: torch.Tensor, top_k: int = TOP_K) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(boxes [N, K, 4] x1 y1 x2 y2 at the model's input size, scores [N, K], labels [N, K])
    from the dense output: heatmap peaks (3x3 max-pool) and the box at each."""
    _, channels, h, w = out.shape
    k = channels - 4
    scores, labels, cell = peaks(out, top_k)
    iy = torch.div(cell, w, rounding_mode="floor")
    ix = cell - iy * w
    reg = out[:, k:].float().flatten(2).gather(2, cell[:, None, :].expand(-1, 4, -1))
    bw, bh = torch.exp(reg[:, 0]) * STRIDE, torch.exp(reg[:, 1]) * STRIDE
    cx = (ix.to(reg.dtype) + torch.sigmoid(reg[:, 2])) * STRIDE
    cy = (iy.to(reg.dtype) + torch.sigmoid(reg[:, 3])) * STRIDE
    side_x, side_y = float(w * STRIDE), float(h * STRIDE)
    boxes = torch.stack(
        [
            (cx - bw / 2).clamp(min=0.0, max=side_x),
            (cy - bh / 2).clamp(min=0.0, max=side_y),
            (cx + bw / 2).clamp(min=0.0, max=side_x),
            (cy + bh / 2).clamp(min=0.0, max=side_y),
        ],
        dim=-1,
    )
    return boxes, scores, labels


def coco_eval(
    truth: list[tuple[np.ndarray, np.ndarray]],
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    classes: list[str],
) -> dict[str, Any]:
    """COCO box evaluation (faster-coco-eval) of per-image (boxes, labels) against per-image
    (boxes, scores, labels): mAP at IoU 0.5 and 0.5:0.95, AP per class, and the precision-
    recall curve at IoU 0.5 (precision at 101 recall points, averaged over classes)."""
    import contextlib
    import io

    from faster_coco_eval import COCO, COCOeval_faster

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    detections: list[dict[str, Any]] = []
    for i, ((boxes, labels), (d_boxes, d_scores, d_labels)) in enumerate(zip(truth, found, strict=True)):
        images.append({"id": i + 1, "width": 1, "height": 1})
        for b, lab in zip(boxes, labels, strict=True):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(lab) + 1,
                    "bbox": [float(b[0]), float(b[1]), w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        for b, s, lab in zip(d_boxes, d_scores, d_labels, strict=True):
            if s >= MIN_SCORE:
                detections.append(
                    {
                        "image_id": i + 1,
                        "category_id": int(lab) + 1,
                        "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                        "score": float(s),
                    }
                )
    categories = [{"id": c + 1, "name": name} for c, name in enumerate(classes)]
    empty = {"map": 0.0, "map50": 0.0, "per_class_ap50": [0.0] * len(classes), "pr_curve": []}
    if not annotations:
        return {**empty, "map": float("nan"), "map50": float("nan")}
    if not detections:
        return empty
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        gt = COCO({"images": images, "annotations": annotations, "categories": categories})
        dt = gt.loadRes(detections)
        ev = COCOeval_faster(gt, dt, iouType="bbox", print_function=lambda *_: None)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = np.asarray(ev.eval["precision"])  # [iou, recall, class, area, max dets]
    at50 = precision[0, :, :, 0, -1]  # IoU 0.5, all areas, 100 detections
    per_class = [float(np.mean(c[c > -1])) if (c > -1).any() else float("nan") for c in at50.T]
    curve = np.where(at50 > -1, at50, np.nan)
    pr = np.nanmean(curve, axis=1) if np.isfinite(curve).any() else np.zeros(len(curve))
    return {
        "map": float(ev.stats[0]),
        "map50": float(ev.stats[1]),
        "per_class_ap50": per_class,
        "pr_curve": [round(float(v), 4) for v in np.nan_to_num(pr)],
    }


def split_truth(y: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
    """Padded targets back to per-image (boxes, labels)."""
    out = []
    for row in y.cpu().numpy():
        keep = row[:, 0] >= 0
        out.append((row[keep, 1:], row[keep, 0].astype(np.int64)))
    return out


def split_found(out: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    boxes, scores, labels = (t.cpu().numpy() for t in decode(out))
    return list(zip(boxes, scores, labels, strict=True))


def metrics_for(classes: list[str]) -> Any:
    def evaluate(out: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        result = coco_eval(split_truth(y), split_found(out), classes)
        return {"val_map50": result["map50"], "val_map": result["map"]}

    return evaluate


def prepare(dataset: DatasetInfo, cfg: RunConfig, device: str, run_dir: Path | None = None) -> TaskData:
    classes: list[str] = dataset.schema["classes"]
    prepared = prepare_scenes(dataset, cfg, device)
    files = [prepared.scenes.files[i] for i in prepared.val_idx]
    scales = prepared.scenes.sizes[prepared.val_idx] / cfg.image_size
    return task_data(
        prepared,
        cfg,
        classes,
        loss_fn=detection_loss,
        evaluate=metrics_for(classes),
        main_metric="val_map50",
        report=lambda out, y: detection_report(out, y, classes, files, scales),
    )


def detection_report(
    out: torch.Tensor, y: torch.Tensor, classes: list[str], files: list[Path], scales: np.ndarray
) -> dict[str, Any]:
    """AP per class, the precision-recall curve and the worst validation images (lowest share of
    their objects found at IoU 0.5, then most false alarms) with their true and found boxes in
    the image's own pixels (`scales`: per image, original over model size, x and y)."""
    truth, found = split_truth(y), split_found(out)
    result = coco_eval(truth, found, classes)
    worst = []
    for i, ((boxes, labels), (d_boxes, d_scores, d_labels)) in enumerate(zip(truth, found, strict=True)):
        keep = d_scores >= REPORT_SCORE
        hits = _matched(boxes, labels, d_boxes[keep], d_labels[keep], 0.5)
        recall = hits / len(boxes) if len(boxes) else 1.0
        false = int(keep.sum()) - hits
        worst.append((recall, -false, i))
    worst.sort()
    return {
        "kind": "detection",
        "labels": classes,
        "map50": result["map50"],
        "map": result["map"],
        "per_class": [
            {"label": c, "ap50": None if np.isnan(ap) else round(ap, 4)}
            for c, ap in zip(classes, result["per_class_ap50"], strict=True)
        ],
        "pr_curve": {"recall": [round(r / 100, 2) for r in range(101)], "precision": result["pr_curve"]},
        "worst": [
            {
                "file": str(files[i]),
                "recall": round(r, 4),
                "false_positives": -f,
                "truth": _rows(truth[i][0], truth[i][1], None, scales[i]),
                "found": _rows(found[i][0], found[i][2], found[i][1], scales[i]),
            }
            for r, f, i in worst[:WORST]
        ],
    }


WORST = 6  # validation images the report keeps, worst first
REPORT_SCORE = DEFAULT_THRESHOLD  # detections the report keeps for them


def _rows(
    boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray | None, scale: np.ndarray
) -> list[list[float]]:
    """[label, x1, y1, x2, y2] (with score after the label when given) in original pixels."""
    factor = np.array([scale[0], scale[1], scale[0], scale[1]])
    keep = np.ones(len(boxes), bool) if scores is None else scores >= REPORT_SCORE
    rows = []
    for j in np.flatnonzero(keep):
        head = [int(labels[j])] + ([round(float(scores[j]), 4)] if scores is not None else [])
        rows.append(head + [round(float(v), 1) for v in boxes[j] * factor])
    return rows


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes a [n, 4] and b [m, 4]."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def _matched(a: np.ndarray, la: np.ndarray, b: np.ndarray, lb: np.ndarray, threshold: float) -> int:
    """Boxes of `a` matched one-to-one (greedy, best IoU first) by a box of `b` with the same
    label at IoU >= threshold."""
    if not len(a) or not len(b):
        return 0
    # Identical boxes match even where clamping to the image left them without area.
    same = np.abs(a[:, None, :] - b[None, :, :]).max(-1) < 1e-3
    iou = np.maximum(_iou(a, b), same) * (la[:, None] == lb[None, :])
    hits = 0
    while True:
        i, j = np.unravel_index(np.argmax(iou), iou.shape)
        if iou[i, j] < threshold:
            return hits
        hits += 1
        iou[i, :], iou[:, j] = -1, -1


def box_agreement(
    reference: list[tuple[np.ndarray, ...]],
    other: list[tuple[np.ndarray, ...]],
    threshold: float = DEFAULT_THRESHOLD,
) -> float:
    """Share of the reference's detections that the other model also finds: a box of the same
    label at IoU >= 0.9 among all its top-K (the export check's and the certificate's agreement).
    The reference's detections are those a user sees by default (score >= threshold) and at
    least the best AGREEMENT_MIN_BOXES of each image, so an untrained model is checked too. The
    long tail of low-scoring peaks is left out: they are not objects, and an int8 model moves
    them (on the boxes sample's quick start, counting each image's best ten took int8's
    agreement from 0.93 to 0.76, its mAP@0.5 0.011 under fp32's either way)."""
    total = hits = 0
    for (a, sa, la), (b, _, lb) in zip(reference, other, strict=True):
        keep = sa >= threshold
        keep[:AGREEMENT_MIN_BOXES] = True  # outputs come best first
        total += int(keep.sum())
        hits += _matched(a[keep], la[keep], b, lb, MATCH_IOU)
    return hits / total if total else 1.0


class Detector(nn.Module):
    """What model.onnx computes: uint8 NHWC RGB of any size in; `boxes` [N, K, 4] (x1, y1, x2, y2
    in the input's pixels), `scores` [N, K] and `labels` [N, K] (int64), best first."""

    def __init__(self, model: CenterNet, size: int, top_k: int = TOP_K) -> None:
        super().__init__()
        self.model, self.size, self.top_k = model, size, top_k

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        (image,) = inputs  # `*inputs`: the convention core.export.export_onnx traces with
        height, width = image.shape[1], image.shape[2]
        out = self.model(resize_in_graph(image, self.size))
        boxes, scores, labels = decode(out, self.top_k)
        # The input's sides as tensors (symbolic sizes in the exported graph).
        side_x = torch.full((), width, dtype=boxes.dtype) / self.size
        side_y = torch.full((), height, dtype=boxes.dtype) / self.size
        scale = torch.stack([side_x, side_y, side_x, side_y])
        return boxes * scale, scores, labels


MAX_PARITY_IMAGES = 128


def export(data: TaskData, cfg: RunConfig, dataset: DatasetInfo, path: Path, run_id: int) -> ExportCheck:
    """model.onnx: raw images in, boxes/scores/labels out; checked on original validation images
    by box agreement (same label at IoU >= 0.9) and the largest score difference."""
    from core.errors import ExportError

    assert isinstance(data.model, CenterNet)
    module = Detector(data.model.to("cpu").to(memory_format=torch.contiguous_format), cfg.image_size).eval()
    outputs = {
        "boxes": "[batch, top_k, 4] x1, y1, x2, y2 in the input image's pixels",
        "scores": "[batch, top_k] confidence 0-1, best first",
        "labels": "[batch, top_k] class index into ascent.labels",
    }
    compared = export_scenes(
        module, data, cfg, dataset, path, run_id, outputs=outputs, limit=MAX_PARITY_IMAGES, top_k=TOP_K
    )
    mine = [found for expected, _ in compared.pairs for found in zip(*expected, strict=True)]
    theirs = [found for _, got in compared.pairs for found in zip(*got, strict=True)]
    agreement = box_agreement(mine, theirs)
    check = ExportCheck(
        path=str(path),
        max_abs_diff=max(float(np.abs(e[1] - g[1]).max()) for e, g in compared.pairs),
        top1_agreement=agreement,
        n_samples=compared.n,
        provider=compared.provider,
        bytes=path.stat().st_size,
        agreement="box_agreement",
    )
    if agreement < ExportConfig().min_top1_agreement:
        raise ExportError(
            f"ONNX Runtime finds only {agreement:.1%} of PyTorch's boxes (same label, IoU >= 0.9)"
        )
    return check


def reference(data: TaskData, cfg: RunConfig, dataset: DatasetInfo) -> Reference:
    """The certificate's view: the Detector on validation images at the model's size, each variant
    judged by box agreement with PyTorch and by mAP@0.5 against the true boxes."""
    assert isinstance(data.model, CenterNet)
    classes: list[str] = dataset.schema["classes"]
    module = Detector(data.model.to("cpu").to(memory_format=torch.contiguous_format), cfg.image_size)
    ref = scene_reference(data, cfg, module, agreement="box_agreement", compared_output=1)
    truth = split_truth(torch.from_numpy(ref.targets))

    def per_image(out: list[np.ndarray]) -> list[tuple[np.ndarray, ...]]:
        return list(zip(*out, strict=True))

    ref.agree = lambda expected, got: box_agreement(per_image(expected), per_image(got))
    ref.score = lambda out: ("map50", coco_eval(truth, per_image(out), classes)["map50"])  # type: ignore[arg-type]
    return ref
