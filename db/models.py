"""SQLAlchemy 2.0 typed tables. The shape follows MLflow's tracking store."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class RunStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"
    # A sweep's trial its pruner stopped early (it did worse than the earlier trials).
    PRUNED = "pruned"


FINISHED = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.LOST, RunStatus.PRUNED)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored in UTC and always read back timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON,
        list[str]: JSON,
    }


# Longest name a dataset, run or user may have, on every database (checked before the insert).
NAME_MAX = 200


class Role(enum.StrEnum):
    """What a signed-in user may do: viewers browse and predict; members also upload, train,
    cancel and measure; admins also delete others' work and manage users."""

    VIEWER = "viewer"
    MEMBER = "member"
    ADMIN = "admin"


class Dataset(Base):
    __tablename__ = "datasets"
    # Ids are never reused on SQLite either (a deleted dataset's id stays retired).
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    task: Mapped[str] = mapped_column(String(64))
    format: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)
    n_items: Mapped[int]
    schema_: Mapped[dict[str, Any]] = mapped_column("schema")
    report: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The signed-in user who added it (None: the command line, or a studio without users).
    created_by: Mapped[str | None] = mapped_column(String(NAME_MAX))
    # The dataset this one was revised from (relabelled or with items excluded), and its number
    # in that line: 1 for an upload. The parent's row and files are never changed.
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL", name="fk_datasets_parent_id")
    )
    version: Mapped[int] = mapped_column(default=1, server_default="1")


_STATUSES = ", ".join(f"'{s.value}'" for s in RunStatus)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(f"status IN ({_STATUSES})", name="ck_runs_status"),
        Index("ix_runs_status_id", "status", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"), index=True)
    task: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.QUEUED.value)
    config: Mapped[dict[str, Any]]
    device: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    error: Mapped[str | None] = mapped_column(Text)
    tags: Mapped[list[str]] = mapped_column(default=list)
    worker: Mapped[str | None] = mapped_column(String(200))
    pid: Mapped[int | None]
    attempts: Mapped[int] = mapped_column(default=0)
    # Live progress of a running run (epoch, step, total_steps, eta_s...), written with the heartbeat.
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_by: Mapped[str | None] = mapped_column(String(NAME_MAX))
    # The content hash of the dataset the run was submitted on: resume, the certificate and
    # init-from refuse when the dataset behind dataset_id is gone or is another one.
    dataset_sha256: Mapped[str | None] = mapped_column(String(64))


class Param(Base):
    __tablename__ = "params"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Metric(Base):
    __tablename__ = "metrics"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(String(200))
    step: Mapped[int]
    epoch: Mapped[int]
    value: Mapped[float]
    timestamp: Mapped[datetime] = mapped_column(default=utcnow)


class LatestMetric(Base):
    __tablename__ = "latest_metrics"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[float]
    best: Mapped[float]
    step: Mapped[int]
    epoch: Mapped[int]
    timestamp: Mapped[datetime] = mapped_column(default=utcnow)


class Artifact(Base):
    __tablename__ = "artifacts"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Export(Base):
    """One exported variant of a run's model (fp32, int8, fp16, or the PyTorch baseline) with
    what it was measured to be worth: fidelity against PyTorch, the task metric, size, speed."""

    __tablename__ = "exports"
    __table_args__ = (UniqueConstraint("run_id", "variant", name="uq_exports_run_variant"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    variant: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(Text)
    bytes: Mapped[int] = mapped_column(BigInteger)
    # ok, or flagged when top-1 agreement falls under the variant's threshold.
    status: Mapped[str] = mapped_column(String(16))
    method: Mapped[str] = mapped_column(Text, default="")
    max_abs_diff: Mapped[float | None]
    top1_agreement: Mapped[float | None]
    metric_name: Mapped[str | None] = mapped_column(String(64))
    metric_value: Mapped[float | None]
    metric_change: Mapped[float | None]
    n_samples: Mapped[int]
    # Best batch-1 median latency over the providers measured (for sorting and the Runs table).
    latency_ms: Mapped[float | None]
    # [{provider, batch, p50_ms, p95_ms, peak_mb, runs}]
    measurements: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


_ROLES = ", ".join(f"'{r.value}'" for r in Role)


class User(Base):
    """A person who signs in to the studio. Passwords are stored only as Argon2id hashes."""

    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(f"role IN ({_ROLES})", name="ck_users_role"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Failed sign-ins in a row, and when the next attempt may be checked (a growing delay).
    failed_logins: Mapped[int] = mapped_column(default=0)
    locked_until: Mapped[datetime | None]
    # Part of every session cookie: bumped on sign-out, a new password or deletion, which ends
    # the sessions signed before.
    session_epoch: Mapped[int] = mapped_column(default=0)


class ApiKey(Base):
    """A key a user's programs send to the REST endpoint. Only its SHA-256 is kept (the key is
    32 random bytes, so no slow hash is needed); its first characters tell keys apart. Deleting
    the user deletes their keys."""

    __tablename__ = "api_keys"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(NAME_MAX))
    prefix: Mapped[str] = mapped_column(String(16))
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AppSetting(Base):
    """Small values the whole installation shares, such as the key that signs session cookies."""

    __tablename__ = "app_settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Worker(Base):
    """A live worker process; its heartbeat says whether one is alive."""

    __tablename__ = "workers"

    id: Mapped[int] = mapped_column(primary_key=True)
    hostname: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)
    stopped_at: Mapped[datetime | None]
