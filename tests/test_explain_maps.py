"""Heatmaps of image and audio predictions: on pictures where a red square anywhere makes the
class, Grad-CAM and integrated gradients put the evidence in the square's corner; on clips where
a tone's pitch makes the class, the evidence lies in the tone's time and band. `python -m core
explain` writes the pictures and says where (the Predict page's panel: test_e2e.py)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from core import jobs
from core.data.ingest import ingest_file
from core.explain import MapExplainer, strongest_region, where_in_clip, where_in_image
from tests.conftest import ROOT, train_here

SIZE = 32
SIDE = SIZE // 4  # the square's side
RATE = 16_000


def _picture(rng: np.random.Generator, corner: tuple[int, int] | None) -> np.ndarray:
    """Grey noise, and a red square with its top-left pixel at `corner` (None: no square)."""
    image = rng.integers(90, 140, (SIZE, SIZE, 3)).astype(np.uint8)
    if corner is not None:
        r, c = corner
        image[r : r + SIDE, c : c + SIDE] = (230, 40, 40)
    return image


def _png(image: np.ndarray, path: Path | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    if path is not None:
        path.write_bytes(buf.getvalue())
    return buf.getvalue()


def _shapes_zip(path: Path, per_class: int = 40) -> Path:
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(per_class):
            corner = (int(rng.integers(0, SIZE - SIDE)), int(rng.integers(0, SIZE - SIDE)))
            zf.writestr(f"shapes/square/{i}.png", _png(_picture(rng, corner)))
            zf.writestr(f"shapes/plain/{i}.png", _png(_picture(rng, None)))
    return path


def _explain(run: int, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core", "explain", "--run", str(run), *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )


def test_the_evidence_for_a_square_lies_in_its_corner(home: Path, tmp_path: Path) -> None:
    ds = ingest_file(_shapes_zip(tmp_path / "shapes.zip"))
    run = jobs.submit(
        jobs.config_for(ds.id, model="small-cnn", epochs=6, image_size=SIZE, batch_size=16, seed=0)
    ).id
    train_here(run)
    explainer = MapExplainer(run)
    assert explainer.methods == ("grad-cam", "integrated-gradients")
    rng = np.random.default_rng(9)
    far = SIZE - SIDE
    half = SIZE // 2
    corners = {(0, 0): (0, 0), (0, far): (0, 1), (far, 0): (1, 0), (far, far): (1, 1)}
    for corner, (qr, qc) in corners.items():
        image = _picture(rng, corner)
        for method in explainer.methods:
            e = explainer.explain(image, method=method)
            assert e.label == "square" and e.probability > 0.5, (corner, method, e.probability)
            quadrant = e.heatmap[qr * half : (qr + 1) * half, qc * half : (qc + 1) * half]
            share = float(quadrant.sum() / e.heatmap.sum())
            assert share > 0.6, (corner, method, round(share, 3))
            assert e.heatmap.shape == (SIZE, SIZE) and e.heatmap.max() == 1.0 and e.heatmap.min() >= 0
            assert e.evaluations == (1 if method == "grad-cam" else 32)

    # The command line: pictures written, where the evidence lies said, in words and in JSON.
    rng = np.random.default_rng(3)
    files = [tmp_path / "top-left.png", tmp_path / "bottom-right.png"]
    _png(_picture(rng, (1, 1)), files[0])
    _png(np.kron(_picture(rng, (far - 1, far - 1)), np.ones((3, 3, 1), np.uint8)), files[1])  # 96 px
    out = tmp_path / "why"
    done = _explain(run, *map(str, files), "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["method"] == "Grad-CAM on the deepest feature map of at least 4x4 cells (4x4)"
    found = doc["explanations"]
    assert [e["where"]["region"] for e in found] == ["the top left", "the bottom right"]
    assert [e["label"] for e in found] == ["square", "square"]
    for e, file in zip(found, files, strict=True):
        picture = Path(e["picture"])
        assert picture.parent == out and picture.name == f"{file.stem}-grad-cam.png"
        with Image.open(picture) as drawn:  # the original's shape, enlarged to 320 px
            assert drawn.size == (320, 320) and drawn.mode == "RGB"
    done = _explain(run, str(files[0]), "--method", "integrated-gradients")
    assert done.returncode == 0, done.stderr
    assert "the top left" in done.stdout and "integrated gradients from a black image" in done.stdout
    assert (jobs.run_dir(run) / "explanations" / "top-left-integrated-gradients.png").is_file()


def _tone(rng: np.random.Generator, hz: float, start: float) -> bytes:
    """A second of faint noise with a 0.2 s tone of `hz` from `start`, as a WAV file."""
    t = np.arange(RATE) / RATE
    wave = rng.normal(0, 0.02, RATE)
    on = (t >= start) & (t < start + 0.2)
    wave[on] += 0.4 * np.sin(2 * np.pi * hz * t[on])
    buf = io.BytesIO()
    sf.write(buf, wave.astype(np.float32), RATE, format="WAV")
    return buf.getvalue()


def test_the_evidence_for_a_pitch_lies_in_its_tone(home: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(tmp_path / "tones.zip", "w") as zf:
        for i in range(30):
            for name, hz in (("high", 3000), ("low", 300)):
                zf.writestr(f"tones/{name}/{i}.wav", _tone(rng, hz, float(rng.uniform(0, 0.8))))
    ds = ingest_file(tmp_path / "tones.zip")
    run = jobs.submit(jobs.config_for(ds.id, epochs=10, seed=0)).id
    train_here(run)
    explainer = MapExplainer(run)
    assert explainer.methods == ("integrated-gradients", "grad-cam")
    high = tmp_path / "high.wav"
    high.write_bytes(_tone(np.random.default_rng(5), 3000, 0.6))
    for method in explainer.methods:
        e = explainer.explain(explainer.prepare(high), method=method)
        assert e.label == "high"
        t0, t1, f0, f1 = where_in_clip(e.heatmap, RATE)
        assert 0.5 <= t0 < 0.7 < t1 <= 0.9 and f0 < 3000 < f1, (method, t0, t1, f0, f1)
        r0, r1, _, _ = strongest_region(e.heatmap)
        assert e.heatmap.shape[0] == 64 and 0 < r0 <= r1 < 63  # a band, not the whole range

    done = _explain(run, str(high), "--json")
    assert done.returncode == 0, done.stderr
    (found,) = json.loads(done.stdout)["explanations"]
    t0, t1 = found["where"]["seconds"]
    f0, f1 = found["where"]["hz"]
    assert t0 < 0.7 < t1 and f0 < 3000 < f1
    assert Path(found["picture"]) == jobs.run_dir(run) / "explanations" / "high-integrated-gradients.png"
    assert found["evaluations"] == 32
    done = _explain(run, str(high))
    assert f"high ({found['probability']:.1%}); strongest at {t0:.2f}-{t1:.2f} s" in done.stdout


def test_where_words_follow_the_peak() -> None:
    heat = np.zeros((30, 30), np.float32)
    heat[2:6, 24:28] = 1.0
    assert where_in_image(heat) == "the top right" and strongest_region(heat) == (2, 3, 24, 25)
    heat = np.zeros((30, 30), np.float32)
    heat[13:17, 13:17] = 1.0
    assert where_in_image(heat) == "the centre"
    heat = np.zeros((30, 30), np.float32)
    heat[25:29, 12:16] = 1.0
    assert where_in_image(heat) == "the bottom"
    heat = np.zeros((30, 30), np.float32)
    heat[13:17, 1:5] = 1.0
    assert where_in_image(heat) == "the left"
