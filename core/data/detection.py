"""Object-detection datasets from a zip: COCO, YOLO or Pascal VOC boxes, each checked against
its decoded image and stored as pixel corners in boxes.parquet beside the images.

A box that leaves its image by more than TOLERANCE pixels (within it, it is clipped), has no
area, names an unknown class or an image the zip lacks, and a label line, JSON or XML file that
cannot be read stop the ingest with the file and line (or annotation) at fault. YOLO values
that look like pixels or like corners are named as such. Images without boxes are kept as
background; unreadable images are left out and listed.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from core.data import images, layouts, stages
from core.data.layouts import folder, is_image, under
from core.errors import DatasetError

TOLERANCE = 1.0  # pixels a box may leave its image by (it is clipped to the image)
_EPS = 1e-6  # float noise allowed around YOLO's 0-1
_HINT = {
    "yolo": "width and height must be above 0",
    "xywh": "bbox [x, y, width, height] needs a width and height above 0",
    "corners": "xmax must be above xmin and ymax above ymin",
}


@dataclass(frozen=True)
class RawBox:
    """A box as its annotation file gives it, before its image's size is known."""

    image: str  # relative path of its image
    label: str
    values: tuple[float, float, float, float]
    kind: str  # "yolo": normalised centre and size; "xywh": COCO pixels; "corners": pixel corners
    where: str  # file and line or annotation, for messages
    iscrowd: bool = False


@dataclass
class Labels:
    """What a layout's annotation files say: classes in index order, every image of the
    dataset (relative path -> unpacked file), the boxes, and the files left unused."""

    classes: list[str]
    images: dict[str, Path]
    boxes: list[RawBox]
    skipped: list[str]


def as_numbers(values: Any, count: int, where: str, what: str) -> tuple[float, ...]:
    """A JSON list of `count` finite numbers (a bbox, a polygon); DatasetError otherwise."""
    if (
        not isinstance(values, list)
        or len(values) != count
        or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
        )
    ):
        raise DatasetError(f"{where}: {what} is {str(values)[:60]}, not a list of {count} numbers")
    return tuple(float(v) for v in values)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# --- COCO ---------------------------------------------------------------------------------


@dataclass
class Coco:
    """A COCO file checked: categories by id (in id order), image ids matched to the zip's
    images, annotations whose image_id and category_id are known."""

    source: PurePosixPath
    categories: dict[int, str]
    images: dict[int, str]  # COCO image id -> relative path
    files: dict[str, Path]  # relative path -> unpacked file, the listed images only
    annotations: list[dict[str, Any]]
    skipped: list[str]

    def where(self, n: int) -> str:
        ann = self.annotations[n]
        return (
            f"{self.source} annotation {ann.get('id', f'#{n + 1}')} (image '{self.images[ann['image_id']]}')"
        )


def read_coco(files: dict[PurePosixPath, Path]) -> Coco:
    """The zip's one COCO file, parsed and checked against its images (matched by file_name
    from the JSON's folder or the zip's top, else by file name when only one image has it)."""
    found = layouts.coco_files(files, lambda p: files[p].open("rb"))
    if len(found) > 1:
        raise DatasetError(
            f"the zip has {len(found)} COCO annotation files ({', '.join(map(str, found[:3]))}); keep one"
        )
    source = found[0]
    try:
        doc = json.loads(files[source].read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{source} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"{source} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from exc
    if not isinstance(doc, dict) or not all(
        isinstance(doc.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise DatasetError(f"{source} needs the lists images, annotations and categories of a COCO file")

    categories: dict[int, str] = {}
    for n, cat in enumerate(doc["categories"]):
        cid = _int(cat.get("id")) if isinstance(cat, dict) else None
        name = cat.get("name") if isinstance(cat, dict) else None
        if cid is None or not isinstance(name, str) or not name.strip():
            raise DatasetError(f"{source} category #{n + 1} needs an integer id and a name")
        if cid in categories:
            raise DatasetError(f"{source} has category id {cid} twice; give each category its own id")
        categories[cid] = name.strip()
    if not categories:
        raise DatasetError(f"{source} has no categories; list the classes in categories")
    categories = dict(sorted(categories.items()))
    layouts.check_names(list(categories.values()), f"{source} categories")

    finder = layouts.ImageFinder(str(p) for p in files if is_image(p))
    by_id: dict[int, str] = {}
    owner: dict[str, int] = {}
    for n, entry in enumerate(doc["images"]):
        iid = _int(entry.get("id")) if isinstance(entry, dict) else None
        name = entry.get("file_name") if isinstance(entry, dict) else None
        if iid is None or not isinstance(name, str) or not name.strip():
            raise DatasetError(f"{source} image #{n + 1} needs an integer id and a file_name")
        if iid in by_id:
            raise DatasetError(f"{source} has image id {iid} twice; give each image its own id")
        name = name.strip().replace("\\", "/").removeprefix("./")
        rel = (
            finder.by_path(str(source.parent / name))
            or finder.by_path(name)
            or finder.by_name(PurePosixPath(name).name)
        )
        if rel is None:
            raise DatasetError(
                f"{source} image {iid} is '{name}', which is not in the zip; add it or remove it from images"
            )
        if rel in owner:
            raise DatasetError(f"{source} images {owner[rel]} and {iid} are both '{rel}'; keep one")
        by_id[iid], owner[rel] = rel, iid

    annotations = []
    for n, ann in enumerate(doc["annotations"]):
        if not isinstance(ann, dict):
            raise DatasetError(f"{source} annotation #{n + 1} is not an object")
        label = f"{source} annotation {ann.get('id', f'#{n + 1}')}"
        image_id = _int(ann.get("image_id"))
        if image_id not in by_id:
            raise DatasetError(
                f"{label} names image_id {str(ann.get('image_id'))[:40]}, which is not in images; "
                "add the image or remove the annotation"
            )
        cid = _int(ann.get("category_id"))
        if cid not in categories:
            known = ", ".join(map(str, list(categories)[:10]))
            raise DatasetError(
                f"{label} (image '{by_id[image_id]}') has category_id {str(ann.get('category_id'))[:40]}, "
                f"which is not in categories ({known})"
            )
        annotations.append(ann)
    skipped = sorted(str(p) for p in files if p != source and str(p) not in owner)
    return Coco(
        source, categories, by_id, {rel: files[PurePosixPath(rel)] for rel in owner}, annotations, skipped
    )


def _read_coco_boxes(files: dict[PurePosixPath, Path]) -> Labels:
    coco = read_coco(files)
    boxes = []
    for n, ann in enumerate(coco.annotations):
        where = coco.where(n)
        if ann.get("bbox") is None:
            raise DatasetError(f"{where} has no bbox; object-detection needs [x, y, width, height] in pixels")
        values = as_numbers(ann["bbox"], 4, where, "bbox")
        boxes.append(
            RawBox(
                coco.images[ann["image_id"]],
                coco.categories[ann["category_id"]],
                (values[0], values[1], values[2], values[3]),
                "xywh",
                where,
                bool(ann.get("iscrowd", 0)),
            )
        )
    return Labels(list(coco.categories.values()), coco.files, boxes, coco.skipped)


# --- YOLO ---------------------------------------------------------------------------------


def _yaml_names(p: PurePosixPath, disk: Path) -> list[str]:
    """data.yaml's `names:`, a list or a mapping of id -> name (ids 0, 1, 2... without gaps)."""
    import yaml

    try:
        doc = yaml.safe_load(layouts.read_text(p, disk))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())[:120]
        raise DatasetError(f"{p} is not valid YAML ({at}{problem})") from exc
    names = doc.get("names") if isinstance(doc, dict) else None
    if isinstance(names, dict):
        ids = {int(k) if isinstance(k, int | str) and str(k).isdigit() else -1: v for k, v in names.items()}
        if sorted(ids) != list(range(len(ids))):
            raise DatasetError(f"{p}: names must number the classes 0, 1, 2, ... without gaps")
        names = [ids[i] for i in range(len(ids))]
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{p} needs names: a list of class names, or a mapping of class id to name")
    if not all(
        isinstance(n, str | int | float) and not isinstance(n, bool) and str(n).strip() for n in names
    ):
        raise DatasetError(f"{p}: every entry of names must be a class name")
    out = [str(n).strip() for n in names]
    layouts.check_names(out, str(p))
    return out


def _yolo_classes(files: dict[PurePosixPath, Path]) -> tuple[list[str], PurePosixPath]:
    found = layouts.find_file(files, "classes.txt", "labels/classes.txt")
    if found is not None:
        return layouts.read_names(found, files[found]), found
    found = layouts.find_file(files, "data.yaml", "data.yml")
    if found is not None:
        return _yaml_names(found, files[found]), found
    raise DatasetError(
        "the YOLO labels need class names: add classes.txt (one name a line, line 1 is class 0) "
        "or a data.yaml with names:"
    )


def _yolo_lines(p: PurePosixPath, disk: Path, image: str, classes: list[str], source: str) -> list[RawBox]:
    boxes = []
    for n, line in enumerate(layouts.read_text(p, disk).splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        where = f"{p} line {n}"
        if len(parts) != 5:
            polygon = " (polygon labels are not supported)" if len(parts) > 6 else ""
            raise DatasetError(
                f"{where} has {len(parts)} values; a YOLO line is: class x_centre y_centre width height{polygon}"
            )
        try:
            cls = int(parts[0])
        except ValueError:
            raise DatasetError(
                f"{where}: the class '{parts[0][:20]}' is not a class id (0, 1, 2...)"
            ) from None
        try:
            values = tuple(float(v) for v in parts[1:])
        except ValueError:
            raise DatasetError(f"{where}: '{' '.join(parts[1:])[:60]}' are not all numbers") from None
        shown = " ".join(parts[1:])
        if not all(math.isfinite(v) for v in values):
            raise DatasetError(f"{where}: '{shown[:60]}' are not all numbers")
        if not 0 <= cls < len(classes):
            raise DatasetError(
                f"{where}: class {cls} is unknown; {source} names {len(classes)} classes (0-{len(classes) - 1})"
            )
        if any(v > 1 + _EPS for v in values):
            raise DatasetError(
                f"{where}: {shown[:60]}: values over 1 look like pixels; YOLO wants values divided by "
                "the image width/height"
            )
        if any(v < -_EPS for v in values):
            raise DatasetError(f"{where}: {shown[:60]}: a negative value; YOLO values are between 0 and 1")
        boxes.append(RawBox(image, classes[cls], (values[0], values[1], values[2], values[3]), "yolo", where))
    return boxes


def _read_yolo(files: dict[PurePosixPath, Path]) -> Labels:
    classes, names_file = _yolo_classes(files)
    image_files = {str(under(p)): disk for p, disk in files.items() if folder(p) == "images" and is_image(p)}
    finder = layouts.ImageFinder(image_files)
    config = {names_file, layouts.find_file(files, "data.yaml", "data.yml")}
    boxes: list[RawBox] = []
    labelled: dict[str, PurePosixPath] = {}
    skipped = []
    for p in stages.each("reading labels", sorted(files)):
        if (folder(p) == "images" and is_image(p)) or p in config or p.name.lower() == "classes.txt":
            continue
        if folder(p) != "labels" or p.suffix.lower() != ".txt":
            skipped.append(str(p))
            continue
        image = finder.by_key(under(p).with_suffix(""), str(p))
        if image is None:
            raise DatasetError(
                f"{p} labels an image that is not in the zip (no images/{under(p).with_suffix('')} "
                "with an image suffix); add the image or remove the label file"
            )
        if image in labelled:
            raise DatasetError(f"{labelled[image]} and {p} both label images/{image}; keep one")
        labelled[image] = p
        boxes += _yolo_lines(p, files[p], image, classes, str(names_file))
    return Labels(classes, image_files, boxes, skipped)


# --- Pascal VOC ---------------------------------------------------------------------------


def _parse_xml(p: PurePosixPath, disk: Path) -> Any:
    """The XML's root element; a DOCTYPE or ENTITY declaration (which could expand without
    bound) is refused before the tree is built, by a first pass of the expat parser."""
    import xml.etree.ElementTree as ET
    from xml.parsers import expat

    data = disk.read_bytes()

    def forbid(*_: Any) -> None:
        raise DatasetError(f"{p} declares a DOCTYPE or ENTITY; remove it (Pascal VOC files need neither)")

    scan = expat.ParserCreate()
    scan.StartDoctypeDeclHandler = forbid
    scan.EntityDeclHandler = forbid
    try:
        scan.Parse(data, True)
        return ET.fromstring(data)
    except expat.ExpatError as exc:
        raise DatasetError(
            f"{p} is not well-formed XML (line {exc.lineno}, column {exc.offset + 1}: "
            f"{expat.ErrorString(exc.code)})"
        ) from exc
    except ET.ParseError as exc:
        raise DatasetError(f"{p} is not well-formed XML ({exc})") from exc


def _voc_objects(root: Any, p: PurePosixPath, image: str) -> list[RawBox]:
    boxes = []
    for k, obj in enumerate(root.findall("object"), 1):
        where = f"{p} object {k}"
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DatasetError(f"{where} has no <name>; name the class of each object")
        box = obj.find("bndbox")
        if box is None:
            raise DatasetError(f"{where} ('{name[:40]}') has no <bndbox>")
        values = []
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            text = (box.findtext(tag) or "").strip()
            try:
                values.append(float(text))
            except ValueError:
                raise DatasetError(
                    f"{where} ('{name[:40]}'): <{tag}> is '{text[:20]}', not a number"
                ) from None
            if not math.isfinite(values[-1]):
                raise DatasetError(f"{where} ('{name[:40]}'): <{tag}> is '{text[:20]}', not a number")
        boxes.append(RawBox(image, name, (values[0], values[1], values[2], values[3]), "corners", where))
    return boxes


def _read_voc(files: dict[PurePosixPath, Path]) -> Labels:
    image_files = {str(p): disk for p, disk in files.items() if is_image(p)}
    finder = layouts.ImageFinder(image_files)
    boxes: list[RawBox] = []
    annotated: dict[str, PurePosixPath] = {}
    skipped = []
    for p in stages.each("reading annotations", sorted(files)):
        if is_image(p):
            continue
        if p.suffix.lower() != ".xml":
            skipped.append(str(p))
            continue
        root = _parse_xml(p, files[p])
        if root.tag != "annotation":
            if folder(p) == "annotations":
                raise DatasetError(f"{p} is not a Pascal VOC annotation (its root is <{root.tag[:40]}>)")
            skipped.append(str(p))
            continue
        named = (root.findtext("filename") or "").strip().replace("\\", "/")
        image = None
        if named:
            image = finder.by_path(named) or finder.by_name(PurePosixPath(named).name)
        image = image or finder.by_key(PurePosixPath(p.stem), str(p))
        if image is None:
            raise DatasetError(
                f"{p} annotates '{named or p.stem}', which is not in the zip; add the image or fix <filename>"
            )
        if image in annotated:
            raise DatasetError(f"{annotated[image]} and {p} both annotate {image}; keep one")
        annotated[image] = p
        boxes += _voc_objects(root, p, image)
    return Labels(sorted({b.label for b in boxes}), image_files, boxes, skipped)


# --- checked boxes, report, stored files --------------------------------------------------


def corners(raw: RawBox, width: int, height: int) -> tuple[float, float, float, float]:
    """The box as pixel corners inside its image, clipped there; DatasetError when it has no
    area or leaves the image by more than TOLERANCE (YOLO corners given as centres are named)."""
    a, b, c, d = raw.values
    if raw.kind == "yolo":
        x1, y1, x2, y2 = (a - c / 2) * width, (b - d / 2) * height, (a + c / 2) * width, (b + d / 2) * height
    elif raw.kind == "xywh":
        x1, y1, x2, y2 = a, b, a + c, b + d
    else:
        x1, y1, x2, y2 = a, b, c, d
    shown = " ".join(f"{v:g}" for v in raw.values)
    if x2 <= x1 or y2 <= y1:
        raise DatasetError(f"{raw.where}: the box {shown} has no area; {_HINT[raw.kind]}")
    if x1 < -TOLERANCE or y1 < -TOLERANCE or x2 > width + TOLERANCE or y2 > height + TOLERANCE:
        if raw.kind == "yolo" and c > a and d > b:
            raise DatasetError(
                f"{raw.where}: {shown}: this looks like corners (x1 y1 x2 y2); YOLO wants x_centre y_centre "
                "width height"
            )
        raise DatasetError(
            f"{raw.where}: the box {shown} leaves the {width}x{height} image {raw.image} "
            f"(pixel corners {x1:g},{y1:g} to {x2:g},{y2:g}); fix or remove it"
        )
    x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))
    if x2 <= x1 or y2 <= y1:
        raise DatasetError(f"{raw.where}: the box {shown} has no area inside the {width}x{height} image")
    return x1, y1, x2, y2


def _report(
    labels: Labels,
    rows: dict[str, layouts.ImageRow],
    boxes: list[tuple[str, str, float, float, float, float, bool]],
    unreadable: dict[str, str],
    layout: str,
) -> dict[str, Any]:
    per_image = Counter(b[0] for b in boxes)
    counts = Counter(b[1] for b in boxes)
    holding: dict[str, set[str]] = {}
    sizes = Counter[str]()
    sides = []
    for path, label, x1, y1, x2, y2, _ in boxes:
        holding.setdefault(label, set()).add(path)
        area = (x2 - x1) * (y2 - y1)
        sizes["small" if area < 32**2 else "medium" if area < 96**2 else "large"] += 1
        sides.append(math.sqrt(area / (rows[path].width * rows[path].height)))
    return {
        "images": len(rows),
        "boxes": len(boxes),
        "class_counts": {c: counts[c] for c in labels.classes},
        "images_per_class": {c: len(holding.get(c, ())) for c in labels.classes},
        "background_images": sum(1 for r in rows if not per_image[r]),
        "objects_per_image": layouts.spread([per_image[r] for r in rows]),
        "box_sizes": {k: sizes[k] for k in ("small", "medium", "large")},
        "box_relative_side": {k: layouts.sig4(v) for k, v in layouts.spread(sides).items()},
        "crowd_boxes": sum(1 for b in boxes if b[6]),
        **layouts.image_report(rows, unreadable, labels.skipped, layout),
    }


_READERS = {"coco": _read_coco_boxes, "yolo": _read_yolo, "voc": _read_voc}


def stage_zip(source: Path, limits: images.ZipLimits, staging: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Unpack and check a detection zip under `staging`, and write there what is stored:
    images/<rel>, index.parquet, boxes.parquet. Returns (schema, quality report)."""
    import pandas as pd

    files = layouts.unpack(source, limits, staging)
    layout = layouts.choose(files, layouts.DETECTION, source.name)
    labels = _READERS[layout](files)
    rows, unreadable = layouts.decode(labels.images, source.name)
    boxes = []
    for raw in stages.each("checking boxes", labels.boxes):
        if raw.image in rows:
            x1, y1, x2, y2 = corners(raw, rows[raw.image].width, rows[raw.image].height)
            boxes.append((raw.image, raw.label, x1, y1, x2, y2, raw.iscrowd))
    if not boxes:
        raise DatasetError(
            f"no boxes in {source.name}: none of its {len(rows)} readable images has one; object-detection "
            "needs at least one class with boxes"
        )
    layouts.check_names(labels.classes, source.name)
    report = _report(labels, rows, boxes, unreadable, layout)

    stages.report(f"keeping {len(rows)} images")
    images.keep_files(staging, "images", {PurePosixPath(r): labels.images[r] for r in rows}, list(rows))
    layouts.write_index(staging, [asdict(r) for r in rows.values()])
    columns = ["path", "label", "x1", "y1", "x2", "y2", "iscrowd"]
    frame = pd.DataFrame(boxes, columns=columns).astype(
        {"path": "str", "label": "str", "x1": "float64", "y1": "float64", "x2": "float64", "y2": "float64"}
    )
    frame["iscrowd"] = frame["iscrowd"].astype("bool")
    frame.to_parquet(staging / "boxes.parquet", index=False)
    schema = {
        "task": layouts.DETECTION,
        "classes": labels.classes,
        "source": source.name,
        "index": "index.parquet",
        "format": layout,
        "boxes": "boxes.parquet",
    }
    return schema, report
