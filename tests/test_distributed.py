"""One run over several processes: the batches each process takes, two gloo processes training
as one process does, a process that dies failing the run (which resumes), and cancelling."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler

from core import jobs
from core.config import RunConfig
from core.data.ingest import ingest_file
from core.distributed import Ranks, ShardedBatches, shard
from core.tasks import DeviceLoader, TensorBatches
from db.models import RunStatus
from tests.conftest import wait_for


def _ranks(world: int) -> list[Ranks]:
    return [Ranks(r, world, r) for r in range(world)]


def test_each_process_takes_its_part_of_every_global_batch() -> None:
    x = torch.arange(23).float()[:, None]
    whole = TensorBatches((x,), torch.arange(23), 8, shuffle=True, seed=3, epoch=1)
    parts = [shard(whole, r, train=True) for r in _ranks(3)]
    assert [len(p) for p in parts] == [3, 3, 3]  # 8 + 8 + 7: the last still gives each a sample
    for one, *mine in zip(whole, *parts, strict=True):
        assert sorted(torch.cat([y for _, y in mine]).tolist()) == sorted(one[1].tolist())
    # A last batch smaller than the number of processes is left out of training, by all alike...
    tiny = TensorBatches((x[:17],), torch.arange(17), 8, shuffle=False)
    assert [len(shard(tiny, r, train=True)) for r in _ranks(3)] == [2, 2, 2]
    # ...and kept by validation, where a process with nothing of it simply skips it.
    val = [list(shard(tiny, r, train=False)) for r in _ranks(3)]
    assert sorted(int(v) for p in val for _, y in p for v in y) == list(range(17))
    assert [len(p) for p in val] == [len(shard(tiny, r, train=False)) for r in _ranks(3)] == [2, 2, 3]


def test_a_data_loader_is_cut_the_same_way() -> None:
    data = list(range(30))
    generator = torch.Generator()
    loader = DataLoader(data, batch_size=10, sampler=RandomSampler(data, generator=generator))
    whole = DeviceLoader(loader, "cpu", generator, seed=5)
    parts = [shard(whole, r, train=True) for r in _ranks(2)]
    orders = []
    for epoch in (0, 1):
        whole.epoch = epoch
        single = [b.tolist() for b in whole.loader]
        mine = []
        for p in parts:
            p.epoch = epoch  # the sampler's order comes from the seed and the epoch, on every process
            assert isinstance(p, DeviceLoader)
            mine.append([b.tolist() for b in p.loader])
        assert [a + b for a, b in zip(*mine, strict=True)] == single
        orders.append(single)
    assert orders[0] != orders[1]  # reshuffled per epoch
    sampler = ShardedBatches(range(25), 10, Ranks(1, 2, 1), train=True, drop_last=False)  # type: ignore[arg-type]
    assert list(sampler) == [[5, 6, 7, 8, 9], [15, 16, 17, 18, 19], [22, 23, 24]] and len(sampler) == 3


def test_settings_that_do_not_split_over_processes_are_refused() -> None:
    with pytest.raises(ValueError, match="does not split over 3 processes"):
        RunConfig(task="tabular-classification", dataset_id=1, batch_size=16, processes=3)
    with pytest.raises(ValueError, match="head-only epochs"):
        RunConfig(task="image-classification", dataset_id=1, batch_size=16, processes=2, freeze_epochs=1)


@pytest.fixture
def wine(home: Path, data_dir: Path):  # type: ignore[no-untyped-def]
    return ingest_file(data_dir / "wine.csv")


def _epochs(run_id: int, key: str) -> dict[int, float]:
    points = [p for p in jobs.metric_history(run_id) if p.key == key]
    assert all(n == 1 for n in Counter(p.epoch for p in points).values()), "one point per epoch"
    return {p.epoch: p.value for p in points}


def test_two_gloo_processes_train_as_one_process_does(wine, worker) -> None:  # type: ignore[no-untyped-def]
    common = {"epochs": 3, "batch_size": 16, "dropout": 0.0, "patience": 0}
    one = jobs.submit(jobs.config_for(wine.id, **common))
    two = jobs.submit(jobs.config_for(wine.id, processes=2, **common))
    for run in (one, two):
        done = jobs.wait(run.id, timeout_s=240)
        assert done.status == "succeeded", done.error
    # 142 training rows in batches of 16: the same global batches, halved; only the order of
    # the sums differs.
    for key in ("val_loss", "val_accuracy", "train_loss"):
        single, double = _epochs(one.id, key), _epochs(two.id, key)
        assert single.keys() == double.keys() == {1, 2, 3}
        for epoch in single:
            assert double[epoch] == pytest.approx(single[epoch], abs=1e-4), (key, epoch)
    log = (jobs.run_dir(two.id) / "run.log").read_text()
    assert "in 2 processes (gloo)" in log and "8 of each batch of 16 per process" in log
    assert log.count("epoch 1/3") == 1  # the main process alone reports
    assert (jobs.run_dir(two.id) / "model.onnx").exists()


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out.extend(int(c) for c in text)
    return out


def test_a_process_that_dies_fails_the_run_which_resumes(wine, worker) -> None:  # type: ignore[no-untyped-def]
    cfg = jobs.config_for(wine.id, epochs=400, batch_size=16, processes=2, patience=0)
    run = jobs.submit(cfg)
    wait_for(lambda: any(p.key == "val_loss" for p in jobs.metric_history(run.id)), timeout=120)
    launcher = jobs.get_run(run.id).pid
    assert launcher is not None
    # The launching process starts the two training processes (through torch's spawn helpers).
    ranks = [p for p in _descendants(launcher) if "spawn_main" in _cmdline(p)]
    assert len(ranks) == 2, [(_cmdline(p)) for p in _descendants(launcher)]
    os.kill(ranks[-1], signal.SIGKILL)
    failed = jobs.wait(run.id, timeout_s=120)
    assert failed.status == RunStatus.FAILED
    assert failed.error and failed.error.startswith("process ") and "of 2 failed" in failed.error
    assert (jobs.run_dir(run.id) / "last.safetensors").exists()

    jobs.update_config(run.id, RunConfig.model_validate({**failed.config, "epochs": 3}))
    resumed = jobs.resume(run.id)
    assert resumed.config["resume"] is True
    done = jobs.wait(run.id, timeout_s=240)
    assert done.status == "succeeded", done.error


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for child in _children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_a_run_of_two_processes_cancels_within_seconds(wine, worker) -> None:  # type: ignore[no-untyped-def]
    run = jobs.submit(jobs.config_for(wine.id, epochs=2000, batch_size=16, processes=2, patience=0))
    wait_for(lambda: any(p.key == "val_loss" for p in jobs.metric_history(run.id)), timeout=120)
    asked = time.monotonic()
    jobs.cancel(run.id)
    done = jobs.wait(run.id, timeout_s=60)
    assert done.status == RunStatus.CANCELLED and time.monotonic() - asked < 15
    assert "cancelled on request during epoch" in (done.error or "")
