"""Image datasets from a zip: safe unpacking, layout detection, decoding checks, quality report.

Two layouts: one folder per class (optionally inside one top folder), or a CSV of `path,label`
inside the zip. Entries that would leave the dataset folder, links, a zip bomb (total unpacked
size or entry count over the limits) stop the ingest with nothing left on disk; `__MACOSX/`,
hidden files and non-image files are skipped and counted; unreadable images are reported by
name and left out.
"""

from __future__ import annotations

import csv
import hashlib
import io
import stat
import statistics
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from core.errors import DatasetError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
# Images at most this many pixels are decoded; a decompression-bomb image is "unreadable".
MAX_IMAGE_PIXELS = 64_000_000


@dataclass(frozen=True)
class ZipLimits:
    max_unpacked_bytes: int
    max_entries: int


@dataclass(frozen=True)
class ImageItem:
    path: str  # relative to the dataset folder
    label: str
    width: int
    height: int
    mode: str
    sha256: str


def _safe_name(info: zipfile.ZipInfo) -> PurePosixPath | None:
    """The entry's relative path, None for entries to skip; DatasetError for unsafe ones."""
    name = info.filename.replace("\\", "/")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise DatasetError(f"the zip contains a link ({info.filename}); upload plain files only")
    path = PurePosixPath(name)
    if name.startswith("/") or path.is_absolute() or (path.parts and ":" in path.parts[0]):
        raise DatasetError(f"the zip entry '{info.filename}' has an absolute path; zip the folder itself")
    if ".." in path.parts:
        raise DatasetError(f"the zip entry '{info.filename}' points outside its folder ('..')")
    if info.is_dir() or not path.parts:
        return None
    if path.parts[0] == "__MACOSX" or any(p.startswith(".") for p in path.parts):
        return None
    return path


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise DatasetError(f"{path.name} is not a valid zip archive ({exc})") from exc


def read_zip(path: Path, limits: ZipLimits) -> dict[PurePosixPath, bytes]:
    """Every kept file of the zip, checked against the limits before anything is read."""
    with _open_zip(path) as zf:
        infos = zf.infolist()
        if len(infos) > limits.max_entries:
            raise DatasetError(
                f"the zip has {len(infos)} entries, over the limit of {limits.max_entries} "
                "(ASCENT_MAX_ZIP_ENTRIES)"
            )
        declared = sum(i.file_size for i in infos)
        if declared > limits.max_unpacked_bytes:
            raise DatasetError(
                f"the zip unpacks to {declared / 1e6:.0f} MB, over the limit of "
                f"{limits.max_unpacked_bytes / 1e6:.0f} MB (ASCENT_MAX_UNPACKED_BYTES); is it a zip bomb?"
            )
        files: dict[PurePosixPath, bytes] = {}
        total = 0
        for info in infos:
            name = _safe_name(info)
            if name is None:
                continue
            try:
                data = zf.read(info)
            except (zipfile.BadZipFile, OSError, RuntimeError) as exc:
                raise DatasetError(f"the zip entry '{info.filename}' cannot be read: {exc}") from exc
            total += len(data)
            if total > limits.max_unpacked_bytes:
                raise DatasetError("the zip unpacks past its size limit; is it a zip bomb?")
            files[name] = data
    return files


def _strip_top_folder(files: dict[PurePosixPath, bytes]) -> dict[PurePosixPath, bytes]:
    """`flowers/roses/a.jpg` -> `roses/a.jpg` when every entry shares one top folder that holds
    class folders or a labels CSV (a lone `cats/` folder is one class, not a wrapper)."""
    tops = {p.parts[0] for p in files}
    if len(tops) != 1 or not all(len(p.parts) > 1 for p in files):
        return files
    inner = {PurePosixPath(*p.parts[1:]): data for p, data in files.items()}
    if any(len(p.parts) > 1 or p.suffix.lower() == ".csv" for p in inner):
        return inner
    return files


def _labels_from_csv(files: dict[PurePosixPath, bytes]) -> dict[PurePosixPath, str] | None:
    """A CSV at the top with `path` and `label` columns maps images to labels."""
    tables = [p for p in files if len(p.parts) == 1 and p.suffix.lower() == ".csv"]
    if not tables:
        return None
    if len(tables) > 1:
        raise DatasetError(
            f"the zip has several CSV files at the top ({', '.join(map(str, tables))}); keep one"
        )
    try:
        rows = list(csv.DictReader(io.StringIO(files[tables[0]].decode("utf-8-sig"))))
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{tables[0]} is not UTF-8 text") from exc
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise DatasetError(f"{tables[0]} needs the columns path,label (one row per image)")
    mapping = {}
    for row in rows:
        p = PurePosixPath((row["path"] or "").strip().replace("\\", "/"))
        if ".." in p.parts or p.is_absolute():
            raise DatasetError(f"{tables[0]} names '{row['path']}', outside the zip's folder")
        if p not in files:
            raise DatasetError(f"{tables[0]} names '{row['path']}', which is not in the zip")
        label = (row["label"] or "").strip()
        if label:
            mapping[p] = label
    return mapping


def decode_image(data: bytes) -> tuple[int, int, str]:
    """(width, height, mode) of an image that fully decodes; raises on anything else."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.width, img.height, img.mode


def inspect_zip(path: Path, limits: ZipLimits) -> tuple[dict[str, bytes], list[ImageItem], dict[str, Any]]:
    """Validate an image zip. Returns (files to store by relative path, items, report)."""
    files = _strip_top_folder(read_zip(path, limits))
    if not files:
        raise DatasetError(f"{path.name} contains no files (hidden files and __MACOSX/ are skipped)")
    by_csv = _labels_from_csv(files)
    skipped: list[str] = []
    candidates: list[tuple[PurePosixPath, str]] = []
    if by_csv is not None:
        candidates = sorted(by_csv.items())
    else:
        for p in sorted(files):
            if p.suffix.lower() not in IMAGE_SUFFIXES or len(p.parts) < 2:
                skipped.append(str(p))
            else:
                candidates.append((p, p.parts[0]))
        if not candidates:
            at_top = [str(p) for p in files if len(p.parts) == 1][:3]
            raise DatasetError(
                "no class folders with images found: put the images in one folder per class "
                f"(e.g. cats/1.jpg, dogs/2.png) or add a CSV of path,label (saw: {', '.join(at_top) or 'nothing'})"
            )

    items: list[ImageItem] = []
    unreadable: dict[str, str] = {}
    for p, label in candidates:
        data = files[p]
        try:
            width, height, mode = decode_image(data)
        except Exception as exc:
            unreadable[str(p)] = f"{type(exc).__name__}: {exc}"[:200]
            continue
        items.append(ImageItem(str(p), label, width, height, mode, hashlib.sha256(data).hexdigest()))

    if not items:
        shown = "; ".join(f"{k} ({v})" for k, v in list(unreadable.items())[:3])
        raise DatasetError(f"no readable image in {path.name}: {shown or 'no image files'}")
    counts = Counter(i.label for i in items)
    if len(counts) < 2:
        raise DatasetError(
            f"only one class ('{next(iter(counts))}') has readable images; a classifier needs at least two"
        )
    groups: dict[str, list[ImageItem]] = defaultdict(list)
    for item in items:
        groups[item.sha256].append(item)
    duplicates = [[i.path for i in g] for g in groups.values() if len(g) > 1]
    cross = [[f"{i.label}: {i.path}" for i in g] for g in groups.values() if len({i.label for i in g}) > 1]
    widths, heights = [i.width for i in items], [i.height for i in items]
    classes = sorted(counts)
    report: dict[str, Any] = {
        "images": len(items),
        "class_counts": {c: counts[c] for c in classes},
        "imbalance_ratio": round(max(counts.values()) / min(counts.values()), 3),
        "unreadable": unreadable,
        "skipped_files": skipped[:100],
        "skipped_count": len(skipped),
        "duplicate_groups": duplicates[:100],
        "duplicate_images": sum(len(g) - 1 for g in duplicates),
        "cross_class_duplicates": cross[:100],
        "width": {"min": min(widths), "median": statistics.median(widths), "max": max(widths)},
        "height": {"min": min(heights), "median": statistics.median(heights), "max": max(heights)},
        "modes": dict(Counter(i.mode for i in items)),
        "layout": "csv" if by_csv is not None else "folders",
    }
    keep = {i.path: files[PurePosixPath(i.path)] for i in items}
    return keep, items, report
