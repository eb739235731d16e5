"""How well does the data doctor find labels flipped on purpose, and how long does it take?

For each dataset below a share of the labels (10 % by default) is moved to another class at
random (seeded), the file is added to a throwaway ASCENT_HOME and `python -m core doctor` runs
on it in a fresh process, twice: the first run computes the features, the second reads them
from the cache. Printed per dataset: items, flipped, precision of the top-k suspects with k the
number flipped (the flip rate is what random picks would reach), recall among all suspects,
out-of-sample accuracy, near-duplicate pairs found (five are planted among the images and the
texts: enlarged JPEG copies, texts without their first word) and the seconds of both runs.

    python bench/doctor.py [--share 0.1] [--seed 0]

Datasets: wine and digits (scikit-learn tables), Fashion-MNIST trousers/bags/sneakers/shirts
(600 images), BBC News (500 texts of five topics), spoken words (espeak-ng clips).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def flip(labels: list[str], share: float, rng: np.random.Generator) -> tuple[list[str], set[int]]:
    classes = sorted(set(labels))
    moved = rng.choice(len(labels), size=round(share * len(labels)), replace=False)
    out = list(labels)
    for i in moved:
        out[i] = str(rng.choice([c for c in classes if c != out[i]]))
    return out, {int(i) for i in moved}


def table(name: str, folder: Path, share: float, rng: np.random.Generator) -> tuple[Path, set[int]]:
    from sklearn import datasets

    frame = {"wine": datasets.load_wine, "digits": datasets.load_digits}[name](as_frame=True).frame
    frame["target"] = [f"class {v}" for v in frame["target"]]
    frame["target"], moved = flip(frame["target"].tolist(), share, rng)
    path = folder / f"{name}.csv"
    frame.to_csv(path, index=False)
    return path, moved


def images(folder: Path, share: float, rng: np.random.Generator) -> tuple[Path, set[str]]:
    from PIL import Image

    from core.data.samples import FASHION_MNIST_CLASSES, fashion_mnist

    pixels, labels = fashion_mnist("train")
    entries = []
    for name in ("trouser", "bag", "sneaker", "shirt"):
        rows = np.flatnonzero(labels == FASHION_MNIST_CLASSES.index(name))[:150]
        entries += [(name, int(i)) for i in rows]
    given, moved = flip([c for c, _ in entries], share, rng)
    path = folder / "clothes.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for (_, i), label in zip(entries, given, strict=True):
            buf = io.BytesIO()
            Image.fromarray(pixels[i], mode="L").save(buf, format="PNG")
            zf.writestr(f"clothes/{label}/{i}.png", buf.getvalue())
        # Planted near-duplicates: five images again, enlarged to 32 px and saved as JPEG.
        for k in range(0, 500, 100):
            label, i = entries[k]
            buf = io.BytesIO()
            Image.fromarray(pixels[i], mode="L").resize((32, 32)).save(buf, format="JPEG", quality=75)
            zf.writestr(f"clothes/{label}/copy-{i}.jpg", buf.getvalue())
    return path, {f"{entries[k][1]}.png" for k in moved}


def texts(folder: Path, share: float, rng: np.random.Generator) -> tuple[Path, set[int]]:
    from core.data.samples import bbc_news_csv

    path = bbc_news_csv(folder / "news.csv", per_class=100)
    frame = pd.read_csv(path)
    frame["label"], moved = flip(frame["label"].tolist(), share, rng)
    # Planted near-duplicates: five texts again with their first word dropped (items 500-504).
    copies = frame.iloc[[0, 100, 200, 300, 400]].copy()
    copies["text"] = copies["text"].map(lambda t: t.split(" ", 1)[-1])
    pd.concat([frame, copies], ignore_index=True).to_csv(path, index=False)
    return path, moved


def clips(folder: Path, share: float, rng: np.random.Generator) -> tuple[Path, set[str]]:
    from core.data.samples import spoken_words_zip

    source = spoken_words_zip(folder / "words-clean.zip", words=("yes", "no", "up", "down"))
    with zipfile.ZipFile(source) as zf:
        names = [n for n in zf.namelist() if n.endswith((".wav", ".flac"))]
        labels = [n.split("/")[-2] for n in names]
        given, moved = flip(labels, share, rng)
        path = folder / "words.zip"
        with zipfile.ZipFile(path, "w") as out:
            for n, label, was in zip(names, given, labels, strict=True):
                out.writestr(f"words/{label}/{was}-{Path(n).name}", zf.read(n))
    return path, {f"{labels[k]}-{Path(names[k]).name}" for k in moved}


def run(env: dict[str, str], *argv: str) -> tuple[dict, float]:  # type: ignore[type-arg]
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "core", *argv, "--json"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    return json.loads(done.stdout), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--share", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(
        f"{'dataset':<10} {'items':>6} {'flipped':>8} {'top-k precision':>16} {'recall':>7} {'accuracy':>9} {'pairs':>6} {'first s':>8} {'cached s':>9}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env = {**os.environ, "ASCENT_HOME": str(folder / "home"), "PYTHONPATH": str(ROOT)}
        os.environ["ASCENT_HOME"] = env["ASCENT_HOME"]
        rng = np.random.default_rng(args.seed)
        cases = [
            ("wine", *table("wine", folder, args.share, rng)),
            ("digits", *table("digits", folder, args.share, rng)),
            ("clothes", *images(folder, args.share, rng)),
            ("news", *texts(folder, args.share, rng)),
            ("words", *clips(folder, args.share, rng)),
        ]
        for name, path, moved in cases:
            added, _ = run(env, "datasets", "add", str(path))
            if isinstance(next(iter(moved)), str):  # file names: their items in the stored index
                index = pd.read_parquet(Path(added["path"]) / "index.parquet")
                moved = {i for i, p in enumerate(index["path"]) if Path(p).name in moved}
            report, first = run(env, "doctor", "--dataset", str(added["id"]), "--limit", "100000")
            _, cached = run(env, "doctor", "--dataset", str(added["id"]), "--limit", "100000")
            ranked = [s["item"] for s in report["label_issues"]]
            precision = len(set(ranked[: len(moved)]) & moved) / len(moved)
            recall = len(set(ranked) & moved) / len(moved)
            print(
                f"{name:<10} {report['items']:>6} {len(moved):>8} {precision:>16.2f} {recall:>7.2f} "
                f"{report['accuracy']:>9.3f} {report['duplicates_found']:>6} {first:>8.1f} {cached:>9.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
