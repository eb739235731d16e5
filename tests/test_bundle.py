"""Model bundles (`python -m core bundle`): each unzipped into a folder and run by its own
predict.py in a fresh virtualenv holding numpy and onnxruntime only, where it answers as the
studio's runtime (with Pillow, soundfile, scipy and tokenizers) does on the same inputs."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from PIL import Image

from core import bundle, certificate, jobs
from core.data import scenes
from core.data.ingest import ingest_file
from core.data.samples import bbc_news_csv
from core.runtime import Predictor
from tests.conftest import ROOT, train_here
from tests.test_explain_maps import SIZE, _picture, _png, _shapes_zip, _tone


def _bundle(run_id: int, dest: Path, *extra: str) -> Path:
    """The CLI's bundle, unzipped into `dest`: the folder it makes."""
    dest.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "core", "bundle", "--run", str(run_id), "--out", str(dest), *extra, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    made = json.loads(done.stdout)
    with zipfile.ZipFile(made["path"]) as z:
        (folder,) = {Path(n).parts[0] for n in z.namelist()}
        z.extractall(dest / "unzipped")
    return dest / "unzipped" / folder


def _bare(python: Path, folder: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "predict.py", *argv], cwd=folder, capture_output=True, text=True, timeout=300
    )


def _records(python: Path, folder: Path, *argv: str) -> list[dict[str, Any]]:
    done = _bare(python, folder, *argv, "--json")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_a_table_bundle_and_its_int8_variant_answer_in_a_bare_python(
    home: Path, data_dir: Path, tmp_path: Path, bare_python: Path
) -> None:
    wine = ingest_file(data_dir / "wine.csv")
    run = jobs.submit(jobs.config_for(wine.id, epochs=3)).id
    train_here(run)
    certificate.certify(run, ("fp32", "int8"))
    assert bundle.variants(run) == ["fp32", "int8"]

    folder = _bundle(run, tmp_path / "fp32")
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "ascent_runtime.py", "bundle.json", "example.csv", "labels.json", "model.onnx", "predict.py",
    ]  # fmt: skip
    assert (folder / "model.onnx").read_bytes() == (jobs.run_dir(run) / "model.onnx").read_bytes()
    readme = (folder / "README.md").read_text()
    assert "python predict.py example.csv" in readme and "| flavanoids | number |" in readme
    assert "| fp32 (this bundle) |" in readme and "| int8 |" in readme
    assert "The fp32 model.onnx against PyTorch on 36 validation samples: max |ONNX - PyTorch|" in readme
    rows = pd.read_csv(folder / "example.csv")
    assert len(rows) == 5 and "target" not in rows.columns

    studio = Predictor(jobs.run_dir(run) / "model.onnx").predict_table(rows.to_dict("list"))
    bare = _records(bare_python, folder, "example.csv")
    assert [r["label"] for r in bare] == [p.label for p in studio]
    for r, p in zip(bare, studio, strict=True):
        assert r["probabilities"] == pytest.approx(p.probabilities, abs=1e-6)
    lines = _bare(bare_python, folder, "example.csv").stdout.splitlines()
    assert lines[0] == f"{studio[0].label} ({studio[0].probabilities[studio[0].label]:.3f})"

    # The run page's Python snippet, run as it is in the unzipped folder.
    (folder / "snippet.py").write_text(bundle.snippets(run)["python"])
    said = subprocess.run([bare_python, "snippet.py"], cwd=folder, capture_output=True, text=True, check=True)
    assert said.stdout.split()[0] == studio[0].label

    # Bad input: one line, exit code 2.
    rows.drop(columns="proline").to_csv(tmp_path / "short.csv", index=False)
    for argv, words in (
        ([str(tmp_path / "short.csv")], "error: missing column(s) proline"),
        (["--text", "a wine"], "error: a tabular-classification model takes CSV files of rows"),
        (["nowhere.csv"], "error: nowhere.csv is not a file"),
    ):
        done = _bare(bare_python, folder, *argv)
        assert done.returncode == 2 and done.stderr.startswith(words) and done.stderr.count("\n") == 1, (
            done.stderr
        )

    int8 = _bundle(run, tmp_path / "int8", "--variant", "int8")
    variant = next(r for r in certificate.certificate(run) if r.variant == "int8")
    assert (int8 / "model.onnx").read_bytes() == Path(variant.path).read_bytes()
    assert "| int8 (this bundle) |" in (int8 / "README.md").read_text()
    quantized = Predictor(variant.path).predict_table(rows.to_dict("list"))
    assert [r["label"] for r in _records(bare_python, int8, "example.csv")] == [p.label for p in quantized]


def test_image_and_clip_bundles_read_files_without_pillow_or_soundfile(
    home: Path, tmp_path: Path, bare_python: Path
) -> None:
    shapes = ingest_file(_shapes_zip(tmp_path / "shapes.zip", per_class=12))
    image = jobs.submit(jobs.config_for(shapes.id, model="small-cnn", epochs=1, image_size=SIZE)).id
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(tmp_path / "tones.zip", "w") as zf:
        for i in range(8):
            for name, hz in (("high", 3000), ("low", 300)):
                zf.writestr(f"tones/{name}/{i}.wav", _tone(rng, hz, float(rng.uniform(0, 0.8))))
    clip = jobs.submit(jobs.config_for(ingest_file(tmp_path / "tones.zip").id, epochs=1)).id
    train_here(image, clip)

    # Images: a PNG at the model's size (no resize: the very pixels), a larger one (resized by
    # the bundle's own bilinear), a BMP and a PPM.
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    square = _picture(rng, (4, 20))
    _png(square, pictures / "same.png")
    Image.fromarray(np.kron(square, np.ones((2, 2, 1), np.uint8))[:60, :50]).save(pictures / "larger.png")
    Image.fromarray(square).save(pictures / "square.bmp")
    Image.fromarray(square).save(pictures / "square.ppm")
    folder = _bundle(image, tmp_path / "image")
    files = sorted(pictures.iterdir())
    studio = Predictor(folder / "model.onnx").predict_images(files)
    bare = _records(bare_python, folder, *map(str, files))
    assert [r["file"] for r in bare] == [f.name for f in files]
    assert [r["label"] for r in bare] == [p.label for p in studio]
    for r, p, f in zip(bare, studio, files, strict=True):
        top = dict(map(tuple, r["top"]))
        exact = f.name != "larger.png"
        assert top == pytest.approx({k: p.probabilities[k] for k in top}, abs=1e-6 if exact else 0.02), f.name
    Image.fromarray(square).save(tmp_path / "photo.jpg")
    done = _bare(bare_python, folder, str(tmp_path / "photo.jpg"))
    assert done.returncode == 2
    assert done.stderr == (
        "error: photo.jpg: not a PNG, BMP or PPM image; other formats (JPEG, WebP, GIF) need Pillow: "
        "pip install pillow\n"
    )

    # Clips: WAV at the model's rate and at 44.1 kHz stereo (resampled by the bundle's own
    # polyphase filter); FLAC needs soundfile.
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "high.wav").write_bytes(_tone(np.random.default_rng(1), 3000, 0.3))
    t = np.arange(44_100) / 44_100
    low = np.where((t >= 0.5) & (t < 0.7), 0.4 * np.sin(2 * np.pi * 300 * t), 0.0).astype(np.float32)
    sf.write(clips / "low-44k.wav", np.stack([low, low], axis=1), 44_100)
    folder = _bundle(clip, tmp_path / "clip")
    files = sorted(clips.iterdir())
    studio = Predictor(folder / "model.onnx").predict_audio(files)
    bare = _records(bare_python, folder, *map(str, files))
    for r, p in zip(bare, studio, strict=True):
        assert r["label"] == p.label
        top = dict(map(tuple, r["top"]))
        assert top == pytest.approx({k: p.probabilities[k] for k in top}, abs=1e-5)
    sf.write(tmp_path / "clip.flac", low, 44_100)
    done = _bare(bare_python, folder, str(tmp_path / "clip.flac"))
    assert done.returncode == 2 and "reading FLAC needs soundfile: pip install soundfile" in done.stderr


def test_detection_segmentation_and_text_bundles_answer_as_the_studio(
    home: Path, tmp_path: Path, bare_python: Path
) -> None:
    boxes = ingest_file(scenes.detection_zip(tmp_path / "boxes.zip", 12, size=64, seed=3))
    masks = ingest_file(scenes.segmentation_zip(tmp_path / "masks.zip", 12, size=64, seed=5))
    news = ingest_file(
        bbc_news_csv(tmp_path / "bbc.csv", per_class=12, chars=200), task="text-classification"
    )
    detector = jobs.submit(jobs.config_for(boxes.id, epochs=1, image_size=64, batch_size=8)).id
    segmenter = jobs.submit(jobs.config_for(masks.id, epochs=1, image_size=64, batch_size=8)).id
    reader = jobs.submit(jobs.config_for(news.id, model="text-cnn", epochs=1)).id
    train_here(detector, segmenter, reader)

    scene = tmp_path / "scene.png"
    with zipfile.ZipFile(tmp_path / "boxes.zip") as z:
        scene.write_bytes(z.read(next(n for n in z.namelist() if n.endswith(".png"))))

    folder = _bundle(detector, tmp_path / "detector")
    model = Predictor(folder / "model.onnx")
    for threshold in ("0.0", "0.3"):
        (found,) = _records(bare_python, folder, str(scene), "--threshold", threshold)
        want = model.detect(scene, float(threshold))
        assert want or threshold == "0.3"  # no bar: every box the graph keeps, after one epoch too
        assert [b["label"] for b in found["boxes"]] == [b.label for b in want]
        for got, b in zip(found["boxes"], want, strict=True):
            assert got["box"] == pytest.approx(list(b.box), abs=1e-3) and got["score"] == pytest.approx(
                b.score, abs=1e-6
            )

    folder = _bundle(segmenter, tmp_path / "segmenter")
    (found,) = _records(bare_python, folder, str(scene), "--masks", str(tmp_path / "masks"))
    want = Predictor(folder / "model.onnx").segment(scene)
    assert len(np.unique(want.mask)) >= 2  # a mask of more than one class to compare
    assert found["shares"] == pytest.approx(
        {k: round(v, 4) for k, v in want.shares.items() if v > 0}, abs=1e-9
    )
    written = Image.open(found["mask"])
    assert written.mode == "P"
    np.testing.assert_array_equal(np.asarray(written), want.mask)

    folder = _bundle(reader, tmp_path / "reader")
    assert (folder / "tokenizer.json").is_file()
    texts = [
        "The striker scored twice in the cup final.",
        "Shares fell as the bank's profits dropped — café owners say",
    ]
    argv = [a for t in texts for a in ("--text", t)]
    studio = Predictor(folder / "model.onnx").predict_texts(texts)  # with the tokenizers library
    bare = _records(bare_python, folder, *argv)
    for r, p in zip(bare, studio, strict=True):
        assert r["label"] == p.label
        top = dict(map(tuple, r["top"]))
        assert top == pytest.approx({k: p.probabilities[k] for k in top}, abs=1e-6)
