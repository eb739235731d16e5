"""One run over several processes on this machine's CPU: samples/s with 1 and 2 processes and
the scaling efficiency, and what the distributed loop costs at one process.

Processes (`--part processes`): in a fresh ASCENT_HOME, 240 Fashion-MNIST pictures (4 classes)
are added and trained by a real worker with the default model (EfficientNet-Lite0 at 64 px,
batch 32, no time budget, the head not fitted first so that every epoch fine-tunes) for 3
epochs with `--processes 1` and `--processes 2`. A trial's figure is the median of the
samples/s its epochs 2 and 3 record (the first pays for warming up); the table gives the median
over `--repeats` trials and the efficiency, samples/s at 2 over twice that at 1.

Overhead (`--part overhead`): in fresh processes, the same data and model trained for 3 epochs
in-process by `core.train.train`, plainly and as rank 0 of a gloo group of one
(DistributedDataParallel, the batch cut into parts, the stop checks agreed by all-reduce); the
ratio of their samples/s (target: at least 0.97).

Queue (`--part queue`): in a fresh ASCENT_HOME, 8 small runs on the wine table (the MLP, 20
epochs, batch 16, no early stopping) are queued, then one worker serves them: the local worker
(one run at a time, each with every core), and the Ray executor on a local cluster of this
machine's cores (one CPU per run, runs side by side). Runs per hour come from the span between
the first run's start and the last run's end; the worker's whole time, the Ray cluster's
start included, is given beside it.

    python bench/scale.py [--repeats 3] [--part processes,overhead,queue]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3


def _cli(argv: list[str], env: dict[str, str]) -> dict:  # type: ignore[type-arg]
    done = subprocess.run(
        [sys.executable, "-m", "core", *argv, "--json"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=1800,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _pictures(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from core.data.samples import fashion_mnist_zip

    return fashion_mnist_zip(
        folder / "clothes.zip", per_class=60, classes=("t-shirt", "trouser", "sneaker", "bag")
    )


def processes_trial(processes: int) -> float:
    """Samples/s of one run trained by a real worker with `processes` processes."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "ASCENT_HOME": str(Path(tmp) / "home"), "ASCENT_WORKER_IDLE_EXIT_S": "5"}
        env.pop("ASCENT_DATABASE_URL", None)
        ds = _cli(["datasets", "add", str(_pictures(Path(tmp)))], env)
        run = _cli(
            ["train", "--dataset", str(ds["id"]), "--epochs", str(EPOCHS), "--batch-size", "32",
             "--budget", "none", "--no-head-first", "--patience", "0", "--processes", str(processes), "--wait"],
            env,
        )  # fmt: skip
        if run["status"] != "succeeded":
            raise RuntimeError(f"run {run['status']}: {run.get('error')}")
        code = (
            "from core.config import database; database()\n"
            "from core import jobs\n"
            f"print([p.value for p in jobs.metric_history({run['id']}) if p.key == 'samples_per_sec'])"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
        )
        per_epoch = json.loads(done.stdout.strip().splitlines()[-1])
        return statistics.median(per_epoch[1:])


OVERHEAD_CODE = """
import json, sys, time, tempfile
from pathlib import Path
import torch
from core.config import database
database()
from core import jobs
from core.data.ingest import ingest_file
from core.distributed import Ranks, free_port
from core.tasks import get_task
from core.train import EpochResult, train
sys.path.insert(0, 'bench')
from scale import EPOCHS, _pictures

distributed = sys.argv[1] == "ddp"
ds = ingest_file(_pictures(Path(tempfile.mkdtemp())))
cfg = jobs.config_for(ds.id, epochs=EPOCHS, batch_size=32, budget_s=0, head_first=False, patience=0)
data = get_task(cfg.task).prepare(ds, cfg, "cpu")
ranks = None
if distributed:
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
    )
    ranks = Ranks(0, 1, 0)
seen = []
train(cfg, data, device="cpu", run_dir=Path(tempfile.mkdtemp()), on_epoch=seen.append, ranks=ranks)
print(json.dumps([r.metrics["samples_per_sec"] for r in seen]))
"""


def overhead_trial(kind: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "ASCENT_HOME": str(Path(tmp) / "home"), "PYTHONPATH": str(ROOT)}
        env.pop("ASCENT_DATABASE_URL", None)
        done = subprocess.run(
            [sys.executable, "-c", OVERHEAD_CODE, kind], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=1800,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-1500:])
        return statistics.median(json.loads(done.stdout.strip().splitlines()[-1])[1:])


QUEUE_RUNS = 8


def queue_trial(executor: str) -> tuple[float, float]:
    """(runs per hour over the runs' own span, seconds the worker ran) for 8 queued runs."""
    import time

    with tempfile.TemporaryDirectory(prefix="ascent-bench-", dir="/tmp") as tmp:
        env = {
            **os.environ,
            "ASCENT_HOME": str(Path(tmp) / "home"),
            "ASCENT_EXECUTOR": executor,
            "ASCENT_DEVICE": "cpu",
            "RAY_TMPDIR": str(Path(tmp) / "ray"),
        }
        env.pop("ASCENT_DATABASE_URL", None)
        env.pop("ASCENT_RAY_ADDRESS", None)
        (Path(tmp) / "ray").mkdir()
        sys.path.insert(0, str(ROOT))
        from sklearn.datasets import load_wine

        load_wine(as_frame=True).frame.to_csv(Path(tmp) / "wine.csv", index=False)
        ds = _cli(["datasets", "add", str(Path(tmp) / "wine.csv")], env)
        ids = [
            _cli(
                [
                    "train",
                    "--dataset",
                    str(ds["id"]),
                    "--epochs",
                    "20",
                    "--batch-size",
                    "16",
                    "--patience",
                    "0",
                ],
                env,
            )["id"]
            for _ in range(QUEUE_RUNS)
        ]
        began = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "core", "worker", "--idle-exit", "1", "--poll", "0.2"], cwd=ROOT, env=env,
            capture_output=True, timeout=1800, check=True,
        )  # fmt: skip
        worker_s = time.monotonic() - began
        runs = [_cli(["runs", "show", str(i)], env) for i in ids]
        bad = [r for r in runs if r["status"] != "succeeded"]
        if bad:
            raise RuntimeError(f"run {bad[0]['id']} {bad[0]['status']}: {bad[0].get('error')}")
        from datetime import datetime

        start = min(datetime.fromisoformat(r["started_at"]) for r in runs)
        end = max(datetime.fromisoformat(r["finished_at"]) for r in runs)
        return QUEUE_RUNS / (end - start).total_seconds() * 3600, worker_s


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--part", default="processes,overhead,queue")
    a = parser.parse_args()
    parts = a.part.split(",")
    print(f"CPU cores: {os.cpu_count()}; {a.repeats} trials each, medians")
    if "processes" in parts:
        # Trials alternate, so that a change in the machine's load falls on both alike.
        rates: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(a.repeats):
            for n in (1, 2):
                rates[n].append(processes_trial(n))
        one, two = statistics.median(rates[1]), statistics.median(rates[2])
        print(f"1 process:   {one:7.1f} samples/s  {[round(r, 1) for r in rates[1]]}")
        print(f"2 processes: {two:7.1f} samples/s  {[round(r, 1) for r in rates[2]]}")
        print(f"scaling efficiency at 2: {two / (2 * one):.2f}  (speed-up x{two / one:.2f})")
    if "overhead" in parts:
        plain, ddp = [], []
        for _ in range(a.repeats):
            plain.append(overhead_trial("plain"))
            ddp.append(overhead_trial("ddp"))
        p, d = statistics.median(plain), statistics.median(ddp)
        print(f"plain loop:         {p:7.1f} samples/s  {[round(r, 1) for r in plain]}")
        print(f"DDP, one process:   {d:7.1f} samples/s  {[round(r, 1) for r in ddp]}")
        print(f"DDP / plain at one process: {d / p:.3f}  (target >= 0.97)")
    if "queue" in parts:
        rates_q: dict[str, list[tuple[float, float]]] = {"local": [], "ray": []}
        for _ in range(a.repeats):
            for executor in rates_q:
                rates_q[executor].append(queue_trial(executor))
        for executor, found in rates_q.items():
            per_hour = statistics.median(r for r, _ in found)
            print(
                f"{QUEUE_RUNS} runs, {executor} worker: {per_hour:7.0f} runs/hour  {[round(r) for r, _ in found]}"
                f"  (worker ran {statistics.median(w for _, w in found):.1f} s)"
            )
        local = statistics.median(r for r, _ in rates_q["local"])
        ray = statistics.median(r for r, _ in rates_q["ray"])
        print(f"Ray / local: x{ray / local:.2f}")


if __name__ == "__main__":
    main()
