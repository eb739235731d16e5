"""Images: classification by fine-tuning a pretrained backbone or training from scratch.

Models take uint8 NHWC RGB at a fixed size. Validation and prediction resize whole images
with `core.runtime.load_image`; training adds random resized crops, flips and light colour
jitter on top of the same resize. Small datasets are decoded once and kept in memory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from core.config import RunConfig
from core.export import ExportConfig, check_parity, export_onnx
from core.models import get_model
from core.models.vision import ImageClassifier
from core.runtime import load_image
from core.tasks import (
    DeviceLoader,
    ExportCheck,
    Probabilities,
    Reference,
    TaskData,
    calibration_rows,
    classification_metrics,
    cross_entropy,
    export_metadata,
    features_key,
    init_from_run,
    read_index,
    same_model,
    split_indices,
)
from db.queries import DatasetInfo

TASKS: tuple[str, ...] = ("image-classification",)
CACHE_LIMIT_BYTES = 1 << 30
MAX_PARITY_IMAGES = 256


class ImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """Images by index as uint8 HWC tensors; from memory when cached, else decoded on demand."""

    def __init__(
        self,
        files: list[Path],
        labels: np.ndarray,
        size: int,
        *,
        augment: bool,
        flip: bool = False,
        cache: np.ndarray | None,
    ) -> None:
        self.files, self.labels, self.size, self.cache = files, labels, size, cache
        self.augment = _augmentation(size, flip) if augment else None

    def __len__(self) -> int:
        return len(self.files)

    def image(self, i: int) -> np.ndarray:
        if self.cache is not None:
            return self.cache[i]
        return load_image(self.files[i], (self.size, self.size))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = torch.from_numpy(self.image(i))
        if self.augment is not None:
            img = self.augment(img.permute(2, 0, 1)).permute(1, 2, 0).contiguous()
        return img, int(self.labels[i])


def _augmentation(size: int, flip: bool) -> Any:
    """Light random crops and colour jitter; horizontal flips only when asked (they turn a 'b'
    into a 'd' and mirror documents)."""
    from torchvision.transforms import v2

    steps = [v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    steps.append(v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2))
    return v2.Compose(steps)


def _collate(batch: list[tuple[torch.Tensor, int]]) -> tuple[tuple[torch.Tensor], torch.Tensor]:
    images = torch.stack([b[0] for b in batch])
    return (images,), torch.tensor([b[1] for b in batch], dtype=torch.int64)


def _decode_all(files: list[Path], size: int) -> np.ndarray:
    out = np.empty((len(files), size, size, 3), dtype=np.uint8)
    for i, f in enumerate(files):
        out[i] = load_image(f, (size, size))
    return out


def prepare(dataset: DatasetInfo, cfg: RunConfig, device: str, run_dir: Path | None = None) -> TaskData:
    torch.manual_seed(cfg.seed)  # model initialisation is part of the run's seed
    root = Path(dataset.path)
    index = read_index(dataset, "image")
    classes: list[str] = dataset.schema["classes"]
    lookup = {c: i for i, c in enumerate(classes)}
    y = index["label"].map(lookup).to_numpy(np.int64)
    files = [root / "images" / p for p in index["path"]]
    train_idx, val_idx = split_indices(y, stratify=True, val_fraction=cfg.val_fraction, seed=cfg.seed)

    spec = get_model(cfg.model, cfg.task)
    net = spec.build(len(classes), cfg)
    model = ImageClassifier(net)
    pretrained = net.pretrained
    if cfg.init_from_run is not None:
        init_from_run(model, cfg.init_from_run, same_model(cfg))
        pretrained = True

    size = cfg.image_size
    fits = len(files) * size * size * 3 <= CACHE_LIMIT_BYTES
    cached = _decode_all(files, size) if cfg.cache == "on" or (cfg.cache == "auto" and fits) else None
    cpus = os.cpu_count() or 1
    workers = (
        cfg.workers
        if cfg.workers is not None
        else (0 if cached is not None and not cfg.augment else min(4, cpus - 1))
    )
    cuda = device.startswith("cuda")

    def subset(idx: np.ndarray, augment: bool) -> ImageDataset:
        return ImageDataset(
            [files[i] for i in idx],
            y[idx],
            size,
            augment=augment,
            flip=cfg.flip,
            cache=None if cached is None else cached[idx],
        )

    generator = torch.Generator()
    common: dict[str, Any] = {
        "num_workers": workers,
        "pin_memory": cuda,
        "collate_fn": _collate,
        "persistent_workers": workers > 0,
    }
    train_set = subset(train_idx, cfg.augment)
    train_loader = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        sampler=RandomSampler(train_set, generator=generator),
        drop_last=len(train_idx) > cfg.batch_size,
        **common,
    )
    val_loader = DataLoader(
        subset(val_idx, False), batch_size=max(cfg.batch_size, 64), shuffle=False, **common
    )
    head = model.net.get_submodule(net.head)
    probe = pretrained and cfg.head_first and isinstance(head, torch.nn.Linear)
    plain_train = (
        DeviceLoader(
            DataLoader(subset(train_idx, False), batch_size=max(cfg.batch_size, 64), shuffle=False, **common),
            device,
        )
        if probe
        else None
    )

    mult = cfg.backbone_lr_mult if cfg.backbone_lr_mult is not None else (0.1 if pretrained else 1.0)
    groups = [
        {"params": model.backbone_parameters(), "lr_mult": mult},
        {"params": model.head_parameters(), "lr_mult": 1.0},
    ]
    return TaskData(
        model=model,
        train=DeviceLoader(train_loader, device, generator, cfg.seed),
        val=DeviceLoader(val_loader, device),
        n_train=len(train_idx),
        n_val=len(val_idx),
        val_ids=val_idx,
        loss_fn=cross_entropy,
        evaluate=classification_metrics,
        main_metric="val_f1_macro",
        mode="max",
        extra={"task": cfg.task, "classes": classes, "image_size": size, "pretrained": pretrained},
        param_groups=groups,
        freeze=model.backbone_parameters() if cfg.freeze_epochs else [],
        channels_last=True,
        head=head if probe and isinstance(head, torch.nn.Linear) else None,
        plain_train=plain_train,
        features_key=features_key(dataset, cfg, size, train_idx) if probe else None,
    )


PROBE_BATCH = 8  # images per timed step when a time budget plans the image size
# A real training step took about 1.4 times the timed one (scaled to the batch) on a 2-core CPU:
# loading and augmenting the batch, the optimiser step (bench/first_model.py clothes192).
STEP_OVERHEAD = 1.4


def fit_to_budget(dataset: DatasetInfo, cfg: RunConfig, device: str, seconds: float) -> tuple[RunConfig, str]:
    """`cfg` with an image size at which its epochs fit in `seconds` of training: the fitted
    size (never one the user gave) comes down in steps of 32 px after timing a training step of
    the model at it. Returns the config and why, in words for the run's log."""
    from core.plan import (
        BUDGET_EPOCHS,
        BUDGET_EPOCHS_HEAD_FIRST,
        IMAGE_SIZES_CPU,
        size_for_budget,
        starts_pretrained,
    )
    from core.train import time_step

    if not cfg.fit_image_size or cfg.resume:
        return cfg, f"{cfg.image_size} px as set"
    if cfg.image_size <= IMAGE_SIZES_CPU[0]:
        return cfg, f"{cfg.image_size} px, the smallest fitted size"
    classes = len(dataset.schema["classes"])
    model = ImageClassifier(
        get_model(cfg.model, cfg.task).build(classes, cfg.model_copy(update={"weights": "none"}))
    )
    if device.startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)
    batch = min(PROBE_BATCH, cfg.batch_size)

    def step_s_at(side: int) -> tuple[float, float]:
        images = torch.randint(0, 256, (batch, side, side, 3), dtype=torch.uint8)
        first, step = time_step(model, (images,), device=device, precision=cfg.precision)
        step_s = STEP_OVERHEAD * step * cfg.batch_size / batch
        return first - step + step_s, step_s

    n = dataset.n_items or 0
    n_val = max(1, round(n * cfg.val_fraction))
    head_first = cfg.head_first and (
        starts_pretrained(cfg.model, cfg.weights) or cfg.init_from_run is not None
    )
    plan = size_for_budget(
        size=cfg.image_size,
        step_s_at=step_s_at,
        seconds=seconds,
        n_train=n - n_val,
        n_val=n_val,
        batch=cfg.batch_size,
        epochs=BUDGET_EPOCHS_HEAD_FIRST if head_first else min(cfg.epochs, BUDGET_EPOCHS),
        head_first=head_first,
    )
    return cfg.model_copy(update={"image_size": plan.size}), plan.why


def export(data: TaskData, cfg: RunConfig, dataset: DatasetInfo, path: Path, run_id: int) -> ExportCheck:
    """model.onnx: uint8 NHWC RGB images in, class probabilities out; checked on validation images."""
    assert isinstance(data.val, DeviceLoader)
    val_set = data.val.loader.dataset
    assert isinstance(val_set, ImageDataset)
    n = min(len(val_set), MAX_PARITY_IMAGES)
    images = np.stack([val_set.image(i) for i in range(n)])
    size = cfg.image_size
    wrapper = Probabilities(data.model.to("cpu").to(memory_format=torch.contiguous_format)).eval()
    spec = [
        {
            "name": "image",
            "dtype": "uint8",
            "shape": ["batch", size, size, 3],
            "layout": "NHWC",
            "color": "RGB",
        }
    ]
    metadata = export_metadata(
        cfg,
        dataset,
        run_id,
        spec,
        (
            f"decode to RGB (EXIF rotation applied, transparency on white), resize the whole image to "
            f"{size}x{size} with bilinear filtering (no crop), uint8 NHWC; scaling and normalisation are in the graph"
        ),
    )
    example = torch.from_numpy(np.concatenate([images[:2], images[:2]])[:2].copy())
    export_onnx(
        wrapper, (example,), path, input_names=["image"], output_name="probabilities", metadata=metadata
    )
    return check_parity(path, wrapper, (images,), classification=True, cfg=ExportConfig(batch_size=32))


def reference(data: TaskData, cfg: RunConfig, dataset: DatasetInfo) -> Reference:
    assert isinstance(data.val, DeviceLoader)
    val_set = data.val.loader.dataset
    assert isinstance(val_set, ImageDataset)
    images = np.stack([val_set.image(i) for i in range(len(val_set))])
    assert isinstance(data.train, DeviceLoader)
    train_set = data.train.loader.dataset
    assert isinstance(train_set, ImageDataset)
    calibration = np.stack([train_set.image(i) for i in calibration_rows(len(train_set), cfg.seed)])
    module = Probabilities(data.model.to("cpu").to(memory_format=torch.contiguous_format)).eval()
    return Reference(module, (images,), val_set.labels.astype(np.int64), True, (calibration,))
