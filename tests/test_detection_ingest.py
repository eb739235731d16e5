"""Zips of boxes (COCO, YOLO, Pascal VOC) and masks (index PNGs, COCO polygons): each format
stored exactly as the tasks read it, and every bad annotation refused in one line that names
the file and line, with nothing written."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.data.ingest import guess_upload, ingest_file, list_datasets
from core.errors import DatasetError
from db.queries import DatasetInfo


def _png(size: tuple[int, int] = (32, 32), seed: int = 0, fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _mask(values: np.ndarray, mode: str = "L", palette: list[int] | None = None) -> bytes:
    """A PNG of class indices: L, RGB (grey in three channels) or P (indices into `palette`)."""
    arr = values.astype(np.uint8)
    if mode == "P":
        img = Image.frombytes("P", (arr.shape[1], arr.shape[0]), arr.tobytes())
        img.putpalette(palette or [])
    else:
        img = Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _zip(path: Path, entries: dict[str, bytes | str]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def _table(ds: DatasetInfo, name: str) -> list[dict]:  # type: ignore[type-arg]
    return pd.read_parquet(Path(ds.path) / name).to_dict("records")


def _stored(ds: DatasetInfo, folder: str) -> list[str]:
    root = Path(ds.path, folder)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _nothing_written(home: Path) -> None:
    datasets = home / "datasets"
    assert not datasets.exists() or list(datasets.iterdir()) == []
    assert list_datasets() == []


def _coco(images: list[dict], annotations: list[dict], categories: list[dict] | None = None) -> str:  # type: ignore[type-arg]
    cats = categories if categories is not None else [{"id": 3, "name": "dog"}, {"id": 1, "name": "cat"}]
    return json.dumps({"images": images, "annotations": annotations, "categories": cats})


# --- each format stored ---------------------------------------------------------------------


def test_coco_boxes(home: Path, tmp_path: Path) -> None:
    coco = _coco(
        [{"id": 1, "file_name": "img/a.png"}, {"id": 2, "file_name": "b.png"}],
        [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [2, 4, 10, 6]},
            {"id": 11, "image_id": 1, "category_id": 3, "bbox": [0, 0, 32, 32], "iscrowd": 1},
            {"id": 12, "image_id": 1, "category_id": 1, "bbox": [20, 20, 12.5, 12]},  # 0.5 px over: clipped
        ],
    )
    entries = {
        "shapes/annotations.json": coco,
        "shapes/img/a.png": _png(seed=1),
        "shapes/img/b.png": _png(seed=2),  # listed, no annotation: background
        "shapes/c.png": _png(seed=3),  # not listed in the COCO file
        "shapes/readme.txt": "made by hand",
    }
    ds = ingest_file(_zip(tmp_path / "shapes.zip", entries))
    assert ds.task == "object-detection" and ds.n_items == 2 and ds.format == "zip"
    assert ds.schema == {
        "task": "object-detection",
        "classes": ["cat", "dog"],
        "source": "shapes.zip",
        "index": "index.parquet",
        "format": "coco",
        "boxes": "boxes.parquet",
    }
    assert _stored(ds, "images") == ["img/a.png", "img/b.png"]
    index = _table(ds, "index.parquet")
    assert [(r["path"], r["width"], r["height"], r["mode"]) for r in index] == [
        ("img/a.png", 32, 32, "RGB"),
        ("img/b.png", 32, 32, "RGB"),
    ]
    assert len(index[0]["sha256"]) == 64
    assert _table(ds, "boxes.parquet") == [
        {"path": "img/a.png", "label": "cat", "x1": 2.0, "y1": 4.0, "x2": 12.0, "y2": 10.0, "iscrowd": False},
        {"path": "img/a.png", "label": "dog", "x1": 0.0, "y1": 0.0, "x2": 32.0, "y2": 32.0, "iscrowd": True},
        {
            "path": "img/a.png",
            "label": "cat",
            "x1": 20.0,
            "y1": 20.0,
            "x2": 32.0,
            "y2": 32.0,
            "iscrowd": False,
        },
    ]
    boxes = pd.read_parquet(Path(ds.path) / "boxes.parquet")
    assert [str(t) for t in boxes.dtypes[2:]] == ["float64"] * 4 + ["bool"]
    assert ds.report == {
        "images": 2,
        "boxes": 3,
        "class_counts": {"cat": 2, "dog": 1},
        "images_per_class": {"cat": 1, "dog": 1},
        "background_images": 1,
        "objects_per_image": {"min": 0, "median": 1.5, "max": 3},
        "box_sizes": {"small": 2, "medium": 1, "large": 0},
        "box_relative_side": {"min": 0.2421, "median": 0.375, "max": 1.0},
        "crowd_boxes": 1,
        "width": {"min": 32, "median": 32, "max": 32},
        "height": {"min": 32, "median": 32, "max": 32},
        "unreadable": {},
        "unreadable_count": 0,
        "skipped_files": ["c.png", "readme.txt"],
        "skipped_count": 2,
        "layout": "coco",
    }


def test_a_yolo_zip_of_mostly_txt_files_is_detection_not_text(home: Path, tmp_path: Path) -> None:
    entries: dict[str, bytes | str] = {
        "images/a.png": _png(seed=1),
        "images/b.png": _png(seed=2),
        "labels/a.txt": "0 0.5 0.5 0.25 0.25\n",
        "labels/b.txt": "0 0.25 0.25 0.25 0.25\n",
        "classes.txt": "cat\n",
        "README.txt": "exported by hand",
    }
    assert sum(n.endswith(".txt") for n in entries) > len(entries) / 2
    z = _zip(tmp_path / "yolo.zip", entries)
    assert guess_upload("yolo.zip", z.read_bytes()).task == "object-detection"
    ds = ingest_file(z)
    assert ds.task == "object-detection" and ds.report["boxes"] == 2
    assert ds.report["skipped_files"] == ["README.txt"]


def test_yolo_with_classes_txt(home: Path, tmp_path: Path) -> None:
    entries: dict[str, bytes | str] = {
        "images/a.png": _png((40, 20), seed=1),
        "labels/a.txt": "0 0.5 0.5 0.25 0.5\n\n1 0.25 0.25 0.125 0.125\n",
        "images/b.jpg": _png(seed=2, fmt="JPEG"),  # no label file: background
        "images/c.png": _png(seed=3),
        "labels/c.txt": "",  # an empty label file: background too
        "images/broken.png": b"not a png",
        "classes.txt": "cat\ndog\n",
        "labels/notes.txt.bak": "old",
    }
    ds = ingest_file(_zip(tmp_path / "yolo.zip", entries))
    assert ds.task == "object-detection" and ds.schema["format"] == "yolo"
    assert ds.schema["classes"] == ["cat", "dog"]
    assert _table(ds, "boxes.parquet") == [
        {"path": "a.png", "label": "cat", "x1": 15.0, "y1": 5.0, "x2": 25.0, "y2": 15.0, "iscrowd": False},
        {"path": "a.png", "label": "dog", "x1": 7.5, "y1": 3.75, "x2": 12.5, "y2": 6.25, "iscrowd": False},
    ]
    assert _stored(ds, "images") == ["a.png", "b.jpg", "c.png"]
    rep = ds.report
    assert rep["background_images"] == 2 and rep["boxes"] == 2
    assert rep["objects_per_image"] == {"min": 0, "median": 0, "max": 2}
    assert list(rep["unreadable"]) == ["broken.png"] and rep["unreadable_count"] == 1
    assert rep["skipped_files"] == ["labels/notes.txt.bak"]
    assert rep["width"] == {"min": 32, "median": 32, "max": 40} and rep["layout"] == "yolo"


@pytest.mark.parametrize(
    "names", ["names: [person, car]\nnc: 2\n", "names:\n  0: person\n  1: car\n"], ids=["list", "dict"]
)
def test_yolo_with_data_yaml(home: Path, tmp_path: Path, names: str) -> None:
    entries: dict[str, bytes | str] = {
        "street/data.yaml": "path: .\ntrain: images/train\n" + names,
        "street/images/train/x.png": _png(seed=1),
        "street/labels/train/x.txt": "1 0.5 0.5 0.5 0.25\n",
    }
    ds = ingest_file(_zip(tmp_path / "street.zip", entries))
    assert ds.schema["classes"] == ["person", "car"]
    assert _table(ds, "boxes.parquet") == [
        {
            "path": "train/x.png",
            "label": "car",
            "x1": 8.0,
            "y1": 12.0,
            "x2": 24.0,
            "y2": 20.0,
            "iscrowd": False,
        }
    ]
    assert ds.report["class_counts"] == {"person": 0, "car": 1}


def _voc(objects: list[tuple[str, float, float, float, float]], filename: str | None = None) -> str:
    name = f"<filename>{filename}</filename>" if filename else ""
    body = "".join(
        f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
        f"<xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for n, a, b, c, d in objects
    )
    return f'<?xml version="1.0"?><annotation><folder>x</folder>{name}<size><width>32</width></size>{body}</annotation>'


def test_pascal_voc(home: Path, tmp_path: Path) -> None:
    entries: dict[str, bytes | str] = {
        "Annotations/one.xml": _voc([("dog", 1, 2, 10, 12), ("cat", 5, 5, 32.5, 20)], filename="a.jpg"),
        "Annotations/b.xml": _voc([("dog", 0, 0, 8, 8)]),  # no <filename>: matched by its stem
        "JPEGImages/a.jpg": _png(seed=1, fmt="JPEG"),
        "JPEGImages/b.png": _png(seed=2),
        "JPEGImages/c.png": _png(seed=3),  # no annotation: background
        "ImageSets/Main/train.txt": "a\nb\n",
    }
    ds = ingest_file(_zip(tmp_path / "voc.zip", entries))
    assert ds.task == "object-detection"
    assert ds.schema["classes"] == ["cat", "dog"] and ds.schema["format"] == "voc"
    assert _stored(ds, "images") == ["JPEGImages/a.jpg", "JPEGImages/b.png", "JPEGImages/c.png"]
    assert _table(ds, "boxes.parquet") == [
        {
            "path": "JPEGImages/b.png",
            "label": "dog",
            "x1": 0.0,
            "y1": 0.0,
            "x2": 8.0,
            "y2": 8.0,
            "iscrowd": False,
        },
        {
            "path": "JPEGImages/a.jpg",
            "label": "dog",
            "x1": 1.0,
            "y1": 2.0,
            "x2": 10.0,
            "y2": 12.0,
            "iscrowd": False,
        },
        {
            "path": "JPEGImages/a.jpg",
            "label": "cat",
            "x1": 5.0,
            "y1": 5.0,
            "x2": 32.0,
            "y2": 20.0,
            "iscrowd": False,
        },
    ]
    assert ds.report["background_images"] == 1 and ds.report["skipped_files"] == ["ImageSets/Main/train.txt"]
    assert ds.report["images_per_class"] == {"cat": 1, "dog": 2}


def _seg_masks() -> tuple[np.ndarray, np.ndarray]:
    a = np.zeros((32, 32), np.uint8)
    a[:8] = 1  # 256 pixels of class 1
    a[8:10] = 255  # 64 pixels to ignore
    return a, np.zeros((32, 32), np.uint8)


def test_masks_with_classes_txt(home: Path, tmp_path: Path) -> None:
    a, b = _seg_masks()
    entries: dict[str, bytes | str] = {
        "roads/images/a.png": _png(seed=1),
        "roads/masks/a.png": _mask(a),
        "roads/images/b.jpg": _png(seed=2, fmt="JPEG"),
        "roads/masks/b.png": _mask(b),  # background only
        "roads/images/c.png": _png(seed=3),  # no mask: left out and listed
        "roads/images/d.png": _png(seed=4),
        "roads/masks/d.png": b"not a png",  # an unreadable mask: its image is left out and listed
        "roads/classes.txt": "background\nroad\ncar\n",
    }
    z = _zip(tmp_path / "roads.zip", entries)
    assert guess_upload("roads.zip", z.read_bytes()).task == "semantic-segmentation"
    ds = ingest_file(z)
    assert ds.task == "semantic-segmentation" and ds.n_items == 2
    assert ds.schema == {
        "task": "semantic-segmentation",
        "classes": ["background", "road", "car"],
        "source": "roads.zip",
        "index": "index.parquet",
        "format": "masks",
    }
    assert _stored(ds, "images") == ["a.png", "b.jpg"] and _stored(ds, "masks") == ["a.png", "b.png"]
    assert [(r["path"], r["mask"], r["width"]) for r in _table(ds, "index.parquet")] == [
        ("a.png", "a.png", 32),
        ("b.jpg", "b.png", 32),
    ]
    with Image.open(Path(ds.path, "masks", "a.png")) as stored:
        assert stored.mode == "L" and np.array_equal(np.asarray(stored), a)
    rep = ds.report
    assert rep["class_counts"] == {"background": 2, "road": 1, "car": 0}
    assert rep["class_pixel_share"] == {"background": 0.871, "road": 0.129, "car": 0.0}
    assert rep["ignored_pixel_share"] == 0.03125
    assert rep["background_only_images"] == 1
    assert rep["images_without_mask"] == ["c.png"] and rep["images_without_mask_count"] == 1
    assert list(rep["unreadable"]) == ["masks/d.png"] and rep["unreadable_count"] == 1
    assert rep["skipped_files"] == [] and rep["layout"] == "masks"


def test_palette_masks_keep_the_index_not_the_colour(home: Path, tmp_path: Path) -> None:
    indices = np.zeros((32, 32), np.uint8)
    indices[:, 16:] = 2
    indices[:4, :4] = 1
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0]
    entries: dict[str, bytes | str] = {
        "images/a.png": _png(seed=1),
        "masks/a.png": _mask(indices, "P", palette),
        "labelmap.txt": "# label:color_rgb:parts:actions\nbackground:0,0,0::\nroad:128,0,0::\ncar:0,128,0::\n",
    }
    with Image.open(io.BytesIO(entries["masks/a.png"])) as check:  # type: ignore[arg-type]
        assert check.mode == "P"
    ds = ingest_file(_zip(tmp_path / "palette.zip", entries))
    assert ds.schema["classes"] == ["background", "road", "car"]
    with Image.open(Path(ds.path, "masks", "a.png")) as stored:
        assert stored.mode == "L" and np.array_equal(np.asarray(stored), indices)
    assert ds.report["class_counts"] == {"background": 1, "road": 1, "car": 1}


def _polygon_coco(segmentation: object = None) -> str:
    square = [[0, 0, 16, 0, 16, 16, 0, 16]]
    over = [[8, 8, 24, 8, 24, 24, 8, 24]]
    return _coco(
        [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
        [
            {"id": 1, "image_id": 1, "category_id": 5, "bbox": [0, 0, 16, 16], "segmentation": square},
            {
                "id": 2,
                "image_id": 1,
                "category_id": 2,
                "bbox": [8, 8, 16, 16],
                "segmentation": over if segmentation is None else segmentation,
            },
        ],
        [{"id": 5, "name": "square"}, {"id": 2, "name": "tile"}],
    )


def test_coco_polygons_forced_to_segmentation(home: Path, tmp_path: Path) -> None:
    entries = {"_annotations.coco.json": _polygon_coco(), "a.png": _png(seed=1), "b.png": _png(seed=2)}
    z = _zip(tmp_path / "tiles.zip", entries)
    assert guess_upload("tiles.zip", z.read_bytes()).task == "object-detection"  # COCO defaults to boxes
    ds = ingest_file(z, task="semantic-segmentation")
    assert ds.task == "semantic-segmentation" and ds.schema["format"] == "coco-polygons"
    assert ds.schema["classes"] == ["background", "tile", "square"]  # category ids 2, 5 -> 1, 2
    with Image.open(Path(ds.path, "masks", "a.png")) as stored:
        mask = np.asarray(stored)
    assert mask[0, 0] == 2 and mask[4, 12] == 2  # the square
    assert mask[12, 12] == 1 and mask[20, 20] == 1  # the tile, drawn over it
    assert mask[30, 30] == 0 and mask[0, 31] == 0
    with Image.open(Path(ds.path, "masks", "b.png")) as stored:
        assert not np.asarray(stored).any()  # no annotation: all background
    assert ds.report["background_only_images"] == 1 and ds.report["layout"] == "coco-polygons"
    assert ds.report["class_counts"] == {"background": 2, "tile": 1, "square": 1}
    boxes = ingest_file(z, name="as boxes")
    assert boxes.task == "object-detection" and boxes.report["boxes"] == 2


# --- refusals ---------------------------------------------------------------------------------

_YOLO = {"images/a.png": _png(), "classes.txt": "cat\ndog\n"}
_COCO_IMAGES = [{"id": 1, "file_name": "a.png"}]


def _coco_zip(annotations: list[dict], images: list[dict] | None = None) -> dict[str, bytes | str]:  # type: ignore[type-arg]
    return {"annotations.json": _coco(images or _COCO_IMAGES, annotations), "a.png": _png()}


def _box(**fields: object) -> dict[str, object]:
    return {"id": 7, "image_id": 1, "category_id": 1, "bbox": [2, 2, 8, 8], **fields}


_A, _B = _seg_masks()
BAD: dict[str, tuple[dict[str, bytes | str], str | None, str]] = {
    "COCO box outside the image": (
        _coco_zip([_box(bbox=[20, 20, 20, 5])]),
        None,
        "annotations.json annotation 7 (image 'a.png'): the box 20 20 20 5 leaves the 32x32 image a.png",
    ),
    "COCO box of zero area": (
        _coco_zip([_box(bbox=[1, 1, 0, 5])]),
        None,
        "annotation 7 (image 'a.png'): the box 1 1 0 5 has no area",
    ),
    "COCO unknown category": (
        _coco_zip([_box(category_id=9)]),
        None,
        "annotation 7 (image 'a.png') has category_id 9, which is not in categories (1, 3)",
    ),
    "COCO annotation of an image not listed": (
        _coco_zip([_box(image_id=4)]),
        None,
        "annotations.json annotation 7 names image_id 4, which is not in images",
    ),
    "COCO image not in the zip": (
        _coco_zip([_box()], [*_COCO_IMAGES, {"id": 2, "file_name": "gone.jpg"}]),
        None,
        "annotations.json image 2 is 'gone.jpg', which is not in the zip",
    ),
    "COCO malformed JSON": (
        {"annotations.json": '{"images": [\n  {"id": 1,,}]}', "a.png": _png()},
        None,
        "annotations.json is not valid JSON (line 2, column",
    ),
    "COCO RLE forced to segmentation": (
        _coco_zip([_box(segmentation={"counts": "abc", "size": [32, 32]})]),
        "semantic-segmentation",
        "annotations.json annotation 7 (image 'a.png'): RLE masks are not supported; export polygons",
    ),
    "YOLO pixels": (
        {**_YOLO, "labels/a.txt": "0 0.5 0.5 0.1 0.1\n1 16 16 8 8\n"},
        None,
        "labels/a.txt line 2: 16 16 8 8: values over 1 look like pixels; YOLO wants values divided by the image width/height",
    ),
    "YOLO corners": (
        {**_YOLO, "labels/a.txt": "0 0.2 0.3 0.9 0.8\n"},
        None,
        "labels/a.txt line 1: 0.2 0.3 0.9 0.8: this looks like corners (x1 y1 x2 y2); YOLO wants x_centre y_centre width height",
    ),
    "YOLO box outside the image": (
        {**_YOLO, "labels/a.txt": "0 0.9 0.5 0.5 0.2\n"},
        None,
        "labels/a.txt line 1: the box 0.9 0.5 0.5 0.2 leaves the 32x32 image a.png",
    ),
    "YOLO zero width": (
        {**_YOLO, "labels/a.txt": "0 0.5 0.5 0 0.2\n"},
        None,
        "line 1: the box 0.5 0.5 0 0.2 has no area",
    ),
    "YOLO unknown class": (
        {**_YOLO, "labels/a.txt": "2 0.5 0.5 0.1 0.1\n"},
        None,
        "labels/a.txt line 1: class 2 is unknown; classes.txt names 2 classes (0-1)",
    ),
    "YOLO malformed line": (
        {**_YOLO, "labels/a.txt": "0 0.5 0.5 0.1\n"},
        None,
        "labels/a.txt line 1 has 4 values; a YOLO line is: class x_centre y_centre width height",
    ),
    "YOLO label without its image": (
        {**_YOLO, "labels/a.txt": "0 0.5 0.5 0.1 0.1\n", "labels/zz.txt": "0 0.5 0.5 0.1 0.1\n"},
        None,
        "labels/zz.txt labels an image that is not in the zip",
    ),
    "YOLO without class names": (
        {"images/a.png": _png(), "labels/a.txt": "0 0.5 0.5 0.1 0.1\n"},
        None,
        "add classes.txt (one name a line, line 1 is class 0) or a data.yaml with names:",
    ),
    "YOLO without any box": (
        {**_YOLO, "labels/a.txt": "\n"},
        None,
        "no boxes in bad.zip: none of its 1 readable images has one; object-detection needs at least one class",
    ),
    "VOC with a DOCTYPE": (
        {
            "Annotations/a.xml": '<?xml version="1.0"?><!DOCTYPE lol [<!ENTITY lol "lol">]><annotation>&lol;</annotation>',
            "a.png": _png(),
        },
        None,
        "Annotations/a.xml declares a DOCTYPE or ENTITY; remove it",
    ),
    "VOC malformed XML": (
        {"Annotations/a.xml": "<annotation>\n<object><name>x</object>", "a.png": _png()},
        None,
        "Annotations/a.xml is not well-formed XML (line 2, column",
    ),
    "VOC box outside the image": (
        {"Annotations/a.xml": _voc([("dog", 1, 1, 40, 8)], "a.png"), "a.png": _png()},
        None,
        "Annotations/a.xml object 1: the box 1 1 40 8 leaves the 32x32 image a.png",
    ),
    "VOC annotation of an image not in the zip": (
        {"Annotations/q.xml": _voc([("dog", 1, 1, 4, 8)], "z.jpg"), "a.png": _png()},
        None,
        "Annotations/q.xml annotates 'z.jpg', which is not in the zip",
    ),
    "mask of another size": (
        {"images/a.png": _png(), "masks/a.png": _mask(_A[:16]), "classes.txt": "bg\nroad\n"},
        None,
        "masks/a.png is 32x16 but images/a.png is 32x32; a mask has its image's size",
    ),
    "mask value outside the classes": (
        {"images/a.png": _png(), "masks/a.png": _mask(np.where(_A == 1, 7, 0)), "classes.txt": "bg\nroad\n"},
        None,
        "masks/a.png holds the value 7, but classes.txt names 2 classes (0-1)",
    ),
    "RGB mask": (
        {"images/a.png": _png(), "masks/a.png": _mask(_A, "RGB"), "classes.txt": "bg\nroad\n"},
        None,
        "masks/a.png is a RGB image; a mask is a single-channel PNG (mode L or P)",
    ),
    "mask without its image": (
        {
            "images/a.png": _png(),
            "masks/a.png": _mask(_A),
            "masks/b.png": _mask(_A),
            "classes.txt": "bg\nroad\n",
        },
        None,
        "masks/b.png is the mask of an image that is not in the zip",
    ),
    "masks without class names": (
        {"images/a.png": _png(), "masks/a.png": _mask(_A)},
        None,
        "the masks need class names: add classes.txt",
    ),
    "masks of background only": (
        {
            "images/a.png": _png(),
            "masks/a.png": _mask(np.where(_A == 1, 255, 0)),
            "classes.txt": "bg\nroad\n",
        },
        None,
        "no mask in bad.zip holds a class other than 0 ('bg'); semantic-segmentation needs at least one more "
        "class; 255 means ignore, so mark an object with its class index (1 for 'road')",
    ),
    "YOLO forced to segmentation": (
        {**_YOLO, "labels/a.txt": "0 0.5 0.5 0.1 0.1\n"},
        "semantic-segmentation",
        "bad.zip: semantic-segmentation takes a zip of images/ + masks/ PNGs of class indices with "
        "classes.txt, or images with a COCO annotations.json of polygons; this zip holds YOLO images/ + labels/",
    ),
    "masks forced to detection": (
        {"images/a.png": _png(), "masks/a.png": _mask(_A), "classes.txt": "bg\nroad\n"},
        "object-detection",
        "bad.zip: object-detection takes a zip of images with a COCO annotations.json, or images/ + labels/ "
        "YOLO .txt files with classes.txt or data.yaml, or images with Pascal VOC .xml files; this zip holds "
        "images/ + masks/ (semantic-segmentation)",
    ),
    "class folders forced to detection": (
        {"cats/a.png": _png(), "dogs/b.png": _png(seed=1)},
        "object-detection",
        "or images with Pascal VOC .xml files; this zip holds none of these",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_annotations_are_refused_in_one_line(home: Path, tmp_path: Path, case: str) -> None:
    entries, task, message = BAD[case]
    with pytest.raises(DatasetError) as refused:
        ingest_file(_zip(tmp_path / "bad.zip", entries), task=task)
    assert message in str(refused.value) and "\n" not in str(refused.value), str(refused.value)
    _nothing_written(home)


def test_a_table_forced_to_detection_is_refused(home: Path, tmp_path: Path) -> None:
    table = tmp_path / "boxes.csv"
    table.write_text("x,y\n1,2\n")
    with pytest.raises(DatasetError, match="boxes.csv: object-detection takes a zip of images"):
        ingest_file(table, task="object-detection")
    _nothing_written(home)
