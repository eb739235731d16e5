"""The run queue on the database: submit, claim, heartbeat, cancel, recover, resume, wait."""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from core.config import RunConfig, database, get_settings
from core.data.ingest import get_dataset, sha256_file
from core.errors import ConfigError, NotFoundError
from core.models import default_model, get_model
from db import queries
from db.models import FINISHED, RunStatus
from db.queries import ArtifactInfo, MetricPoint, RunFilter, RunInfo
from db.session import session_scope


def run_dir(run_id: int) -> Path:
    return get_settings().runs_dir / str(run_id)


def submit(cfg: RunConfig) -> RunInfo:
    """Check a configuration and queue it as a run. The worker does the training."""
    dataset = get_dataset(cfg.dataset_id)
    if cfg.task != dataset.task:
        raise ConfigError(f"dataset {dataset.id} is {dataset.task}; the run asks for {cfg.task}")
    get_model(cfg.model, cfg.task)
    name = cfg.name or f"{cfg.model}-{dataset.name}"
    cfg = cfg.model_copy(update={"name": name, "resume": False})
    with session_scope() as session:
        return queries.create_run(
            session=session,
            name=name,
            dataset_id=dataset.id,
            task=cfg.task,
            model=cfg.model,
            config=cfg.model_dump(mode="json"),
            params=cfg.params(),
        )


def config_for(dataset_id: int, **overrides: object) -> RunConfig:
    """A RunConfig for a dataset with its task's default model and any overrides given."""
    dataset = get_dataset(dataset_id)
    values = {k: v for k, v in overrides.items() if v is not None}
    model = str(values.setdefault("model", default_model(dataset.task)))
    for key, value in get_model(model, dataset.task).defaults.items():
        values.setdefault(key, value)
    return RunConfig(task=dataset.task, dataset_id=dataset_id, **values)  # type: ignore[arg-type]


def get_run(run_id: int) -> RunInfo:
    database()
    with session_scope() as session:
        run = queries.get_run(session=session, run_id=run_id)
    if run is None:
        raise NotFoundError(f"no run with id {run_id}; see `python -m core runs list`")
    return run


def list_runs(
    status: str | None = None,
    limit: int = 100,
    offset: int = 0,
    *,
    where: RunFilter | None = None,
    sort: str = "created",
    descending: bool = True,
    metric: str | None = None,
) -> list[RunInfo]:
    database()
    with session_scope() as session:
        return queries.list_runs(
            session=session,
            status=status,
            limit=limit,
            offset=offset,
            where=where,
            sort=sort,
            descending=descending,
            metric=metric,
        )


def count_runs(where: RunFilter | None = None) -> int:
    database()
    with session_scope() as session:
        return queries.count_runs(session=session, where=where)


def params(run_id: int) -> dict[str, str]:
    database()
    with session_scope() as session:
        return queries.get_params(session=session, run_id=run_id)


def rename(run_id: int, name: str) -> None:
    name = name.strip()
    if not name:
        raise ConfigError("a run needs a name")
    get_run(run_id)
    with session_scope() as session:
        queries.rename_run(session=session, run_id=run_id, name=name[:200])


def set_tags(run_id: int, tags: list[str]) -> None:
    get_run(run_id)
    clean = sorted({t.strip() for t in tags if t.strip()})
    with session_scope() as session:
        queries.set_tags(session=session, run_id=run_id, tags=clean)


def delete_run(run_id: int) -> None:
    """Delete a finished or queued run, its rows and its files."""
    run = get_run(run_id)
    if run.status == RunStatus.RUNNING:
        raise ConfigError(f"run {run_id} is running; cancel it before deleting it")
    with session_scope() as session:
        queries.delete_run(session=session, run_id=run_id)
    shutil.rmtree(run_dir(run_id), ignore_errors=True)


def artifacts(run_id: int) -> list[ArtifactInfo]:
    database()
    with session_scope() as session:
        return queries.list_artifacts(session=session, run_id=run_id)


def metric_history(run_id: int) -> list[MetricPoint]:
    database()
    with session_scope() as session:
        return queries.metric_history(session=session, run_id=run_id)


def cancel(run_id: int) -> str:
    """Cancel a queued run now; ask a running one to stop (it does within a few seconds)."""
    get_run(run_id)
    with session_scope() as session:
        status = queries.request_cancel(session=session, run_id=run_id)
    return str(status)


def resume(run_id: int) -> RunInfo:
    """Queue a lost, failed or cancelled run again; it continues from its last checkpoint."""
    run = get_run(run_id)
    if run.status not in (RunStatus.LOST, RunStatus.FAILED, RunStatus.CANCELLED):
        raise ConfigError(f"run {run_id} is {run.status}; only lost, failed or cancelled runs resume")
    has_checkpoint = (run_dir(run_id) / "last.safetensors").exists()
    with session_scope() as session:
        queries.update_run_config(
            session=session, run_id=run_id, config={**run.config, "resume": has_checkpoint}
        )
        queries.requeue_run(session=session, run_id=run_id)
    return get_run(run_id)


def claim(worker: str) -> RunInfo | None:
    database()
    with session_scope() as session:
        return queries.claim_next_run(session=session, worker=worker)


def heartbeat(run_id: int, progress: dict[str, Any] | None = None) -> bool:
    """Beat a running run's heartbeat (with its progress); True when a cancel was requested."""
    with session_scope() as session:
        return queries.heartbeat(session=session, run_id=run_id, progress=progress)


def set_process(run_id: int, pid: int, device: str | None = None) -> None:
    with session_scope() as session:
        queries.set_run_process(session=session, run_id=run_id, pid=pid, device=device)


def record_metrics(run_id: int, *, step: int, epoch: int, values: dict[str, float]) -> None:
    with session_scope() as session:
        queries.log_metrics(session=session, run_id=run_id, step=step, epoch=epoch, values=values)


def record_artifact(run_id: int, kind: str, path: Path, *, hash_file: bool = True) -> ArtifactInfo:
    with session_scope() as session:
        return queries.add_artifact(
            session=session,
            run_id=run_id,
            kind=kind,
            path=str(path),
            sha256=sha256_file(path) if hash_file else None,
            bytes=path.stat().st_size,
        )


def finish(run_id: int, status: RunStatus, error: str | None = None) -> bool:
    with session_scope() as session:
        return queries.finish_run(session=session, run_id=run_id, status=status, error=error)


def recover_lost(lost_after_s: float | None = None) -> list[int]:
    """Mark running runs whose heartbeat stopped as lost; returns their ids."""
    database()
    limit = lost_after_s if lost_after_s is not None else get_settings().lost_after_s
    older_than = datetime.now(UTC) - timedelta(seconds=limit)
    with session_scope() as session:
        return queries.mark_stale_lost(session=session, older_than=older_than)


def worker_alive() -> bool:
    """Whether some worker has beaten its heartbeat recently (on any host)."""
    database()
    since = datetime.now(UTC) - timedelta(seconds=get_settings().lost_after_s)
    with session_scope() as session:
        return bool(queries.alive_workers(session=session, since=since))


_last_start: dict[str, float] = {}


def ensure_worker(grace_s: float = 60.0) -> bool:
    """Start a background worker when none is alive; True when one was started.

    A worker takes a few seconds to register, so this process starts at most one per
    `grace_s` for a database (the studio calls this on every page view).
    """
    from core.worker import start_background_worker

    url = database()
    if worker_alive() or time.monotonic() - _last_start.get(url, -grace_s) < grace_s:
        return False
    start_background_worker()
    _last_start[url] = time.monotonic()
    return True


def wait(run_id: int, *, timeout_s: float | None = None, poll_s: float = 0.5) -> RunInfo:
    """Block until the run has finished (or the timeout passes); returns it."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        run = get_run(run_id)
        if run.status in FINISHED:
            return run
        if deadline is not None and time.monotonic() > deadline:
            return run
        time.sleep(poll_s)
