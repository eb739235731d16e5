"""One run, start to finish, in its own process (`python -m core run ID`, launched by the worker).

Trains with a heartbeat thread that also watches for a cancel request, keeps the best
checkpoint, exports and checks the ONNX file, and closes the run with its final status.
Everything printed here lands in the run's log file.

A run with `processes` > 1 starts that many processes on this machine (core.distributed): each
trains its share through the same loop, the main one (rank 0) beats the heartbeat, records
metrics, writes checkpoints and exports; this process waits and, when one of them fails, closes
the run with that process's error.
"""

from __future__ import annotations

import os
import threading
import time
import traceback

from torch.distributed.elastic.multiprocessing.errors import record

from core import atomic, checkpoint, jobs
from core.config import RunConfig, database, get_settings, resolve_device
from core.distributed import Ranks, backend, failure_message, launch, rank_device
from core.errors import AscentError, ConfigError, ExportError
from core.report import build_report
from core.sweeps import Pruning
from core.tasks import get_task
from core.train import BEST, LAST, EpochResult, Progress, predict_split, train
from db.models import RunStatus


def device_label(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return device


def _log(message: str) -> None:
    print(message, flush=True)


def _heartbeat_loop(run_id: int, progress: Progress, stop: threading.Event, done: threading.Event) -> None:
    interval = get_settings().heartbeat_s
    parent = os.getppid()
    while not done.wait(interval):
        if os.getppid() != parent:  # the worker died (where the kernel does not kill us with it)
            _log("the worker supervising this run died; stopping")
            os._exit(3)
        try:
            if jobs.heartbeat(run_id, progress.as_dict()):
                stop.set()
        except Exception as exc:  # a database outage past the retries must not kill the run
            _log(f"heartbeat failed: {exc}")


# Seconds of a time budget kept for the export and its check after training, by task: measured
# on a 2-core CPU with the default models (bench/first_model.py), with room to spare.
EXPORT_RESERVE_S = {
    "image-classification": 12.0,
    "text-classification": 25.0,
    "audio-classification": 8.0,
    "object-detection": 20.0,
    "semantic-segmentation": 20.0,
}


# The wall-clock time a run started, handed to its processes so that they share one deadline.
STARTED_ENV = "ASCENT_RUN_STARTED"


def execute_run(run_id: int) -> int:
    """Train, export and close run `run_id`. Returns the process exit code."""
    began = time.monotonic()
    database()
    cfg = RunConfig.model_validate(jobs.get_run(run_id).config)
    if cfg.processes == 1:
        return attempt(run_id, began)
    try:
        device = resolve_device(cfg.device)
        if device.startswith("cuda"):
            import torch

            if cfg.processes > torch.cuda.device_count():
                raise ConfigError(
                    f"the run asks for {cfg.processes} processes, one per GPU, and this machine has "
                    f"{torch.cuda.device_count()}; give --processes {torch.cuda.device_count()} or fewer"
                )
        where = f"{cfg.processes} × {device_label(device)}"
        cfg = plan_processes(run_id, began, where, backend(device), device)
    except Exception as exc:
        traceback.print_exc()
        jobs.finish(run_id, RunStatus.FAILED, message_of(exc))
        return 1
    os.environ[STARTED_ENV] = repr(started_at(began))
    try:
        launch(run_id, cfg.processes, rank_main)
    except Exception as exc:
        message = failure_message(exc, cfg.processes)
        _log(message)
        if jobs.get_run(run_id).status == RunStatus.RUNNING:
            jobs.finish(run_id, RunStatus.FAILED, message)
        return 1
    return 0


def plan_processes(run_id: int, began: float, where: str, how: str, device: str) -> RunConfig:
    """Before a run's processes start, in the process that starts them: say where the run goes
    (`where`, e.g. "2 × cpu") and how (`how`, e.g. "gloo"), and plan its time budget for the
    processes' `device` (stored, for every process to read). Returns the run's settings."""
    cfg = RunConfig.model_validate(jobs.get_run(run_id).config)
    jobs.set_process(run_id, os.getpid(), where)
    _log(
        f"run {run_id}: {cfg.task} / {cfg.model} in {cfg.processes} processes ({how}) on {where}"
        + (" (resumed)" if cfg.resume else "")
    )
    cfg, _ = _budget_plan(run_id, cfg, began, device)
    return cfg


def started_at(began: float) -> float:
    """The wall-clock time of `began` (a time.monotonic()), for processes that share its deadline."""
    return time.time() - (time.monotonic() - began)


def began_at(started: float) -> float:
    """`started_at`'s inverse in another process: the run's start as this one's time.monotonic()."""
    return time.monotonic() - (time.time() - started)


@record
def rank_main(run_id: int) -> None:
    """One process of a multi-process run, started by `core.distributed.launch`."""
    import torch
    import torch.distributed as dist

    from core.worker import die_with_parent

    die_with_parent()  # the launching process is gone: so is this run
    ranks = Ranks.from_env()
    began = began_at(float(os.environ[STARTED_ENV]))
    database()
    cfg = RunConfig.model_validate(jobs.get_run(run_id).config)
    device = rank_device(resolve_device(cfg.device), ranks)
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    else:  # the CPU's cores shared out, as torchrun does, instead of every process taking them all
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ranks.world))
    dist.init_process_group(backend(device))
    try:
        attempt(run_id, began, ranks=ranks, device=device)
    finally:
        dist.destroy_process_group()


def message_of(exc: BaseException) -> str:
    """An error as a run's one-line reason: Ascent's own as they read, others with their type."""
    return str(exc) if isinstance(exc, AscentError) else f"{type(exc).__name__}: {exc}"


def _deadline(cfg: RunConfig, began: float) -> tuple[float, float] | None:
    """When training must end under the run's time budget (time.monotonic()), and the seconds
    kept after it for the export; None without a budget."""
    if not cfg.budget_s:
        return None
    reserve = min(EXPORT_RESERVE_S.get(cfg.task, 10.0), 0.3 * cfg.budget_s)
    return began + cfg.budget_s - reserve, reserve


def _budget_plan(
    run_id: int, cfg: RunConfig, began: float, device: str | None = None
) -> tuple[RunConfig, float | None]:
    """The run's deadline (time.monotonic()) under its time budget, and its settings after the
    budget planned what it may (an image size; stored, so that a resume keeps it)."""
    planned_end = _deadline(cfg, began)
    if planned_end is None or not cfg.budget_s:
        return cfg, None
    deadline, reserve = planned_end
    _log(
        f"time budget {cfg.budget_s:g} s: training until {deadline - began:.0f} s "
        f"({time.monotonic() - began:.1f} s gone on start-up), {reserve:g} s kept for the export"
    )
    fit = getattr(get_task(cfg.task), "fit_to_budget", None)
    if fit is not None and not cfg.resume:
        device = device or resolve_device(cfg.device)
        planned, why = fit(jobs.run_dataset(jobs.get_run(run_id)), cfg, device, deadline - time.monotonic())
        _log(f"time budget: {why}")
        if planned != cfg:
            cfg = planned.model_copy(update={"fit_image_size": False})
            jobs.update_config(run_id, cfg)
    return cfg, deadline


def attempt(run_id: int, began: float, *, ranks: Ranks | None = None, device: str | None = None) -> int:
    """Train, export and close the run in this process: the whole run, or (with `ranks`) this
    process's share of it, where the main process alone records, exports and closes it, and a
    failure is raised for the launching process to report."""
    main = ranks is None or ranks.main
    say = _log if main else (lambda _message: None)
    run = jobs.get_run(run_id)
    cfg = RunConfig.model_validate(run.config)
    out = jobs.run_dir(run_id)
    out.mkdir(parents=True, exist_ok=True)
    stop, done = threading.Event(), threading.Event()
    progress = Progress()
    if main:
        beat = threading.Thread(target=_heartbeat_loop, args=(run_id, progress, stop, done), daemon=True)
        beat.start()
    try:
        device = device or resolve_device(cfg.device)
        if ranks is None:
            jobs.set_process(run_id, os.getpid(), device_label(device))
            _log(
                f"run {run_id}: {cfg.task} / {cfg.model} on {device_label(device)}"
                + (" (resumed)" if cfg.resume else "")
            )
        dataset = jobs.run_dataset(run)
        if cfg.resume and main:
            done_epochs = checkpoint.training_epoch(out / LAST)
            dropped = jobs.discard_metrics_after(run_id, done_epochs)
            _log(
                f"resuming after epoch {done_epochs}"
                + (f"; {dropped} metric points of the unfinished epoch dropped" if dropped else "")
            )
        task = get_task(cfg.task)
        if ranks is None:
            cfg, deadline = _budget_plan(run_id, cfg, began)
        else:  # the launching process planned it (and stored what it changed)
            planned_end = _deadline(cfg, began)
            deadline = None if planned_end is None else planned_end[0]
        data = task.prepare(dataset, cfg, device, out)
        if main:
            atomic.write_json(out / "config.json", cfg.model_dump(mode="json"), indent=2)
        shares = (
            f", {cfg.batch_size // cfg.processes} of each batch of {cfg.batch_size} per process"
            if ranks
            else ""
        )
        say(f"data: {data.n_train} train / {data.n_val} validation samples{shares}")

        pruning = Pruning(cfg) if cfg.sweep_id is not None and main else None
        pruned: list[str] = []  # why the sweep's pruner stopped this trial

        def on_epoch(result: EpochResult) -> None:
            jobs.record_metrics(run_id, step=result.step, epoch=result.epoch, values=result.metrics)
            shown = "  ".join(f"{k}={v:.4g}" for k, v in result.metrics.items())
            _log(f"epoch {result.epoch}/{progress.epochs}  {shown}" + ("  *best" if result.improved else ""))
            if pruning is not None and not pruned:
                why = pruning.should_stop(result.epoch, result.metrics)
                if why:
                    _log(why)
                    pruned.append(why)
                    stop.set()  # all processes stop at the same step, as for a cancel

        outcome = train(
            cfg,
            data,
            device=device,
            run_dir=out,
            on_epoch=on_epoch if main else None,
            should_stop=stop.is_set,
            progress=progress,
            deadline=deadline,
            features_dir=get_settings().home / "cache" / "features",
            log=say,
            ranks=ranks,
        )
        if not main:
            return 0
        _log(
            f"training {'stopped at its time budget' if outcome.status == 'budget' else outcome.status} "
            f"after {outcome.epochs_run} epochs ({time.monotonic() - began:.1f} s since start); "
            f"best epoch {outcome.best_epoch}"
        )
        if outcome.status == "cancelled" and pruned:
            jobs.finish(run_id, RunStatus.PRUNED, pruned[0])
            return 0
        if outcome.status == "cancelled":
            jobs.finish(
                run_id, RunStatus.CANCELLED, f"cancelled on request during epoch {outcome.epochs_run + 1}"
            )
            return 0
        if not (out / BEST).exists():
            raise ExportError("no epoch produced a finite validation metric, so there is no model to export")
        progress.phase = "exporting"
        checkpoint.load_weights(out / BEST, data.model)
        jobs.record_artifact(run_id, "checkpoint", out / BEST)
        jobs.record_artifact(run_id, "config", out / "config.json")
        outputs, targets = predict_split(data)
        report = data.report(outputs, targets) if data.report else build_report(outputs, targets, data.extra)
        atomic.write_json(out / "report.json", report)
        jobs.record_artifact(run_id, "report", out / "report.json")
        if data.val_ids is not None and report.get("kind") in ("classification", "regression"):
            from core.compare import PREDICTIONS, write_predictions

            write_predictions(out / PREDICTIONS, outputs, targets, data.val_ids, data.extra)
            jobs.record_artifact(run_id, "predictions", out / PREDICTIONS)
        check = task.export(data, cfg, dataset, out / "model.onnx", run_id)
        values = {"export_max_abs_diff": check.max_abs_diff, "export_n_samples": float(check.n_samples)}
        if check.top1_agreement is not None:
            values[f"export_{check.agreement}"] = check.top1_agreement
        jobs.record_metrics(run_id, step=0, epoch=outcome.epochs_run, values=values)
        jobs.record_artifact(run_id, "onnx", out / "model.onnx")
        if (out / "decoder.onnx").exists():  # a speech recogniser's second graph
            jobs.record_artifact(run_id, "decoder", out / "decoder.onnx")
        if (out / "tokenizer.json").exists():
            jobs.record_artifact(run_id, "tokenizer", out / "tokenizer.json")
        _log(
            f"exported {check.path}: max |torch - ort| = {check.max_abs_diff:.3g}, {check.agreement.replace('_', ' ')} = {check.top1_agreement} on {check.n_samples} samples ({check.provider}); "
            f"{time.monotonic() - began:.1f} s since start"
        )
        jobs.finish(run_id, RunStatus.SUCCEEDED)
        return 0
    except Exception as exc:
        if ranks is not None:
            raise  # the launching process closes the run with the first process's error
        traceback.print_exc()
        jobs.finish(run_id, RunStatus.FAILED, message_of(exc))
        return 1
    finally:
        done.set()
