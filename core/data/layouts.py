"""Zips of annotated images, shared by detection.py and segmentation.py: which layout a zip
holds (COCO, YOLO, Pascal VOC, images/ + masks/), its optional top folder, its images found by
path or name and decoded, its class-name files.

A layout is recognised from file names, except a JSON or XML file of another name, whose bytes
are searched for the keys or tag that mark it. The same test serves the task guess (on the
zip's directory, before anything is unpacked) and the ingest (on the unpacked files).
"""

from __future__ import annotations

import hashlib
import statistics
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, TypeVar

from core.data import images, stages
from core.errors import DatasetError

DETECTION = "object-detection"
SEGMENTATION = "semantic-segmentation"
COCO_NAMES = ("annotations.json", "_annotations.coco.json")
# Folders that are part of a layout, never a wrapper to strip.
_LAYOUT_FOLDERS = {"images", "labels", "masks", "annotations"}
# A guess reads at most this much of a JSON file for the COCO keys.
_SCAN_BYTES = 256 << 20
EXPECTED = {
    DETECTION: (
        "a zip of images with a COCO annotations.json, or images/ + labels/ YOLO .txt files with "
        "classes.txt or data.yaml, or images with Pascal VOC .xml files"
    ),
    SEGMENTATION: (
        "a zip of images/ + masks/ PNGs of class indices with classes.txt, or images with a COCO "
        "annotations.json of polygons"
    ),
}
_IN_WORDS = {
    "coco": "a COCO annotations file",
    "yolo": "YOLO images/ + labels/",
    "voc": "Pascal VOC .xml files",
    "masks": "images/ + masks/ (semantic-segmentation)",
}
# Which layouts each task reads, the first one present taken.
_READS = {DETECTION: ("coco", "yolo", "voc"), SEGMENTATION: ("masks", "coco")}

T = TypeVar("T")
Opener = Callable[[PurePosixPath], IO[bytes]]


def folder(p: PurePosixPath) -> str:
    """The first folder of a path in lower case ('' for a file at the top)."""
    return p.parts[0].lower() if len(p.parts) > 1 else ""


def under(p: PurePosixPath) -> PurePosixPath:
    """The path inside its first folder: images/train/a.jpg -> train/a.jpg."""
    return PurePosixPath(*p.parts[1:])


def is_image(p: PurePosixPath) -> bool:
    return p.suffix.lower() in images.IMAGE_SUFFIXES


def strip_top_folder(files: dict[PurePosixPath, T]) -> dict[PurePosixPath, T]:
    """`shapes/images/a.png` -> `images/a.png` when every entry shares one top folder that is
    not itself part of a layout (a zip of `images/` alone keeps it)."""
    tops = {p.parts[0] for p in files}
    if len(tops) != 1 or not all(len(p.parts) > 1 for p in files):
        return files
    if next(iter(tops)).lower() in _LAYOUT_FOLDERS:
        return files
    return {under(p): value for p, value in files.items()}


def _holds(p: PurePosixPath, opener: Opener, needles: tuple[bytes, ...], limit: int) -> bool:
    """Whether the file holds every needle within its first `limit` bytes (read in blocks)."""
    missing = set(needles)
    keep = max(len(n) for n in needles)
    tail = b""
    read = 0
    try:
        with opener(p) as f:
            while missing and read < limit and (block := f.read(1 << 20)):
                read += len(block)
                chunk = tail + block
                missing = {n for n in missing if n not in chunk}
                tail = chunk[-keep:]
    except Exception:  # a damaged entry: unpacking it says what is wrong
        return False
    return not missing


def coco_files(paths: Iterable[PurePosixPath], opener: Opener) -> list[PurePosixPath]:
    """The COCO annotation files: annotations.json or _annotations.coco.json anywhere, else any
    JSON at the top (or in annotations/) with the keys images, annotations and categories."""
    paths = list(paths)
    named = [p for p in paths if p.name.lower() in COCO_NAMES]
    if named:
        return sorted(named)
    candidates = [
        p
        for p in paths
        if p.suffix.lower() == ".json"
        and (len(p.parts) == 1 or (len(p.parts) == 2 and folder(p) == "annotations"))
    ]
    keys = (b'"images"', b'"annotations"', b'"categories"')
    return sorted(p for p in candidates if _holds(p, opener, keys, _SCAN_BYTES))


def is_voc(p: PurePosixPath, opener: Opener) -> bool:
    """An .xml file in Annotations/, or one whose first bytes open an <annotation>."""
    return p.suffix.lower() == ".xml" and (
        folder(p) == "annotations" or _holds(p, opener, (b"<annotation",), 1 << 16)
    )


def layouts_in(paths: Iterable[PurePosixPath], opener: Opener) -> list[str]:
    """Every annotated layout the files hold: masks, yolo, coco, voc (in that order)."""
    paths = list(paths)
    has_images = any(folder(p) == "images" and is_image(p) for p in paths)
    found = []
    if has_images and any(folder(p) == "masks" and is_image(p) for p in paths):
        found.append("masks")
    if has_images and any(
        folder(p) == "labels" and p.suffix.lower() == ".txt" and p.name.lower() != "classes.txt"
        for p in paths
    ):
        found.append("yolo")
    if coco_files(paths, opener):
        found.append("coco")
    if any(is_voc(p, opener) for p in paths):
        found.append("voc")
    return found


def zip_task(zf: zipfile.ZipFile) -> str | None:
    """The task a zip of annotated images is for, judged from its directory (and the first
    bytes of a JSON or XML file of another name), or None when it holds no such layout.
    images/ + masks/ is segmentation; boxes in any format, and COCO, are detection."""
    entries: dict[PurePosixPath, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        p = PurePosixPath(info.filename.replace("\\", "/"))
        if (
            info.is_dir()
            or not p.parts
            or p.parts[0] == "__MACOSX"
            or any(s.startswith(".") for s in p.parts)
        ):
            continue
        entries[p] = info
    entries = strip_top_folder(entries)
    found = layouts_in(entries, lambda p: zf.open(entries[p]))
    if "masks" in found:
        return SEGMENTATION
    return DETECTION if found else None


def unpack(source: Path, limits: images.ZipLimits, staging: Path) -> dict[PurePosixPath, Path]:
    """The zip unpacked safely under staging (images.unpack_zip), its top folder stripped."""
    files = strip_top_folder(images.unpack_zip(source, limits, staging / images.UNPACKED))
    if not files:
        raise DatasetError(f"{source.name} contains no files (hidden files and __MACOSX/ are skipped)")
    return files


def choose(files: dict[PurePosixPath, Path], task: str, source: str) -> str:
    """The layout `task` reads from these files; a one-line DatasetError naming the expected
    layout when there is none."""
    found = layouts_in(files, lambda p: files[p].open("rb"))
    usable = [layout for layout in _READS[task] if layout in found]
    if usable:
        return usable[0]
    seen = ", ".join(_IN_WORDS[f] for f in found) or "none of these"
    raise DatasetError(f"{source}: {task} takes {EXPECTED[task]}; this zip holds {seen}")


class ImageFinder:
    """The images of a dataset by their relative path, and by file name or by path without
    suffix when only one image has it."""

    def __init__(self, rels: Iterable[str]) -> None:
        self.rels = set(rels)
        self._names: dict[str, list[str]] = {}
        self._keys: dict[str, list[str]] = {}
        self._stems: dict[str, list[str]] = {}
        for rel in sorted(self.rels):
            p = PurePosixPath(rel)
            self._names.setdefault(p.name, []).append(rel)
            self._keys.setdefault(str(p.with_suffix("")), []).append(rel)
            self._stems.setdefault(p.stem, []).append(rel)

    def by_path(self, rel: str) -> str | None:
        return rel if rel in self.rels else None

    def by_name(self, name: str) -> str | None:
        found = self._names.get(name, [])
        return found[0] if len(found) == 1 else None

    def by_key(self, key: PurePosixPath, where: str) -> str | None:
        """The image at `key` with any image suffix (a label's own path, its .txt dropped),
        else the only image of that stem anywhere; DatasetError when two images share it."""
        found = self._keys.get(str(key)) or self._stems.get(key.name, [])
        if len(found) > 1:
            raise DatasetError(f"{where}: the images {' and '.join(found[:2])} share its name; rename one")
        return found[0] if found else None


@dataclass(frozen=True)
class ImageRow:
    """One row of index.parquet."""

    path: str  # relative to the dataset's images/ folder
    width: int
    height: int
    mode: str
    sha256: str


def decode(candidates: dict[str, Path], source: str) -> tuple[dict[str, ImageRow], dict[str, str]]:
    """The images that decode within the pixel limit, by relative path, and the reason each
    other one does not."""
    rows: dict[str, ImageRow] = {}
    unreadable: dict[str, str] = {}
    for rel in stages.each("decoding images", sorted(candidates)):
        data = candidates[rel].read_bytes()
        try:
            width, height, mode = images.decode_image(data)
        except Exception as exc:
            unreadable[rel] = f"{type(exc).__name__}: {exc}"[:200]
            continue
        rows[rel] = ImageRow(rel, width, height, mode, hashlib.sha256(data).hexdigest())
    if not rows:
        shown = "; ".join(f"{k} ({v})" for k, v in list(unreadable.items())[:3])
        raise DatasetError(f"no readable image in {source}: {shown or 'no image files'}")
    return rows, unreadable


def spread(values: list[int] | list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def sig4(value: float) -> float:
    """A share or ratio to 4 significant digits, for a report."""
    return float(f"{value:.4g}")


def image_report(
    rows: dict[str, ImageRow], unreadable: dict[str, str], skipped: list[str], layout: str
) -> dict[str, Any]:
    """The parts of a quality report every annotated layout shares."""
    return {
        "width": spread([r.width for r in rows.values()]),
        "height": spread([r.height for r in rows.values()]),
        "unreadable": images.capped(unreadable),
        "unreadable_count": len(unreadable),
        "skipped_files": images.capped(skipped),
        "skipped_count": len(skipped),
        "layout": layout,
    }


def write_index(staging: Path, rows: list[dict[str, Any]]) -> None:
    import pandas as pd

    frame = pd.DataFrame(rows)
    frame = frame.astype({"width": "int64", "height": "int64"})
    frame.to_parquet(staging / "index.parquet", index=False)


def read_text(p: PurePosixPath, disk: Path) -> str:
    data = disk.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{p} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc


def check_names(names: list[str], where: str) -> None:
    """Class names that are distinct, within the class limit and short enough to store."""
    counts = Counter(names)
    twice = next((n for n, c in counts.items() if c > 1), None)
    if twice is not None:
        raise DatasetError(f"{where} names the class '{twice[:40]}' twice; give each class its own name")
    images.check_classes(counts, "objects")


def read_names(p: PurePosixPath, disk: Path) -> list[str]:
    """classes.txt: one class name a line, line 1 being class 0 (blank lines at the end ignored)."""
    lines = read_text(p, disk).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    names = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            raise DatasetError(f"{p} line {n} is empty; write one class name a line (line 1 is class 0)")
        names.append(line.strip())
    if not names:
        raise DatasetError(f"{p} is empty; write one class name a line (line 1 is class 0)")
    check_names(names, str(p))
    return names


def find_file(files: dict[PurePosixPath, Path], *names: str) -> PurePosixPath | None:
    """The first of `names` (paths, any case) the zip holds."""
    by_lower = {str(p).lower(): p for p in files}
    return next((by_lower[n] for n in names if n in by_lower), None)
