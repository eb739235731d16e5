"""The queue with a real worker process: run to success, cancel, crash, lost, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import wait_for

from core import checkpoint, jobs
from core.config import RunConfig
from core.data.ingest import ingest_file
from core.errors import ConfigError
from core.jobs import ensure_worker  # the real one: conftest's home makes jobs.ensure_worker a no-op
from core.worker import Worker

LONG = {"epochs": 200, "batch_size": 16, "patience": 0}


def _submit(dataset_id: int, **cfg: object) -> int:
    return jobs.submit(jobs.config_for(dataset_id, **cfg)).id


def _first_epoch_done(run_id: int) -> bool:
    return any(p.key == "val_loss" for p in jobs.metric_history(run_id))


def _start_long_run(path: Path) -> int:
    """Queue a run that takes minutes and wait until its first epoch is recorded."""
    run_id = _submit(ingest_file(path).id, **LONG)
    wait_for(lambda: _first_epoch_done(run_id), timeout=120)
    return run_id


def test_submit_queues_a_checked_config(home: Path, data_dir: Path) -> None:
    ds = ingest_file(data_dir / "wine.csv")
    run = jobs.submit(RunConfig(task=ds.task, dataset_id=ds.id, epochs=3))
    assert run.status == "queued" and run.name == "mlp-wine" and run.config["epochs"] == 3
    with pytest.raises(ConfigError, match="cannot train"):
        jobs.submit(RunConfig(task=ds.task, dataset_id=ds.id, model="resnet-9000"))
    with pytest.raises(ConfigError, match="is tabular-classification"):
        jobs.submit(RunConfig(task="tabular-regression", dataset_id=ds.id))


def test_worker_runs_a_queued_run_to_success(
    home: Path, data_dir: Path, worker: subprocess.Popen[bytes]
) -> None:
    ds = ingest_file(data_dir / "wine.csv")
    run_id = _submit(ds.id, epochs=4)
    run = jobs.wait(run_id, timeout_s=120)
    assert run.status == "succeeded", run.error
    assert run.device == "cpu" and run.started_at and run.finished_at and run.heartbeat_at
    kinds = {a.kind: a for a in jobs.artifacts(run_id)}
    assert set(kinds) == {"log", "checkpoint", "config", "report", "predictions", "onnx"}
    assert kinds["onnx"].sha256 and kinds["onnx"].bytes == Path(kinds["onnx"].path).stat().st_size
    log = Path(kinds["log"].path).read_text()
    assert "epoch 4/4" in log and "exported" in log
    assert run.metrics["export_top1_agreement"] == 1.0
    assert [p.epoch for p in jobs.metric_history(run_id) if p.key == "val_loss"] == [1, 2, 3, 4]
    report = json.loads(Path(kinds["report"].path).read_text())
    assert report["labels"] == ["0", "1", "2"] and len(report["confusion"]) == 3
    assert sum(map(sum, report["confusion"])) == 36 == sum(c["support"] for c in report["per_class"])
    assert run.progress is not None and run.progress["phase"] == "exporting"
    assert run.progress["step"] == run.progress["total_steps"] > 0


def test_cancel_a_running_run_within_seconds(
    home: Path, big_csv: Path, worker: subprocess.Popen[bytes]
) -> None:
    run_id = _start_long_run(big_csv)
    assert jobs.cancel(run_id) == "running"
    asked = time.monotonic()
    run = jobs.wait(run_id, timeout_s=30)
    assert run.status == "cancelled" and time.monotonic() - asked < 10
    assert "cancelled on request" in (run.error or "")
    # A queued run is cancelled at once, and the worker never starts it.
    queued = _submit(jobs.get_run(run_id).dataset_id or 0, epochs=1)
    assert jobs.cancel(queued) == "cancelled"
    assert jobs.get_run(queued).started_at is None


def test_a_killed_child_leaves_the_run_failed_with_the_log_tail(
    home: Path, big_csv: Path, worker: subprocess.Popen[bytes]
) -> None:
    run_id = _start_long_run(big_csv)
    os.kill(jobs.get_run(run_id).pid or 0, signal.SIGKILL)
    run = jobs.wait(run_id, timeout_s=30)
    assert run.status == "failed"
    assert "killed by SIGKILL" in (run.error or "") and "epoch 1/200" in (run.error or "")


def test_a_crashing_run_fails_with_the_reason(
    home: Path, data_dir: Path, worker: subprocess.Popen[bytes]
) -> None:
    ds = ingest_file(data_dir / "wine.csv")
    run_id = _submit(ds.id, epochs=2)
    Path(ds.path, "data.parquet").write_bytes(b"garbage")  # the data vanished under the run
    run = jobs.wait(run_id, timeout_s=60)
    assert run.status == "failed" and "Parquet" in (run.error or "")


def test_lost_runs_are_found_and_resume_from_their_checkpoint(home: Path, big_csv: Path) -> None:
    ds = ingest_file(big_csv)
    run_id = _submit(ds.id, epochs=3, batch_size=64, patience=0)
    # A worker dies mid-run: SIGKILL to the worker and its child, nobody closes the run.
    proc = subprocess.Popen(
        [sys.executable, "-m", "core", "worker", "--poll", "0.2"],
        cwd=Path(__file__).resolve().parents[1],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        # Metrics are recorded before the epoch's checkpoint: wait for both.
        last = jobs.run_dir(run_id) / "last.safetensors"
        wait_for(lambda: _first_epoch_done(run_id) and last.exists(), timeout=120)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the worker; its run dies with it (its own group)
        proc.wait()
    assert jobs.get_run(run_id).status == "running"
    # The next worker to start marks it lost once the heartbeat is stale (3 s in tests).
    time.sleep(3.5)
    assert jobs.recover_lost() == [run_id]
    lost = jobs.get_run(run_id)
    assert lost.status == "lost" and "heartbeat stopped" in (lost.error or "")
    done_epochs = checkpoint.training_epoch(jobs.run_dir(run_id) / "last.safetensors")
    assert done_epochs >= 1

    resumed = jobs.resume(run_id)
    assert resumed.status == "queued" and resumed.config["resume"] is True
    Worker(poll_s=0.1, idle_exit_s=0.5).run()  # in this process: one run, then idle exit
    run = jobs.get_run(run_id)
    assert run.status == "succeeded", run.error
    assert run.attempts == 2
    epochs = [p.epoch for p in jobs.metric_history(run_id) if p.key == "val_loss"]
    assert epochs == [1, 2, 3]  # each once: what the dead attempt did past its checkpoint is redone
    assert "(resumed)" in Path(jobs.run_dir(run_id), "run.log").read_text()


def test_stopping_the_worker_marks_its_run_lost(
    home: Path, big_csv: Path, worker: subprocess.Popen[bytes]
) -> None:
    run_id = _start_long_run(big_csv)
    worker.send_signal(signal.SIGTERM)
    worker.wait(30)
    run = jobs.get_run(run_id)
    assert run.status == "lost" and "runs resume" in (run.error or "")


def test_a_run_goes_through_the_queue_on_each_database(any_home: Path, data_dir: Path) -> None:
    ds = ingest_file(data_dir / "iris.parquet")
    run_id = _submit(ds.id, epochs=3)
    Worker(poll_s=0.1, idle_exit_s=0.5).run()
    run = jobs.get_run(run_id)
    assert run.status == "succeeded", run.error
    assert run.best_metrics["val_accuracy"] > 0.5 and run.metrics["export_top1_agreement"] == 1.0


def test_rename_tag_and_delete_with_files(home: Path, data_dir: Path) -> None:
    ds = ingest_file(data_dir / "wine.csv")
    run_id = _submit(ds.id, epochs=2)
    Worker(poll_s=0.1, idle_exit_s=0.3).run()
    jobs.rename(run_id, "  keeper ")
    jobs.set_tags(run_id, ["b", " a", "", "b"])
    run = jobs.get_run(run_id)
    assert run.name == "keeper" and run.tags == ["a", "b"]
    with pytest.raises(ConfigError, match="needs a name"):
        jobs.rename(run_id, "   ")
    assert jobs.run_dir(run_id).exists()
    jobs.delete_run(run_id)
    assert not jobs.run_dir(run_id).exists() and jobs.list_runs() == []


def test_the_studio_starts_one_worker_and_another_when_that_one_has_gone(home: Path) -> None:
    from core.config import database

    url = database()  # other tests in this process may have started workers for their homes
    started = ensure_worker()
    assert started
    _, proc = jobs._last_start[url]
    try:
        assert not ensure_worker()  # it is starting (or serving): not a second one
        wait_for(jobs.worker_alive, timeout=60)
        assert not ensure_worker()
        proc.kill()  # killed outright: its heartbeat stops, its row still says it serves
        proc.wait(10)
        wait_for(lambda: not jobs.worker_alive(), timeout=30)
        # Within the minute's grace, yet the one started is gone: another is started at once.
        assert ensure_worker()
        _, second = jobs._last_start[url]
        assert second.pid != proc.pid
        wait_for(jobs.worker_alive, timeout=60)
    finally:
        for p in [proc, jobs._last_start[url][1]]:
            p.terminate()
            p.wait(20)
        del jobs._last_start[url]
