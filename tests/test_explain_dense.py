"""Per-box and per-class heatmaps of detection and segmentation runs: on pictures of red and blue
squares, the evidence for each box lies in that box and for each class on its pixels, by
Grad-CAM and by integrated gradients; `python -m core explain` writes the pictures and says how
much of the evidence lies inside (the Predict page's panel: test_e2e.py)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from core import jobs
from core.data.ingest import ingest_file
from core.explain import DenseExplainer
from tests.conftest import train_here
from tests.test_explain_maps import _explain, _png

SIZE = 64
SIDE = 20
COLOURS = ((230, 40, 40), (40, 60, 230))  # red, blue
DETECTION, SEGMENTATION = "object-detection", "semantic-segmentation"


def _scene(rng: np.random.Generator, spots: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Grey noise with a square of class c (0 red, 1 blue) at each (c, row, column); its mask."""
    image = rng.integers(60, 110, (SIZE, SIZE, 3)).astype(np.uint8)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    for c, r, col in spots:
        image[r : r + SIDE, col : col + SIDE] = COLOURS[c]
        mask[r : r + SIDE, col : col + SIDE] = c + 1
    return image, mask


def _spots(rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """One or two squares of random classes, apart."""
    found: list[tuple[int, int, int]] = []
    while len(found) < 1 + int(rng.integers(0, 2)):
        r, col = int(rng.integers(0, SIZE - SIDE)), int(rng.integers(0, SIZE - SIDE))
        if all(abs(r - a) >= SIDE or abs(col - b) >= SIDE for _, a, b in found):
            found.append((int(rng.integers(0, 2)), r, col))
    return found


def _zip(path: Path, task: str, n: int = 64) -> Path:
    rng = np.random.default_rng(0)
    coco: dict[str, list[dict[str, object]]] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": 1, "name": "red"}, {"id": 2, "name": "blue"}],
    }
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(n):
            spots = _spots(rng)
            image, mask = _scene(rng, spots)
            zf.writestr(f"images/{i}.png", _png(image))
            if task == SEGMENTATION:
                zf.writestr(f"masks/{i}.png", _png(mask))
                continue
            coco["images"].append(
                {"id": i + 1, "file_name": f"images/{i}.png", "width": SIZE, "height": SIZE}
            )
            for c, r, col in spots:
                coco["annotations"].append(
                    {"id": len(coco["annotations"]) + 1, "image_id": i + 1, "category_id": c + 1,
                     "bbox": [col, r, SIDE, SIDE], "area": SIDE * SIDE, "iscrowd": 0}
                )  # fmt: skip
        if task == SEGMENTATION:
            zf.writestr("classes.txt", "background\nred\nblue\n")
        else:
            zf.writestr("annotations.json", json.dumps(coco))
    return path


LAYOUTS = (  # (class, row, column) of a red and a blue square, far apart
    [(0, 2, 42), (1, 42, 4)],
    [(1, 4, 4), (0, 40, 40)],
    [(0, 40, 2), (1, 2, 36)],
)


def _own_and_other(heat: np.ndarray, layout: list[tuple[int, int, int]], c: int) -> tuple[float, float]:
    """The heatmap's shares on the square of class c and on the other square."""
    on = {k: float(heat[r : r + SIDE, col : col + SIDE].sum() / heat.sum()) for k, r, col in layout}
    return on[c], on[1 - c]


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return w * h / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h)


def _trained(tmp_path: Path, task: str, epochs: int) -> int:
    ds = ingest_file(_zip(tmp_path / "squares.zip", task), task=task)
    run = jobs.submit(jobs.config_for(ds.id, image_size=SIZE, epochs=epochs, batch_size=8, seed=0)).id
    train_here(run)
    return run


def _check(
    shares: dict[str, list[tuple[float, float]]], each: dict[str, float], mean: dict[str, float]
) -> None:
    """Each explanation puts `each[method]` times more of its evidence on its own square than on
    the other one, and on average `mean[method]` times more."""
    for method, found in shares.items():
        own, other = np.array(found).T
        assert (own > each[method] * other).all(), (method, own.round(3), other.round(3))
        assert own.mean() > mean[method] * other.mean(), (method, own.round(3), other.round(3))


def test_the_evidence_for_each_box_lies_in_it(home: Path, tmp_path: Path) -> None:
    run = _trained(tmp_path, DETECTION, 8)
    explainer = DenseExplainer(run)
    assert explainer.methods == ("grad-cam", "integrated-gradients")
    rng = np.random.default_rng(5)
    shares: dict[str, list[tuple[float, float]]] = {m: [] for m in explainer.methods}
    for layout in LAYOUTS:
        image, _ = _scene(rng, layout)
        x = explainer.prepare(_png(image))
        parts = explainer.parts(x)  # boxes scoring the studio's default 25 % or more
        assert parts and all(p.score >= 0.25 for p in parts) and len(parts) <= 4, parts
        for c, r, col in layout:  # the best box of each class is on its square
            part = next(p for p in parts if p.index == c)
            assert part.box is not None and _iou(part.box, (col, r, col + SIDE, r + SIDE)) > 0.4, part.box
            for method in explainer.methods:
                e = explainer.explain(x, part, method=method)
                own, other = _own_and_other(e.heatmap, layout, c)
                shares[method].append((own, other))
                assert e.heatmap.shape == (SIZE, SIZE) and e.heatmap.max() == 1.0 and e.heatmap.min() >= 0
                assert e.evaluations == (1 if method == "grad-cam" else 32)
                if method == "grad-cam":  # most of it inside the box the model drew
                    assert e.inside > 0.5, (layout, part.label, e.inside)
    # Measured (seeds 0, 1): Grad-CAM 0.62-0.72 on its own square, 0.08-0.24 on the other;
    # integrated gradients 0.21-0.44 and 0.04-0.07.
    _check(shares, each={"grad-cam": 2.0, "integrated-gradients": 2.0},
           mean={"grad-cam": 3.0, "integrated-gradients": 4.0})  # fmt: skip
    assert [p.label for p in explainer.parts(x, label="blue")] == ["blue"]

    # The command line: one picture per box, the share of the evidence inside each said.
    files = [tmp_path / "two.png", tmp_path / "wide.png"]
    image, _ = _scene(rng, LAYOUTS[0])
    _png(image, files[0])
    _png(np.kron(image, np.ones((2, 3, 1), np.uint8)), files[1])  # 192 x 128: boxes scale with it
    out = tmp_path / "why"
    done = _explain(run, *map(str, files), "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["method"] == "Grad-CAM on the merged stride-4 features the heads read (16x16)"
    assert doc["threshold"] == 0.25
    small, wide = (sorted(f["parts"], key=lambda p: p["label"]) for f in doc["explanations"])
    assert [p["label"] for p in small] == ["blue", "red"] == [p["label"] for p in wide]
    for a, b in zip(small, wide, strict=True):
        assert (
            _iou(tuple(b["box"]), (a["box"][0] * 3, a["box"][1] * 2, a["box"][2] * 3, a["box"][3] * 2)) > 0.95
        )
        assert a["inside"] > 0.5 and abs(a["inside"] - b["inside"]) < 1e-6
        picture = Path(b["picture"])
        assert (
            picture.parent == out
            and picture.name.startswith("wide-")
            and picture.name.endswith("-grad-cam.png")
        )
        with Image.open(picture) as drawn:  # the original's shape, its longer side 320 px
            assert drawn.size == (320, 213) and drawn.mode == "RGB"
    done = _explain(
        run, str(files[0]), "--label", "red", "--threshold", "0.3", "--method", "integrated-gradients"
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "integrated gradients from a black image, 32 steps"
    assert len(lines) == 2 and " red " in lines[1] and "of the evidence inside the box" in lines[1]
    assert (jobs.run_dir(run) / "explanations" / "two-1-red-integrated-gradients.png").is_file()
    done = _explain(run, str(files[0]), "--threshold", "0.99")
    assert done.returncode == 0 and done.stdout.strip().endswith("no box scores 99% or more"), done.stdout


def test_the_evidence_for_each_class_lies_on_its_pixels(home: Path, tmp_path: Path) -> None:
    run = _trained(tmp_path, SEGMENTATION, 20)
    explainer = DenseExplainer(run)
    rng = np.random.default_rng(5)
    shares: dict[str, list[tuple[float, float]]] = {m: [] for m in explainer.methods}
    for layout in LAYOUTS:
        image, mask = _scene(rng, layout)
        x = explainer.prepare(_png(image))
        parts = explainer.parts(x)  # every class on 1 % of the pixels or more, the background last
        assert parts[-1].label == "background" and len(parts) == 3
        for c, _, _ in layout:
            part = next(p for p in parts if p.index == c + 1)
            truth = mask == c + 1
            overlap = (part.region & truth).sum() / (part.region | truth).sum()  # the model's mask
            assert overlap > 0.25, (layout, part.label, overlap)
            assert abs(part.score - part.region.mean()) < 1e-9
            for method in explainer.methods:
                e = explainer.explain(x, part, method=method)
                shares[method].append(_own_and_other(e.heatmap, layout, c))
    # Measured (seeds 0, 1): Grad-CAM 0.38-0.71 on its own square, 0.00 on the other;
    # integrated gradients 0.10-0.22 and 0.03-0.11, and in CI (one math thread per process)
    # 0.08-0.24 against 0.03-0.11 with one class's square below the other's: for integrated
    # gradients only the average is held, at 1.5 times.
    _check(shares, each={"grad-cam": 3.0, "integrated-gradients": 0.0},
           mean={"grad-cam": 10.0, "integrated-gradients": 1.5})  # fmt: skip

    out = tmp_path / "why"
    file = tmp_path / "scene.png"
    _png(_scene(rng, LAYOUTS[1])[0], file)
    done = _explain(run, str(file), "--label", "red", "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["method"] == "Grad-CAM on the head's stride-16 features (4x4)" and doc["threshold"] is None
    (part,) = doc["explanations"][0]["parts"]
    assert part["label"] == "red" and 0.02 < part["share"] < 0.2 and part["inside"] > 0.3, part
    with Image.open(part["picture"]) as drawn:
        pixels = np.asarray(drawn)
    assert drawn.size == (320, 320) and ((pixels == (0, 229, 255)).all(axis=-1)).sum() > 100  # outlined
