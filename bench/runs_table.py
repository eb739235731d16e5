"""The Runs table with 10,000 runs: time to query it and to render the page's first page.

A database is filled with `--runs` runs (each with 12 parameters and 7 latest metrics), then
fresh processes measure (1) the SQL side, count + the first page of 50 runs with their metrics,
sorted by the main metric, and (2) a whole render of pages/runs.py in Streamlit's AppTest.
Medians of `--repeats` processes. Target: under 1 s for the query and first page.

    python bench/runs_table.py [--runs 10000] [--repeats 5]
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
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def fill(n: int) -> None:
    from sqlalchemy import insert

    from core.config import database
    from db.models import Dataset, LatestMetric, Param, Run
    from db.session import session_scope

    database()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with session_scope() as s:
        s.execute(
            insert(Dataset),
            [
                {
                    "id": 1,
                    "name": "wine",
                    "task": "tabular-classification",
                    "format": "csv",
                    "path": "/none",
                    "sha256": "0" * 64,
                    "bytes": 1,
                    "n_items": 178,
                    "schema_": {},
                    "report": {},
                }
            ],
        )
        runs, params, metrics = [], [], []
        for i in range(1, n + 1):
            t = start + timedelta(minutes=i)
            runs.append(
                {
                    "id": i,
                    "name": f"run-{i}",
                    "dataset_id": 1,
                    "task": "tabular-classification",
                    "model": "mlp" if i % 3 else "linear",
                    "status": "succeeded" if i % 7 else "failed",
                    "config": {"lr": 0.001 * (i % 5 + 1)},
                    "created_at": t,
                    "started_at": t,
                    "finished_at": t + timedelta(seconds=30 + i % 60),
                    "tags": ["bench"] if i % 10 == 0 else [],
                }
            )
            params += [{"run_id": i, "key": f"p{k}", "value": str(i % (k + 2))} for k in range(12)]
            metrics += [
                {
                    "run_id": i,
                    "key": key,
                    "value": (i % 97) / 97,
                    "best": (i % 89) / 89,
                    "step": 100,
                    "epoch": 10,
                    "timestamp": t,
                }
                for key in (
                    "train_loss",
                    "val_loss",
                    "val_accuracy",
                    "val_f1_macro",
                    "samples_per_sec",
                    "lr",
                    "export_max_abs_diff",
                )
            ]
        s.execute(insert(Run), runs)
        s.execute(insert(Param), params)
        s.execute(insert(LatestMetric), metrics)


def measure(kind: str) -> float:
    from core import jobs, summary

    started = time.perf_counter()
    if kind == "query":
        total = jobs.count_runs()
        runs = jobs.list_runs(limit=50, sort="metric", metric="val_f1_macro")
        table = summary.runs_table(runs, {1: "wine"})
        assert total > 0 and len(table) == 50
    else:
        from streamlit.testing.v1 import AppTest

        at = AppTest.from_file(str(ROOT / "pages" / "runs.py"), default_timeout=120).run()
        assert not at.exception and len(at.dataframe[0].value) == 50
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    with tempfile.TemporaryDirectory() as home:
        os.environ["ASCENT_HOME"] = home
        os.environ.pop("ASCENT_DATABASE_URL", None)
        t0 = time.perf_counter()
        fill(args.runs)
        print(f"filled {args.runs} runs in {time.perf_counter() - t0:.1f} s (SQLite)")
        results = {}
        for kind in ("query", "render"):
            times = [
                float(
                    subprocess.run(
                        [sys.executable, __file__, "--child", kind],
                        capture_output=True,
                        text=True,
                        check=True,
                        env={**os.environ, "PYTHONPATH": str(ROOT)},
                    )
                    .stdout.strip()
                    .splitlines()[-1]
                )
                for _ in range(args.repeats)
            ]
            results[kind] = statistics.median(times)
    print(
        f"count + first page of 50 (sorted by best F1) + table: {results['query'] * 1000:.0f} ms (target < 1000 ms)"
    )
    print(f"whole Runs page render in AppTest:                   {results['render'] * 1000:.0f} ms")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
