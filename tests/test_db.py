"""The tracking store on SQLite and PostgreSQL: schema, queries, claims, metrics."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect, text, update
from sqlalchemy.exc import IntegrityError

from core.config import database
from db import queries
from db.models import Run, RunStatus
from db.session import engine, session_scope


def _dataset(s) -> int:  # type: ignore[no-untyped-def]
    return queries.add_dataset(
        session=s,
        name="d",
        task="tabular-classification",
        format="csv",
        path="/x",
        sha256="0" * 64,
        bytes=3 * 1024**3,
        n_items=10,
        schema={"target": "y"},
        report={"rows": 10},
    ).id


def _run(s, dataset_id: int | None, name: str = "r") -> int:  # type: ignore[no-untyped-def]
    return queries.create_run(
        session=s,
        name=name,
        dataset_id=dataset_id,
        task="tabular-classification",
        model="mlp",
        config={"lr": 0.001},
        params={"lr": "0.001", "epochs": "3"},
    ).id


def test_schema_is_created_by_alembic_and_upgrade_is_idempotent(any_home: Path) -> None:
    url = database()
    eng = engine(url)
    tables = set(inspect(eng).get_table_names())
    assert {
        "datasets",
        "runs",
        "params",
        "metrics",
        "latest_metrics",
        "artifacts",
        "workers",
        "exports",
        "alembic_version",
    } <= tables
    from db.session import upgrade

    upgrade(eng)  # a second upgrade finds nothing to do
    with eng.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0003"


def test_dataset_and_run_round_trip_as_frozen_dataclasses(any_home: Path) -> None:
    database()
    with session_scope() as s:
        ds = _dataset(s)
        run_id = _run(s, ds)
    with session_scope() as s:
        info = queries.get_dataset(session=s, dataset_id=ds)
        run = queries.get_run(session=s, run_id=run_id)
        params = queries.get_params(session=s, run_id=run_id)
    assert info is not None and info.bytes == 3 * 1024**3 and info.schema == {"target": "y"}
    assert run is not None and run.status == "queued" and run.config == {"lr": 0.001}
    assert run.created_at.tzinfo is not None
    assert params == {"epochs": "3", "lr": "0.001"}
    with pytest.raises(AttributeError):
        run.status = "running"  # type: ignore[misc]


def test_status_check_constraint_rejects_unknown_status(any_home: Path) -> None:
    database()
    with session_scope() as s:
        run_id = _run(s, None)
    with pytest.raises(IntegrityError), session_scope() as s:
        s.execute(update(Run).where(Run.id == run_id).values(status="exploded"))


def test_metrics_append_and_latest_keeps_last_and_best(any_home: Path) -> None:
    database()
    with session_scope() as s:
        run_id = _run(s, None)
        queries.log_metrics(
            session=s, run_id=run_id, step=10, epoch=1, values={"val_loss": 0.9, "val_accuracy": 0.6}
        )
        queries.log_metrics(
            session=s, run_id=run_id, step=20, epoch=2, values={"val_loss": 0.5, "val_accuracy": 0.8}
        )
        queries.log_metrics(
            session=s, run_id=run_id, step=30, epoch=3, values={"val_loss": 0.7, "val_accuracy": 0.7}
        )
    with session_scope() as s:
        run = queries.get_run(session=s, run_id=run_id)
        history = queries.metric_history(session=s, run_id=run_id)
    assert run is not None
    assert run.metrics == {"val_loss": 0.7, "val_accuracy": 0.7}
    assert run.best_metrics == {"val_loss": 0.5, "val_accuracy": 0.8}
    assert [p.step for p in history if p.key == "val_loss"] == [10, 20, 30]


def test_list_runs_pages_newest_first_with_metrics(any_home: Path) -> None:
    database()
    with session_scope() as s:
        ids = [_run(s, None, name=f"r{i}") for i in range(5)]
        queries.log_metrics(session=s, run_id=ids[3], step=1, epoch=1, values={"val_f1_macro": 0.9})
    with session_scope() as s:
        first = queries.list_runs(session=s, limit=2)
        second = queries.list_runs(session=s, limit=2, offset=2)
        assert queries.count_runs(session=s) == 5
    assert [r.id for r in first] == [ids[4], ids[3]]
    assert first[1].metrics == {"val_f1_macro": 0.9}
    assert [r.id for r in second] == [ids[2], ids[1]]


def test_claim_takes_oldest_queued_run_once(any_home: Path) -> None:
    database()
    with session_scope() as s:
        a, b = _run(s, None), _run(s, None)
    with session_scope() as s:
        claimed = queries.claim_next_run(session=s, worker="w1")
    assert claimed is not None and claimed.id == a and claimed.status == "running" and claimed.attempts == 1
    with session_scope() as s:
        second = queries.claim_next_run(session=s, worker="w2")
        third = queries.claim_next_run(session=s, worker="w2")
    assert second is not None and second.id == b and third is None


def test_concurrent_claims_never_hand_out_a_run_twice(any_home: Path) -> None:
    database()
    with session_scope() as s:
        ids = {_run(s, None) for _ in range(20)}
    claimed: list[int] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        while True:
            with session_scope() as s:
                run = queries.claim_next_run(session=s, worker=name)
            if run is None:
                with session_scope() as s:
                    if not queries.list_runs(session=s, status="queued"):
                        return
                continue
            with lock:
                claimed.append(run.id)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(claimed) == sorted(ids)


def test_cancel_finish_lost_and_requeue(any_home: Path) -> None:
    database()
    with session_scope() as s:
        queued, running = _run(s, None), _run(s, None)
        assert queries.request_cancel(session=s, run_id=queued) == "cancelled"
        claimed = queries.claim_next_run(session=s, worker="w")
        assert claimed is not None and claimed.id == running
        assert queries.request_cancel(session=s, run_id=running) == "running"
        assert queries.heartbeat(session=s, run_id=running) is True
    old = datetime.now(UTC) + timedelta(seconds=1)
    with session_scope() as s:
        assert queries.mark_stale_lost(session=s, older_than=old) == [running]
        assert not queries.finish_run(session=s, run_id=running, status=RunStatus.SUCCEEDED)
        assert queries.requeue_run(session=s, run_id=running)
        run = queries.get_run(session=s, run_id=running)
    assert run is not None and run.status == "queued" and not run.cancel_requested and run.error is None


def test_deleting_a_run_cascades_and_a_dataset_leaves_runs(any_home: Path) -> None:
    database()
    with session_scope() as s:
        ds = _dataset(s)
        run_id = _run(s, ds)
        queries.log_metrics(session=s, run_id=run_id, step=1, epoch=1, values={"val_loss": 1.0})
        queries.add_artifact(session=s, run_id=run_id, kind="log", path="/x.log", sha256=None, bytes=1)
        assert queries.delete_dataset(session=s, dataset_id=ds)
    with session_scope() as s:
        run = queries.get_run(session=s, run_id=run_id)
        assert run is not None and run.dataset_id is None
        s.execute(text("DELETE FROM runs WHERE id = :i"), {"i": run_id})
    with session_scope() as s:
        assert queries.list_artifacts(session=s, run_id=run_id) == []
        assert queries.metric_history(session=s, run_id=run_id) == []


def test_an_old_database_is_upgraded_with_its_rows(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine

    from db.session import _MIGRATIONS, upgrade

    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = create_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    with old.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(
            text(
                "INSERT INTO runs (name, task, model, status, config, created_at, cancel_requested, tags, attempts) "
                "VALUES ('old', 'tabular-classification', 'mlp', 'succeeded', '{}', '2026-01-01 00:00:00', 0, '[]', 1)"
            )
        )
    assert "progress" not in {c["name"] for c in inspect(old).get_columns("runs")}
    upgrade(old)
    assert "progress" in {c["name"] for c in inspect(old).get_columns("runs")}
    with session_scope(url) as s:
        (run,) = queries.list_runs(session=s)
    assert run.name == "old" and run.progress is None
    old.dispose()


def test_runs_filter_sort_and_count_in_sql(any_home: Path) -> None:
    database()
    with session_scope() as s:
        ds = _dataset(s)
        ids = [_run(s, ds, name=n) for n in ("beta", "alpha", "gamma")]
        queries.set_tags(session=s, run_id=ids[2], tags=["baseline"])
        for run_id, f1 in zip(ids, (0.7, 0.9, 0.8), strict=True):
            queries.log_metrics(session=s, run_id=run_id, step=1, epoch=1, values={"val_f1_macro": f1})
        queries.request_cancel(session=s, run_id=ids[0])
    with session_scope() as s:
        by_name = queries.list_runs(session=s, sort="name", descending=False)
        by_metric = queries.list_runs(session=s, sort="metric", metric="val_f1_macro")
        tagged = queries.list_runs(session=s, where=queries.RunFilter(text="BASE"))
        queued = queries.RunFilter(status="queued", dataset_id=ds)
        assert queries.count_runs(session=s, where=queued) == 2
        assert queries.count_runs(session=s, where=queries.RunFilter(task="tabular-regression")) == 0
        queries.rename_run(session=s, run_id=ids[1], name="renamed")
        assert queries.delete_run(session=s, run_id=ids[0])
    assert [r.name for r in by_name] == ["alpha", "beta", "gamma"]
    assert [r.id for r in by_metric] == [ids[1], ids[2], ids[0]]
    assert [r.id for r in tagged] == [ids[2]]
    with session_scope() as s:
        assert [r.name for r in queries.list_runs(session=s)] == ["gamma", "renamed"]
