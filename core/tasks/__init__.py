"""One module per task. Each turns a dataset into a TaskData for the loop and exports a model."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch.nn import functional as F

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
    # (rank, processes, training) when a run trains over several processes: each batch is cut
    # into one part per process and this one yields its own (see core.distributed.shard).
    ranks: tuple[int, int, bool] | None = None

    def _bounds(self, size: int) -> tuple[int, int] | None:
        """This rank's share of a batch of `size`, None when it takes no part in it."""
        if self.ranks is None:
            return 0, size
        rank, world, train = self.ranks
        if train and size < world:
            return None  # too small to give every process a sample: skipped by all alike
        lo, hi = rank * size // world, (rank + 1) * size // world
        return (lo, hi) if hi > lo else None

    def _sizes(self) -> list[int]:
        n = len(self.target)
        return [min(self.batch_size, n - start) for start in range(0, n, self.batch_size)]

    def __len__(self) -> int:
        if self.ranks is None:
            return -(-len(self.target) // self.batch_size)
        return sum(1 for size in self._sizes() if self._bounds(size) is not None)

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.target)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=gen).to(self.target.device)
        else:
            order = None
        for start in range(0, n, self.batch_size):
            size = min(self.batch_size, n - start)
            bounds = self._bounds(size)
            if bounds is None:
                continue
            lo, hi = start + bounds[0], start + bounds[1]
            idx = order[lo:hi] if order is not None else slice(lo, hi)
            yield tuple(x[idx] if x is not None else None for x in self.inputs), self.target[idx]


class DeviceLoader:
    """A DataLoader whose batches arrive on the device, reshuffled per epoch from the seed."""

    def __init__(
        self,
        loader: torch.utils.data.DataLoader[Any],
        device: str,
        generator: torch.Generator | None = None,
        seed: int = 0,
    ) -> None:
        self.loader, self.device, self.generator, self.seed = loader, device, generator, seed
        self.non_blocking = device.startswith("cuda")

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def epoch(self) -> int:
        return 0

    @epoch.setter
    def epoch(self, value: int) -> None:
        if self.generator is not None:
            self.generator.manual_seed(self.seed * 100_003 + value)

    def __iter__(self) -> Iterator[Batch]:
        for inputs, y in self.loader:
            moved = tuple(x.to(self.device, non_blocking=self.non_blocking) for x in inputs)
            yield moved, y.to(self.device, non_blocking=self.non_blocking)


def split_indices(
    y: np.ndarray, *, stratify: bool, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices; per class when stratified (a class of one row trains)."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y == c) for c in np.unique(y)] if stratify else [np.arange(len(y))]
    train, val = [], []
    for rows in groups:
        rows = rng.permutation(rows)
        n_val = min(max(round(val_fraction * len(rows)), 1), len(rows) - 1) if len(rows) >= 2 else 0
        val.append(rows[:n_val])
        train.append(rows[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out.float(), y)


def classification_metrics(out: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Accuracy and macro-F1 over the classes present in the labels or the predictions."""
    pred = out.argmax(1)
    k = out.shape[1]
    tp = torch.bincount(y[pred == y], minlength=k).float()
    predicted = torch.bincount(pred, minlength=k).float()
    actual = torch.bincount(y, minlength=k).float()
    present = (predicted + actual) > 0
    f1 = 2 * tp / (predicted + actual).clamp(min=1)
    return {
        "val_accuracy": float((pred == y).float().mean()),
        "val_f1_macro": float(f1[present].mean()),
    }


@dataclass
class TaskData:
    """What a task hands the training loop."""

    model: torch.nn.Module
    train: TensorBatches | DeviceLoader
    val: TensorBatches | DeviceLoader
    n_train: int
    n_val: int
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    # outputs and targets of the whole validation split -> metrics named val_*
    evaluate: Callable[[torch.Tensor, torch.Tensor], dict[str, float]]
    main_metric: str
    mode: Literal["min", "max"]
    # Stored in checkpoint metadata: what it takes to rebuild and export the model.
    extra: dict[str, Any] = field(default_factory=dict)
    # Optimiser groups, each with an "lr_mult" (e.g. a slower pretrained backbone).
    param_groups: list[dict[str, Any]] | None = None
    # Parameters held fixed during the first cfg.freeze_epochs epochs.
    freeze: list[torch.nn.Parameter] = field(default_factory=list)
    # Convolutional models run channels-last on CUDA.
    channels_last: bool = False
    # A pretrained model's new classification layer (a Linear inside `model`): with
    # cfg.head_first the loop fits it on the frozen network's features before fine-tuning.
    head: torch.nn.Linear | None = None
    # The training split without augmentation, in a fixed order: what those features come from.
    plain_train: TensorBatches | DeviceLoader | None = None
    # Names the features for the cache (dataset content, model, weights, input size, split).
    features_key: str | None = None
    # The run report from the best model's validation outputs and targets, where the task's
    # differs from the classification/regression one (core.report.build_report).
    report: Callable[[torch.Tensor, torch.Tensor], dict[str, Any]] | None = None
    # The dataset's items (rows of its table or index) of the validation split, in data.val's
    # order: the run's validation predictions are stored by them (core.compare), so two runs on
    # one dataset can be compared sample by sample.
    val_ids: np.ndarray | None = None
    # What the model now makes of a few fixed validation inputs (a generator's answers to its
    # prompts): called before training and after each validation, kept in the run's folder.
    samples: Callable[[], list[dict[str, str]]] | None = None


def sequence_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The loss of an encoder-decoder whose outputs start with each item's summed negative
    log-likelihood and token count (core.tasks.generation.token_loss on those two columns)."""
    from core.tasks.generation import token_loss

    return token_loss(out[:, :2], y)


def decode_ids(ids: torch.Tensor, tokenizer: Any) -> list[str]:
    """Texts of greedy token ids [batch, tokens] (-1 after the end)."""
    return [
        tokenizer.decode([t for t in row if t >= 0], skip_special_tokens=True).strip()
        for row in ids.long().tolist()
    ]


class SavedOnce(torch.nn.Module):
    """A module whose `state_dict` holds what `_kept` names: by default each tensor once (tied
    weights, such as a language model's output layer that is its input embedding, under their
    first name); `load_state_dict` takes the same, so safetensors can save it."""

    def _kept(self) -> set[str]:
        seen: set[int] = set()
        kept = set()
        for name, tensor in super().state_dict().items():
            if tensor.data_ptr() not in seen:  # tied weights are one tensor under two names
                seen.add(tensor.data_ptr())
                kept.add(name)
        return kept

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        full = super().state_dict(*args, **kwargs)
        kept = self._kept()
        prefix = kwargs.get("prefix", "")
        return {k: v for k, v in full.items() if k.removeprefix(prefix) in kept}

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        missing = self._kept() - set(state_dict)
        if strict and missing:
            raise RuntimeError(f"the checkpoint lacks {len(missing)} weights, such as {sorted(missing)[0]}")
        return super().load_state_dict(state_dict, strict=False, assign=assign)


class Adaptable(SavedOnce):
    """A task module around an encoder-decoder `model` that may carry LoRA adapters
    (core.models.seq2seq.add_adapters): with `adapters_only` its checkpoints hold the adapters
    alone; `merged` folds them into the model's weights for the export and the certificate."""

    model: Any
    adapters_only: bool = False

    def _kept(self) -> set[str]:
        if self.adapters_only:
            return {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}
        return super()._kept()

    def merged(self) -> Any:
        from core.models.seq2seq import merge_adapters

        merge_adapters(self.model)
        self.adapters_only = False
        return self.model


class Probabilities(torch.nn.Module):
    """What every exported classifier computes: softmax over the model's logits, in float32.

    Takes `*inputs`, the convention `core.export.export_onnx` traces with."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(*inputs).float(), dim=1)


def export_metadata(
    cfg: RunConfig,
    dataset: DatasetInfo,
    run_id: int,
    inputs: list[dict[str, Any]],
    preprocess: str,
    output: str = "probabilities",
    **extra: Any,
) -> dict[str, str]:
    """The `ascent.*` metadata_props of an exported classifier (see the export contract)."""
    import json

    meta = {
        "ascent.task": cfg.task,
        "ascent.labels": json.dumps(dataset.schema.get("classes", [])),
        "ascent.inputs": json.dumps(inputs),
        "ascent.preprocess": preprocess,
        "ascent.run": json.dumps({"run_id": run_id, "model": cfg.model, "dataset": dataset.name}),
        "ascent.output": output,
    }
    meta.update({f"ascent.{k}": json.dumps(v) for k, v in extra.items()})
    return meta


@dataclass(frozen=True)
class ExportCheck:
    """How closely the ONNX file agrees with PyTorch on the validation split."""

    path: str
    max_abs_diff: float
    top1_agreement: float | None
    n_samples: int
    provider: str
    bytes: int
    # What top1_agreement measures, named as its metric is (export_<agreement>): top-1 classes,
    # boxes matched with the same label at IoU >= 0.9, or pixels of the same class.
    agreement: str = "top1_agreement"


@dataclass
class Reference:
    """A run's exported computation in PyTorch and the validation split as its file takes it."""

    module: torch.nn.Module  # eval mode, on the CPU: what model.onnx computes
    inputs: tuple[np.ndarray, ...]  # the whole validation split, in the file's input format
    targets: np.ndarray  # class indices, or values for regression
    classification: bool
    # Training samples in the same format, shuffled, for static quantisation's calibration
    # (empty where the task's int8 variant needs none).
    calibration: tuple[np.ndarray, ...] = ()
    # Tasks whose outputs are not one row of class scores (boxes, masks) say how they are judged:
    # `agree(reference outputs, other outputs)` -> the share the other reproduces, named as
    # ExportCheck.agreement; `score(outputs)` -> (metric name, value) against `targets`; and
    # which output's largest difference the certificate records. Unset: top-1 classes and
    # accuracy (or RMSE) of the first output.
    agree: Callable[[list[np.ndarray], list[np.ndarray]], float] | None = None
    score: Callable[[list[np.ndarray]], tuple[str, float]] | None = None
    agreement: str = "top1_agreement"
    compared_output: int = 0
    # A text generator's certificate continues prompts and scores examples instead of `inputs`.
    generation: GenerationCheck | None = None
    # A speech recogniser's or translator's certificate decodes the validation split instead.
    seq2seq: Seq2SeqCheck | None = None


@dataclass
class GenerationCheck:
    """What a generator's certificate measures its variants on: greedy continuations of
    validation prompts, and the perplexity of validation examples' learnt tokens."""

    settings: dict[str, Any]  # the export's ascent.generation (cache shape, end tokens)
    prompts: list[list[int]]  # token ids each variant continues greedily
    examples: list[tuple[list[int], list[int]]]  # (ids, labels; IGNORE where not learnt)


@dataclass
class Seq2SeqCheck:
    """What an encoder-decoder's certificate measures its variants on: the validation split
    decoded greedily by core.runtime.decode_tokens over PyTorch's graphs or a variant's."""

    settings: dict[str, Any]  # the export's ascent.speech or ascent.translation
    encoder: Any  # PyTorch's encoder behind a session's `run` (core.models.seq2seq.TorchGraph)
    decoder: Any  # and its decoding step
    # Per validation batch: the encoder's feeds and the decoder's further feeds (the source mask).
    batches: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]
    max_tokens: int
    texts: Callable[[list[list[int]]], list[str]]  # token ids -> texts
    score: Callable[[list[str]], tuple[str, float]]  # texts -> (metric name, value)
    seconds: list[float] | None = None  # each item's seconds of audio (speech: real-time factor)
    unit: str = "sentence"  # what one item is, in words ("clip", "sentence")


CALIBRATION_POOL = 256  # training samples a Reference carries for calibration and its check


def calibration_rows(n: int, seed: int) -> np.ndarray:
    """Up to CALIBRATION_POOL training rows in a seeded random order."""
    return np.random.default_rng(seed).permutation(n)[:CALIBRATION_POOL]


def features_key(dataset: DatasetInfo, cfg: RunConfig, input_size: int, train_idx: np.ndarray) -> str:
    """What the frozen features of a training split depend on, for their cache: the data, the
    network and its starting weights, the input size (pixels or tokens) and which rows train."""
    import hashlib

    parts = [dataset.sha256, cfg.model, cfg.weights, str(cfg.init_from_run), str(input_size)]
    digest = hashlib.sha256("|".join(parts).encode())
    digest.update(np.ascontiguousarray(train_idx, dtype=np.int64).tobytes())
    return digest.hexdigest()[:32]


def val_targets(data: TaskData) -> np.ndarray:
    """The validation targets in the order the validation batches come."""
    return torch.cat([y.cpu() for _, y in data.val]).numpy()


def read_index(dataset: DatasetInfo, what: str) -> Any:
    """A zip dataset's index.parquet (a DataFrame), or a DatasetError that says to add it again."""
    import pandas as pd

    from core.errors import DatasetError

    try:
        return pd.read_parquet(Path(dataset.path) / "index.parquet")
    except Exception as exc:
        raise DatasetError(
            f"dataset {dataset.id}'s {what} index cannot be read ({exc}); add the zip again"
        ) from exc


def init_from_run(
    module: torch.nn.Module, run_id: int, refuse: Callable[[dict[str, Any]], str | None]
) -> None:
    """Start `module` from an earlier run's best weights where names and shapes match (a new
    head when the classes differ). `refuse(its config)` says why that run cannot seed this one."""
    from safetensors.torch import load_file

    from core import checkpoint
    from core.config import get_settings
    from core.models.vision import load_matching

    path = get_settings().runs_dir / str(run_id) / "best.safetensors"
    if not path.exists():
        raise ConfigError(f"run {run_id} has no checkpoint to start from")
    why = refuse(checkpoint.read_metadata(path).get("config", {}))
    if why:
        raise ConfigError(f"run {run_id} {why}")
    fresh = load_matching(module, load_file(str(path)), source=f"run {run_id}'s checkpoint")
    print(f"initialised from run {run_id}" + (f"; new: {', '.join(fresh)}" if fresh else ""), flush=True)


def same_model(cfg: RunConfig) -> Callable[[dict[str, Any]], str | None]:
    """For init_from_run: an earlier run can seed this one only when it trained the same model."""

    def refuse(earlier: dict[str, Any]) -> str | None:
        model = earlier.get("model")
        return None if model == cfg.model else f"trained {model}; fine-tune it with --model {model}"

    return refuse


class Task(Protocol):
    """What a task module provides (modules satisfy it structurally)."""

    TASKS: tuple[str, ...]

    def prepare(
        self, dataset: DatasetInfo, cfg: RunConfig, device: str, run_dir: Path | None = None
    ) -> TaskData:
        """Data and model for a run; `run_dir` (when given) holds what an earlier attempt of the
        same run fixed, such as a learnt tokenizer, so a resumed run sees the same inputs."""
        ...

    def export(
        self, data: TaskData, cfg: RunConfig, dataset: DatasetInfo, path: Path, run_id: int
    ) -> ExportCheck: ...

    def reference(self, data: TaskData, cfg: RunConfig, dataset: DatasetInfo) -> Reference: ...


def get_task(name: str) -> Task:
    """The module that implements `name` (each task module satisfies the Task protocol)."""
    from core.tasks import (
        audio,
        detection,
        generation,
        image,
        segmentation,
        speech,
        tabular,
        text,
        translation,
    )

    modules: dict[str, Task] = {
        t: m
        for m in (tabular, image, text, audio, detection, segmentation, generation, speech, translation)
        for t in m.TASKS
    }
    if name not in modules:
        raise ConfigError(f"unknown task '{name}'; known tasks: {', '.join(sorted(modules))}")
    return modules[name]
