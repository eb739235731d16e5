"""Synthetic scenes for detection and segmentation samples: Debian's Fashion-MNIST items pasted
onto the textures scikit-image ships, so every box and mask is exact (no download needed).

Each item is tinted, scaled 1-2x and placed without overlapping another; its mask is the item's
own pixels and its box their tight bounds. Detection scenes are written as a COCO zip,
segmentation scenes as `images/` + `masks/` + `classes.txt`, the formats users upload.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCENE_CLASSES = ("t-shirt", "trouser", "sneaker", "bag")
TEXTURES = ("brick", "grass", "gravel", "camera", "coffee", "astronaut", "rocket", "chelsea")
INK = 40  # Fashion-MNIST pixels above this are the item (its mask); the rest is background


@dataclass
class Scene:
    image: np.ndarray  # uint8 [H, W, 3]
    mask: np.ndarray  # uint8 [H, W]: 0 background, 1 + class index where an item is
    boxes: list[tuple[int, float, float, float, float]]  # class index, x1, y1, x2, y2 (pixels)


def _textures() -> list[np.ndarray]:
    from skimage import data

    out = []
    for name in TEXTURES:
        img = np.asarray(getattr(data, name)())
        out.append(np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3])
    return out


def _background(textures: list[np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    tex = textures[rng.integers(len(textures))]
    side = int(rng.integers(size, min(tex.shape[0], tex.shape[1]) + 1))
    y, x = rng.integers(0, tex.shape[0] - side + 1), rng.integers(0, tex.shape[1] - side + 1)
    crop = Image.fromarray(tex[y : y + side, x : x + side]).resize((size, size), Image.Resampling.BILINEAR)
    dim = rng.uniform(0.45, 0.8)  # keep the items the brightest things in the picture
    return (np.asarray(crop, dtype=np.float32) * dim).astype(np.uint8)


def make_scenes(
    n: int, *, size: int = 128, classes: tuple[str, ...] = SCENE_CLASSES, max_items: int = 3, seed: int = 0
) -> list[Scene]:
    """`n` scenes of `size` px with 1 to `max_items` items of `classes` each (some images get
    none: background for the detector too)."""
    from PIL import Image

    from core.data.samples import FASHION_MNIST_CLASSES, fashion_mnist

    images, labels = fashion_mnist("train")
    pools = [np.flatnonzero(labels == FASHION_MNIST_CLASSES.index(c)) for c in classes]
    textures = _textures()
    rng = np.random.default_rng(seed)
    scenes = []
    for i in range(n):
        canvas = _background(textures, size, rng).astype(np.float32)
        mask = np.zeros((size, size), np.uint8)
        boxes: list[tuple[int, float, float, float, float]] = []
        count = 0 if i % 10 == 9 else int(rng.integers(1, max_items + 1))
        for _ in range(count):
            c = int(rng.integers(len(classes)))
            item = images[pools[c][rng.integers(len(pools[c]))]]
            side = int(rng.integers(28, 57))
            scaled = np.asarray(
                Image.fromarray(item).resize((side, side), Image.Resampling.BILINEAR), np.float32
            )
            ink = scaled > INK
            ys, xs = np.nonzero(ink)
            if not len(xs):
                continue
            for _attempt in range(20):
                x0, y0 = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
                if not mask[y0 : y0 + side, x0 : x0 + side][ink].any():
                    break
            else:
                continue
            colour = rng.uniform(120, 255, 3).astype(np.float32)
            alpha = np.clip(scaled / 255.0 * 1.4, 0, 1)[..., None] * ink[..., None]
            region = canvas[y0 : y0 + side, x0 : x0 + side]
            canvas[y0 : y0 + side, x0 : x0 + side] = (
                region * (1 - alpha) + colour * (0.35 + 0.65 * scaled[..., None] / 255) * alpha
            )
            mask[y0 : y0 + side, x0 : x0 + side][ink] = c + 1
            boxes.append(
                (
                    c,
                    float(x0 + xs.min()),
                    float(y0 + ys.min()),
                    float(x0 + xs.max() + 1),
                    float(y0 + ys.max() + 1),
                )
            )
        scenes.append(Scene(canvas.clip(0, 255).astype(np.uint8), mask, boxes))
    return scenes


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def detection_zip(
    dest: Path, n: int, *, size: int = 128, seed: int = 0, classes: tuple[str, ...] = SCENE_CLASSES
) -> Path:
    """A COCO detection zip: `annotations.json` and `images/scene-NNNN.png`."""
    scenes = make_scenes(n, size=size, classes=classes, seed=seed)
    coco: dict[str, list[dict[str, object]]] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": c + 1, "name": name} for c, name in enumerate(classes)],
    }
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, scene in enumerate(scenes):
            name = f"scene-{i:04d}.png"
            zf.writestr(f"images/{name}", _png(scene.image))
            coco["images"].append({"id": i + 1, "file_name": f"images/{name}", "width": size, "height": size})
            for c, x1, y1, x2, y2 in scene.boxes:
                coco["annotations"].append(
                    {
                        "id": len(coco["annotations"]) + 1,
                        "image_id": i + 1,
                        "category_id": c + 1,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": 0,
                    }
                )
        zf.writestr("annotations.json", json.dumps(coco))
    return dest


def segmentation_zip(
    dest: Path, n: int, *, size: int = 128, seed: int = 0, classes: tuple[str, ...] = SCENE_CLASSES
) -> Path:
    """A segmentation zip: `images/scene-NNNN.png`, index masks `masks/scene-NNNN.png` (0 is
    background, 1 + k the k-th class) and `classes.txt`."""
    scenes = make_scenes(n, size=size, classes=classes, seed=seed)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, scene in enumerate(scenes):
            zf.writestr(f"images/scene-{i:04d}.png", _png(scene.image))
            zf.writestr(f"masks/scene-{i:04d}.png", _png(scene.mask))
        zf.writestr("classes.txt", "\n".join(("background", *classes)) + "\n")
    return dest
