"""Semantic-segmentation datasets from a zip: images/ + masks/ index PNGs named by classes.txt
(or a Pascal-style labelmap.txt), or COCO polygons drawn into such masks. Stored as
masks/<image path>.png, single-channel (mode L), value v = class v, 255 = ignore.

A mask of another size than its image, a value outside the class list, a mask without its
image, RGB or JPEG masks, RLE annotations and a dataset where no pixel is of a class other than
0 stop the ingest, naming the file. Images without a mask are left out and listed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from core.data import detection, images, layouts, stages
from core.data.layouts import folder, is_image, under
from core.errors import DatasetError

IGNORE = 255  # a mask value that marks pixels no class is learned from (void)
BACKGROUND = "background"  # class 0 of masks drawn from COCO polygons


@dataclasses.dataclass
class _Tally:
    """Pixels and images per mask value, over the masks seen so far."""

    pixels: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(256, np.int64))
    images: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(256, np.int64))
    background_only: int = 0

    def add(self, counts: np.ndarray) -> None:
        self.pixels += counts
        self.images += counts > 0
        if not counts[1:IGNORE].any():
            self.background_only += 1


def _labelmap_names(p: PurePosixPath, disk: Path) -> list[str]:
    """labelmap.txt (`name:r,g,b:parts:actions`, `#` comments): class i is the i-th line."""
    names = []
    for n, line in enumerate(layouts.read_text(p, disk).splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name = line.split(":", 1)[0].strip()
        if not name:
            raise DatasetError(f"{p} line {n} has no class name before its ':'")
        names.append(name)
    layouts.check_names(names, str(p))
    return names


def _classes(files: dict[PurePosixPath, Path]) -> tuple[list[str], PurePosixPath]:
    found = layouts.find_file(files, "classes.txt", "masks/classes.txt")
    if found is not None:
        names = layouts.read_names(found, files[found])
    else:
        found = layouts.find_file(files, "labelmap.txt", "masks/labelmap.txt")
        if found is None:
            raise DatasetError(
                "the masks need class names: add classes.txt (one name a line; line 1 is class 0, "
                "usually background)"
            )
        names = _labelmap_names(found, files[found])
    if len(names) < 2:
        raise DatasetError(
            f"{found} names {len(names)} class; semantic-segmentation needs at least two (background and one more)"
        )
    return names, found


def _read_mask(p: PurePosixPath, disk: Path) -> np.ndarray:
    """A mask's class indices: the values of an L image, the palette indices of a P image."""
    from core.runtime import open_image

    with open_image(disk.read_bytes()) as img:
        if img.mode not in ("L", "P"):
            raise DatasetError(
                f"{p} is a {img.mode} image; a mask is a single-channel PNG (mode L or P) whose value is "
                "the class index"
            )
        img.load()
        return np.asarray(img, dtype=np.uint8)


@dataclasses.dataclass
class _Masks:
    """What the masks or polygons of a zip say, before the images are decoded."""

    classes: list[str]
    names_file: str  # for messages: where the classes come from
    images: dict[str, Path]  # relative path -> unpacked file, the images that have a mask
    masks: dict[str, PurePosixPath]  # image -> its mask in the zip (masks layout)
    polygons: dict[str, list[tuple[str, int, list[list[float]]]]]  # image -> (where, class, polygons)
    without_mask: list[str]
    skipped: list[str]


def _read_masks_layout(files: dict[PurePosixPath, Path]) -> _Masks:
    classes, names_file = _classes(files)
    image_files = {str(under(p)): disk for p, disk in files.items() if folder(p) == "images" and is_image(p)}
    finder = layouts.ImageFinder(image_files)
    masks: dict[str, PurePosixPath] = {}
    skipped = []
    for p in sorted(files):
        if (folder(p) == "images" and is_image(p)) or p == names_file:
            continue
        if folder(p) != "masks" or not is_image(p):
            skipped.append(str(p))
            continue
        if p.suffix.lower() != ".png":
            raise DatasetError(f"{p}: masks must be PNG (JPEG and WebP change the values); save it as PNG")
        image = finder.by_key(under(p).with_suffix(""), str(p))
        if image is None:
            raise DatasetError(
                f"{p} is the mask of an image that is not in the zip (no images/{under(p).with_suffix('')} "
                "with an image suffix); add the image or remove the mask"
            )
        if image in masks:
            raise DatasetError(f"{masks[image]} and {p} are both masks of images/{image}; keep one")
        masks[image] = p
    if not masks:
        raise DatasetError("no image in images/ has a mask in masks/ of the same name")
    without = sorted(set(image_files) - set(masks))
    return _Masks(
        classes,
        str(names_file),
        {rel: image_files[rel] for rel in masks},
        masks,
        {},
        without,
        skipped,
    )


def _polygons(value: Any, where: str) -> list[list[float]]:
    if isinstance(value, dict):
        raise DatasetError(f"{where}: RLE masks are not supported; export polygons")
    if not value:
        raise DatasetError(
            f"{where} has no segmentation polygon; semantic-segmentation needs polygons "
            "(add the zip as object-detection for boxes)"
        )
    if not isinstance(value, list) or not all(isinstance(poly, list) for poly in value):
        raise DatasetError(f"{where}: segmentation must be a list of polygons [x1, y1, x2, y2, ...]")
    out = []
    for poly in value:
        if len(poly) < 6 or len(poly) % 2:
            raise DatasetError(
                f"{where}: a polygon has {len(poly)} numbers; it needs x, y pairs for 3 points or more"
            )
        out.append(list(detection.as_numbers(poly, len(poly), where, "a polygon")))
    return out


def _read_coco_polygons(files: dict[PurePosixPath, Path]) -> _Masks:
    coco = detection.read_coco(files)
    clash = next((cid for cid, name in coco.categories.items() if name.lower() == BACKGROUND), None)
    if clash is not None:
        raise DatasetError(
            f"{coco.source} category {clash} is named '{BACKGROUND}', the name of class 0 (the pixels no "
            "polygon covers); rename it"
        )
    index = {cid: i + 1 for i, cid in enumerate(coco.categories)}
    polygons: dict[str, list[tuple[str, int, list[list[float]]]]] = {rel: [] for rel in coco.files}
    for n, ann in enumerate(coco.annotations):
        where = coco.where(n)
        rel = coco.images[ann["image_id"]]
        polygons[rel].append((where, index[ann["category_id"]], _polygons(ann.get("segmentation"), where)))
    classes = [BACKGROUND, *coco.categories.values()]
    return _Masks(classes, f"{coco.source} categories", coco.files, {}, polygons, [], coco.skipped)


def _draw(shapes: list[tuple[str, int, list[list[float]]]], rel: str, width: int, height: int) -> np.ndarray:
    """The index mask of one image's polygons, later annotations over earlier ones."""
    from PIL import Image, ImageDraw

    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    tol = detection.TOLERANCE
    for where, value, polys in shapes:
        for poly in polys:
            xs, ys = poly[0::2], poly[1::2]
            if min(xs) < -tol or min(ys) < -tol or max(xs) > width + tol or max(ys) > height + tol:
                raise DatasetError(
                    f"{where}: a polygon leaves the {width}x{height} image {rel} (x {min(xs):g} to "
                    f"{max(xs):g}, y {min(ys):g} to {max(ys):g}); fix or remove it"
                )
            draw.polygon(list(zip(xs, ys, strict=True)), fill=value)
    return np.asarray(mask, dtype=np.uint8)


def _report(
    found: _Masks, rows: dict[str, layouts.ImageRow], tally: _Tally, unreadable: dict[str, str], layout: str
) -> dict[str, Any]:
    k = len(found.classes)
    labelled = int(tally.pixels[:k].sum())
    total = int(tally.pixels.sum())
    return {
        "images": len(rows),
        "class_counts": {c: int(tally.images[i]) for i, c in enumerate(found.classes)},
        "class_pixel_share": {
            c: layouts.sig4(tally.pixels[i] / labelled) if labelled else 0.0
            for i, c in enumerate(found.classes)
        },
        "ignored_pixel_share": layouts.sig4(tally.pixels[IGNORE] / total) if total else 0.0,
        "background_only_images": tally.background_only,
        "images_without_mask": images.capped(found.without_mask),
        "images_without_mask_count": len(found.without_mask),
        **layouts.image_report(rows, unreadable, found.skipped, layout),
    }


def stage_zip(source: Path, limits: images.ZipLimits, staging: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Unpack and check a segmentation zip under `staging`, and write there what is stored:
    images/<rel>, masks/<rel>.png, index.parquet. Returns (schema, quality report)."""
    from PIL import Image

    files = layouts.unpack(source, limits, staging)
    layout = layouts.choose(files, layouts.SEGMENTATION, source.name)
    fmt = "masks" if layout == "masks" else "coco-polygons"
    found = _read_masks_layout(files) if layout == "masks" else _read_coco_polygons(files)
    mask_names: dict[str, str] = {}
    for rel in sorted(found.images):
        name = str(PurePosixPath(rel).with_suffix(".png"))
        if name in mask_names:
            raise DatasetError(
                f"the images {mask_names[name]} and {rel} would share the mask {name}; rename one"
            )
        mask_names[name] = rel
    rows, unreadable = layouts.decode(found.images, source.name)

    k = len(found.classes)
    tally = _Tally()
    kept: dict[str, layouts.ImageRow] = {}
    out = staging / "masks"
    for rel in stages.each("checking masks", sorted(rows)):
        row = rows[rel]
        if layout == "masks":
            mask_path = found.masks[rel]
            try:
                mask = _read_mask(mask_path, files[mask_path])
            except DatasetError:
                raise
            except Exception as exc:
                unreadable[str(mask_path)] = f"{type(exc).__name__}: {exc}"[:200]
                continue
            if mask.shape != (row.height, row.width):
                raise DatasetError(
                    f"{mask_path} is {mask.shape[1]}x{mask.shape[0]} but images/{rel} is "
                    f"{row.width}x{row.height}; a mask has its image's size"
                )
        else:
            mask = _draw(found.polygons[rel], rel, row.width, row.height)
        counts = np.bincount(mask.ravel(), minlength=256)
        bad = next((v for v in np.flatnonzero(counts) if k <= v < IGNORE), None)
        if bad is not None:
            raise DatasetError(
                f"{found.masks.get(rel, rel)} holds the value {bad}, but {found.names_file} names {k} classes "
                f"(0-{k - 1}); a mask value is a class index, or {IGNORE} for pixels to ignore"
            )
        tally.add(counts)
        target = out / PurePosixPath(rel).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(target)
        kept[rel] = row
    if not kept:
        shown = "; ".join(f"{k} ({v})" for k, v in list(unreadable.items())[:3])
        raise DatasetError(f"no readable mask in {source.name}: {shown}")
    if not tally.pixels[1:k].any():
        hint = (
            f"; {IGNORE} means ignore, so mark an object with its class index (1 for '{found.classes[1]}')"
            if tally.pixels[IGNORE]
            else ""
        )
        raise DatasetError(
            f"no mask in {source.name} holds a class other than 0 ('{found.classes[0]}'); "
            f"semantic-segmentation needs at least one more class{hint}"
        )
    report = _report(found, kept, tally, unreadable, fmt)

    stages.report(f"keeping {len(kept)} images")
    images.keep_files(staging, "images", {PurePosixPath(r): found.images[r] for r in kept}, list(kept))
    layouts.write_index(
        staging,
        [
            {**dataclasses.asdict(r), "mask": str(PurePosixPath(r.path).with_suffix(".png"))}
            for r in kept.values()
        ],
    )
    schema = {
        "task": layouts.SEGMENTATION,
        "classes": found.classes,
        "source": source.name,
        "index": "index.parquet",
        "format": fmt,
    }
    return schema, report
