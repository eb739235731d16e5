"""Typed functions over the tracking store. They return frozen dataclasses, never ORM rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Float, Select, String, cast, delete, func, or_, select, update
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ColumnElement, FunctionElement

from db.models import (
    ApiKey,
    AppSetting,
    Artifact,
    Dataset,
    Export,
    LatestMetric,
    Metric,
    Param,
    Run,
    RunStatus,
    User,
    Worker,
    utcnow,
)


def db_now(session: Session) -> datetime:
    """The database's clock (PostgreSQL's), so hosts with skewed clocks agree on heartbeats.

    SQLite is a file on this host, whose clock is the only one; there it is this process's."""
    if session.get_bind().dialect.name == "postgresql":
        now = session.scalar(select(func.clock_timestamp()))
        if isinstance(now, datetime):
            return now
    return utcnow()


@dataclass(frozen=True)
class DatasetInfo:
    id: int
    name: str
    task: str
    format: str
    path: str
    sha256: str
    bytes: int
    n_items: int
    schema: dict[str, Any]
    report: dict[str, Any]
    created_at: datetime
    created_by: str | None = None
    parent_id: int | None = None
    version: int = 1


@dataclass(frozen=True)
class DatasetSummary:
    """A dataset as lists show it: without its schema and report (each up to megabytes)."""

    id: int
    name: str
    task: str
    format: str
    bytes: int
    n_items: int
    created_at: datetime
    created_by: str | None = None
    parent_id: int | None = None
    version: int = 1


@dataclass(frozen=True)
class RunInfo:
    id: int
    name: str
    dataset_id: int | None
    task: str
    model: str
    status: str
    config: dict[str, Any]
    device: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    cancel_requested: bool
    error: str | None
    tags: list[str]
    worker: str | None
    pid: int | None
    attempts: int
    progress: dict[str, Any] | None = None
    created_by: str | None = None
    dataset_sha256: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    best_metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricPoint:
    key: str
    step: int
    epoch: int
    value: float
    timestamp: datetime


@dataclass(frozen=True)
class ArtifactInfo:
    id: int
    run_id: int
    kind: str
    path: str
    sha256: str | None
    bytes: int


@dataclass(frozen=True)
class ExportInfo:
    run_id: int
    variant: str
    path: str
    bytes: int
    status: str
    method: str
    max_abs_diff: float | None
    top1_agreement: float | None
    metric_name: str | None
    metric_value: float | None
    metric_change: float | None
    n_samples: int
    latency_ms: float | None
    measurements: list[dict[str, Any]]
    created_at: datetime


def lower_is_better(key: str) -> bool:
    """Loss-like metrics (errors, perplexity, word and character error rates) improve
    downwards; everything else upwards."""
    return (
        any(word in key for word in ("loss", "rmse", "mae", "mse", "error", "perplexity"))
        or key.endswith(("_wer", "_cer"))
        or key in ("wer", "cer")
    )


def _dataset(row: Dataset) -> DatasetInfo:
    return DatasetInfo(
        id=row.id,
        name=row.name,
        task=row.task,
        format=row.format,
        path=row.path,
        sha256=row.sha256,
        bytes=row.bytes,
        n_items=row.n_items,
        schema=dict(row.schema_),
        report=dict(row.report),
        created_at=row.created_at,
        created_by=row.created_by,
        parent_id=row.parent_id,
        version=row.version,
    )


def _run(row: Run, latest: list[LatestMetric] | None = None) -> RunInfo:
    latest = latest or []
    return RunInfo(
        id=row.id,
        name=row.name,
        dataset_id=row.dataset_id,
        task=row.task,
        model=row.model,
        status=row.status,
        config=dict(row.config),
        device=row.device,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        heartbeat_at=row.heartbeat_at,
        cancel_requested=row.cancel_requested,
        error=row.error,
        tags=list(row.tags or []),
        worker=row.worker,
        pid=row.pid,
        attempts=row.attempts,
        progress=dict(row.progress) if row.progress else None,
        created_by=row.created_by,
        dataset_sha256=row.dataset_sha256,
        metrics={m.key: m.value for m in latest},
        best_metrics={m.key: m.best for m in latest},
    )


# --- datasets ---------------------------------------------------------------------------


def add_dataset(
    *,
    session: Session,
    name: str,
    task: str,
    format: str,
    path: str,
    sha256: str,
    bytes: int,
    n_items: int,
    schema: dict[str, Any],
    report: dict[str, Any],
    created_by: str | None = None,
    parent_id: int | None = None,
    version: int = 1,
) -> DatasetInfo:
    row = Dataset(
        created_by=created_by,
        parent_id=parent_id,
        version=version,
        name=name,
        task=task,
        format=format,
        path=path,
        sha256=sha256,
        bytes=bytes,
        n_items=n_items,
        schema_=schema,
        report=report,
    )
    session.add(row)
    session.flush()
    return _dataset(row)


def set_dataset_path(*, session: Session, dataset_id: int, path: str) -> None:
    session.execute(update(Dataset).where(Dataset.id == dataset_id).values(path=path))


def get_dataset(*, session: Session, dataset_id: int) -> DatasetInfo | None:
    row = session.get(Dataset, dataset_id)
    return _dataset(row) if row else None


def list_datasets(*, session: Session) -> list[DatasetSummary]:
    rows = session.execute(
        select(
            Dataset.id,
            Dataset.name,
            Dataset.task,
            Dataset.format,
            Dataset.bytes,
            Dataset.n_items,
            Dataset.created_at,
            Dataset.created_by,
            Dataset.parent_id,
            Dataset.version,
        ).order_by(Dataset.id.desc())
    )
    return [DatasetSummary(**r._asdict()) for r in rows]


def delete_dataset(*, session: Session, dataset_id: int) -> bool:
    result = session.execute(delete(Dataset).where(Dataset.id == dataset_id))
    return bool(result.rowcount)  # type: ignore[attr-defined]


# --- runs -------------------------------------------------------------------------------


def create_run(
    *,
    session: Session,
    name: str,
    dataset_id: int | None,
    task: str,
    model: str,
    config: dict[str, Any],
    params: dict[str, str],
    created_by: str | None = None,
    dataset_sha256: str | None = None,
) -> RunInfo:
    row = Run(
        name=name,
        dataset_id=dataset_id,
        task=task,
        model=model,
        config=config,
        created_by=created_by,
        dataset_sha256=dataset_sha256,
    )
    session.add(row)
    session.flush()
    session.add_all(Param(run_id=row.id, key=k, value=v) for k, v in params.items())
    session.flush()
    return _run(row)


def get_run(*, session: Session, run_id: int) -> RunInfo | None:
    row = session.get(Run, run_id)
    if row is None:
        return None
    latest = list(session.scalars(select(LatestMetric).where(LatestMetric.run_id == run_id)))
    return _run(row, latest)


@dataclass(frozen=True)
class RunFilter:
    """Which runs a table shows; every field narrows the selection."""

    status: str | None = None
    task: str | None = None
    dataset_id: int | None = None
    text: str | None = None  # in the name, model or tags


SORTS = ("created", "name", "status", "model", "task", "duration")


class _Seconds(FunctionElement[float]):
    """Seconds from a start to an end timestamp. SQL has no timestamp difference that every
    database spells alike, so each dialect gets its own spelling below."""

    type = Float()
    name = "seconds_between"
    inherit_cache = True


@compiles(_Seconds)  # PostgreSQL (timestamptz - timestamptz is an interval), and the default
def _seconds_sql(element: _Seconds, compiler: SQLCompiler, **kw: Any) -> str:
    start, end = (compiler.process(c, **kw) for c in element.clauses)
    return f"EXTRACT(EPOCH FROM ({end} - {start}))"


@compiles(_Seconds, "sqlite")  # SQLite stores timestamps as ISO text; julianday() reads it in days
def _seconds_sqlite(element: _Seconds, compiler: SQLCompiler, **kw: Any) -> str:
    start, end = (compiler.process(c, **kw) for c in element.clauses)
    return f"((julianday({end}) - julianday({start})) * 86400.0)"


def _duration() -> ColumnElement[float]:
    """How long a run ran, as the Runs table shows it: from its start to its finish (or its last
    heartbeat while it runs); NULL for a run that never started."""
    return _Seconds(Run.started_at, func.coalesce(Run.finished_at, Run.heartbeat_at, Run.started_at))


def _filtered(stmt: Select[Any], f: RunFilter | None) -> Select[Any]:
    if f is None:
        return stmt
    if f.status:
        stmt = stmt.where(Run.status == f.status)
    if f.task:
        stmt = stmt.where(Run.task == f.task)
    if f.dataset_id is not None:
        stmt = stmt.where(Run.dataset_id == f.dataset_id)
    if f.text:
        like = f"%{f.text.lower()}%"
        stmt = stmt.where(
            or_(
                func.lower(Run.name).like(like),
                func.lower(Run.model).like(like),
                func.lower(cast(Run.tags, String)).like(like),
            )
        )
    return stmt


def list_runs(
    *,
    session: Session,
    status: str | None = None,
    limit: int = 100,
    offset: int = 0,
    where: RunFilter | None = None,
    sort: str = "created",
    descending: bool = True,
    metric: str | None = None,
) -> list[RunInfo]:
    """One page of runs with their latest metrics, filtered and sorted in SQL.

    `sort` is a column of SORTS, or "metric" to order by the best value of `metric`.
    """
    where = where or RunFilter(status=status)
    page = _filtered(select(Run.id), where)
    order: Any
    if sort == "metric" and metric:
        best = aliased(LatestMetric)
        page = page.outerjoin(best, (best.run_id == Run.id) & (best.key == metric))
        order = best.best
    else:
        order = {
            "created": Run.id,
            "name": Run.name,
            "status": Run.status,
            "model": Run.model,
            "task": Run.task,
            "duration": _duration(),
        }.get(sort, Run.id)
    direction = order.desc() if descending else order.asc()
    ids = page.order_by(direction.nulls_last(), Run.id.desc()).limit(limit).offset(offset).subquery()
    position = {run_id: i for i, run_id in enumerate(session.scalars(select(ids.c.id)))}
    if not position:
        return []
    stmt = (
        select(Run, LatestMetric)
        .where(Run.id.in_(list(position)))
        .outerjoin(LatestMetric, LatestMetric.run_id == Run.id)
    )
    grouped: dict[int, tuple[Run, list[LatestMetric]]] = {}
    for run, latest in session.execute(stmt).tuples():
        entry = grouped.setdefault(run.id, (run, []))
        if latest is not None:
            entry[1].append(latest)
    rows = sorted(grouped.values(), key=lambda item: position[item[0].id])
    return [_run(run, latest) for run, latest in rows]


def count_runs(*, session: Session, where: RunFilter | None = None) -> int:
    return session.scalar(_filtered(select(func.count()).select_from(Run), where)) or 0


def rename_run(*, session: Session, run_id: int, name: str) -> None:
    session.execute(update(Run).where(Run.id == run_id).values(name=name))


def delete_run(*, session: Session, run_id: int) -> bool:
    """Delete a run and (by cascade) its params, metrics and artifact rows."""
    result = session.execute(delete(Run).where(Run.id == run_id))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def get_params(*, session: Session, run_id: int) -> dict[str, str]:
    rows = session.scalars(select(Param).where(Param.run_id == run_id).order_by(Param.key))
    return {p.key: p.value for p in rows}


def claim_next_run(*, session: Session, worker: str) -> RunInfo | None:
    """Mark the oldest queued run as running for `worker`; None when the queue is empty.

    PostgreSQL skips rows other workers hold locked; the status guard on the update makes
    the claim safe on SQLite too, where the write lock serialises claims.
    """
    candidate = session.scalar(
        select(Run.id)
        .where(Run.status == RunStatus.QUEUED.value)
        .order_by(Run.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    if candidate is None:
        return None
    now = db_now(session)
    result = session.execute(
        update(Run)
        .where(Run.id == candidate, Run.status == RunStatus.QUEUED.value)
        .values(
            status=RunStatus.RUNNING.value,
            worker=worker,
            started_at=now,
            heartbeat_at=now,
            finished_at=None,
            attempts=Run.attempts + 1,
        )
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    session.flush()
    return get_run(session=session, run_id=candidate)


def set_run_worker(*, session: Session, run_id: int, worker: str) -> None:
    session.execute(update(Run).where(Run.id == run_id).values(worker=worker[:200]))


def set_run_process(*, session: Session, run_id: int, pid: int, device: str | None) -> None:
    values: dict[str, Any] = {"pid": pid}
    if device is not None:
        values["device"] = device
    session.execute(update(Run).where(Run.id == run_id).values(**values))


def heartbeat(*, session: Session, run_id: int, progress: dict[str, Any] | None = None) -> bool:
    """Beat a running run's heartbeat (with its progress). True when the run should stop: a
    cancel was requested, or it is no longer running here (marked lost, deleted)."""
    values: dict[str, Any] = {"heartbeat_at": db_now(session)}
    if progress is not None:
        values["progress"] = progress
    session.execute(
        update(Run).where(Run.id == run_id, Run.status == RunStatus.RUNNING.value).values(**values)
    )
    row = session.execute(select(Run.cancel_requested, Run.status).where(Run.id == run_id)).first()
    return row is None or bool(row[0]) or row[1] != RunStatus.RUNNING.value


def request_cancel(*, session: Session, run_id: int) -> str | None:
    """Cancel a queued or lost run at once, or ask a running one to stop. Returns the new status."""
    row = session.get(Run, run_id, with_for_update=True)
    if row is None:
        return None
    if row.status in (RunStatus.QUEUED.value, RunStatus.LOST.value):
        row.error = (
            "cancelled before it started"
            if row.status == RunStatus.QUEUED.value
            else f"cancelled after it was lost ({row.error or 'heartbeat stopped'})"
        )
        row.status = RunStatus.CANCELLED.value
        row.finished_at = db_now(session)
    elif row.status == RunStatus.RUNNING.value:
        row.cancel_requested = True
    session.flush()
    return row.status


def finish_run(*, session: Session, run_id: int, status: RunStatus, error: str | None = None) -> bool:
    """Close a running run with its final status. False when it was no longer running."""
    result = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status == RunStatus.RUNNING.value)
        .values(status=status.value, error=error, finished_at=db_now(session), pid=None)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def mark_stale_lost(*, session: Session, lost_after_s: float) -> list[int]:
    """Runs still `running` whose heartbeat is older than `lost_after_s` (by the database's
    clock) become `lost`, or `cancelled` when a cancel had been asked for; returns their ids."""
    now = db_now(session)
    older_than = now - timedelta(seconds=lost_after_s)
    stale = session.execute(
        select(Run.id, Run.cancel_requested).where(
            Run.status == RunStatus.RUNNING.value,
            or_(Run.heartbeat_at.is_(None), Run.heartbeat_at < older_than),
        )
    ).all()
    for cancelled, status, error in (
        (False, RunStatus.LOST, "heartbeat stopped: the process running it died or lost the database"),
        (True, RunStatus.CANCELLED, "cancelled on request (the process running it had stopped answering)"),
    ):
        ids = [run_id for run_id, asked in stale if bool(asked) == cancelled]
        if ids:
            session.execute(
                update(Run)
                .where(Run.id.in_(ids), Run.status == RunStatus.RUNNING.value)
                .values(status=status.value, finished_at=now, pid=None, error=error)
            )
    return [run_id for run_id, _ in stale]


def requeue_run(*, session: Session, run_id: int) -> bool:
    """Put a lost, failed or cancelled run back in the queue (resume)."""
    finished = (RunStatus.LOST.value, RunStatus.FAILED.value, RunStatus.CANCELLED.value)
    result = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.status.in_(finished))
        .values(
            status=RunStatus.QUEUED.value,
            cancel_requested=False,
            error=None,
            finished_at=None,
            worker=None,
            pid=None,
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def update_run_config(*, session: Session, run_id: int, config: dict[str, Any]) -> None:
    session.execute(update(Run).where(Run.id == run_id).values(config=config))


def set_tags(*, session: Session, run_id: int, tags: list[str]) -> None:
    session.execute(update(Run).where(Run.id == run_id).values(tags=tags))


# --- metrics ----------------------------------------------------------------------------


def log_metrics(*, session: Session, run_id: int, step: int, epoch: int, values: dict[str, float]) -> None:
    """Append metric points and keep latest_metrics (last and best value) current."""
    now = utcnow()
    session.add_all(
        Metric(run_id=run_id, key=k, step=step, epoch=epoch, value=float(v), timestamp=now)
        for k, v in values.items()
    )
    existing = {
        m.key: m
        for m in session.scalars(
            select(LatestMetric).where(LatestMetric.run_id == run_id, LatestMetric.key.in_(list(values)))
        )
    }
    for key, raw in values.items():
        value = float(raw)
        row = existing.get(key)
        if row is None:
            session.add(
                LatestMetric(
                    run_id=run_id,
                    key=key,
                    value=value,
                    best=value,
                    step=step,
                    epoch=epoch,
                    timestamp=now,
                )
            )
            continue
        better = value < row.best if lower_is_better(key) else value > row.best
        row.value, row.step, row.epoch, row.timestamp = value, step, epoch, now
        if better:
            row.best = value
    session.flush()


def discard_metrics_after(*, session: Session, run_id: int, epoch: int) -> int:
    """Drop the metric points of epochs after `epoch` (an attempt that died before it saved its
    checkpoint) and rebuild the run's latest_metrics from what is left; returns rows dropped.

    A resumed run trains those epochs again, so each epoch ends up recorded once."""
    dropped = session.execute(delete(Metric).where(Metric.run_id == run_id, Metric.epoch > epoch))
    count = int(dropped.rowcount or 0)  # type: ignore[attr-defined]
    if not count:
        return 0
    session.execute(delete(LatestMetric).where(LatestMetric.run_id == run_id))
    latest: dict[str, LatestMetric] = {}
    for m in session.scalars(select(Metric).where(Metric.run_id == run_id).order_by(Metric.step, Metric.id)):
        row = latest.get(m.key)
        if row is None:
            latest[m.key] = LatestMetric(
                run_id=run_id,
                key=m.key,
                value=m.value,
                best=m.value,
                step=m.step,
                epoch=m.epoch,
                timestamp=m.timestamp,
            )
            continue
        better = m.value < row.best if lower_is_better(m.key) else m.value > row.best
        row.value, row.step, row.epoch, row.timestamp = m.value, m.step, m.epoch, m.timestamp
        if better:
            row.best = m.value
    session.add_all(latest.values())
    session.flush()
    return count


def metric_history(*, session: Session, run_id: int) -> list[MetricPoint]:
    rows = session.scalars(select(Metric).where(Metric.run_id == run_id).order_by(Metric.step, Metric.id))
    return [MetricPoint(m.key, m.step, m.epoch, m.value, m.timestamp) for m in rows]


# --- artifacts --------------------------------------------------------------------------


def add_artifact(
    *, session: Session, run_id: int, kind: str, path: str, sha256: str | None, bytes: int
) -> ArtifactInfo:
    """Record an artifact; one row per (run, kind), replaced when written again."""
    session.execute(delete(Artifact).where(Artifact.run_id == run_id, Artifact.kind == kind))
    row = Artifact(run_id=run_id, kind=kind, path=path, sha256=sha256, bytes=bytes)
    session.add(row)
    session.flush()
    return ArtifactInfo(row.id, run_id, kind, path, sha256, bytes)


def list_artifacts(*, session: Session, run_id: int) -> list[ArtifactInfo]:
    rows = session.scalars(select(Artifact).where(Artifact.run_id == run_id).order_by(Artifact.id))
    return [ArtifactInfo(a.id, a.run_id, a.kind, a.path, a.sha256, a.bytes) for a in rows]


# --- exports ----------------------------------------------------------------------------

_EXPORT_FIELDS = [f for f in ExportInfo.__dataclass_fields__ if f not in ("run_id", "variant", "created_at")]


def _export(row: Export) -> ExportInfo:
    return ExportInfo(**{f: getattr(row, f) for f in ExportInfo.__dataclass_fields__})


def save_export(*, session: Session, run_id: int, variant: str, **values: Any) -> ExportInfo:
    """Record a variant's certificate; one row per (run, variant), replaced when measured again."""
    session.execute(delete(Export).where(Export.run_id == run_id, Export.variant == variant))
    row = Export(run_id=run_id, variant=variant, **{k: values[k] for k in _EXPORT_FIELDS})
    session.add(row)
    session.flush()
    return _export(row)


def list_exports(*, session: Session, run_ids: list[int]) -> list[ExportInfo]:
    """Every measured variant of these runs, by run then variant."""
    rows = session.scalars(
        select(Export).where(Export.run_id.in_(run_ids)).order_by(Export.run_id, Export.id)
    )
    return [_export(r) for r in rows]


# --- workers ----------------------------------------------------------------------------


def register_worker(*, session: Session, hostname: str, pid: int) -> int:
    now = db_now(session)
    row = Worker(hostname=hostname, pid=pid, started_at=now, heartbeat_at=now)
    session.add(row)
    session.flush()
    return row.id


def worker_heartbeat(*, session: Session, worker_id: int) -> None:
    session.execute(update(Worker).where(Worker.id == worker_id).values(heartbeat_at=db_now(session)))


def stop_worker(*, session: Session, worker_id: int) -> None:
    session.execute(update(Worker).where(Worker.id == worker_id).values(stopped_at=db_now(session)))


def alive_workers(*, session: Session, within_s: float) -> list[tuple[int, str, int]]:
    """(id, hostname, pid) of workers that beat in the last `within_s` seconds (the
    database's clock) and have not stopped."""
    since = db_now(session) - timedelta(seconds=within_s)
    rows = session.execute(
        select(Worker.id, Worker.hostname, Worker.pid).where(
            Worker.stopped_at.is_(None), Worker.heartbeat_at >= since
        )
    )
    return [(r[0], r[1], r[2]) for r in rows]


# --- users ------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserInfo:
    """A user without their password hash (what pages and the CLI may show)."""

    id: int
    name: str
    role: str
    created_at: datetime
    session_epoch: int


@dataclass(frozen=True)
class Credentials:
    """What checking a sign-in needs; never leaves core.access."""

    user: UserInfo
    password_hash: str
    failed_logins: int
    locked_until: datetime | None


def _user(row: User) -> UserInfo:
    return UserInfo(row.id, row.name, row.role, row.created_at, row.session_epoch)


def count_users(*, session: Session) -> int:
    return session.scalar(select(func.count()).select_from(User)) or 0


def add_user(*, session: Session, name: str, role: str, password_hash: str) -> UserInfo | None:
    """A new user; None when the name is taken. (Two processes adding the same name at once:
    the second gets the unique constraint's IntegrityError.)"""
    if session.scalar(select(User.id).where(User.name == name)) is not None:
        return None
    row = User(name=name, role=role, password_hash=password_hash, created_at=db_now(session))
    session.add(row)
    session.flush()
    return _user(row)


def get_user(*, session: Session, name: str) -> UserInfo | None:
    row = session.scalar(select(User).where(User.name == name))
    return _user(row) if row else None


def get_user_by_id(*, session: Session, user_id: int) -> UserInfo | None:
    row = session.get(User, user_id)
    return _user(row) if row else None


def list_users(*, session: Session) -> list[UserInfo]:
    return [_user(r) for r in session.scalars(select(User).order_by(User.name))]


def delete_user(*, session: Session, name: str) -> bool:
    result = session.execute(delete(User).where(User.name == name))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def count_admins(*, session: Session) -> int:
    return session.scalar(select(func.count()).select_from(User).where(User.role == "admin")) or 0


def credentials(*, session: Session, name: str) -> Credentials | None:
    """The user's hash and sign-in counters, the row locked until the transaction ends (so
    parallel attempts count one after another)."""
    row = session.scalar(select(User).where(User.name == name).with_for_update())
    if row is None:
        return None
    return Credentials(_user(row), row.password_hash, row.failed_logins, row.locked_until)


def set_password(*, session: Session, name: str, password_hash: str) -> bool:
    """A new hash; also ends the user's sessions and clears failed sign-ins."""
    result = session.execute(
        update(User)
        .where(User.name == name)
        .values(
            password_hash=password_hash,
            session_epoch=User.session_epoch + 1,
            failed_logins=0,
            locked_until=None,
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def record_login(*, session: Session, user_id: int, ok: bool, delay_s: float = 0.0) -> None:
    """After a sign-in attempt: reset the counters, or count the failure and hold the next
    attempt back `delay_s` seconds."""
    if ok:
        values: dict[str, Any] = {"failed_logins": 0, "locked_until": None}
    else:
        values = {
            "failed_logins": User.failed_logins + 1,
            "locked_until": db_now(session) + timedelta(seconds=delay_s),
        }
    session.execute(update(User).where(User.id == user_id).values(**values))


def end_sessions(*, session: Session, user_id: int) -> None:
    """Every session cookie signed for the user so far stops working."""
    session.execute(update(User).where(User.id == user_id).values(session_epoch=User.session_epoch + 1))


# --- settings shared by the installation ------------------------------------------------


def setting(*, session: Session, key: str, default: str) -> str:
    """The stored value of `key`; stores `default` first when there is none. (When several
    processes race, the later ones get the primary key's IntegrityError and read again.)"""
    value = session.scalar(select(AppSetting.value).where(AppSetting.key == key))
    if value is not None:
        return value
    session.add(AppSetting(key=key, value=default))
    session.flush()
    return default


@dataclass(frozen=True)
class ApiKeyInfo:
    """A key without its secret: which user, the label, the first characters, when made."""

    id: int
    user: str
    role: str
    label: str
    prefix: str
    created_at: datetime


def _key_info(row: ApiKey, user: User) -> ApiKeyInfo:
    return ApiKeyInfo(row.id, user.name, user.role, row.label, row.prefix, row.created_at)


def add_api_key(*, session: Session, user_id: int, label: str, prefix: str, key_sha256: str) -> ApiKeyInfo:
    row = ApiKey(
        user_id=user_id, label=label, prefix=prefix, key_sha256=key_sha256, created_at=db_now(session)
    )
    session.add(row)
    session.flush()
    user = session.get(User, user_id)
    assert user is not None
    return _key_info(row, user)


def list_api_keys(*, session: Session, user: str | None = None) -> list[ApiKeyInfo]:
    query = select(ApiKey, User).join(User, ApiKey.user_id == User.id).order_by(ApiKey.id)
    if user is not None:
        query = query.where(User.name == user)
    return [_key_info(key, owner) for key, owner in session.execute(query).tuples()]


def api_key_owner(*, session: Session, key_sha256: str) -> ApiKeyInfo | None:
    """The key with this digest and its user, or None."""
    found = session.execute(
        select(ApiKey, User).join(User, ApiKey.user_id == User.id).where(ApiKey.key_sha256 == key_sha256)
    ).first()
    return _key_info(*found.tuple()) if found else None


def delete_api_key(*, session: Session, key_id: int) -> bool:
    result = session.execute(delete(ApiKey).where(ApiKey.id == key_id))
    return bool(result.rowcount)  # type: ignore[attr-defined]
