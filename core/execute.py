"""One run, start to finish, in its own process (`python -m core run ID`, launched by the worker).

Trains with a heartbeat thread that also watches for a cancel request, keeps the best
checkpoint, exports and checks the ONNX file, and closes the run with its final status.
Everything printed here lands in the run's log file.
"""

from __future__ import annotations

import os
import threading
import time
import traceback

from core import atomic, checkpoint, jobs
from core.config import RunConfig, database, get_settings, resolve_device
from core.errors import AscentError, ExportError
from core.report import build_report
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
EXPORT_RESERVE_S = {"image-classification": 12.0, "text-classification": 25.0, "audio-classification": 8.0}


def execute_run(run_id: int) -> int:
    """Train, export and close run `run_id`. Returns the process exit code."""
    began = time.monotonic()
    database()
    run = jobs.get_run(run_id)
    cfg = RunConfig.model_validate(run.config)
    out = jobs.run_dir(run_id)
    out.mkdir(parents=True, exist_ok=True)
    stop, done = threading.Event(), threading.Event()
    progress = Progress()
    beat = threading.Thread(target=_heartbeat_loop, args=(run_id, progress, stop, done), daemon=True)
    beat.start()
    try:
        device = resolve_device(cfg.device)
        jobs.set_process(run_id, os.getpid(), device_label(device))
        _log(
            f"run {run_id}: {cfg.task} / {cfg.model} on {device_label(device)}"
            + (" (resumed)" if cfg.resume else "")
        )
        dataset = jobs.run_dataset(run)
        if cfg.resume:
            done_epochs = checkpoint.training_epoch(out / LAST)
            dropped = jobs.discard_metrics_after(run_id, done_epochs)
            _log(
                f"resuming after epoch {done_epochs}"
                + (f"; {dropped} metric points of the unfinished epoch dropped" if dropped else "")
            )
        task = get_task(cfg.task)
        deadline = None
        if cfg.budget_s:
            reserve = min(EXPORT_RESERVE_S.get(cfg.task, 10.0), 0.3 * cfg.budget_s)
            deadline = began + cfg.budget_s - reserve
            _log(
                f"time budget {cfg.budget_s:g} s: training until {deadline - began:.0f} s "
                f"({time.monotonic() - began:.1f} s gone on start-up), {reserve:g} s kept for the export"
            )
            fit = getattr(task, "fit_to_budget", None)
            if fit is not None and not cfg.resume:
                planned, why = fit(dataset, cfg, device, deadline - time.monotonic())
                _log(f"time budget: {why}")
                if planned != cfg:
                    # Stored, so that a resumed attempt trains at the size the checkpoint learnt.
                    cfg = planned.model_copy(update={"fit_image_size": False})
                    jobs.update_config(run_id, cfg)
        data = task.prepare(dataset, cfg, device, out)
        atomic.write_json(out / "config.json", cfg.model_dump(mode="json"), indent=2)
        _log(f"data: {data.n_train} train / {data.n_val} validation samples")

        def on_epoch(result: EpochResult) -> None:
            jobs.record_metrics(run_id, step=result.step, epoch=result.epoch, values=result.metrics)
            shown = "  ".join(f"{k}={v:.4g}" for k, v in result.metrics.items())
            _log(f"epoch {result.epoch}/{progress.epochs}  {shown}" + ("  *best" if result.improved else ""))

        outcome = train(
            cfg,
            data,
            device=device,
            run_dir=out,
            on_epoch=on_epoch,
            should_stop=stop.is_set,
            progress=progress,
            deadline=deadline,
            features_dir=get_settings().home / "cache" / "features",
            log=_log,
        )
        _log(
            f"training {'stopped at its time budget' if outcome.status == 'budget' else outcome.status} "
            f"after {outcome.epochs_run} epochs ({time.monotonic() - began:.1f} s since start); "
            f"best epoch {outcome.best_epoch}"
        )
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
        atomic.write_json(out / "report.json", build_report(*predict_split(data), data.extra))
        jobs.record_artifact(run_id, "report", out / "report.json")
        check = task.export(data, cfg, dataset, out / "model.onnx", run_id)
        values = {"export_max_abs_diff": check.max_abs_diff, "export_n_samples": float(check.n_samples)}
        if check.top1_agreement is not None:
            values["export_top1_agreement"] = check.top1_agreement
        jobs.record_metrics(run_id, step=0, epoch=outcome.epochs_run, values=values)
        jobs.record_artifact(run_id, "onnx", out / "model.onnx")
        if (out / "tokenizer.json").exists():
            jobs.record_artifact(run_id, "tokenizer", out / "tokenizer.json")
        _log(
            f"exported {check.path}: max |torch - ort| = {check.max_abs_diff:.3g}, top-1 agreement = {check.top1_agreement} on {check.n_samples} samples ({check.provider}); "
            f"{time.monotonic() - began:.1f} s since start"
        )
        jobs.finish(run_id, RunStatus.SUCCEEDED)
        return 0
    except Exception as exc:
        traceback.print_exc()
        message = str(exc) if isinstance(exc, AscentError) else f"{type(exc).__name__}: {exc}"
        jobs.finish(run_id, RunStatus.FAILED, message)
        return 1
    finally:
        done.set()
