"""Fault injection on real processes: a run killed with SIGKILL, a worker and its run killed
together, and the PostgreSQL server stopped and started again in the middle of a run.

In every case the run ends in a state the user can act on (failed or lost, then resumed), the
resumed attempt continues after its last checkpoint, and every epoch is recorded exactly once.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_for

from core import checkpoint, jobs
from core.data.ingest import ingest_file

ROOT = Path(__file__).resolve().parents[1]
# Epochs of a few seconds each on a 2-core CPU: long enough to kill one in the middle.
SLOW = {"epochs": 4, "batch_size": 16, "patience": 0}
PGBIN = Path("/usr/lib/postgresql/15/bin")


def _checkpointed(run_id: int, epochs: int = 1) -> bool:
    return checkpoint.training_epoch(jobs.run_dir(run_id) / "last.safetensors") >= epochs


def _epochs_recorded(run_id: int) -> list[int]:
    return sorted(p.epoch for p in jobs.metric_history(run_id) if p.key == "val_loss")


def _start_worker(env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "core", "worker", "--poll", "0.2"],
        cwd=ROOT,
        env=env or os.environ.copy(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead too
        return f.read().split(")")[-1].split()[0] != "Z"


def test_a_run_killed_by_sigkill_fails_then_resumes_after_its_checkpoint(
    home: Path, big_csv: Path, worker: subprocess.Popen[bytes]
) -> None:
    run_id = jobs.submit(jobs.config_for(ingest_file(big_csv).id, **SLOW)).id
    wait_for(lambda: _checkpointed(run_id), timeout=180)
    pid = jobs.get_run(run_id).pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    failed = jobs.wait(run_id, timeout_s=60)
    assert failed.status == "failed" and "killed by SIGKILL" in (failed.error or "")
    done = checkpoint.training_epoch(jobs.run_dir(run_id) / "last.safetensors")

    jobs.resume(run_id)
    run = jobs.wait(run_id, timeout_s=300)
    assert run.status == "succeeded", run.error
    assert run.attempts == 2
    assert _epochs_recorded(run_id) == [1, 2, 3, 4]
    log = (jobs.run_dir(run_id) / "run.log").read_text()
    assert f"resuming after epoch {done}" in log


def test_worker_and_run_killed_together_are_seen_lost_by_runs_list_alone(home: Path, big_csv: Path) -> None:
    """Nothing but `python -m core runs list` runs after the kill: it marks the run lost within
    the lost-after time (3 s in tests). The run process dies with its worker (it is in its own
    process group, and the kernel kills it when the worker dies)."""
    run_id = jobs.submit(jobs.config_for(ingest_file(big_csv).id, **SLOW)).id
    proc = _start_worker()
    try:
        wait_for(lambda: _checkpointed(run_id), timeout=180)
        child = jobs.get_run(run_id).pid
        assert child is not None and os.getpgid(child) != os.getpgid(proc.pid)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # the worker alone; its run goes with it
        proc.wait()
    wait_for(lambda: not _alive(child), timeout=10)
    killed_at = time.monotonic()

    def listed_status() -> str:
        done = subprocess.run(
            [sys.executable, "-m", "core", "runs", "list", "--json"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        (row,) = [r for r in json.loads(done.stdout) if r["id"] == run_id]
        return str(row["status"])

    wait_for(lambda: listed_status() == "lost", timeout=30, interval=0.5)
    assert time.monotonic() - killed_at < 3 + 10  # lost-after, plus a CLI start or two
    lost = jobs.get_run(run_id)
    assert "heartbeat stopped" in (lost.error or "")
    done = checkpoint.training_epoch(jobs.run_dir(run_id) / "last.safetensors")

    jobs.resume(run_id)
    proc = _start_worker()
    try:
        run = jobs.wait(run_id, timeout_s=300)
    finally:
        proc.terminate()
        proc.wait(30)
    assert run.status == "succeeded", run.error
    assert _epochs_recorded(run_id) == [1, 2, 3, 4]  # the epoch cut short was trained again, recorded once
    assert f"resuming after epoch {done}" in (jobs.run_dir(run_id) / "run.log").read_text()


def test_a_lost_run_can_be_cancelled(home: Path, data_dir: Path) -> None:
    from db import queries
    from db.session import session_scope

    run_id = jobs.submit(jobs.config_for(ingest_file(data_dir / "wine.csv").id)).id
    with session_scope() as s:
        queries.claim_next_run(session=s, worker="gone")
        queries.mark_stale_lost(session=s, lost_after_s=-1)
    assert jobs.get_run(run_id).status == "lost"
    assert jobs.cancel(run_id) == "cancelled"
    run = jobs.get_run(run_id)
    assert run.status == "cancelled" and "after it was lost" in (run.error or "")

    # A cancel asked of a run whose processes already died takes effect when it is found stale.
    dead = jobs.submit(jobs.config_for(run.dataset_id or 0)).id
    with session_scope() as s:
        queries.claim_next_run(session=s, worker="gone")
    assert jobs.cancel(dead) == "running"  # asked; nobody is there to stop
    with session_scope() as s:
        queries.mark_stale_lost(session=s, lost_after_s=-1)
    run = jobs.get_run(dead)
    assert run.status == "cancelled" and "stopped answering" in (run.error or "")


# --- a database outage ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Postgres:
    """A throwaway PostgreSQL 15 on 127.0.0.1 that the test can stop and start again."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ascent-pg-outage-"))
        shutil.chown(self.dir, "postgres")
        self.port = _free_port()
        self._as_postgres(f"{PGBIN}/initdb -D {self.dir}/data -A trust -U postgres --no-sync")
        self.start()

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, command: str) -> None:
        subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c", command], check=True, capture_output=True)

    def start(self) -> None:
        self._as_postgres(
            f"{PGBIN}/pg_ctl -D {self.dir}/data -l {self.dir}/server.log -w "
            f"-o '-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off' start"
        )

    def stop(self) -> None:
        self._as_postgres(f"{PGBIN}/pg_ctl -D {self.dir}/data -m fast -w stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def outage_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Postgres]:
    if os.geteuid() != 0 or not (PGBIN / "initdb").exists() or shutil.which("su") is None:
        pytest.skip("needs root and Debian's postgresql-15 to run a server it may stop (.ci/run has both)")
    from db import session

    server = Postgres()
    monkeypatch.setenv("ASCENT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ASCENT_DATABASE_URL", server.url)
    monkeypatch.setenv("ASCENT_HEARTBEAT_S", "0.3")
    # Long enough that a few seconds without heartbeats do not count as lost.
    monkeypatch.setenv("ASCENT_LOST_AFTER_S", "30")
    monkeypatch.setenv("ASCENT_DEVICE", "cpu")
    try:
        yield server
    finally:
        session.dispose_all()
        server.remove()


def test_a_database_outage_during_a_run_loses_nothing(outage_db: Postgres, big_csv: Path) -> None:
    run_id = jobs.submit(jobs.config_for(ingest_file(big_csv).id, **SLOW)).id
    proc = _start_worker(os.environ.copy())
    try:
        wait_for(lambda: _checkpointed(run_id), timeout=180)
        from db.session import dispose_all

        dispose_all()  # this process's connections go down with the server too
        outage_db.stop()
        time.sleep(5)  # the run trains on, its heartbeats and metrics wait
        outage_db.start()
        run = jobs.wait(run_id, timeout_s=300)
        assert proc.poll() is None, "the worker died in the outage"
    finally:
        proc.terminate()
        proc.wait(30)
    assert run.status == "succeeded", run.error
    assert run.attempts == 1
    assert _epochs_recorded(run_id) == [1, 2, 3, 4]
    assert "the database is unreachable" in (jobs.run_dir(run_id) / "run.log").read_text()
