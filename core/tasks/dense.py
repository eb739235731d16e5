"""What detection and segmentation share: scenes read from a dataset folder at the model's
size, transforms that move boxes and masks with the pixels, and loaders for the training loop.

A dataset folder holds `images/`, `index.parquet` (one row per image) and either
`boxes.parquet` (one row per box, pixel corners in the original image) or `masks/` (index
PNGs, 255 = ignore); see core/data/detection.py and core/data/segmentation.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from core.config import RunConfig
from core.runtime import load_image
from core.tasks import (
    DeviceLoader,
    Reference,
    TaskData,
    calibration_rows,
    init_from_run,
    read_index,
    same_model,
    split_indices,
    val_targets,
)
from db.queries import DatasetInfo

IGNORE = 255  # mask value for pixels that count for nothing (void)
MAX_OBJECTS = 100  # boxes per image a target holds; the detector keeps as many


@dataclass
class Scenes:
    """Every image of a dataset at the model's square size, with boxes or masks scaled to it."""

    images: np.ndarray  # uint8 [N, S, S, 3]
    files: list[Path]
    sizes: np.ndarray  # int [N, 2]: original (width, height)
    boxes: list[np.ndarray]  # per image float32 [m, 4] x1, y1, x2, y2 at size S (detection)
    labels: list[np.ndarray]  # per image int64 [m] (detection)
    masks: np.ndarray | None  # uint8 [N, S, S] class indices (segmentation)
    mask_files: list[Path]  # each image's mask file (segmentation)


def load_mask(path: Path, size: int) -> np.ndarray:
    """An index mask resized to size x size by nearest neighbour (labels are not blended)."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.resize((size, size), Image.Resampling.NEAREST), dtype=np.uint8).copy()


def read_scenes(dataset: DatasetInfo, size: int) -> Scenes:
    """The dataset's images resized to `size` (the one resize of core.runtime.load_image) with
    their boxes or masks; boxes keep their original-pixel form in boxes.parquet."""
    import pandas as pd

    root = Path(dataset.path)
    index = read_index(dataset, "scene")
    files = [root / "images" / p for p in index["path"]]
    sizes = index[["width", "height"]].to_numpy(np.int64)
    images = np.empty((len(files), size, size, 3), dtype=np.uint8)
    for i, f in enumerate(files):
        images[i] = load_image(f, (size, size))
    boxes: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    masks = None
    mask_files: list[Path] = []
    if dataset.task == "object-detection":
        lookup = {c: i for i, c in enumerate(dataset.schema["classes"])}
        table = pd.read_parquet(root / dataset.schema.get("boxes", "boxes.parquet"))
        if "iscrowd" in table:
            table = table[~table["iscrowd"].astype(bool)]
        groups = dict(tuple(table.groupby("path")))
        for i, rel in enumerate(index["path"]):
            rows = groups.get(rel)
            if rows is None:
                boxes.append(np.zeros((0, 4), np.float32))
                labels.append(np.zeros(0, np.int64))
                continue
            scale = np.array([size / sizes[i, 0], size / sizes[i, 1]] * 2, np.float32)
            xyxy = rows[["x1", "y1", "x2", "y2"]].to_numpy(np.float32) * scale
            boxes.append(xyxy[:MAX_OBJECTS])
            labels.append(rows["label"].map(lookup).to_numpy(np.int64)[:MAX_OBJECTS])
    else:
        mask_files = [root / "masks" / m for m in index["mask"]]
        masks = np.stack([load_mask(f, size) for f in mask_files])
    return Scenes(images, files, sizes, boxes, labels, masks, mask_files)


def pad_targets(boxes: list[np.ndarray], labels: list[np.ndarray], slots: int) -> torch.Tensor:
    """Boxes as one tensor [N, slots, 5] of (label, x1, y1, x2, y2), label -1 in unused slots."""
    out = torch.full((len(boxes), slots, 5), -1.0)
    for i, (b, lab) in enumerate(zip(boxes, labels, strict=True)):
        m = min(len(b), slots)
        out[i, :m, 0] = torch.from_numpy(lab[:m]).float()
        out[i, :m, 1:] = torch.from_numpy(b[:m])
    return out


class SceneDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """(uint8 HWC image, target) pairs; the target is padded boxes [slots, 5] or a mask [S, S]."""

    def __init__(self, scenes: Scenes, rows: np.ndarray, *, slots: int, augment: Any | None) -> None:
        self.scenes, self.rows, self.slots, self.augment = scenes, rows, slots, augment

    def __len__(self) -> int:
        return len(self.rows)

    def image(self, i: int) -> np.ndarray:
        return self.scenes.images[self.rows[i]]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision import tv_tensors

        row = self.rows[i]
        img = torch.from_numpy(self.scenes.images[row]).permute(2, 0, 1)
        size = img.shape[-2:]
        if self.scenes.masks is not None:
            mask = torch.from_numpy(self.scenes.masks[row].astype(np.int64))
            if self.augment is not None:
                img, mask = self.augment(img, tv_tensors.Mask(mask))
            return img.permute(1, 2, 0).contiguous(), torch.as_tensor(mask)
        boxes = torch.tensor(self.scenes.boxes[row])
        labels = torch.tensor(self.scenes.labels[row])
        if self.augment is not None:
            wrapped = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(size))
            img, moved = self.augment(img, {"boxes": wrapped, "labels": labels})
            boxes, labels = moved["boxes"].as_subclass(torch.Tensor), moved["labels"]
        target = pad_targets([boxes.numpy()], [labels.numpy()], self.slots)[0]
        return img.permute(1, 2, 0).contiguous(), target


def augmentation(size: int, flip: bool, boxes: bool) -> Any:
    """Random crops that keep most of the scene, flips when asked, light colour jitter; boxes
    and masks move with the pixels (torchvision transforms v2), boxes cut to slivers dropped."""
    from torchvision.transforms import v2

    steps: list[Any] = [v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    steps.append(v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2))
    if boxes:
        steps += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=2)]
    return v2.Compose(steps)


def _collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[tuple[torch.Tensor], torch.Tensor]:
    return (torch.stack([b[0] for b in batch]),), torch.stack([b[1] for b in batch])


def loaders(
    scenes: Scenes,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    cfg: RunConfig,
    device: str,
    *,
    slots: int,
) -> tuple[DeviceLoader, DeviceLoader]:
    """Training batches (augmented, reshuffled per epoch from the seed) and validation batches."""
    detection = scenes.masks is None
    augment = augmentation(cfg.image_size, cfg.flip, detection) if cfg.augment else None
    cpus = os.cpu_count() or 1
    workers = cfg.workers if cfg.workers is not None else (0 if augment is None else min(4, cpus - 1))
    common: dict[str, Any] = {
        "num_workers": workers,
        "pin_memory": device.startswith("cuda"),
        "collate_fn": _collate,
        "persistent_workers": workers > 0,
    }
    generator = torch.Generator()
    train_set = SceneDataset(scenes, train_idx, slots=slots, augment=augment)
    train = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        sampler=RandomSampler(train_set, generator=generator),
        drop_last=len(train_idx) > cfg.batch_size,
        **common,
    )
    val_set = SceneDataset(scenes, val_idx, slots=slots, augment=None)
    val = DataLoader(
        val_set,
        batch_size=max(cfg.batch_size, 32),
        shuffle=False,
        **{**common, "num_workers": 0, "persistent_workers": False},
    )
    return DeviceLoader(train, device, generator, cfg.seed), DeviceLoader(val, device)


def scene_set(loader: DeviceLoader) -> SceneDataset:
    """The scenes behind a loader (its split, at the model's size)."""
    dataset = loader.loader.dataset
    assert isinstance(dataset, SceneDataset)
    return dataset


def image_input_spec() -> list[dict[str, Any]]:
    """The exported input: one batch of same-sized images, any size."""
    return [
        {
            "name": "image",
            "dtype": "uint8",
            "shape": ["batch", "height", "width", 3],
            "layout": "NHWC",
            "color": "RGB",
        }
    ]


def resize_in_graph(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 NHWC of any size -> uint8 NHWC at size x size, bilinear like PIL's (no antialias),
    inside the exported graph so callers pass raw pixels."""
    x = images.permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


@dataclass
class Prepared:
    """What detection and segmentation runs share before their losses and metrics differ."""

    scenes: Scenes
    train_idx: np.ndarray
    val_idx: np.ndarray
    model: Any  # CenterNet or LRASPP (core.models.dense)
    train: DeviceLoader
    val: DeviceLoader
    pretrained: bool


def prepare_scenes(dataset: DatasetInfo, cfg: RunConfig, device: str) -> Prepared:
    """The scenes at the run's size, split (seeded), the registered model (from an earlier run's
    weights with --init-from) and its loaders; detection targets hold as many boxes as the
    busiest image (at most MAX_OBJECTS)."""
    from core.models import get_model

    torch.manual_seed(cfg.seed)
    scenes = read_scenes(dataset, cfg.image_size)
    n = len(scenes.images)
    train_idx, val_idx = split_indices(
        np.zeros(n, np.int64), stratify=False, val_fraction=cfg.val_fraction, seed=cfg.seed
    )
    model = get_model(cfg.model, cfg.task).build(len(dataset.schema["classes"]), cfg)
    pretrained = bool(model.backbone.pretrained)
    if cfg.init_from_run is not None:
        init_from_run(model, cfg.init_from_run, same_model(cfg))
        pretrained = True
    slots = max(1, min(MAX_OBJECTS, max((len(b) for b in scenes.boxes), default=1)))
    train, val = loaders(scenes, train_idx, val_idx, cfg, device, slots=slots)
    return Prepared(scenes, train_idx, val_idx, model, train, val, pretrained)


def task_data(prepared: Prepared, cfg: RunConfig, classes: list[str], **task: Any) -> TaskData:
    """TaskData for a prepared run; `task` gives its loss_fn, evaluate, main_metric and report.
    A pretrained backbone learns at a tenth of the head's rate unless --backbone-lr-mult says."""
    model = prepared.model
    mult = cfg.backbone_lr_mult if cfg.backbone_lr_mult is not None else (0.1 if prepared.pretrained else 1.0)
    return TaskData(
        model=model,
        train=prepared.train,
        val=prepared.val,
        n_train=len(prepared.train_idx),
        n_val=len(prepared.val_idx),
        mode="max",
        extra={
            "task": cfg.task,
            "classes": classes,
            "image_size": cfg.image_size,
            "pretrained": prepared.pretrained,
        },
        param_groups=[
            {"params": list(model.backbone.parameters()), "lr_mult": mult},
            {"params": model.head_parameters(), "lr_mult": 1.0},
        ],
        freeze=list(model.backbone.parameters()) if cfg.freeze_epochs else [],
        channels_last=True,
        **task,
    )


def _original_batches(files: list[Path], limit: int) -> list[np.ndarray]:
    """Original images (up to `limit`) in batches of equal size: the exported input is one size
    per batch."""
    from core.runtime import load_original

    groups: dict[tuple[int, ...], list[np.ndarray]] = {}
    for f in files[:limit]:
        img = load_original(f)
        groups.setdefault(img.shape, []).append(img)
    return [np.stack(g[i : i + 16]) for g in groups.values() for i in range(0, len(g), 16)]


@dataclass
class Compared:
    """PyTorch's and ONNX Runtime's outputs of an exported file, batch by batch."""

    pairs: list[tuple[list[np.ndarray], list[np.ndarray]]]
    provider: str
    n: int  # images compared


def export_scenes(
    module: torch.nn.Module,
    data: TaskData,
    cfg: RunConfig,
    dataset: DatasetInfo,
    path: Path,
    run_id: int,
    *,
    outputs: dict[str, str],
    limit: int,
    **extra: Any,
) -> Compared:
    """Write `module` (raw images of any size in; `outputs`, name -> meaning, out) to `path` with
    its metadata, then run it in PyTorch and in ONNX Runtime on up to `limit` of the run's
    original validation images, for the task to measure their agreement."""
    from core.export import export_onnx
    from core.runtime import create_session
    from core.tasks import export_metadata

    val = scene_set(data.val)  # type: ignore[arg-type]
    batches = _original_batches([val.scenes.files[r] for r in val.rows], limit)
    metadata = export_metadata(
        cfg,
        dataset,
        run_id,
        image_input_spec(),
        f"decode to RGB (EXIF rotation applied, transparency on white), uint8 NHWC at any size (one size per "
        f"batch); the resize to {cfg.image_size}x{cfg.image_size} and the normalisation are in the graph",
        output=next(iter(outputs)),
        outputs=outputs,
        **extra,
    )
    example = torch.from_numpy(np.repeat(batches[0][:1], 2, axis=0))  # batch 2: torch.export fixes sizes of 1
    export_onnx(
        module,
        (example,),
        path,
        input_names=["image"],
        output_name=list(outputs),
        metadata=metadata,
        dynamic_image=True,
    )
    session = create_session(path)
    pairs = []
    with torch.no_grad():
        for batch in batches:
            expected = [t.numpy() for t in module(torch.from_numpy(batch))]
            pairs.append((expected, [np.asarray(o) for o in session.run(None, {"image": batch})]))
    return Compared(pairs, str(session.get_providers()[0]), sum(len(b) for b in batches))


def scene_reference(data: TaskData, cfg: RunConfig, module: torch.nn.Module, **judged: Any) -> Reference:
    """The certificate's view of a detection or segmentation run: `module` (the exported
    computation) over the validation images at the model's size, whose targets (padded boxes or
    masks) are at that size too, with training images for int8 calibration; `judged` holds the
    task's agree, score, agreement and compared_output (see Reference)."""
    assert isinstance(data.val, DeviceLoader) and isinstance(data.train, DeviceLoader)
    val, train = scene_set(data.val), scene_set(data.train)
    images = np.stack([val.image(i) for i in range(len(val))])
    calibration = np.stack([train.image(i) for i in calibration_rows(len(train), cfg.seed)])
    return Reference(
        module.eval(),
        (images,),
        val_targets(data),
        classification=False,
        calibration=(calibration,),
        **judged,
    )
