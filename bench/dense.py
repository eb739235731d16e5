"""Detection and segmentation on the Home samples (300 synthetic scenes each): what the quick
start reaches, how long it takes, and what longer or larger runs add.

Each trial runs in a fresh ASCENT_HOME with a real worker, as the Home page's sample button does:
the sample is built and added, a run is queued with the sample's quick-start settings (plus the
trial's overrides), the worker trains and exports it, and `predict` runs on one scene. Reported:
the best validation metrics (COCO mAP at IoU 0.5 and 0.5:0.95; mean IoU and pixel accuracy), the
export check's agreement, seconds from the click to the prediction, medians over `--seeds`.
With `--certify`, each trained run's certificate is then measured (`python -m core export
--variants fp32,int8,fp16`, outside the timed seconds) and its table printed.

    python bench/dense.py [--seeds 0,1,2] [--only boxes,masks,boxes-20,masks-192] [--certify]
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# name: (sample key, overrides of its quick start)
TRIALS: dict[str, tuple[str, dict[str, Any]]] = {
    "boxes": ("scenes-boxes", {}),
    "masks": ("scenes-masks", {}),
    "boxes-20": ("scenes-boxes", {"epochs": 20}),
    "masks-192": ("scenes-masks", {"image_size": 192}),
}
METRICS = {
    "scenes-boxes": ("val_map50", "val_map", "export_box_agreement"),
    "scenes-masks": ("val_miou", "val_pixel_accuracy", "export_pixel_agreement"),
}


def _run(argv: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        argv, cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=3600
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])}: {done.stderr.strip()[-500:]}")
    return done.stdout.strip()


def trial(name: str, seed: int, certify: bool = False) -> dict[str, Any]:
    key, overrides = TRIALS[name]
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "ASCENT_HOME": home, "ASCENT_DEVICE": "cpu"}
        env.pop("ASCENT_DATABASE_URL", None)
        settings = json.dumps({**overrides, "seed": seed})
        began = time.perf_counter()
        code = (
            "import json; from core import jobs; from core.data.samples import SAMPLES, add_sample\n"
            f"ds = add_sample({key!r})\n"
            f"run = jobs.submit(jobs.config_for(ds.id, **{{**SAMPLES[{key!r}].quick_start, **json.loads({settings!r})}}))\n"
            "print(json.dumps({'run': run.id, 'path': ds.path}))"
        )
        queued = json.loads(_run([sys.executable, "-c", code], env).splitlines()[-1])
        _run([sys.executable, "-m", "core", "worker", "--idle-exit", "1", "--poll", "0.2"], env)
        shown = json.loads(
            _run([sys.executable, "-m", "core", "runs", "show", str(queued["run"]), "--json"], env)
        )
        if shown["status"] != "succeeded":
            raise RuntimeError(f"{name}: run {shown['status']}: {shown['error']}")
        image = sorted((Path(queued["path"]) / "images").rglob("*.png"))[0]
        out = Path(home) / "masks"
        _run(
            [
                sys.executable,
                "-m",
                "core",
                "predict",
                "--run",
                str(queued["run"]),
                str(image),
                "--out",
                str(out),
                "--json",
            ],
            env,
        )
        seconds = time.perf_counter() - began
        if certify:
            argv = ["export", "--run", str(queued["run"]), "--variants", "fp32,int8,fp16"]
            print(f"{name} seed {seed}:\n" + _run([sys.executable, "-m", "core", *argv], env), flush=True)
        main, second, agreement = METRICS[key]
        best = {
            main: shown["best_metrics"][main],
            f"last {second}": shown["metrics"][second],
            agreement: shown["metrics"][agreement],
        }
        return {"trial": name, "seed": seed, "seconds": seconds, **best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--only", default="boxes,masks")
    parser.add_argument("--certify", action="store_true", help="measure each run's certificate too")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for name in args.only.split(","):
        results = [trial(name, seed, args.certify) for seed in seeds]
        keys = [k for k in results[0] if k not in ("trial", "seed")]
        row = {
            "trial": name,
            "seeds": len(seeds),
            **{k: statistics.median(r[k] for r in results) for k in keys},
        }
        rows.append(row)
        shown = "  ".join(
            f"{k} {v:.3f}" if k != "seconds" else f"{v:.0f} s"
            for k, v in row.items()
            if k not in ("trial", "seeds")
        )
        print(f"{name:<10} {shown}", flush=True)
    print(f"{os.cpu_count()} CPUs; 1-minute load average at the end {os.getloadavg()[0]:.2f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
