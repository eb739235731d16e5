"""One module per task. Each turns a dataset into a TaskData for the loop and exports a model."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from core.config import RunConfig
from core.errors import ConfigError
from db.queries import DatasetInfo

Batch = tuple[tuple[torch.Tensor | None, ...], torch.Tensor]


@dataclass
class TensorBatches:
    """Mini-batches sliced from tensors already on the device (no DataLoader overhead)."""

    inputs: tuple[torch.Tensor | None, ...]
    target: torch.Tensor
    batch_size: int
    shuffle: bool
    seed: int = 0
    epoch: int = 0

    def __len__(self) -> int:
        return -(-len(self.target) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.target)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=gen).to(self.target.device)
        else:
            order = None
        for start in range(0, n, self.batch_size):
            idx = (
                order[start : start + self.batch_size]
                if order is not None
                else slice(start, start + self.batch_size)
            )
            yield tuple(x[idx] if x is not None else None for x in self.inputs), self.target[idx]


@dataclass
class TaskData:
    """What a task hands the training loop."""

    model: torch.nn.Module
    train: TensorBatches | Iterable[Batch]
    val: TensorBatches | Iterable[Batch]
    n_train: int
    n_val: int
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    # outputs and targets of the whole validation split -> metrics named val_*
    evaluate: Callable[[torch.Tensor, torch.Tensor], dict[str, float]]
    main_metric: str
    mode: Literal["min", "max"]
    # Stored in checkpoint metadata: what it takes to rebuild and export the model.
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportCheck:
    """How closely the ONNX file agrees with PyTorch on the validation split."""

    path: str
    max_abs_diff: float
    top1_agreement: float | None
    n_samples: int
    provider: str
    bytes: int


class Task(Protocol):
    """What a task module provides (modules satisfy it structurally)."""

    TASKS: tuple[str, ...]

    def prepare(self, dataset: DatasetInfo, cfg: RunConfig, device: str) -> TaskData: ...

    def export(
        self, data: TaskData, cfg: RunConfig, dataset: DatasetInfo, path: Path, run_id: int
    ) -> ExportCheck: ...


def get_task(name: str) -> Task:
    """The module that implements `name` (each task module satisfies the Task protocol)."""
    from core.tasks import tabular

    modules: dict[str, Task] = {t: tabular for t in tabular.TASKS}
    if name not in modules:
        raise ConfigError(f"unknown task '{name}'; known tasks: {', '.join(sorted(modules))}")
    return modules[name]
