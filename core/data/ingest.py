"""Uploads become datasets here: checked, described, stored under ASCENT_HOME, recorded in SQL.

A bad upload raises DatasetError and leaves nothing behind: files are staged in a temporary
folder and moved into place only in the same transaction that writes the `datasets` row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from core.config import database, get_settings
from core.data import audio, images, tabular, text
from core.errors import DatasetError, NotFoundError
from db import queries
from db.queries import DatasetInfo
from db.session import session_scope

TASKS = (
    "tabular-classification",
    "tabular-regression",
    "image-classification",
    "text-classification",
    "audio-classification",
)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_size(path: Path) -> int:
    if not path.is_file():
        raise DatasetError(f"{path} does not exist or is not a file")
    size = path.stat().st_size
    limit = get_settings().max_upload_bytes
    if size == 0:
        raise DatasetError(f"{path.name} is empty (0 bytes)")
    if size > limit:
        raise DatasetError(
            f"{path.name} is {size / 1e6:.1f} MB, over the {limit / 1e6:.1f} MB limit; "
            "upload a smaller file or raise ASCENT_MAX_UPLOAD_BYTES"
        )
    return size


def ingest_file(
    path: str | Path,
    *,
    name: str | None = None,
    target: str | None = None,
    task: str | None = None,
    text_column: str | None = None,
) -> DatasetInfo:
    """Check an uploaded file (a table, a zip of images or of texts), store it and record it."""
    path = Path(path)
    size = _check_size(path)
    if task is not None and task not in TASKS:
        raise DatasetError(f"unknown task '{task}'; choose one of: {', '.join(TASKS)}")
    suffix = path.suffix.lower()
    if text_column is not None and task is None:
        task = "text-classification"
    if task is None and suffix == ".zip":
        task = _zip_task(path, path.name)
    elif task is None and suffix in text.TEXT_SUFFIXES and text.text_column_guess(text.read_table(path)):
        task = "text-classification"  # a column of free text (force a table task with --task)
    if task == "audio-classification":
        if suffix != ".zip":
            raise DatasetError(
                "audio-classification takes a zip with one folder per class of WAV or FLAC clips"
            )
        return _ingest_audio(path, name=name, size=size)
    if task == "text-classification":
        return _ingest_texts(path, name=name, size=size, text_column=text_column, target=target)
    if suffix == ".zip":
        if task not in (None, "image-classification"):
            raise DatasetError(f"a zip of images is image-classification, not {task}")
        return _ingest_images(path, name=name, size=size)
    if task == "image-classification":
        raise DatasetError("image-classification takes a zip of class folders or a CSV of path,label")
    if suffix not in tabular.TABLE_SUFFIXES:
        raise DatasetError(
            f"{path.name}: unsupported file type '{suffix or 'none'}'; upload a CSV, TSV or Parquet "
            "table, or a zip of images"
        )
    df = tabular.read_table(path)
    task, schema, report = tabular.inspect_table(df, target, task)
    schema["source"] = path.name

    def write(staging: Path) -> None:
        df.to_parquet(staging / "data.parquet", index=False)
        shutil.copyfile(path, staging / f"original{suffix}")

    fmt = "parquet" if suffix in {".parquet", ".pq"} else "csv"
    return _store(path, name, task, fmt, size, len(df), schema, report, write)


def _ingest_images(path: Path, *, name: str | None, size: int) -> DatasetInfo:
    settings = get_settings()
    limits = images.ZipLimits(settings.max_unpacked_bytes, settings.max_zip_entries)
    files, items, report = images.inspect_zip(path, limits)
    schema = {
        "task": "image-classification",
        "classes": sorted(report["class_counts"]),
        "source": path.name,
        "index": "index.parquet",
    }

    def write(staging: Path) -> None:
        _write_folder(staging, "images", files, items)

    return _store(path, name, "image-classification", "zip", size, len(items), schema, report, write)


def _write_folder(staging: Path, folder: str, files: dict[str, bytes], items: Sequence[Any]) -> None:
    """Files of a zip under staging/folder, and one index row per item (a dataclass)."""
    import pandas as pd

    root = staging / folder
    for rel, data in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    pd.DataFrame([dataclasses.asdict(i) for i in items]).to_parquet(staging / "index.parquet", index=False)


def _ingest_audio(path: Path, *, name: str | None, size: int) -> DatasetInfo:
    settings = get_settings()
    limits = images.ZipLimits(settings.max_unpacked_bytes, settings.max_zip_entries)
    files, clips, report = audio.inspect_zip(path, limits)
    schema = {
        "task": "audio-classification",
        "classes": sorted(report["class_counts"]),
        "source": path.name,
        "index": "index.parquet",
        "clip_seconds": audio.clip_seconds(report["seconds"]["p95"]),
    }

    def write(staging: Path) -> None:
        _write_folder(staging, "clips", files, clips)

    return _store(path, name, "audio-classification", "zip", size, len(clips), schema, report, write)


def _ingest_texts(
    path: Path, *, name: str | None, size: int, text_column: str | None, target: str | None
) -> DatasetInfo:
    suffix = path.suffix.lower()
    if suffix == ".zip":
        settings = get_settings()
        limits = images.ZipLimits(settings.max_unpacked_bytes, settings.max_zip_entries)
        frame = text.read_zip(path, limits)
        text_column, target, fmt = "text", "label", "zip"
    elif suffix in text.TEXT_SUFFIXES:
        frame = text.read_table(path)
        text_column, target = text.choose_columns(frame, text_column, target)
        fmt = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(
            suffix, "csv"
        )
    else:
        raise DatasetError(
            f"{path.name}: text-classification takes a CSV, TSV, Parquet or JSON Lines table, "
            "or a zip of class folders of .txt files"
        )
    data, schema, report = text.inspect_texts(frame, text_column, target, path.name)

    def write(staging: Path) -> None:
        data.to_parquet(staging / "data.parquet", index=False)

    return _store(path, name, "text-classification", fmt, size, len(data), schema, report, write)


def _store(
    path: Path,
    name: str | None,
    task: str,
    fmt: str,
    size: int,
    n_items: int,
    schema: dict[str, Any],
    report: dict[str, Any],
    write: Callable[[Path], None],
) -> DatasetInfo:
    """Write the files in a staging folder and move it into place with the dataset row."""
    settings = get_settings()
    settings.datasets_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=settings.datasets_dir))
    final: Path | None = None
    try:
        write(staging)
        database()
        with session_scope() as session:
            info = queries.add_dataset(
                session=session,
                name=name or path.stem,
                task=task,
                format=fmt,
                path="",
                sha256=sha256_file(path),
                bytes=size,
                n_items=n_items,
                schema=schema,
                report=report,
            )
            final = settings.datasets_dir / str(info.id)
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
            queries.set_dataset_path(session=session, dataset_id=info.id, path=str(final))
        return get_dataset(info.id)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if final is not None:
            shutil.rmtree(final, ignore_errors=True)
        raise


def ingest_upload(filename: str, data: bytes, **options: str | None) -> DatasetInfo:
    """Ingest bytes a browser uploaded, under their original file name."""
    safe = Path(filename).name or "upload"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / safe
        path.write_bytes(data)
        return ingest_file(path, **options)


@dataclasses.dataclass(frozen=True)
class UploadGuess:
    """What the Datasets page offers for an upload before it is added."""

    task: str | None  # None: tabular, classification or regression detected at ingest
    columns: list[str]
    target: str | None
    text_column: str | None


def _zip_task(source: bytes | Path, name: str) -> str:
    """Audio when most files in the zip are .wav/.flac, texts when .txt, else images."""
    import io
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source) as zf:
            names = [n.lower() for n in zf.namelist() if not n.endswith("/")]
    except zipfile.BadZipFile as exc:
        raise DatasetError(f"{name} is not a valid zip archive ({exc})") from exc
    texts = sum(n.endswith(".txt") for n in names)
    clips = sum(n.endswith((".wav", ".flac")) for n in names)
    if names and clips > len(names) / 2:
        return "audio-classification"
    return "text-classification" if names and texts > len(names) / 2 else "image-classification"


def guess_upload(filename: str, data: bytes) -> UploadGuess:
    """The likely task and columns of an upload: a zip of images or texts, a table or texts."""
    safe = Path(filename).name or "upload.csv"
    if safe.lower().endswith(".zip"):
        return UploadGuess(_zip_task(data, safe), [], None, None)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / safe
        path.write_bytes(data)
        df = text.read_table(path)
    columns = [str(c) for c in df.columns]
    text_column = text.text_column_guess(df)
    if text_column is not None:
        _, label = text.choose_columns(df, text_column, None)
        return UploadGuess("text-classification", columns, label, text_column)
    return UploadGuess(None, columns, tabular.choose_target(df, None), None)


def get_dataset(dataset_id: int) -> DatasetInfo:
    database()
    with session_scope() as session:
        info = queries.get_dataset(session=session, dataset_id=dataset_id)
    if info is None:
        raise NotFoundError(f"no dataset with id {dataset_id}; see `python -m core datasets list`")
    return info


def list_datasets() -> list[DatasetInfo]:
    database()
    with session_scope() as session:
        return queries.list_datasets(session=session)


def delete_dataset(dataset_id: int) -> None:
    """Delete a dataset's row and files. Its runs stay, pointing at no dataset."""
    info = get_dataset(dataset_id)
    with session_scope() as session:
        queries.delete_dataset(session=session, dataset_id=dataset_id)
    shutil.rmtree(info.path, ignore_errors=True)
