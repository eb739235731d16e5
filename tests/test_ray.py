"""The Ray executor on a local Ray cluster of 2 CPUs (started by the worker in a temp folder):
runs side by side, one of 2 processes under Ray Train waiting for room and saying so, a
cancel, `core cluster`, and a killed Ray worker's run found lost and resumed."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from core import jobs
from core.config import RunConfig
from core.data.ingest import ingest_file
from db.models import RunStatus
from tests.conftest import ROOT, wait_for


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _kill_left_behind(marker: str) -> None:
    """Ray's processes name the session folder they run in (raylet, GCS) or descend from one
    that does (its agents and workers): every one of them is killed."""
    pids = [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit() and int(e.name) != os.getpid()]
    doomed = {pid for pid in pids if marker in _cmdline(pid)}
    parents = {pid: _parent(pid) for pid in pids}
    grew = True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in doomed} - doomed
        doomed |= more
        grew = bool(more)
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def ray_worker(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m core worker` with ASCENT_EXECUTOR=ray: it starts a local cluster of 2 CPUs
    (state in a short temp folder: Ray's socket paths have a length limit)."""
    ray_dir = tempfile.mkdtemp(prefix="ascent-ray-", dir="/tmp")
    monkeypatch.setenv("ASCENT_EXECUTOR", "ray")
    monkeypatch.setenv("ASCENT_RAY_CPUS", "2")
    monkeypatch.setenv("ASCENT_RAY_ADDRESS", "")
    monkeypatch.setenv("RAY_TMPDIR", ray_dir)
    monkeypatch.setenv("HOME", str(home.parent))  # Ray writes ~/.ray
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    # A lost run here is found by Ray (its task's worker crashed), not by a late heartbeat: the
    # tests' 3-s limit marked a healthy run lost in CI while the other test process trained.
    monkeypatch.setenv("ASCENT_LOST_AFTER_S", "60")
    proc = subprocess.Popen(
        [sys.executable, "-m", "core", "worker", "--poll", "0.2"],
        cwd=ROOT,
        stdout=(home.parent / "worker.out").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        _kill_left_behind(ray_dir)
        shutil.rmtree(ray_dir, ignore_errors=True)


def _cli(*argv: str) -> dict:  # type: ignore[type-arg]
    done = subprocess.run(
        [sys.executable, "-m", "core", *argv, "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _log(home: Path) -> str:
    return (home.parent / "worker.out").read_text(errors="replace")


def _state(home: Path, run_id: int) -> str:
    """Where a run stands: its row, its log's end, the worker's output's end."""
    run = jobs.get_run(run_id)
    log = jobs.run_dir(run_id) / "run.log"
    tail = log.read_text(errors="replace")[-1500:] if log.exists() else "(no run.log)"
    return (
        f"run {run_id} {run.status} worker={run.worker} pid={run.pid} progress={run.progress} "
        f"error={run.error}\n--- run.log ---\n{tail}\n--- worker.out ---\n{_log(home)[-3000:]}"
    )


def test_runs_share_a_ray_cluster_and_a_lost_one_resumes(home: Path, data_dir: Path, ray_worker) -> None:  # type: ignore[no-untyped-def]
    wine = ingest_file(data_dir / "wine.csv")
    common = {"batch_size": 16, "patience": 0}
    first = jobs.submit(jobs.config_for(wine.id, epochs=60, **common))
    endless = jobs.submit(jobs.config_for(wine.id, epochs=5000, **common))
    pair = jobs.submit(jobs.config_for(wine.id, epochs=3, processes=2, dropout=0.0, **common))

    # The two one-process runs take a CPU each; the run of two processes waits, and says so.
    def placed_side_by_side() -> bool:
        runs = [jobs.get_run(r.id) for r in (first, endless)]
        return all(r.status == "running" and (r.worker or "").startswith("ray: ") for r in runs)

    wait_for(placed_side_by_side, timeout=90)
    waiting = jobs.get_run(pair.id)
    assert waiting.status == "running" and waiting.pid is None, _log(home)
    phase = (waiting.progress or {}).get("phase", "")
    assert phase.startswith("waiting for resources: the run needs 2 CPUs"), phase

    cluster = _cli("cluster")
    (node,) = cluster["nodes"]
    assert node["alive"] and node["cpus"] == 2 and node["cpus_free"] <= 1
    assert set(node["runs"]) <= {first.id, endless.id} and endless.id in node["runs"]
    assert cluster["waiting"] == [pair.id]

    wait_for(lambda: any(p.key == "val_loss" for p in jobs.metric_history(endless.id)), timeout=60)
    asked = time.monotonic()
    jobs.cancel(endless.id)
    cancelled = jobs.wait(endless.id, timeout_s=60)
    assert cancelled.status == RunStatus.CANCELLED and time.monotonic() - asked < 15, cancelled.error

    assert jobs.wait(first.id, timeout_s=120).status == "succeeded"
    done = jobs.wait(pair.id, timeout_s=180)
    assert done.status == "succeeded", (done.error, _log(home))
    assert done.device == "2 × cpu (Ray Train)"
    points = [p for p in jobs.metric_history(pair.id) if p.key == "val_loss"]
    assert sorted(Counter(p.epoch for p in points).items()) == [(1, 1), (2, 1), (3, 1)]
    log = (jobs.run_dir(pair.id) / "run.log").read_text()
    assert "in 2 processes (gloo)" in log and log.count("epoch 1/3") == 1
    assert (jobs.run_dir(pair.id) / "model.onnx").exists()

    # The Ray worker process that runs a run dies: the run is lost, and resumes.
    doomed = jobs.submit(jobs.config_for(wine.id, epochs=5000, **common))
    wait_for(
        lambda: any(p.key == "val_loss" for p in jobs.metric_history(doomed.id)),
        timeout=180,  # a new Ray worker process and the run's own start, while the other test process trains
        why=lambda: _state(home, doomed.id),
    )
    child = jobs.get_run(doomed.id).pid
    assert child is not None
    ray_process = int(Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert "ray" in _cmdline(ray_process).lower(), _cmdline(ray_process)
    os.kill(ray_process, signal.SIGKILL)
    lost = jobs.wait(doomed.id, timeout_s=60)
    assert lost.status == RunStatus.LOST, lost.error
    assert "the Ray worker running it died" in (lost.error or "")
    jobs.update_config(doomed.id, RunConfig.model_validate({**lost.config, "epochs": 3}))
    jobs.resume(doomed.id)
    again = jobs.wait(doomed.id, timeout_s=120)
    assert again.status == "succeeded", again.error
    assert "resuming after epoch" in (jobs.run_dir(doomed.id) / "run.log").read_text()


def test_the_cluster_command_without_a_cluster_says_what_to_do(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ray_dir = tempfile.mkdtemp(prefix="ascent-ray-", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", ray_dir)
    monkeypatch.setenv("HOME", str(home.parent))
    try:
        for address, said in (
            ("", "no Ray cluster is running here"),
            ("127.0.0.1:9", "no Ray cluster answers at"),
        ):
            monkeypatch.setenv("ASCENT_RAY_ADDRESS", address)
            done = subprocess.run(
                [sys.executable, "-m", "core", "cluster"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 1 and done.stderr.startswith(f"error: {said}"), done.stderr
            assert len(done.stderr.strip().splitlines()) == 1
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)


def test_a_cluster_from_ray_start_serves_the_shared_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path
) -> None:
    """The README's "Scale out" on one machine: a cluster begun with `ray start --head`, the
    database (PostgreSQL where the tests have one), and a worker pointed at the cluster."""
    from core.distributed import free_port
    from tests.conftest import PG_ADMIN_URL, _home

    for home in _home(tmp_path, monkeypatch, "postgresql" if PG_ADMIN_URL else "sqlite"):
        ray_dir = tempfile.mkdtemp(prefix="ascent-ray-", dir="/tmp")
        monkeypatch.setenv("HOME", str(home.parent))
        monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
        monkeypatch.setenv("RAY_TMPDIR", ray_dir)
        port = free_port()
        ray = str(Path(sys.executable).parent / "ray")
        begun = subprocess.run(
            [ray, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
             f"--temp-dir={ray_dir}", "--node-ip-address=127.0.0.1", "--disable-usage-stats"],
            cwd=ROOT, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        try:
            assert begun.returncode == 0, begun.stderr[-2000:]
            monkeypatch.setenv("ASCENT_EXECUTOR", "ray")
            monkeypatch.setenv("ASCENT_RAY_ADDRESS", f"127.0.0.1:{port}")
            # Serving, not loss detection: the tests' 3-s limit marked a run lost in CI while the
            # other test process trained (its 2-s heartbeats late under the load).
            monkeypatch.setenv("ASCENT_LOST_AFTER_S", "60")
            wine = ingest_file(data_dir / "wine.csv")
            runs = [jobs.submit(jobs.config_for(wine.id, epochs=3, batch_size=16)) for _ in range(2)]
            worker = subprocess.run(
                [sys.executable, "-m", "core", "worker", "--poll", "0.2", "--idle-exit", "2"],
                cwd=ROOT, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert worker.returncode == 0, worker.stdout[-2000:] + worker.stderr[-2000:]
            assert f"executor: ray, on the Ray cluster at 127.0.0.1:{port}" in worker.stdout
            # The cluster is not the worker's: it is still there, with no run on it any more.
            (node,) = _cli("cluster")["nodes"]
            assert node["alive"] and node["cpus"] == 2 and node["runs"] == []
            for run in runs:
                done = jobs.get_run(run.id)
                assert done.status == "succeeded" and done.worker == f"ray: {node['address']}", done.error
                assert (jobs.run_dir(run.id) / "model.onnx").exists()
        finally:
            _kill_left_behind(ray_dir)
            shutil.rmtree(ray_dir, ignore_errors=True)
