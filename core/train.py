"""The training loop: a plain function. Metrics leave through `on_epoch`; it knows no SQL.

AdamW, cosine schedule with linear warm-up (set per step), autocast on CUDA (bf16 where the GPU
supports it, else fp16 with a gradient scaler), early stopping on the task's main validation
metric, the best weights and a resumable training state written as safetensors every epoch.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from core import checkpoint
from core.config import RunConfig
from core.distributed import Ranks, any_rank, from_main, gather, shard, total
from core.head_first import fit_head, freeze_norm_statistics
from core.tasks import DeviceLoader, TaskData, TensorBatches

BEST = "best.safetensors"
LAST = "last.safetensors"
SAMPLES = "samples.jsonl"  # one line an epoch: {"epoch", "samples": TaskData.samples()}


@dataclass(frozen=True)
class EpochResult:
    epoch: int  # 1-based
    step: int  # optimiser steps so far
    metrics: dict[str, float]
    improved: bool


@dataclass
class Progress:
    """Where a run is now; the loop updates it, the heartbeat thread stores it."""

    epoch: int = 0
    epochs: int = 0
    step: int = 0
    total_steps: int = 0
    phase: str = "preparing"  # preparing, fitting head, training, validating, exporting
    first_step: int = 0  # the step this attempt started at (resume)
    started: float = field(default_factory=time.monotonic)
    plan: str = ""  # what a time budget made of the run, in words

    def as_dict(self) -> dict[str, Any]:
        done = self.step - self.first_step
        elapsed = time.monotonic() - self.started
        rate = done / elapsed if done > 0 and elapsed > 0 else None
        eta = (self.total_steps - self.step) / rate if rate else None
        return {
            "epoch": self.epoch,
            "epochs": self.epochs,
            "step": self.step,
            "total_steps": self.total_steps,
            "phase": self.phase,
            "steps_per_sec": rate,
            "eta_s": eta,
            "plan": self.plan,
        }


@dataclass(frozen=True)
class TrainOutcome:
    status: Literal["completed", "early_stopped", "cancelled", "budget"]
    epochs_run: int
    best_epoch: int
    best_value: float | None


def autocast_dtype(precision: str, device: str) -> torch.dtype | None:
    """The autocast dtype for a precision setting, None for plain fp32."""
    if not device.startswith("cuda") or precision == "fp32":
        return None
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def cosine_with_warmup(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _improved(value: float, loss: float, state: dict[str, Any], mode: str) -> bool:
    """Better main metric, or the same one with a lower validation loss (ties are common
    on small validation splits, where accuracy saturates early)."""
    best, best_loss = state["best"], state["best_loss"]
    if math.isnan(value):
        return False
    if best is None:
        return True
    if value == best:
        return loss < best_loss
    return value < best if mode == "min" else value > best


@torch.no_grad()
def predict_split(
    data: TaskData,
    autocast: Callable[[], Any] = nullcontext,
    *,
    batches: TensorBatches | DeviceLoader | None = None,
    ranks: Ranks | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's outputs (float32) and the targets over the whole validation split (or
    `batches`); with `ranks`, each process predicts its part and all get the whole, gathered."""
    data.model.eval()
    if ranks is not None:
        # Batch-norm running statistics: each process updated its own with its last batch (DDP
        # copies the main process's only at the start of a training step). Predict with the main
        # process's, the ones its checkpoint keeps.
        import torch.distributed as dist

        for buffer in data.model.buffers():
            dist.broadcast(buffer, src=0)
    outputs, targets = [], []
    for inputs, y in batches if batches is not None else data.val:
        with autocast():
            out = data.model(*inputs)
        outputs.append(out.float())
        targets.append(y)
    if not outputs:  # a process whose part of a tiny validation split is empty
        inputs, y = next(iter(data.val))
        with autocast():
            empty = data.model(*(x[:0] if x is not None else None for x in inputs)).float()
        outputs, targets = [empty], [y[:0]]
    return gather(torch.cat(outputs), ranks), gather(torch.cat(targets), ranks)


def evaluate(
    data: TaskData,
    autocast: Callable[[], Any] = nullcontext,
    *,
    batches: TensorBatches | DeviceLoader | None = None,
    ranks: Ranks | None = None,
) -> dict[str, float]:
    """Validation loss and the task's metrics over the whole validation split."""
    out_all, y_all = predict_split(data, autocast, batches=batches, ranks=ranks)
    metrics = {"val_loss": float(data.loss_fn(out_all, y_all))}
    metrics.update(data.evaluate(out_all, y_all))
    return metrics


def time_step(
    model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], *, device: str, precision: str
) -> tuple[float, float]:
    """Seconds of the first forward and backward pass of `model` on inputs of this shape (which
    pays for setting kernels up) and of each pass after it; the weights are left as they were:
    no optimiser step, gradients dropped."""
    model = model.to(device).train()
    dtype = autocast_dtype(precision, device)
    inputs = tuple(x.to(device) for x in inputs)

    def once() -> float:
        began = time.perf_counter()
        with torch.autocast(device_type="cuda", dtype=dtype) if dtype else nullcontext():
            out = model(*inputs)
        out.float().sum().backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - began

    first = once()
    step = (once() + once()) / 2
    model.zero_grad(set_to_none=True)
    return first, step


@dataclass
class BudgetPlan:
    """How many epochs (or steps of a first, cut epoch) fit before a deadline on this device."""

    epochs: int
    total_steps: int
    step_s: float  # seconds per optimiser step, measured
    val_s: float  # seconds per validation pass, estimated until one was measured

    def describe(self, steps_per_epoch: int, seconds: float) -> str:
        if self.total_steps < steps_per_epoch:
            return (
                f"{self.total_steps} of {steps_per_epoch} steps of one epoch fit in the {seconds:.0f} s left "
                f"({self.step_s:.2f} s a step)"
            )
        return (
            f"{self.epochs} epochs of {steps_per_epoch} steps fit in the {seconds:.0f} s left "
            f"({self.step_s:.2f} s a step, {self.val_s:.1f} s a validation)"
        )


def plan_budget(
    *,
    seconds_left: float,
    step_s: float,
    val_s: float,
    steps_done: int,
    steps_per_epoch: int,
    max_epochs: int,
) -> BudgetPlan:
    """The most epochs (at least part of one) whose remaining steps and validations fit in
    `seconds_left`, counted from `steps_done` steps into the first planned epoch."""
    epochs = max_epochs
    while epochs > 1 and step_s * (epochs * steps_per_epoch - steps_done) + epochs * val_s > seconds_left:
        epochs -= 1
    total = epochs * steps_per_epoch
    if epochs == 1 and step_s * (total - steps_done) + val_s > seconds_left:
        total = steps_done + max(1, int((seconds_left - val_s) / max(step_s, 1e-9)))
        total = min(total, steps_per_epoch)
    return BudgetPlan(epochs, total, step_s, val_s)


def train(
    cfg: RunConfig,
    data: TaskData,
    *,
    device: str,
    run_dir: Path,
    on_epoch: Callable[[EpochResult], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: Progress | None = None,
    deadline: float | None = None,
    features_dir: Path | None = None,
    log: Callable[[str], None] = lambda _message: None,
    ranks: Ranks | None = None,
) -> TrainOutcome:
    """Train `data.model` as `cfg` says; resumes from run_dir/last.safetensors when cfg.resume.

    With `data.head` (and cfg.head_first) a fresh run first fits the head on the frozen network's
    features (cached in `features_dir`) and reports it as epoch 0. With a `deadline`
    (time.monotonic()) the run times its first steps, plans the epochs that fit, and stops at
    the deadline with its best checkpoint.

    With `ranks` this is one process of several (core.distributed): the batches are cut into
    per-process parts, DistributedDataParallel averages the gradients, the processes agree on
    every stop, and validation is gathered whole; the main process alone fits the head, writes
    checkpoints and calls `on_epoch`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    main = ranks is None or ranks.main
    torch.manual_seed(cfg.seed)
    model = data.model.to(device)
    if data.channels_last and device.startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)
    dtype = autocast_dtype(cfg.precision, device)
    autocast: Callable[[], Any] = (
        (lambda: torch.autocast(device_type="cuda", dtype=dtype)) if dtype else nullcontext
    )
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    groups = data.param_groups or [{"params": list(model.parameters()), "lr_mult": 1.0}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    accum = cfg.grad_accum
    train_batches = data.train if ranks is None else shard(data.train, ranks, train=True)
    val_batches = data.val if ranks is None else shard(data.val, ranks, train=False)
    steps_per_epoch = max(1, -(-len(train_batches) // accum))
    total_steps = cfg.epochs * steps_per_epoch
    # The learning rate is a function of the step alone, so resuming needs no scheduler state.
    lr_factor = cosine_with_warmup(total_steps, max(1, int(cfg.warmup_fraction * total_steps)))

    state: dict[str, Any] = {
        "epoch": 0,
        "step": 0,
        "best": None,
        "best_loss": None,
        "best_epoch": 0,
        "stale": 0,
    }
    resumed = cfg.resume and (run_dir / LAST).exists()
    if resumed:
        state = checkpoint.load_training_state(run_dir / LAST, model, optimizer)
    meta = {"config": cfg.model_dump(mode="json"), **data.extra}
    progress = progress or Progress()
    progress.epochs, progress.total_steps = cfg.epochs, total_steps
    progress.step = progress.first_step = state["step"]
    progress.started = time.monotonic()

    def keep_if_better(epoch: int, metrics: dict[str, float]) -> bool:
        value = metrics[data.main_metric]
        improved = _improved(value, metrics["val_loss"], state, data.mode)
        if improved:
            state.update(best=value, best_loss=metrics["val_loss"], best_epoch=epoch, stale=0)
            if main:
                checkpoint.save_weights(run_dir / BEST, model, {**meta, "epoch": epoch})
        else:
            state["stale"] += 1
        return improved

    def report(result: EpochResult) -> None:
        if on_epoch is not None and main:
            on_epoch(result)

    def record_samples(epoch: int) -> None:
        if data.samples is None or not main:
            return
        line = json.dumps({"epoch": epoch, "samples": data.samples()}, ensure_ascii=False)
        with (run_dir / SAMPLES).open("a", encoding="utf-8") as f:
            f.write(line + "\n")

    def agreed(*flags: bool) -> list[bool]:
        return any_rank(list(flags), ranks, device)

    fit_first = data.head is not None and not resumed
    fitted = ""
    if fit_first and main:
        progress.phase = "fitting head"
        began = time.perf_counter()
        n, hit = fit_head(data, features_dir or run_dir / "features")
        fitted = (
            f"head fitted on the frozen network's features of {n} samples"
            f"{' (cached)' if hit else ''} in {time.perf_counter() - began:.1f} s"
        )
    forward: torch.nn.Module = model
    if ranks is not None:
        from torch.nn.parallel import DistributedDataParallel

        # On the CPU, oneDNN hands 1x1 convolutions' gradients back channels-last; DDP copies them
        # into its buckets (one small copy a step) and would say so at every step in the log.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")

        # Built after the main process fitted the head: DDP starts every process from its weights.
        forward = DistributedDataParallel(
            model, device_ids=[ranks.local_rank] if device.startswith("cuda") else None
        )
    if fit_first:
        metrics = evaluate(data, autocast, batches=val_batches, ranks=ranks)
        log(f"{fitted}: {data.main_metric}={metrics[data.main_metric]:.4g}")
        improved = keep_if_better(0, metrics)
        state["stale"] = 0  # patience counts the fine-tuning epochs
        report(EpochResult(0, 0, metrics, improved))

    if not resumed:
        record_samples(0)
    epochs = cfg.epochs
    plan_at = min(steps_per_epoch, 8)  # steps timed before a deadline's plan
    step_times: list[float] = []
    val_s: float | None = None
    status: Literal["completed", "early_stopped", "cancelled", "budget"] = "completed"
    epoch = state["epoch"]
    while epoch < epochs:
        train_batches.epoch = epoch
        progress.epoch, progress.phase = epoch + 1, "training"
        for param in data.freeze:
            param.requires_grad_(epoch >= cfg.freeze_epochs)
        model.train()
        if data.head is not None:
            # Small batches would swap the statistics the fitted head was built on for noisy ones.
            freeze_norm_statistics(model)
        loss_sum = torch.zeros((), device=device)
        seen = 0
        started = time.perf_counter()
        n_batches = len(train_batches)
        optimizer.zero_grad(set_to_none=True)
        for i, (inputs, y) in enumerate(train_batches):
            steps = (i + 1) % accum == 0 or i + 1 == n_batches
            # Between optimiser steps the processes keep their gradients to themselves.
            syncing = forward.no_sync() if ranks is not None and not steps else nullcontext()  # type: ignore[operator]
            with syncing:
                with autocast():
                    loss = data.loss_fn(forward(*inputs), y)
                scaled = loss / accum if accum > 1 else loss
                if scaler is None:
                    scaled.backward()
                else:
                    scaler.scale(scaled).backward()
            loss_sum += loss.detach() * len(y)
            seen += len(y)
            if steps:
                lr = cfg.lr * lr_factor(state["step"])
                for group in optimizer.param_groups:
                    group["lr"] = lr * group["lr_mult"]
                if scaler is None:
                    optimizer.step()
                else:
                    scaler.step(optimizer)
                    scaler.update()
                optimizer.zero_grad(set_to_none=True)
                state["step"] += 1
                progress.step = state["step"]
                if deadline is not None and not progress.plan:
                    step_times.append(time.monotonic())
                    if len(step_times) > plan_at or (len(step_times) > 1 and i + 1 == n_batches):
                        # The first step pays for warming caches up: time the ones after it.
                        step_s = (step_times[-1] - step_times[0]) / (len(step_times) - 1)
                        batches = max(1, -(-data.n_val // max(cfg.batch_size, 32)))
                        plan = plan_budget(
                            seconds_left=deadline - time.monotonic(),
                            step_s=step_s,
                            val_s=0.4 * step_s * batches,
                            steps_done=state["step"] - epoch * steps_per_epoch,
                            steps_per_epoch=steps_per_epoch,
                            max_epochs=cfg.epochs - epoch,
                        )
                        # Every process follows the main one's plan.
                        planned, steps_planned = from_main([plan.epochs, plan.total_steps], ranks, device)
                        plan.epochs, plan.total_steps = int(planned), int(steps_planned)
                        epochs = epoch + plan.epochs
                        total_steps = epoch * steps_per_epoch + plan.total_steps
                        warmup = max(1, int(cfg.warmup_fraction * total_steps))
                        lr_factor = cosine_with_warmup(total_steps, warmup)
                        progress.epochs, progress.total_steps = epochs, total_steps
                        progress.plan = plan.describe(steps_per_epoch, deadline - time.monotonic())
                        log(f"time budget: {progress.plan}")
            past = (
                deadline is not None
                and steps
                and (state["step"] >= total_steps or time.monotonic() >= deadline)
            )
            past, cancel = agreed(past, should_stop is not None and should_stop())
            if cancel:
                status = "cancelled"
                break
            if past:
                break  # the budget ends this epoch early; it is validated as usual
        if status == "cancelled":
            break
        loss_total, seen_total = total([float(loss_sum), float(seen)], ranks, device)  # one sync per epoch
        train_loss = loss_total / max(1.0, seen_total)
        seconds = time.perf_counter() - started
        progress.phase = "validating"
        began = time.perf_counter()
        metrics = {
            "train_loss": train_loss,
            **evaluate(data, autocast, batches=val_batches, ranks=ranks),
            "samples_per_sec": seen_total / max(seconds, 1e-9),
            "lr": max(group["lr"] for group in optimizer.param_groups),
        }
        record_samples(epoch + 1)
        val_s = time.perf_counter() - began
        improved = keep_if_better(epoch + 1, metrics)
        state["epoch"] = epoch + 1
        # Metrics first, then the state to resume from: an attempt that dies in between
        # trains this epoch again, and the resume drops what it recorded of it.
        report(EpochResult(epoch + 1, state["step"], metrics, improved))
        if main:
            checkpoint.save_training_state(run_dir / LAST, model, optimizer, state)
        epoch += 1
        if cfg.patience and state["stale"] >= cfg.patience:
            status = "early_stopped"
            break
        late = deadline is not None and epoch < epochs and time.monotonic() + seconds + val_s > deadline
        cancel, late = agreed(should_stop is not None and should_stop(), late)
        if cancel:
            status = "cancelled"
            break
        if late:
            epochs = epoch  # the next epoch would end past the deadline
    if status == "completed" and epoch < cfg.epochs:
        status = "budget"
    return TrainOutcome(status, state["epoch"], state["best_epoch"], state["best"])
