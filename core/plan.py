"""Defaults that fit the data and the device, each with the reason it was chosen.

`fitted_defaults` is what a run uses for every setting the user left alone: the Train page shows
these values and reasons before launch, and `core.jobs.config_for` applies them (the user's own
values win, then these, then the model's registered defaults).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from db.queries import DatasetInfo

# On a CPU, fine-tuning a pretrained image or text network is slow: such runs get a time budget
# unless the user sets one (or none); tables and small models from scratch train in seconds.
CPU_BUDGET_S = 100.0
IMAGE_SIZES_CPU = (64, 224)
# Models whose "default" weights are pretrained ones shipped offline.
PRETRAINED_BY_DEFAULT = (
    "efficientnet-lite0",
    "minilm",
)  # the range an image size from the data is kept in on a CPU


@dataclass(frozen=True)
class Choice:
    """One fitted setting: its value and why, in words a user reads before launch."""

    key: str
    value: Any
    why: str


@dataclass(frozen=True)
class Hardware:
    """What the run will train on: enough to size batches, workers and budgets."""

    device: str  # "cpu" or "cuda..."
    cpus: int
    gpu_memory_gb: float | None = None
    gpu_name: str | None = None

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")


def detect_hardware(requested: str = "auto") -> Hardware:
    """The device a run asking for `requested` gets on this machine."""
    import torch

    from core.config import resolve_device

    device = resolve_device(requested)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        return Hardware(device, cpus, props.total_memory / 2**30, props.name)
    return Hardware(device, cpus)


def _round32(side: float) -> int:
    return max(32, round(side / 32.0) * 32)


def image_size(median_side: float, native: int, hw: Hardware) -> Choice:
    """About the images' median side, a multiple of 32; within 64-224 px on a CPU, up to the
    model's native size on a GPU."""
    side = _round32(median_side)
    low, high = IMAGE_SIZES_CPU if not hw.cuda else (64, native)
    size = min(max(side, low), high)
    if side < low:
        why = f"your images are about {median_side:g} px; {size} px is the smallest this model sees well"
    elif side > high:
        why = (
            f"your images are about {median_side:g} px; {size} px keeps training on the CPU quick"
            if not hw.cuda
            else f"your images are about {median_side:g} px; {size} px is the model's native size"
        )
    else:
        why = f"your images are about {median_side:g} px"
    return Choice("image_size", size, why)


def batch_size(n_train: int, hw: Hardware, *, per_gb: int) -> Choice:
    """Small batches on a CPU (more steps in a short budget), larger ones by GPU memory."""
    if hw.cuda:
        size = 32
        while size < 256 and size * 2 <= per_gb * (hw.gpu_memory_gb or 8) and size * 2 * 8 <= n_train:
            size *= 2
        return Choice("batch_size", size, f"fits {hw.gpu_name or 'the GPU'}'s {hw.gpu_memory_gb or 0:.0f} GB")
    size = 16 if n_train < 400 else 32
    return Choice("batch_size", size, f"{n_train} training samples on the CPU: more, smaller steps")


def workers(hw: Hardware, cached: bool) -> Choice:
    """DataLoader processes: none on a small CPU (they would compete with training for its cores)."""
    if hw.cuda:
        n = max(0, min(8, hw.cpus - 1))
        return Choice("workers", n, f"{n} of {hw.cpus} CPU cores prepare batches while the GPU trains")
    if cached or hw.cpus <= 4:
        return Choice("workers", 0, f"{hw.cpus} CPU cores: loading in the training process")
    n = min(4, hw.cpus // 2)
    return Choice("workers", n, f"{n} of {hw.cpus} CPU cores prepare batches")


def budget(task: str, pretrained: bool, hw: Hardware) -> Choice:
    if hw.cuda or task.startswith("tabular") or not pretrained:
        return Choice("budget_s", None, "no time limit: the epochs and early stopping decide")
    return Choice(
        "budget_s",
        CPU_BUDGET_S,
        f"{CPU_BUDGET_S:g} s on the CPU: the run plans its epochs to fit, then exports its best model",
    )


def starts_pretrained(model: str, weights: str) -> bool:
    """Whether a run of `model` with `weights` starts from pretrained weights."""
    if weights == "none":
        return False
    if weights == "default":
        return model in PRETRAINED_BY_DEFAULT
    return True  # imagenet, a file, a folder or a hub id


IMAGE_TASKS = ("image-classification", "object-detection", "semantic-segmentation")


def fitted_defaults(
    dataset: DatasetInfo,
    model: str,
    model_defaults: dict[str, Any],
    hw: Hardware,
    *,
    weights: str = "default",
) -> list[Choice]:
    """The settings a run on `dataset` with `model` gets unless the user gives them."""
    n_items = dataset.n_items or 0
    n_train = int(n_items * 0.8)
    pretrained = starts_pretrained(model, weights)
    choices: list[Choice] = []
    if dataset.task in IMAGE_TASKS:
        median = _median_side(dataset.report)
        native = int(model_defaults.get("image_size", 224))
        if median is not None and model != "small-cnn":
            choices.append(image_size(median, native, hw))
        size = choices[0].value if choices else native
        # Dense heads keep maps at stride 4 or 8 for the backward pass: about half the images fit.
        per_gb = 16 if dataset.task == "image-classification" else 8
        choices.append(batch_size(n_train, hw, per_gb=max(4, int(per_gb * (224 / size) ** 2))))
        cached = n_items * size * size * 3 <= 1 << 30
        choices.append(workers(hw, cached))
    if dataset.task == "image-classification":
        choices.append(Choice("flip", False, "mirrored images break digits, letters and documents"))
    elif dataset.task == "text-classification" and hw.cuda:
        choices.append(batch_size(n_train, hw, per_gb=8))
    if dataset.task in ("image-classification", "text-classification"):
        choices.append(budget(dataset.task, pretrained, hw))
    if dataset.task == "image-classification" and pretrained:
        choices.append(
            Choice(
                "head_first",
                True,
                "the new head is fitted on the frozen network's features first (seconds), "
                "then the whole network is fine-tuned from it",
            )
        )
    elif dataset.task == "text-classification" and pretrained:
        # Measured on BBC News (tests/test_text_models.py's held-out articles): a head fitted
        # on MiniLM's pooled [CLS] features scored higher on validation but lower on new
        # articles after fine-tuning (0.67-0.77 against 0.85).
        choices.append(
            Choice("head_first", False, "a new head fine-tuned with the network generalises better here")
        )
    return choices


def parse_budget(text: str) -> float | None:
    """A time budget as typed: seconds ("120", "120s"), "auto" (None: fitted to the model and
    device) or "none"/"0" (0: no limit)."""
    from core.errors import ConfigError

    word = text.strip().lower()
    if word in ("", "auto"):
        return None
    if word in ("none", "off", "0"):
        return 0.0
    try:
        value = float(word.removesuffix("s"))
    except ValueError:
        raise ConfigError(f"'{text}' is no time budget; give seconds (e.g. 120), auto or none") from None
    if not 10 <= value <= 7 * 24 * 3600:
        raise ConfigError("give a time budget of 10 s to 7 days, auto, or none")
    return value


def _median_side(report: dict[str, Any]) -> float | None:
    try:
        return (float(report["width"]["median"]) + float(report["height"]["median"])) / 2
    except (KeyError, TypeError, ValueError):
        return None


# What a time budget must leave room for before a fitted image size is lowered: with the head
# fitted on frozen features first, those features and a quarter of an epoch of fine-tuning
# (larger images with fewer fine-tuning steps did better than smaller ones with more:
# bench/first_model.py clothes192 against clothes192-fixed, docs/benchmarks.md); else one epoch.
BUDGET_EPOCHS_HEAD_FIRST = 0.25
BUDGET_EPOCHS = 1.0


def _epochs_words(epochs: float) -> str:
    return {1.0: "one epoch", 0.25: "a quarter of an epoch", 0.5: "half an epoch"}.get(
        epochs, f"{epochs:g} epochs"
    )


@dataclass(frozen=True)
class SizePlan:
    """The image size a time budget leaves, with the estimate it was chosen on."""

    size: int
    need_s: float  # estimated seconds of training at `size`
    why: str


def size_for_budget(
    *,
    size: int,
    step_s_at: Callable[[int], tuple[float, float]],
    seconds: float,
    n_train: int,
    n_val: int,
    batch: int,
    epochs: float,
    head_first: bool,
    low: int = IMAGE_SIZES_CPU[0],
) -> SizePlan:
    """The largest image size from `size` down to `low` (multiples of 32) at which the head's
    feature pass (with `head_first`) and `epochs` epochs with their validations fit in `seconds`.
    `step_s_at(side)` measures a training step of `batch` images at `side` px: the first one
    (setting kernels up, paid once by training and once by validation) and each after it. Sides
    are measured from the largest down and the first that fits is kept; a forward pass is taken
    as a third of a step."""
    steps = max(1, n_train // batch)
    sides = [size, *range((size - 1) // 32 * 32, low - 1, -32)]
    for side in sides:
        first, step = step_s_at(side)
        per_image = step / 3 / batch
        need = 2 * max(0.0, first - step) + ((n_train + n_val) * per_image if head_first else 0.0)
        need += epochs * (steps * step + n_val * per_image)
        if side == size:
            step_at_size = step
        if need <= seconds:
            break
    fit = ("the head's features and " if head_first else "") + _epochs_words(epochs)
    fit += " fit" if head_first or epochs > 1 else " fits"
    if side == size:
        return SizePlan(size, need, f"{size} px: {fit} in the {seconds:.0f} s left")
    measured = f"a step of {batch} images took {step_at_size:.2f} s at {size} px, {step:.2f} s at {side} px"
    if need <= seconds:
        why = f"{side} px instead of {size} px, so that {fit} in the {seconds:.0f} s left ({measured})"
    else:
        why = (
            f"{side} px instead of {size} px, the smallest; {fit.rsplit(' ', 1)[0]} would still take about "
            f"{need:.0f} s of the {seconds:.0f} s left ({measured}), so the run trains what fits"
        )
    return SizePlan(side, need, why)
