"""Boxes and masks drawn over images: what the Datasets, Runs and Predict pages show for
detection and segmentation (labels are checked by eye before they are trusted)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.runtime import load_original, palette
from db.queries import DatasetInfo

PER_CLASS = 4  # images per class in a dataset's preview


def _colour(index: int, n: int) -> tuple[int, int, int]:
    """Class `index`'s colour in palette(n) (0 is background in masks; boxes skip black)."""
    return palette(max(n, 2) + 1)[index + 1]


def draw_boxes(
    image: np.ndarray,
    boxes: Sequence[Sequence[float]],
    labels: Sequence[int],
    classes: Sequence[str],
    scores: Sequence[float] | None = None,
    *,
    dashed: bool = False,
    min_side: int = 0,
) -> np.ndarray:
    """`image` (uint8 HWC RGB) with each box outlined in its class's colour and captioned with
    the class (and score); `dashed` draws ground truth apart from predictions. An image whose
    shorter side is under `min_side` is enlarged first, so that a page showing it wide keeps
    the captions at reading size."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(image).convert("RGB")
    factor = max(1, -(-min_side // max(1, min(img.size))))
    if factor > 1:
        img = img.resize((img.width * factor, img.height * factor), Image.Resampling.BILINEAR)
        boxes = [[float(v) * factor for v in box] for box in boxes]
    draw = ImageDraw.Draw(img)
    width = max(1, round(min(img.size) / 160))
    font = _font(max(10, min(img.size) // 32))
    for i, (box, label) in enumerate(zip(boxes, labels, strict=True)):
        colour = _colour(int(label), len(classes))
        x1, y1, x2, y2 = (float(v) for v in box)
        if dashed:
            for t in range(0, 4):
                edge = [(x1, y1, x2, y1), (x2, y1, x2, y2), (x1, y2, x2, y2), (x1, y1, x1, y2)][t]
                length = max(abs(edge[2] - edge[0]), abs(edge[3] - edge[1]))
                steps = max(1, int(length // 6))
                for s in range(0, steps, 2):
                    a, b = s / steps, min(1.0, (s + 1) / steps)
                    draw.line(
                        [
                            (edge[0] + (edge[2] - edge[0]) * a, edge[1] + (edge[3] - edge[1]) * a),
                            (edge[0] + (edge[2] - edge[0]) * b, edge[1] + (edge[3] - edge[1]) * b),
                        ],
                        fill=colour,
                        width=width,
                    )
        else:
            draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        caption = str(classes[int(label)]) + (f" {scores[i]:.0%}" if scores is not None else "")
        left, top, right, bottom = draw.textbbox((x1, y1), caption, font=font)
        lift = bottom - top + 2
        y_text = y1 - lift if y1 - lift >= 0 else y1
        draw.rectangle([x1, y_text, x1 + right - left + 3, y_text + lift], fill=colour)
        draw.text((x1 + 2, y_text), caption, fill=(0, 0, 0), font=font)
    return np.asarray(img)


def _font(size: int) -> Any:
    """Pillow's built-in font at `size` px (its bitmap one where FreeType is missing)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (OSError, TypeError):
        return ImageFont.load_default()


def blend_mask(image: np.ndarray, mask: np.ndarray, n_classes: int, opacity: float = 0.5) -> np.ndarray:
    """`image` with each labelled pixel tinted in its class's palette colour; background (0)
    and ignored pixels (255) are left as they are."""
    colours = np.array(palette(max(n_classes, 1)) + [(0, 0, 0)] * (256 - max(n_classes, 1)), dtype=np.float32)
    tint = colours[mask]
    labelled = ((mask > 0) & (mask != 255))[..., None]
    out = image.astype(np.float32) * (1 - opacity * labelled) + tint * opacity * labelled
    return out.clip(0, 255).astype(np.uint8)


def scene_preview(dataset: DatasetInfo, per_class: int = PER_CLASS) -> dict[str, list[np.ndarray]]:
    """For each class, up to `per_class` of the dataset's images that hold it, with every box or
    mask drawn on them (images without any object under "no objects" / "background only")."""
    import pandas as pd

    root = Path(dataset.path)
    classes: list[str] = dataset.schema["classes"]
    index = pd.read_parquet(root / "index.parquet")
    detection = dataset.task == "object-detection"
    shown: dict[str, list[np.ndarray]] = {}
    if detection:
        boxes = pd.read_parquet(root / dataset.schema.get("boxes", "boxes.parquet"))
        by_image = dict(tuple(boxes.groupby("path")))
        lookup = {c: i for i, c in enumerate(classes)}
        for name in [*classes, "no objects"]:
            paths = (
                boxes.loc[boxes["label"] == name, "path"].drop_duplicates().head(per_class).tolist()
                if name != "no objects"
                else [p for p in index["path"] if p not in by_image][:per_class]
            )
            images = []
            for rel in paths:
                rows = by_image.get(rel)
                img = load_original(root / "images" / rel)
                if rows is not None:
                    img = draw_boxes(
                        img,
                        rows[["x1", "y1", "x2", "y2"]].to_numpy(),
                        rows["label"].map(lookup).tolist(),
                        classes,
                    )
                images.append(img)
            if images:
                shown[name] = images
        return shown
    # Masks are read in order until every class has its images: the first ones usually do.
    wanted: dict[int, list[np.ndarray]] = {
        k: [] for k in range(len(classes))
    }  # class 0: images holding nothing else
    for row in index.itertuples():
        if all(len(v) >= per_class for v in wanted.values()):
            break
        mask = _read_mask(root / "masks" / str(row.mask))
        held = [k for k in np.unique(mask).tolist() if 0 < k < len(classes)] or [0]
        takers = [k for k in held if len(wanted[k]) < per_class]
        if takers:
            shown_image = blend_mask(load_original(root / "images" / str(row.path)), mask, len(classes))
            for k in takers:
                wanted[k].append(shown_image)
    names = {0: "background only"}
    return {names.get(k, classes[k]): v for k, v in wanted.items() if v}


def _read_mask(path: Path) -> Any:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img, dtype=np.uint8)


def worst_detection(item: dict[str, Any], classes: Sequence[str]) -> np.ndarray:
    """A report's worst image (core.tasks.detection.detection_report) with its true boxes dashed
    and the found ones solid; a grey square when the image is gone."""
    try:
        image = load_original(item["file"])
    except Exception:
        return np.full((96, 96, 3), 200, np.uint8)
    truth = item["truth"]
    image = draw_boxes(image, [t[1:] for t in truth], [t[0] for t in truth], classes, dashed=True)
    found = item["found"]
    return draw_boxes(image, [f[2:] for f in found], [f[0] for f in found], classes, [f[1] for f in found])


def worst_segmentation(item: dict[str, Any], classes: Sequence[str], model: Any | None) -> list[np.ndarray]:
    """A report's worst image with its true mask, and with the exported model's mask (`model`, a
    core.runtime.Predictor: the report keeps no predicted masks); [] when the image is gone."""
    try:
        image = load_original(item["file"])
        truth = _read_mask(Path(item["mask"]))
    except Exception:
        return []
    pictures = [blend_mask(image, truth, len(classes))]
    if model is not None:
        pictures.append(blend_mask(image, model.segment(item["file"]).mask, len(classes)))
    return pictures
