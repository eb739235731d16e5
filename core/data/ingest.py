"""Uploads become datasets here: checked, described, stored under ASCENT_HOME, recorded in SQL.

Each modality's module (pandas, audio decoding) is imported where its upload is read: the
CLI and the pages import this module for dataset lookups alone.

A bad upload raises DatasetError and leaves nothing behind: files are staged in a temporary
folder (zips are unpacked into it, entry by entry) and moved into place only in the same
transaction that writes the `datasets` row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from core.access import LOCAL, Action, Actor, check_name, require
from core.config import database, get_settings
from core.data import TASKS, images, layouts, stages
from core.errors import ConfigError, DatasetError, NotFoundError
from db import queries
from db.models import NAME_MAX
from db.queries import DatasetInfo, DatasetSummary
from db.session import session_scope

assert {layouts.DETECTION, layouts.SEGMENTATION} <= set(TASKS)  # TASKS: see core/data/__init__.py


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
            f"{path.name} is {size / 2**20:.1f} MB, over the {limit / 2**20:.1f} MB limit; "
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
    source_column: str | None = None,
    target_column: str | None = None,
    actor: Actor = LOCAL,
) -> DatasetInfo:
    """Check an uploaded file (a table, a zip of images or of texts), store it and record it."""
    require(actor, Action.UPLOAD)
    path = Path(path)
    try:
        name = check_name(name, "dataset") if name and name.strip() else path.stem[:NAME_MAX] or "dataset"
    except ConfigError as exc:
        raise DatasetError(str(exc)) from None
    size = _check_size(path)
    pair = (source_column, target_column)
    return _ingest(path, name, size, target, task, text_column, actor.name, pair)


def _ingest(
    path: Path,
    name: str,
    size: int,
    target: str | None,
    task: str | None,
    text_column: str | None,
    created_by: str | None,
    pair: tuple[str | None, str | None] = (None, None),
) -> DatasetInfo:
    """ingest_file once the caller, the name and the size are checked."""
    from core.data import tabular, text

    if task is not None and task not in TASKS:
        raise DatasetError(f"unknown task '{task}'; choose one of: {', '.join(TASKS)}")
    suffix = path.suffix.lower()
    if text_column is not None and task is None:
        task = "text-classification"
    if pair != (None, None) and task is None:
        task = "translation"
    if task is None and suffix == ".zip":
        task = _zip_task(path, path.name)
    elif task is None and suffix in text.TEXT_SUFFIXES and _translation_columns(path):
        task = "translation"  # source and target columns, or two named by language
    elif task is None and suffix in text.TEXT_SUFFIXES and _instruction_columns(path):
        task = "text-generation"  # prompt and response columns, or chat messages
    elif (
        task is None
        and suffix in text.TEXT_SUFFIXES
        and text.text_column_guess(text.read_table(path, GUESS_ROWS))
    ):
        task = "text-classification"  # a column of free text (force a table task with --task)
    if task in (layouts.DETECTION, layouts.SEGMENTATION):
        if suffix != ".zip":
            raise DatasetError(f"{path.name}: {task} takes {layouts.EXPECTED[task]}")
        return _ingest_annotated(path, name=name, size=size, task=task, created_by=created_by)
    if task == "audio-classification":
        if suffix != ".zip":
            raise DatasetError(
                "audio-classification takes a zip with one folder per class of WAV or FLAC clips"
            )
        return _ingest_audio(path, name=name, size=size, created_by=created_by)
    if task == "speech-recognition":
        if suffix != ".zip":
            raise DatasetError(
                "speech-recognition takes a zip of WAV or FLAC clips with a metadata.csv "
                "(file_name,transcription) or LibriSpeech *.trans.txt files"
            )
        from core.data import speech

        return _ingest_zip(path, name, size, created_by, "speech-recognition", speech.inspect_zip, "clips")
    if task == "text-generation":
        return _ingest_instructions(path, name=name, size=size, created_by=created_by)
    if task == "translation":
        return _ingest_translation(path, name, size, pair, created_by)
    if task == "text-classification":
        return _ingest_texts(
            path, name=name, size=size, text_column=text_column, target=target, created_by=created_by
        )
    if suffix == ".zip":
        if task not in (None, "image-classification"):
            raise DatasetError(f"a zip of images is image-classification, not {task}")
        return _ingest_images(path, name=name, size=size, created_by=created_by)
    if task == "image-classification":
        raise DatasetError("image-classification takes a zip of class folders or a CSV of path,label")
    if suffix not in tabular.TABLE_SUFFIXES:
        raise DatasetError(
            f"{path.name}: unsupported file type '{suffix or 'none'}'; upload a CSV, TSV or Parquet "
            "table, or a zip of images"
        )
    stages.report("reading the table")
    df = tabular.read_table(path)
    stages.report(f"checking {len(df):,} rows")
    task, schema, report = tabular.inspect_table(df, target, task)
    schema["source"] = path.name

    def write(staging: Path) -> None:
        df.to_parquet(staging / "data.parquet", index=False)
        shutil.copyfile(path, staging / f"original{suffix}")

    fmt = "parquet" if suffix in {".parquet", ".pq"} else "csv"
    with staging_folder() as staging:
        write(staging)
        return commit(staging, path, name, task, fmt, size, len(df), schema, report, created_by)


def _zip_limits() -> images.ZipLimits:
    settings = get_settings()
    return images.ZipLimits(settings.max_unpacked_bytes, settings.max_zip_entries)


def _ingest_images(path: Path, *, name: str, size: int, created_by: str | None) -> DatasetInfo:
    return _ingest_zip(path, name, size, created_by, "image-classification", images.inspect_zip, "images")


def _ingest_audio(path: Path, *, name: str, size: int, created_by: str | None) -> DatasetInfo:
    from core.data import audio

    return _ingest_zip(path, name, size, created_by, "audio-classification", audio.inspect_zip, "clips")


def _ingest_annotated(path: Path, *, name: str, size: int, task: str, created_by: str | None) -> DatasetInfo:
    """A zip of images with boxes (COCO, YOLO, VOC) or masks, staged by its task's module."""
    from core.data import detection, segmentation

    stage = detection.stage_zip if task == layouts.DETECTION else segmentation.stage_zip
    with staging_folder() as staging:
        schema, report = stage(path, _zip_limits(), staging)
        return commit(staging, path, name, task, "zip", size, report["images"], schema, report, created_by)


def _ingest_zip(
    path: Path,
    name: str,
    size: int,
    created_by: str | None,
    task: str,
    inspect: Callable[..., tuple[dict[Any, Path], Sequence[Any], dict[str, Any]]],
    folder: str,
) -> DatasetInfo:
    """A zip of class folders (images or clips): unpacked, inspected, its kept files sorted
    under `folder` with an index row each, then committed."""
    import pandas as pd

    with staging_folder() as staging:
        files, items, report = inspect(path, _zip_limits(), staging / images.UNPACKED)
        schema: dict[str, Any] = {"task": task, "source": path.name, "index": "index.parquet"}
        if "class_counts" in report:
            schema["classes"] = sorted(report["class_counts"])
        if task == "audio-classification":
            from core.data import audio

            schema["clip_seconds"] = audio.clip_seconds(report["seconds"]["p95"])
        stages.report(f"keeping {len(items)} {folder}")
        images.keep_files(staging, folder, files, [i.path for i in items])
        pd.DataFrame([dataclasses.asdict(i) for i in items]).to_parquet(
            staging / "index.parquet", index=False
        )
        return commit(staging, path, name, task, "zip", size, len(items), schema, report, created_by)


def _ingest_texts(
    path: Path,
    *,
    name: str,
    size: int,
    text_column: str | None,
    target: str | None,
    created_by: str | None,
) -> DatasetInfo:
    with staging_folder() as staging:
        data, schema, report, fmt = _read_texts(path, text_column, target, staging)
        data.to_parquet(staging / "data.parquet", index=False)
        shutil.rmtree(staging / images.UNPACKED, ignore_errors=True)
        return commit(
            staging, path, name, "text-classification", fmt, size, len(data), schema, report, created_by
        )


def _instruction_columns(path: Path) -> bool:
    """Whether a table's columns are instructions (prompt and response, or chat messages)."""
    from core.data import instructions, text

    found = instructions.layout(
        [
            str(c)
            for c in text.read_table(path, GUESS_ROWS, fields=1, nested=instructions.MESSAGES_NAMES).columns
        ]
    )
    return found is not None and found[0] != "text"


def _translation_columns(path: Path) -> bool:
    """Whether a table's columns are a source and a target (by name or by language)."""
    from core.data import instructions, text, translation

    columns = text.read_table(path, GUESS_ROWS, fields=1, nested=instructions.MESSAGES_NAMES).columns
    return translation.find_columns([str(c) for c in columns]) is not None


def _ingest_translation(
    path: Path, name: str, size: int, pair: tuple[str | None, str | None], created_by: str | None
) -> DatasetInfo:
    from core.data import translation

    stages.report("reading the pairs")
    frame = translation.read(path)
    source, target = translation.choose_columns([str(c) for c in frame.columns], *pair, path.name)
    stages.report(f"checking {len(frame):,} pairs")
    data, schema, report = translation.inspect(frame, source, target, path.name)
    fmt = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(
        path.suffix.lower(), "csv"
    )
    with staging_folder() as staging:
        data.to_parquet(staging / "data.parquet", index=False)
        return commit(staging, path, name, "translation", fmt, size, len(data), schema, report, created_by)


def _ingest_instructions(path: Path, *, name: str, size: int, created_by: str | None) -> DatasetInfo:
    from core.data import instructions

    stages.report("reading the examples")
    frame, kind, columns = instructions.read(path)
    stages.report(f"checking {len(frame):,} examples")
    data, schema, report = instructions.inspect(frame, kind, columns, path.name)
    fmt = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(
        path.suffix.lower(), "csv"
    )
    with staging_folder() as staging:
        data.to_parquet(staging / "data.parquet", index=False)
        return commit(
            staging, path, name, "text-generation", fmt, size, len(data), schema, report, created_by
        )


def _read_texts(
    path: Path, text_column: str | None, target: str | None, staging: Path
) -> tuple[Any, dict[str, Any], dict[str, Any], str]:
    from core.data import text

    suffix = path.suffix.lower()
    if suffix == ".zip":
        frame = text.read_zip(path, _zip_limits(), staging / images.UNPACKED)
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
    return data, schema, report, fmt


@contextlib.contextmanager
def staging_folder() -> Iterator[Path]:
    """A temporary folder beside the datasets, removed unless _commit moved it into place."""
    settings = get_settings()
    settings.datasets_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=settings.datasets_dir))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def commit(
    staging: Path,
    path: Path,
    name: str,
    task: str,
    fmt: str,
    size: int,
    n_items: int,
    schema: dict[str, Any],
    report: dict[str, Any],
    created_by: str | None,
    *,
    parent: DatasetInfo | None = None,
) -> DatasetInfo:
    """Move the staged files into place in the same transaction that writes the dataset row
    (a new version of `parent` when given: its number one past the highest in that line)."""
    from core.data import tabular

    settings = get_settings()
    stages.report("recording the dataset")
    tabular.check_size(schema, "schema", "")
    tabular.check_size(report, "quality report", "")
    final: Path | None = None
    try:
        database()
        with session_scope() as session:
            info = queries.add_dataset(
                session=session,
                name=name,
                created_by=created_by,
                task=task,
                format=fmt,
                path="",
                sha256=sha256_file(path),
                bytes=size,
                n_items=n_items,
                schema=schema,
                report=report,
                parent_id=None if parent is None else parent.id,
                version=1 if parent is None else _next_version(session, parent),
            )
            final = settings.datasets_dir / str(info.id)
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
            queries.set_dataset_path(session=session, dataset_id=info.id, path=str(final))
        return get_dataset(info.id)
    except BaseException:
        if final is not None:
            shutil.rmtree(final, ignore_errors=True)
        raise


def _next_version(session: Any, parent: DatasetInfo) -> int:
    """One past the highest version among `parent`'s line: its first version and every
    dataset revised from it, directly or not."""
    known = {d.id: d for d in queries.list_datasets(session=session)}
    root = parent.id
    while known.get(root) is not None and known[root].parent_id in known:
        root = known[root].parent_id  # type: ignore[assignment]
    line, grew = {root}, True
    while grew:
        more = {d.id for d in known.values() if d.parent_id in line} - line
        line |= more
        grew = bool(more)
    return 1 + max(known[i].version for i in line if i in known)


def _upload_name(filename: str) -> str:
    """The browser's file name as a safe, short local one (its suffix kept)."""
    safe = Path(filename.replace("\\", "/")).name.strip() or "upload"
    if len(safe.encode("utf-8")) > 200:
        stem, suffix = Path(safe).stem, Path(safe).suffix[:16]
        safe = stem.encode("utf-8")[: 200 - len(suffix.encode("utf-8"))].decode("utf-8", "ignore") + suffix
    return safe


def ingest_upload(filename: str, data: bytes, *, actor: Actor = LOCAL, **options: str | None) -> DatasetInfo:
    """Ingest bytes a browser uploaded, under their original file name."""
    require(actor, Action.UPLOAD)
    limit = get_settings().max_upload_bytes
    if len(data) > limit:
        raise DatasetError(
            f"{filename} is {len(data) / 2**20:.1f} MB, over the {limit / 2**20:.1f} MB limit; "
            "upload a smaller file or raise ASCENT_MAX_UPLOAD_BYTES"
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / _upload_name(filename)
        path.write_bytes(data)
        return ingest_file(path, actor=actor, **options)


@dataclasses.dataclass(frozen=True)
class UploadGuess:
    """What the Datasets page offers for an upload before it is added."""

    task: str | None  # None: tabular, classification or regression detected at ingest
    columns: list[str]
    target: str | None
    text_column: str | None


def _zip_task(source: bytes | Path, name: str) -> str:
    """Detection or segmentation when the zip holds boxes or masks in a known layout (before
    the guesses by suffix: YOLO labels are .txt files), audio when most files in the zip are
    .wav/.flac, texts when .txt, else images."""
    import io
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source) as zf:
            names = [n.lower() for n in zf.namelist() if not n.endswith("/")]
            annotated = layouts.zip_task(zf)
    except zipfile.BadZipFile as exc:
        raise DatasetError(f"{name} is not a valid zip archive ({exc})") from exc
    if annotated is not None:
        return annotated
    texts = sum(n.endswith(".txt") for n in names)
    clips = sum(n.endswith((".wav", ".flac")) for n in names)
    if clips:
        from core.data.speech import layout_of

        if layout_of(names) is not None:  # clips with their transcripts
            return "speech-recognition"
    if names and clips > len(names) / 2:
        return "audio-classification"
    return "text-classification" if names and texts > len(names) / 2 else "image-classification"


GUESS_ROWS = 2_000  # a table's first rows are enough to offer its task and columns
_guesses: OrderedDict[tuple[str, str], UploadGuess] = OrderedDict()


def guess_upload(filename: str, data: bytes) -> UploadGuess:
    """The likely task and columns of an upload: a zip of images or texts, a table or texts.

    A page calls this on every rerun while the file is picked, so the answer is kept per
    content hash, and a table is judged from its first GUESS_ROWS rows."""
    safe = _upload_name(filename) or "upload.csv"
    key = (safe, hashlib.sha256(data).hexdigest())
    if key in _guesses:
        _guesses.move_to_end(key)
        return _guesses[key]
    guess = _guess(safe, data)
    _guesses[key] = guess
    while len(_guesses) > 16:
        _guesses.popitem(last=False)
    return guess


def _guess(safe: str, data: bytes) -> UploadGuess:
    from core.data import instructions, tabular, text, translation

    if safe.lower().endswith(".zip"):
        return UploadGuess(_zip_task(data, safe), [], None, None)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / safe
        path.write_bytes(data)
        df = text.read_table(path, nrows=GUESS_ROWS, fields=1, nested=instructions.MESSAGES_NAMES)
    columns = [str(c) for c in df.columns]
    if translation.find_columns(columns) is not None:
        return UploadGuess("translation", columns, None, None)
    found = instructions.layout(columns)
    if found is not None and found[0] != "text":
        return UploadGuess("text-generation", columns, None, None)
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


def list_datasets() -> list[DatasetSummary]:
    """Every dataset without its schema and report (get_dataset has those for one)."""
    database()
    with session_scope() as session:
        return queries.list_datasets(session=session)


def delete_dataset(dataset_id: int, *, actor: Actor = LOCAL) -> None:
    """Delete a dataset's row and files. Its runs stay, pointing at no dataset."""
    info = get_dataset(dataset_id)
    require(actor, Action.EDIT, info.created_by, what=f"dataset {dataset_id}")
    with session_scope() as session:
        queries.delete_dataset(session=session, dataset_id=dataset_id)
    shutil.rmtree(info.path, ignore_errors=True)
    # The data doctor's features and report of it (core/doctor.py) go with it.
    for cached in (Path(get_settings().home) / "cache" / "doctor").glob(f"{dataset_id}-*"):
        cached.unlink(missing_ok=True)


def same_file(data: bytes) -> DatasetSummary | None:
    """The first dataset added from exactly these bytes (same sha256), or None: the Datasets
    page says so before a file is added twice."""
    from sqlalchemy import select

    from db.models import Dataset

    digest = hashlib.sha256(data).hexdigest()
    database()
    with session_scope() as session:
        found = session.scalar(
            select(Dataset.id).where(Dataset.sha256 == digest).order_by(Dataset.id).limit(1)
        )
    return next((d for d in list_datasets() if d.id == found), None) if found is not None else None
