"""Uploads become datasets here: checked, described, stored under ASCENT_HOME, recorded in SQL.

A bad upload raises DatasetError and leaves nothing behind: files are staged in a temporary
folder and moved into place only in the same transaction that writes the `datasets` row.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from core.config import database, get_settings
from core.data import tabular
from core.errors import DatasetError, NotFoundError
from db import queries
from db.queries import DatasetInfo
from db.session import session_scope

TASKS = ("tabular-classification", "tabular-regression")


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
) -> DatasetInfo:
    """Check an uploaded file, store it and record it as a dataset."""
    path = Path(path)
    size = _check_size(path)
    if task is not None and task not in TASKS:
        raise DatasetError(f"unknown task '{task}'; choose one of: {', '.join(TASKS)}")
    suffix = path.suffix.lower()
    if suffix not in tabular.TABLE_SUFFIXES:
        raise DatasetError(
            f"{path.name}: unsupported file type '{suffix or 'none'}'; upload a CSV, TSV or Parquet table"
        )
    df = tabular.read_table(path)
    task, schema, report = tabular.inspect_table(df, target, task)
    schema["source"] = path.name

    settings = get_settings()
    settings.datasets_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=settings.datasets_dir))
    final: Path | None = None
    try:
        df.to_parquet(staging / "data.parquet", index=False)
        shutil.copyfile(path, staging / f"original{suffix}")
        database()
        with session_scope() as session:
            info = queries.add_dataset(
                session=session,
                name=name or path.stem,
                task=task,
                format="parquet" if suffix in {".parquet", ".pq"} else "csv",
                path="",
                sha256=sha256_file(path),
                bytes=size,
                n_items=len(df),
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
