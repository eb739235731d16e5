"""Load on the queue: three workers take six runs while four pollers read runs as the studio
and `runs list` do, on SQLite and on PostgreSQL. Nothing errs, each run is claimed exactly
once and ends succeeded, and the pollers never see a run go backwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from core import jobs
from core.data.ingest import ingest_file

ROOT = Path(__file__).resolve().parents[1]
WORKERS, RUNS, POLLERS = 3, 6, 4  # two runs a worker: enough to race, and 30 s less CI than eight

# A poller: reads the runs (list, count, each run) in a loop until every run has finished,
# and prints what it saw as JSON: reads made, errors met, statuses seen per run in order.
POLLER = """
import json, sys, time, traceback
from core import jobs
from db.models import FINISHED
ids = [int(i) for i in sys.argv[1:]]
reads, errors, seen = 0, [], {i: [] for i in ids}
deadline = time.monotonic() + 600
while time.monotonic() < deadline:
    try:
        runs = {r.id: r for r in jobs.list_runs(limit=50)}
        jobs.count_runs()
        for i in ids:
            status = jobs.get_run(i).status
            if not seen[i] or seen[i][-1] != status:
                seen[i].append(status)
        reads += 1
        if all(runs[i].status in FINISHED for i in ids):
            break
    except Exception:
        errors.append(traceback.format_exc()[-500:])
    time.sleep(0.2)
print(json.dumps({"reads": reads, "errors": errors, "seen": seen}))
"""


def test_three_workers_six_runs_four_pollers(any_home: Path, data_dir: Path) -> None:
    ds = ingest_file(data_dir / "wine.csv")
    ids = [jobs.submit(jobs.config_for(ds.id, epochs=2, name=f"load-{i}")).id for i in range(RUNS)]
    logs = [any_home.parent / f"worker-{i}.log" for i in range(WORKERS)]
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "core", "worker", "--poll", "0.1", "--idle-exit", "3"],
            cwd=ROOT,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        for log in logs
    ]
    pollers = [
        subprocess.Popen(
            [sys.executable, "-c", POLLER, *map(str, ids)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(POLLERS)
    ]
    try:
        reports = []
        for p in pollers:
            out, err = p.communicate(timeout=900)
            assert p.returncode == 0, err.decode()[-2000:]
            reports.append(json.loads(out))
        codes = [w.wait(timeout=120) for w in workers]
    finally:
        for proc in (*workers, *pollers):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert codes == [0] * WORKERS
    for log in logs:
        text = log.read_text()
        assert "Traceback" not in text and "Error" not in text, text[-2000:]
    assert all(r["errors"] == [] for r in reports), [r["errors"][:2] for r in reports]
    assert all(r["reads"] > 0 for r in reports)
    runs = [jobs.get_run(i) for i in ids]
    assert [r.status for r in runs] == ["succeeded"] * RUNS, [r.error for r in runs]
    assert [r.attempts for r in runs] == [1] * RUNS  # each claimed exactly once
    assert len({r.worker for r in runs}) >= 2  # the work was shared
    order = ["queued", "running", "succeeded"]
    for report in reports:
        for statuses in report["seen"].values():
            assert statuses == [s for s in order if s in statuses]  # never backwards
