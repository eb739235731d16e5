"""The REST endpoint's cost: requests/s and p50/p99 latency of one-item predictions over HTTP
(`python -m core serve`, loopback) against calling the runtime directly, at concurrency 1, 8
and 32.

Each sample's quick-start run (its task's default model: wine's MLP, Fashion-MNIST's
EfficientNet-Lite0, BBC News' MiniLM, spoken words' audio-cnn) is trained by a real worker in a
throwaway ASCENT_HOME. Then, `--repeats` times, two fresh processes take turns:

- direct: one process opens the run's model with `core.runtime.Predictor` and calls it with one
  item at a time (a table row, an image, a text, a clip) from `c` threads;
- http: a fresh `python -m core serve --run ID` and a fresh client process sending the same
  items as one-item requests (JSON rows or texts, multipart files) from `c` threads, each
  thread on one kept-alive connection (as a `requests.Session` would be).

Both send `--requests` items (after 16 warm-up calls), the same items in the same order, and
the HTTP client checks that every answer is its own item's: the label the direct process found
for it. Figures are medians over the repeats; the overhead is HTTP p50 minus direct p50.
Loopback only, bounded in count (--requests) and time (each process 600 s).

    python bench/serve.py [--samples wine,fashion,bbc,words] [--requests 400] [--repeats 3] [--with-key]

--with-key gives the throwaway installation a user, and every HTTP request that user's API key
(the endpoint then checks it; its owner is remembered for 5 s).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CONCURRENCY = (1, 8, 32)
WARM_UP = 16
ITEMS = 64  # distinct items, cycled over the requests


def _items(dataset_id: int, task: str) -> list[Any]:
    """Up to ITEMS inputs of the dataset as the endpoint takes them: rows (dicts), texts, or
    (file name, bytes)."""
    import pandas as pd

    from core.data.ingest import get_dataset

    dataset = get_dataset(dataset_id)
    folder = Path(dataset.path)
    if task.startswith("tabular"):
        frame = pd.read_parquet(folder / "data.parquet").drop(columns=dataset.schema["target"]).head(ITEMS)
        return [
            {k: (None if pd.isna(v) else v) for k, v in row.items()}
            for row in frame.to_dict(orient="records")
        ]
    if task == "text-classification":
        frame = pd.read_parquet(folder / "data.parquet")
        return [str(t) for t in frame[dataset.schema["text_column"]].head(ITEMS)]
    index = pd.read_parquet(folder / "index.parquet").head(ITEMS)
    where = folder / ("images" if task.startswith("image") else "clips")
    return [(Path(p).name, (where / p).read_bytes()) for p in index["path"]]


def _percentiles(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    return {
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
    }


def _pool(call: Any, n: int, concurrency: int) -> tuple[list[Any], list[float], float]:
    """`call(i)` for i in range(n) from `concurrency` threads: answers, ms each, seconds in all."""
    times: list[float] = [0.0] * n

    def timed(i: int) -> Any:
        start = time.perf_counter()
        answer = call(i)
        times[i] = (time.perf_counter() - start) * 1000
        return answer

    began = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(timed, range(n)))
    return answers, times, time.perf_counter() - began


def child_direct(args: argparse.Namespace) -> dict[str, Any]:
    from core import jobs
    from core.runtime import Predictor

    run = jobs.get_run(args.run)
    path = next(a.path for a in jobs.artifacts(args.run) if a.kind == "onnx")
    predictor = Predictor(path)
    items = _items(run.dataset_id, run.task)

    def call(i: int) -> str:
        item = items[i % len(items)]
        if run.task.startswith("tabular"):
            (pred,) = predictor.predict_table({k: [v] for k, v in item.items()})
        elif run.task == "text-classification":
            (pred,) = predictor.predict_texts([item])
        elif run.task.startswith("image"):
            (pred,) = predictor.predict_images([item[1]])
        else:
            (pred,) = predictor.predict_audio([item[1]])
        return str(pred.label if pred.label is not None else pred.value)

    _pool(call, WARM_UP, 1)
    labels = [call(i) for i in range(len(items))]  # what each item is, for the HTTP client's check
    found = {}
    for c in CONCURRENCY:
        _, ms, seconds = _pool(call, args.requests, c)
        found[c] = {**_percentiles(ms), "rps": args.requests / seconds}
    return {"labels": labels, "figures": found}


def child_http(args: argparse.Namespace) -> dict[str, Any]:
    import http.client
    import threading

    from core import jobs

    run = jobs.get_run(args.run)
    items = _items(run.dataset_id, run.task)
    expected = json.loads(Path(args.labels).read_text())
    path = f"/runs/{args.run}/predict"
    local = threading.local()  # one kept-alive connection per client thread, as a requests.Session keeps

    def call(i: int) -> str:
        item = items[i % len(items)]
        if run.task.startswith("tabular") or run.task == "text-classification":
            key = "rows" if run.task.startswith("tabular") else "texts"
            body, kind = json.dumps({key: [item]}, default=float).encode(), "application/json"
        else:
            boundary = uuid.uuid4().hex
            body = (
                (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{item[0]}"\r\n'
                    "Content-Type: application/octet-stream\r\n\r\n"
                ).encode()
                + item[1]
                + f"\r\n--{boundary}--\r\n".encode()
            )
            kind = f"multipart/form-data; boundary={boundary}"
        if not hasattr(local, "connection"):
            local.connection = http.client.HTTPConnection("127.0.0.1", args.port, timeout=60)
        headers = {
            "Content-Type": kind,
            **({"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}),
        }
        local.connection.request("POST", path, body=body, headers=headers)
        response = local.connection.getresponse()
        answer = json.loads(response.read())
        if response.status != 200:
            raise SystemExit(f"request {i} was refused: {answer}")
        (pred,) = answer["predictions"]
        got = str(pred.get("label", pred.get("value")))
        if got != expected[i % len(items)]:
            raise SystemExit(f"request {i} was answered {got!r}; its item is {expected[i % len(items)]!r}")
        return got

    _pool(call, WARM_UP, 1)
    found = {}
    for c in CONCURRENCY:
        _, ms, seconds = _pool(call, args.requests, c)
        found[c] = {**_percentiles(ms), "rps": args.requests / seconds}
    return {"figures": found}


def _child(*argv: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ.copy(),
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.splitlines()[-1]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(keys: list[str], requests: int, repeats: int, with_key: bool = False) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as home:
        os.environ["ASCENT_HOME"] = home
        os.environ.setdefault("ASCENT_DEVICE", "cpu")
        from core import access, jobs
        from core.data.samples import SAMPLES, add_sample
        from core.worker import Worker

        key_args: list[str] = []
        if with_key:  # an installation with users: every request carries a viewer's key
            access.add_user("bench", "bench password", "viewer")
            key_args = ["--api-key", access.add_key("bench")[1]]

        for key in keys:
            dataset = add_sample(key)
            run = jobs.submit(jobs.config_for(dataset.id, **SAMPLES[key].quick_start))
            Worker(poll_s=0.1, idle_exit_s=0.3).run()
            if jobs.get_run(run.id).status != "succeeded":
                raise SystemExit(f"the {key} sample's run failed: {jobs.get_run(run.id).error}")
            direct: list[dict[str, Any]] = []
            http: list[dict[str, Any]] = []
            labels = Path(home) / f"labels-{run.id}.json"
            for _ in range(repeats):
                found = _child("--child", "direct", "--run", str(run.id), "--requests", str(requests))
                labels.write_text(json.dumps(found["labels"]))
                direct.append(found["figures"])
                port = _free_port()
                server = subprocess.Popen(
                    [sys.executable, "-m", "core", "serve", "--run", str(run.id), "--port", str(port)],
                    cwd=ROOT,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                try:
                    for _ in range(600):
                        try:
                            socket.create_connection(("127.0.0.1", port), timeout=1).close()
                            break
                        except OSError:
                            time.sleep(0.1)
                    http.append(
                        _child("--child", "http", "--run", str(run.id), "--requests", str(requests),
                               "--port", str(port), "--labels", str(labels), *key_args)["figures"]
                    )  # fmt: skip
                finally:
                    server.terminate()
                    server.wait(timeout=30)
            for c in CONCURRENCY:
                figure = {
                    side: {
                        stat: statistics.median(r[str(c)][stat] for r in found)
                        for stat in ("p50", "p99", "rps")
                    }
                    for side, found in (("direct", direct), ("http", http))
                }
                rows.append(
                    {
                        "sample": key,
                        "model": run.config["model"],
                        "api_key": with_key,
                        "concurrency": c,
                        **figure,
                    }
                )
                d, h = figure["direct"], figure["http"]
                print(
                    f"{key:8} c={c:<3} direct p50 {d['p50']:7.2f} ms p99 {d['p99']:7.2f} ms {d['rps']:8.1f}/s | "
                    f"http p50 {h['p50']:7.2f} ms p99 {h['p99']:7.2f} ms {h['rps']:8.1f}/s | "
                    f"p50 overhead {h['p50'] - d['p50']:+.2f} ms",
                    flush=True,
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", default="wine,fashion,bbc,words")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=("direct", "http"))
    parser.add_argument("--run", type=int)
    parser.add_argument("--port", type=int)
    parser.add_argument("--labels")
    parser.add_argument("--with-key", action="store_true", help="users exist: every request sends an API key")
    parser.add_argument("--api-key", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 16 <= args.requests <= 10_000:
        raise SystemExit("--requests must be from 16 to 10,000")
    if args.child == "direct":
        print(json.dumps(child_direct(args)))
    elif args.child == "http":
        print(json.dumps(child_http(args)))
    else:
        rows = measure(args.samples.split(","), args.requests, args.repeats, args.with_key)
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
