"""Ascent's trainer against a plain PyTorch loop: same model, data, batch size and threads.

Each measurement is a fresh process. The plain loop is the fastest one can write by hand
(tensors on the device, a random permutation sliced into batches, AdamW, a validation pass per
epoch); Ascent's `train()` adds its schedule, cancel checks, metrics, best and resumable
checkpoints and the epoch callback. Reported: the median training throughput (samples/s in
the training phase, epochs after the first) and the median wall time of the whole run.

    python bench/train_overhead.py [--repeats 5] [--rows 50000] [--epochs 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _make_dataset(home: Path, rows: int) -> int:
    import numpy as np
    import pandas as pd

    from core.data.ingest import ingest_file

    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 24)).astype("float32")
    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(24)])
    df["region"] = rng.choice([f"r{i}" for i in range(12)], rows)
    df["label"] = (x[:, 0] + x[:, 1] * x[:, 2] + (df["region"] == "r3") > 0.3).astype(int)
    path = home / "bench.csv"
    df.to_csv(path, index=False)
    return ingest_file(path).id


def _measure(mode: str, dataset_id: int, epochs: int, batch_size: int) -> dict[str, float]:
    import torch

    from core.config import RunConfig
    from core.data.ingest import get_dataset
    from core.tasks import get_task
    from core.train import train

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    ds = get_dataset(dataset_id)
    cfg = RunConfig(task=ds.task, dataset_id=ds.id, epochs=epochs, batch_size=batch_size, patience=0)
    data = get_task(ds.task).prepare(ds, cfg, "cpu")
    started = time.perf_counter()
    if mode == "ascent":
        rates: list[float] = []
        with tempfile.TemporaryDirectory() as run_dir:
            train(
                cfg,
                data,
                device="cpu",
                run_dir=Path(run_dir),
                on_epoch=lambda r: rates.append(r.metrics["samples_per_sec"]),
            )
    else:
        rates = _plain_loop(data, cfg)
    wall = time.perf_counter() - started
    return {"samples_per_sec": statistics.median(rates[1:] or rates), "wall_s": wall}


def _plain_loop(data, cfg) -> list[float]:  # type: ignore[no-untyped-def]
    """The hand-written baseline."""
    import torch

    torch.manual_seed(cfg.seed)
    model, (num, cat), y = data.model, data.train.inputs, data.train.target
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rates = []
    for _ in range(cfg.epochs):
        model.train()
        total = torch.zeros(())
        start = time.perf_counter()
        order = torch.randperm(len(y))
        for i in range(0, len(y), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            loss = data.loss_fn(model(num[idx], cat[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
        float(total)
        rates.append(len(y) / (time.perf_counter() - start))
        model.eval()
        with torch.no_grad():
            vnum, vcat = data.val.inputs
            data.loss_fn(model(vnum, vcat), data.val.target).item()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "DATASET_ID"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = _measure(args.child[0], int(args.child[1]), args.epochs, args.batch_size)
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "ASCENT_HOME": home, "PYTHONPATH": str(ROOT)}
        env.pop("ASCENT_DATABASE_URL", None)
        os.environ.update(ASCENT_HOME=home)
        os.environ.pop("ASCENT_DATABASE_URL", None)
        sys.path.insert(0, str(ROOT))
        dataset_id = _make_dataset(Path(home), args.rows)
        results: dict[str, list[dict[str, float]]] = {"plain": [], "ascent": []}
        for i in range(args.repeats):
            for mode in ("plain", "ascent") if i % 2 == 0 else ("ascent", "plain"):
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        mode,
                        str(dataset_id),
                        "--epochs",
                        str(args.epochs),
                        "--batch-size",
                        str(args.batch_size),
                    ],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                results[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = {
        m: {k: statistics.median(r[k] for r in rs) for k in ("samples_per_sec", "wall_s")}
        for m, rs in results.items()
    }
    ratio = med["ascent"]["samples_per_sec"] / med["plain"]["samples_per_sec"]
    wall_ratio = med["plain"]["wall_s"] / med["ascent"]["wall_s"]
    print(
        f"rows={args.rows} epochs={args.epochs} batch={args.batch_size} repeats={args.repeats} (fresh processes, medians)"
    )
    for mode in ("plain", "ascent"):
        print(
            f"{mode:>7}: {med[mode]['samples_per_sec']:>10.0f} samples/s   whole run {med[mode]['wall_s']:.2f} s"
        )
    print(f"throughput ratio ascent/plain: {ratio:.3f} (target >= 0.95)")
    print(f"whole-run speed ratio plain/ascent time: {wall_ratio:.3f}")
    print(json.dumps({"median": med, "throughput_ratio": ratio, "wall_ratio": wall_ratio}))


if __name__ == "__main__":
    main()
