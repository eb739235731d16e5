"""The tracking store on SQLite and PostgreSQL: schema, queries, claims, metrics."""

from __future__ import annotations

import threading
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


def _old_dataset(s) -> int:  # type: ignore[no-untyped-def]
    """A dataset row as releases before dataset versions (revision 0005 and older) wrote it."""
    s.execute(
        text(
            "INSERT INTO datasets (name, task, format, path, sha256, bytes, n_items, schema, report, "
            "created_at) VALUES ('d', 'tabular-classification', 'csv', '/x', :sha, 10, 10, "
            "'{\"target\": \"y\"}', '{}', CURRENT_TIMESTAMP)"
        ),
        {"sha": "0" * 64},
    )
    return int(s.execute(text("SELECT max(id) FROM datasets")).scalar())


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
        "users",
        "app_settings",
        "api_keys",
        "ascent_alembic_version",
    } <= tables
    assert "alembic_version" not in tables  # Optuna's name, in a database shared with its studies
    from db.session import upgrade

    upgrade(eng)  # a second upgrade finds nothing to do
    with eng.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM ascent_alembic_version")).scalar() == "0007"


def test_a_database_of_the_previous_release_moves_to_its_own_version_table(any_home: Path) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from db.session import upgrade

    url = database()
    if url.startswith("sqlite"):
        any_home.mkdir(parents=True, exist_ok=True)
    old = create_engine(url)
    upgrade(old, version_table="alembic_version")  # as the previous release left it
    with Session(old) as s, s.begin():
        ds = _dataset(s)
    assert "ascent_alembic_version" not in inspect(old).get_table_names()
    old.dispose()

    eng = engine(url)  # this release opens it
    tables = set(inspect(eng).get_table_names())
    assert "ascent_alembic_version" in tables and "alembic_version" not in tables
    with eng.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM ascent_alembic_version")).scalar() == "0007"
    with session_scope() as s:
        assert queries.get_dataset(session=s, dataset_id=ds) is not None

    # Optuna's own version table, made later in the same database, is not Ascent's to touch.
    with eng.begin() as conn:
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('v3.2.0.a')"))
    upgrade(eng)
    with eng.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "v3.2.0.a"
        assert conn.execute(text("SELECT version_num FROM ascent_alembic_version")).scalar() == "0007"


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
    with session_scope() as s:
        assert queries.mark_stale_lost(session=s, lost_after_s=60) == []  # it beat just now
        assert queries.mark_stale_lost(session=s, lost_after_s=-1) == [running]
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


def test_revision_0004_keeps_every_row_and_retires_deleted_ids(tmp_path: Path) -> None:
    """The rebuild of datasets and runs (AUTOINCREMENT on SQLite) keeps runs, metrics and
    params (no cascade through the dropped table), fills dataset_sha256 where the dataset is
    the run's own, and from then on a deleted dataset's id is never handed out again."""
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
        command.upgrade(cfg, "0003")
        conn.execute(text("PRAGMA foreign_keys=ON"))
        for ds_id, created in ((1, "2026-01-01 00:00:00"), (2, "2026-03-01 00:00:00")):
            conn.execute(
                text(
                    "INSERT INTO datasets (id, name, task, format, path, sha256, bytes, n_items, schema, report, created_at) "
                    f"VALUES ({ds_id}, 'd{ds_id}', 'tabular-classification', 'csv', '/x', '{ds_id}' || 'a', 1, 1, '{{}}', '{{}}', '{created}')"
                )
            )
        # Run 1 trained on dataset 1; run 2 is older than dataset 2, which took a reused id.
        for run_id, ds_id, created in ((1, 1, "2026-02-01 00:00:00"), (2, 2, "2026-02-01 00:00:00")):
            conn.execute(
                text(
                    "INSERT INTO runs (id, name, dataset_id, task, model, status, config, created_at, cancel_requested, tags, attempts) "
                    f"VALUES ({run_id}, 'r', {ds_id}, 'tabular-classification', 'mlp', 'succeeded', '{{}}', '{created}', 0, '[]', 1)"
                )
            )
            conn.execute(text(f"INSERT INTO params (run_id, key, value) VALUES ({run_id}, 'lr', '0.1')"))
            conn.execute(
                text(
                    "INSERT INTO metrics (run_id, key, step, epoch, value, timestamp) "
                    f"VALUES ({run_id}, 'val_loss', 1, 1, 0.5, '2026-02-01 00:00:00')"
                )
            )
    upgrade(old)
    with old.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM metrics")).scalar() == 2
        assert conn.execute(text("SELECT count(*) FROM params")).scalar() == 2
        sha = dict(conn.execute(text("SELECT id, dataset_sha256 FROM runs")).tuples().all())
        assert (
            "AUTOINCREMENT"
            in conn.execute(text("SELECT sql FROM sqlite_master WHERE name='datasets'")).scalar()
        )
        assert conn.execute(text("PRAGMA foreign_key_check")).fetchall() == []
    assert sha == {1: "1a", 2: None}
    with session_scope(url) as s:
        assert queries.delete_dataset(session=s, dataset_id=2)
        assert _dataset(s) == 3  # not 2 again
    old.dispose()


@pytest.mark.parametrize("n", [8])
def test_processes_opening_a_fresh_database_at_once_all_succeed(any_home: Path, n: int) -> None:
    """Each process builds the engine (which migrates) at the same moment; the migration lock
    lets one create the schema while the others wait, then find it current."""
    import subprocess
    import sys

    code = (
        "from core.config import database\n"
        "from core import jobs\n"
        "from db.session import engine\n"
        "engine(database()); print(len(jobs.list_runs()))\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=Path(__file__).resolve().parents[1],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(n)
    ]
    results = [(p.wait(120), p.stdout.read(), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    crashed = [err.decode()[-300:] for code, _, err in results if code != 0]
    assert crashed == []
    assert [out.strip() for _, out, _ in results] == [b"0"] * n


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


def test_revision_0005_lets_runs_end_pruned_and_keeps_them(any_home: Path) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.exc import IntegrityError
    from sqlalchemy.orm import Session

    from db.session import upgrade

    url = database()
    if url.startswith("sqlite"):
        any_home.mkdir(parents=True, exist_ok=True)
    old = create_engine(url)
    upgrade(old, to="0004")
    with Session(old) as s, s.begin():
        run_id = _run(s, _old_dataset(s))
    old.dispose()

    eng = engine(url)
    with eng.begin() as conn:
        conn.execute(text("UPDATE runs SET status = 'pruned' WHERE id = :id"), {"id": run_id})
    with session_scope() as s:
        run = queries.get_run(session=s, run_id=run_id)
        assert run is not None and run.status == RunStatus.PRUNED and run.config == {"lr": 0.001}
    with pytest.raises(IntegrityError), eng.begin() as conn:
        conn.execute(text("UPDATE runs SET status = 'bogus' WHERE id = :id"), {"id": run_id})


def test_revision_0006_makes_every_dataset_version_one_and_a_parent_delete_orphans_its_versions(
    any_home: Path,
) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from db.session import upgrade

    url = database()
    if url.startswith("sqlite"):
        any_home.mkdir(parents=True, exist_ok=True)
    old = create_engine(url)
    upgrade(old, to="0005")
    with Session(old) as s, s.begin():
        first = _old_dataset(s)
        run_id = _run(s, first)
    old.dispose()

    engine(url)
    with session_scope() as s:
        info = queries.get_dataset(session=s, dataset_id=first)
        assert info is not None and (info.version, info.parent_id) == (1, None)
        second = queries.add_dataset(
            session=s,
            name="d",
            task="tabular-classification",
            format="csv",
            path="/y",
            sha256="1" * 64,
            bytes=5,
            n_items=9,
            schema={"target": "y"},
            report={},
            parent_id=first,
            version=2,
        ).id
    with session_scope() as s:
        listed = {d.id: (d.version, d.parent_id) for d in queries.list_datasets(session=s)}
        assert listed == {first: (1, None), second: (2, first)}
        queries.delete_dataset(session=s, dataset_id=first)
    with session_scope() as s:
        revised = queries.get_dataset(session=s, dataset_id=second)
        assert revised is not None and (revised.version, revised.parent_id) == (2, None)
        run = queries.get_run(session=s, run_id=run_id)
        assert run is not None and run.dataset_id is None
