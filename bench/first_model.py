"""From data to a shown prediction with the defaults: each Home sample, 600 small digit images,
2,000 BBC News texts and 1,500 clothes pictures of 192 px, every trial in a fresh ASCENT_HOME
with a real worker.

A trial times, in fresh processes: adding the data and queueing the run as the Home page's
sample button does (or `datasets add` + `train` for the two sets), the worker training and
exporting it, and `predict` on one input. It reports the medians over the trials, the best
validation metric and the run's own log of its plan.

    python bench/first_model.py [--repeats 3] [--only fashion,digits600] [--baseline CHECKOUT]

--baseline runs the same trials in another checkout (e.g. `git worktree add /tmp/base aae82c7`)
in the same run, so the figures compare on one machine under one load. `clothes192` trains at
the fitted size, which its time budget may lower; `clothes192-fixed` gives `--image-size 192`.
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

SAMPLE_KEYS = ("wine", "diabetes", "fashion", "bbc", "words")
SETS = ("digits600", "bbc2000", "clothes192", "clothes192-fixed")


def _python(code: str, env: dict[str, str], root: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env={**env, "PYTHONPATH": str(root)},
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr else "failed")
    return done.stdout.strip().splitlines()[-1]


def _cli(argv: list[str], env: dict[str, str], root: Path) -> dict:  # type: ignore[type-arg]
    done = subprocess.run(
        [sys.executable, "-m", "core", *argv, "--json"], cwd=root, env={**env, "PYTHONPATH": str(root)},
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _inputs(key: str, folder: Path) -> list[str]:
    """`predict` arguments for one input of each data set."""
    import numpy as np

    if key in ("wine", "diabetes"):
        from core.data.samples import sklearn_csv

        rows = folder / f"{key}-rows.csv"
        import pandas as pd

        frame = pd.read_csv(sklearn_csv(key, folder / f"{key}.csv"))
        frame.drop(columns="target").head(1).to_csv(rows, index=False)
        return [str(rows)]
    if key in ("fashion", "digits600") or key.startswith("clothes192"):
        from PIL import Image

        image = folder / "one.png"
        if key.startswith("clothes192"):
            from core.data.samples import fashion_mnist

            images, _ = fashion_mnist("t10k")
            Image.fromarray(images[0]).resize((192, 192), Image.Resampling.BILINEAR).save(image)
        elif key == "fashion":
            from core.data.samples import fashion_mnist

            images, _ = fashion_mnist("t10k")
            Image.fromarray(images[0]).save(image)
        else:
            from sklearn.datasets import load_digits

            digit = (load_digits().images[-1] * 16).clip(0, 255).astype(np.uint8)
            Image.fromarray(digit).resize((32, 32), Image.Resampling.BILINEAR).convert("RGB").save(image)
        return [str(image)]
    if key in ("bbc", "bbc2000"):
        return ["--text", "Shares rose after the bank reported record profits for the quarter."]
    from core.data.samples import _espeak

    clip = folder / "yes.wav"
    _espeak("yes", "en-us", 150, 50, clip)
    return [str(clip)]


def _digits_zip(dest: Path, per_class: int = 60) -> Path:
    """600 of scikit-learn's 8x8 digits, scaled to 32 px RGB PNGs in class folders."""
    import io
    import zipfile

    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    with zipfile.ZipFile(dest, "w") as zf:
        for label in range(10):
            for n, i in enumerate(np.flatnonzero(digits.target == label)[:per_class]):
                pixels = (digits.images[i] * 16).clip(0, 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(pixels).resize((32, 32), Image.Resampling.BILINEAR).convert("RGB").save(
                    buf, "PNG"
                )
                zf.writestr(f"digits/{label}/{n}.png", buf.getvalue())
    return dest


def _clothes_zip(dest: Path, per_class: int = 150, side: int = 192) -> Path:
    """1,500 Fashion-MNIST training pictures, 150 of each class, scaled to `side` px PNGs."""
    import io
    import zipfile

    import numpy as np
    from PIL import Image

    from core.data.samples import FASHION_MNIST_CLASSES, fashion_mnist

    images, labels = fashion_mnist("train")
    with zipfile.ZipFile(dest, "w") as zf:
        for label, name in enumerate(FASHION_MNIST_CLASSES):
            for n, i in enumerate(np.flatnonzero(labels == label)[:per_class]):
                buf = io.BytesIO()
                Image.fromarray(images[i]).resize((side, side), Image.Resampling.BILINEAR).save(buf, "PNG")
                zf.writestr(f"clothes/{name}/{n}.png", buf.getvalue())
    return dest


def trial(key: str, root: Path, folder: Path) -> dict[str, float | str]:
    home = folder / "home"
    env = {**os.environ, "ASCENT_HOME": str(home), "ASCENT_WORKER_IDLE_EXIT_S": "5"}
    env.pop("ASCENT_DATABASE_URL", None)
    predict_args = _inputs(key, folder)
    if key == "digits600":
        data = _digits_zip(folder / "digits.zip")
    elif key == "bbc2000":
        from core.data.samples import bbc_news_csv

        data = bbc_news_csv(folder / "bbc.csv", per_class=400, chars=400)
    elif key.startswith("clothes192"):
        data = _clothes_zip(folder / "clothes.zip")
    began = time.perf_counter()
    if key in SAMPLE_KEYS:
        code = (
            "from core.config import database; database()\n"
            "from core import jobs\n"
            "from core.data.samples import SAMPLES, add_sample\n"
            f"ds = add_sample({key!r})\n"
            f"run = jobs.submit(jobs.config_for(ds.id, **SAMPLES[{key!r}].quick_start))\n"
            "print(run.id)"
        )
        run_id = int(_python(code, env, root))
        run = _wait(run_id, env, root)
    else:
        ds = _cli(["datasets", "add", str(data)], env, root)
        size = ["--image-size", "192"] if key.endswith("-fixed") else []
        run = _cli(["train", "--dataset", str(ds["id"]), *size, "--wait"], env, root)
    trained = time.perf_counter() - began
    _cli(["predict", "--run", str(run["id"]), *predict_args], env, root)
    total = time.perf_counter() - began
    best = run.get("best_metrics") or {}
    metric = next((k for k in ("val_accuracy", "val_r2") if k in best), "")
    log = (home / "runs" / str(run["id"]) / "run.log").read_text()
    plan = " / ".join(line for line in log.splitlines() if line.startswith("time budget:"))
    return {"seconds": total, "trained": trained, "metric": metric, "value": best.get(metric, float("nan")),
            "status": run["status"], "plan": plan}  # fmt: skip


def _wait(run_id: int, env: dict[str, str], root: Path) -> dict:  # type: ignore[type-arg]
    code = (
        "from core.config import database; database()\n"
        "from core import jobs\n"
        f"jobs.ensure_worker(); jobs.wait({run_id}); print('ok')"
    )
    _python(code, env, root)
    return _cli(["runs", "show", str(run_id)], env, root)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", help="comma-separated: " + ", ".join((*SAMPLE_KEYS, *SETS)))
    parser.add_argument("--baseline", type=Path, help="another checkout to measure in the same run")
    a = parser.parse_args()
    keys = a.only.split(",") if a.only else [*SAMPLE_KEYS, *SETS]
    roots = {"now": ROOT, **({"baseline": a.baseline.resolve()} if a.baseline else {})}
    sys.path.insert(0, str(ROOT))
    print(f"{'set':<10} {'checkout':<9} {'seconds':>8} {'trained':>8}  metric")
    for key in keys:
        for label, root in roots.items():
            results = []
            for _ in range(a.repeats):
                with tempfile.TemporaryDirectory() as tmp:
                    results.append(trial(key, root, Path(tmp)))
            seconds = statistics.median(float(r["seconds"]) for r in results)
            trained = statistics.median(float(r["trained"]) for r in results)
            values = ", ".join(f"{float(r['value']):.3f}" for r in results)
            print(
                f"{key:<10} {label:<9} {seconds:8.1f} {trained:8.1f}  {results[0]['metric']} {values}"
                f"  [{', '.join(str(r['status']) for r in results)}]",
                flush=True,
            )
            if results[0]["plan"]:
                print(f"{'':<20} {results[0]['plan']}", flush=True)


if __name__ == "__main__":
    main()
