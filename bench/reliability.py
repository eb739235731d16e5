"""Reliability figures for the README: bounded inputs, and the queue under load.

1. Bounded inputs, each `python -m core datasets add` in a fresh process, its wall time and
   peak memory (the child's max RSS): a 200,000-column CSV (5.5 MB), a table with a 20 MB
   cell, a zip of two 100-megapixel PNGs, and a zip of one-hour 48 kHz WAV clips. Before this
   work those took 124 s and 2.3 GB (the wide CSV), became a 20 MB schema (the cell), passed
   with a warning (the PNGs) and took 3.9 GB (the clip).
2. The queue under load: W workers take R runs (Wine, 2 epochs) while P pollers read the runs
   as the studio does (list, count, each run) every 0.2 s; reports the time to drain the queue,
   claims per run, poller reads and their latency (p50, p99), and errors.

    python bench/reliability.py [--baseline CHECKOUT] [--database-url URL] [--workers 3] [--runs 8] [--pollers 4]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import wave
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _timed(argv: list[str], env: dict[str, str], root: Path = ROOT) -> tuple[float, float, str]:
    """(seconds, peak MB, the last line it printed) of one fresh CLI process."""
    with tempfile.TemporaryFile("w+") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "core", *argv],
            cwd=root,
            env={**env, "PYTHONPATH": str(root)},
            stdout=out,
            stderr=out,
        )
        _, _, usage = os.wait4(proc.pid, 0)  # this child's own peak resident memory
        seconds = time.perf_counter() - start
        proc.returncode = 0
        out.seek(0)
        said = out.read().strip().splitlines()
    shown = next(
        (line for line in said if "left out" in line or line.startswith("error")), said[-1] if said else ""
    )
    return seconds, usage.ru_maxrss / 1024, shown[:160]


def _wav_hour(path: Path, rate: int = 48_000) -> None:
    """One hour of 16-bit mono noise at 48 kHz, written in blocks (345 MB)."""
    rng = np.random.default_rng(0)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        for _ in range(60):
            w.writeframes((rng.normal(0, 3000, rate * 60)).astype("<i2").tobytes())


def bounded_inputs(
    env: dict[str, str], folder: Path, root: Path = ROOT
) -> list[tuple[str, float, float, str]]:
    from PIL import Image

    rows = []
    wide = folder / "wide.csv"
    with wide.open("w") as f:
        f.write(",".join(f"feature_{i:06d}" for i in range(200_000)) + "\n")
        f.write(",".join(f"{i / 7:.10f}" for i in range(200_000)) + "\n")
    rows.append(
        (
            "200,000-column CSV (%.1f MB)" % (wide.stat().st_size / 1e6),
            *_timed(["datasets", "add", str(wide)], env, root),
        )
    )
    cell = folder / "cell.csv"
    cell.write_text("note,x,target\n" + "y" * 20_000_000 + ",1,0\nshort,2,1\n")
    rows.append(("one 20 MB cell", *_timed(["datasets", "add", str(cell)], env, root)))
    buf = io.BytesIO()
    Image.new("L", (10_000, 10_000)).save(buf, format="PNG")
    with zipfile.ZipFile(folder / "huge.zip", "w") as zf:
        zf.writestr("a/1.png", buf.getvalue())
        zf.writestr("b/2.png", buf.getvalue())
    rows.append(("two 100-megapixel PNGs", *_timed(["datasets", "add", str(folder / "huge.zip")], env, root)))
    hour = folder / "hour.wav"
    _wav_hour(hour)
    short = io.BytesIO()
    with wave.open(short, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(bytes(16_000 * 2))
    with zipfile.ZipFile(folder / "clips.zip", "w") as zf:
        zf.write(hour, "yes/hour.wav")
        for label in ("yes", "no"):
            for i in range(2):
                zf.writestr(f"{label}/short-{i}.wav", short.getvalue())
    size = (folder / "clips.zip").stat().st_size / 1e6
    argv = ["datasets", "add", str(folder / "clips.zip")]
    rows.append(
        (f"a one-hour 48 kHz clip among four short ones ({size:.0f} MB zip)", *_timed(argv, env, root))
    )
    return rows


POLLER = """
import json, sys, time, traceback
from core import jobs
from db.models import FINISHED
ids = [int(i) for i in sys.argv[1:]]
latencies, errors = [], []
while True:
    start = time.perf_counter()
    try:
        runs = {r.id: r for r in jobs.list_runs(limit=50)}
        jobs.count_runs()
        for i in ids:
            jobs.get_run(i)
        latencies.append(time.perf_counter() - start)
        if all(runs[i].status in FINISHED for i in ids):
            break
    except Exception:
        errors.append(traceback.format_exc()[-300:])
    time.sleep(0.2)
print(json.dumps({"latencies": latencies, "errors": errors}))
"""


def load(env: dict[str, str], workers: int, runs: int, pollers: int, data: Path) -> dict[str, object]:
    from core import jobs
    from core.data.ingest import ingest_file
    from db.session import dispose_all

    os.environ.update(env)
    ds = ingest_file(data)
    ids = [jobs.submit(jobs.config_for(ds.id, epochs=2, name=f"load-{i}")).id for i in range(runs)]
    dispose_all()
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "core", "worker", "--poll", "0.1", "--idle-exit", "2"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        for _ in range(workers)
    ]
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", POLLER, *map(str, ids)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(pollers)
    ]
    reports = [json.loads(p.communicate()[0]) for p in readers]
    drained = time.perf_counter() - start
    for p in procs:
        p.wait()
    finished = [jobs.get_run(i) for i in ids]
    latencies = sorted(x * 1000 for r in reports for x in r["latencies"])
    return {
        "drained_s": drained,
        "succeeded": sum(r.status == "succeeded" for r in finished),
        "claims": [r.attempts for r in finished],
        "workers_used": len({r.worker for r in finished}),
        "reads": len(latencies),
        "read_p50_ms": statistics.median(latencies),
        "read_p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "errors": sum(len(r["errors"]) for r in reports),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url", default="", help="PostgreSQL URL for the load part (default SQLite)"
    )
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--pollers", type=int, default=4)
    parser.add_argument("--skip-inputs", action="store_true")
    parser.add_argument(
        "--baseline", type=Path, help="a checkout of an earlier commit: its CLI meets the same inputs first"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env = {
            **os.environ,
            "ASCENT_HOME": str(folder / "home"),
            "ASCENT_DEVICE": "cpu",
            "PYTHONPATH": str(ROOT),
        }
        env.pop("ASCENT_DATABASE_URL", None)
        if not args.skip_inputs:
            for name, root in (("baseline", args.baseline), ("this checkout", ROOT)):
                if root is None:
                    continue
                print(f"\n{name}:\n| input | refused or left out in | peak memory | what the user reads |")
                print("|---|---|---|---|")
                home = {**env, "ASCENT_HOME": str(folder / name.replace(" ", "-"))}
                for what, seconds, peak, said in bounded_inputs(home, folder, root.resolve()):
                    print(f"| {what} | {seconds:.2f} s | {peak:.0f} MB | {said} |", flush=True)
        from sklearn.datasets import load_wine

        data = folder / "wine.csv"
        load_wine(as_frame=True).frame.to_csv(data, index=False)
        if args.database_url:
            env["ASCENT_DATABASE_URL"] = args.database_url
        result = load(env, args.workers, args.runs, args.pollers, data)
        name = "PostgreSQL" if args.database_url else "SQLite"
        print(f"\nload on {name}: {args.workers} workers, {args.runs} runs, {args.pollers} pollers")
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
