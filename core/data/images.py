"""Image datasets from a zip: safe unpacking, layout detection, decoding checks, quality report.

Two layouts: one folder per class (optionally inside one top folder), or a CSV of `path,label`
inside the zip. Entries that would leave the dataset folder, links, names the filesystem cannot
hold (a component over 255 bytes, a file that is also a folder, a name twice), a zip bomb (total
unpacked size or entry count over the limits) stop the ingest with nothing left on disk;
`__MACOSX/`, hidden files and non-image files are skipped and counted; unreadable images and
images over the pixel limit are reported by name and left out. Entries are streamed to disk,
never held in memory.
"""

from __future__ import annotations

import csv
import hashlib
import io
import shutil
import stat
import statistics
import zipfile
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from core.data import stages
from core.errors import DatasetError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
# One part of a path inside a zip, in bytes (what Linux, macOS and Windows filesystems hold),
# and a whole path, in characters.
MAX_NAME_BYTES = 255
MAX_PATH_CHARS = 1024
# A classifier over more classes than this is not what an upload of folders means.
MAX_CLASSES = 1000
# Lists in a quality report keep this many entries (the counts say how many there were).
REPORT_ITEMS = 100


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
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise DatasetError(f"{path.name} is not a valid zip archive ({exc})") from exc


def _check_names(kept: list[tuple[zipfile.ZipInfo, PurePosixPath]]) -> None:
    """Names the dataset folder can hold: short enough, each once, no file that is a folder."""
    seen: set[PurePosixPath] = set()
    for info, name in kept:
        long = next((p for p in name.parts if len(p.encode("utf-8")) > MAX_NAME_BYTES), None)
        if long is not None or len(str(name)) > MAX_PATH_CHARS:
            shown = (long or str(name))[:40]
            raise DatasetError(
                f"the zip entry '{shown}…' has a name over {MAX_NAME_BYTES} bytes (or a path over "
                f"{MAX_PATH_CHARS} characters); shorten the file and folder names"
            )
        if name in seen:
            raise DatasetError(f"the zip holds '{info.filename}' twice; keep one of them")
        seen.add(name)
    folders = {parent for _, name in kept for parent in name.parents}
    clash = next((name for _, name in kept if name in folders), None)
    if clash is not None:
        raise DatasetError(
            f"the zip has a file '{clash}' and also files inside a folder '{clash}/'; rename one of them"
        )


def unpack_zip(path: Path, limits: ZipLimits, dest: Path) -> dict[PurePosixPath, Path]:
    """Every kept file of the zip, written under `dest` by its relative path (streamed), after
    the entry count, declared size and names are checked; the unpacked size is counted as it
    is written, so a zip that lies about its sizes stops at the limit too."""
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
        kept = [(info, name) for info in infos if (name := _safe_name(info)) is not None]
        _check_names(kept)
        files: dict[PurePosixPath, Path] = {}
        total = 0
        for info, name in stages.each("unpacking the zip", kept):
            target = dest.joinpath(*name.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, target.open("wb") as out:
                    while block := src.read(1 << 20):
                        total += len(block)
                        if total > limits.max_unpacked_bytes:
                            raise DatasetError("the zip unpacks past its size limit; is it a zip bomb?")
                        out.write(block)
            except (zipfile.BadZipFile, RuntimeError, NotImplementedError, zlib.error, EOFError) as exc:
                raise DatasetError(f"the zip entry '{info.filename}' cannot be read: {exc}") from exc
            except OSError as exc:
                raise DatasetError(
                    f"the zip entry '{info.filename}' cannot be unpacked: {exc.strerror}"
                ) from exc
            files[name] = target
    return files


def keep_files(staging: Path, folder: str, files: dict[PurePosixPath, Path], paths: list[str]) -> None:
    """Move the kept files (by relative path) to staging/folder and drop the rest."""
    root = staging / folder
    sources = {str(rel): disk for rel, disk in files.items()}
    for rel in paths:
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        sources[rel].replace(target)
    shutil.rmtree(staging / UNPACKED, ignore_errors=True)


UNPACKED = "unpacked"  # inside a staging folder: the zip as it came, before its files are sorted


def capped(items: list[str] | dict[str, str]) -> Any:
    """The first REPORT_ITEMS entries of a report list or mapping."""
    if isinstance(items, dict):
        return dict(list(items.items())[:REPORT_ITEMS])
    return items[:REPORT_ITEMS]


def check_classes(counts: Counter[str], what: str) -> None:
    """At least two classes, at most MAX_CLASSES, names short enough to store."""
    if len(counts) > MAX_CLASSES:
        raise DatasetError(f"the zip has {len(counts)} classes of {what}, over the limit of {MAX_CLASSES}")
    from core.data.tabular import MAX_CATEGORY_CHARS

    long = next((c for c in counts if len(c) > MAX_CATEGORY_CHARS), None)
    if long is not None:
        raise DatasetError(
            f"the class name '{long[:40]}…' is over {MAX_CATEGORY_CHARS} characters; shorten it"
        )


def _strip_top_folder(files: dict[PurePosixPath, Any]) -> dict[PurePosixPath, Any]:
    """`flowers/roses/a.jpg` -> `roses/a.jpg` when every entry shares one top folder that holds
    class folders or a labels CSV (a lone `cats/` folder is one class, not a wrapper)."""
    tops = {p.parts[0] for p in files}
    if len(tops) != 1 or not all(len(p.parts) > 1 for p in files):
        return files
    inner = {PurePosixPath(*p.parts[1:]): data for p, data in files.items()}
    if any(len(p.parts) > 1 or p.suffix.lower() == ".csv" for p in inner):
        return inner
    return files


def _labels_from_csv(files: dict[PurePosixPath, Path]) -> dict[PurePosixPath, str] | None:
    """A CSV at the top with `path` and `label` columns maps images to labels."""
    tables = [p for p in files if len(p.parts) == 1 and p.suffix.lower() == ".csv"]
    if not tables:
        return None
    if len(tables) > 1:
        raise DatasetError(
            f"the zip has several CSV files at the top ({', '.join(map(str, tables))}); keep one"
        )
    try:
        rows = list(csv.DictReader(io.StringIO(files[tables[0]].read_bytes().decode("utf-8-sig"))))
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{tables[0]} is not UTF-8 text") from exc
    except csv.Error as exc:
        raise DatasetError(f"{tables[0]} is not a readable CSV ({exc})") from exc
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
    """(width, height, mode) of an image that fully decodes within the pixel limit; raises on
    anything else (the limit is checked from the header, before the pixels are decoded)."""
    from core.runtime import open_image

    with open_image(data) as img:
        img.load()
        return img.width, img.height, img.mode


def inspect_zip(
    path: Path, limits: ZipLimits, dest: Path
) -> tuple[dict[PurePosixPath, Path], list[ImageItem], dict[str, Any]]:
    """Unpack an image zip under `dest` and validate it. Returns (its files on disk by relative
    path, the readable images, the quality report)."""
    files = _strip_top_folder(unpack_zip(path, limits, dest))
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
    for p, label in stages.each("decoding images", candidates):
        data = files[p].read_bytes()
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
    check_classes(counts, "images")
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
        "unreadable": capped(unreadable),
        "unreadable_count": len(unreadable),
        "skipped_files": capped(skipped),
        "skipped_count": len(skipped),
        "duplicate_groups": [g[:10] for g in duplicates[:REPORT_ITEMS]],
        "duplicate_images": sum(len(g) - 1 for g in duplicates),
        "cross_class_duplicates": [g[:10] for g in cross[:REPORT_ITEMS]],
        "width": {"min": min(widths), "median": statistics.median(widths), "max": max(widths)},
        "height": {"min": min(heights), "median": statistics.median(heights), "max": max(heights)},
        "modes": dict(Counter(i.mode for i in items)),
        "layout": "csv" if by_csv is not None else "folders",
    }
    return files, items, report
