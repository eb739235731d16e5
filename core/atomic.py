"""Durable writes: a file is either its old self or its new self, never half of each.

Each write goes to a temporary file beside the target, is flushed and fsynced, then renamed
over the target, and the folder is fsynced so the rename survives a power cut.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot open folders
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` for a writer that wants a file name (safetensors, ONNX,
    tokenizers); on success it is fsynced and renamed over `path`, on failure removed."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_with(path: Path, write: Callable[[Path], Any]) -> None:
    """`write(tmp)` fills a temporary file, which then replaces `path` durably."""
    with replacing(path) as tmp:
        write(tmp)


def write_bytes(path: Path, data: bytes) -> None:
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, value: Any, *, indent: int | None = None) -> None:
    write_text(path, json.dumps(value, indent=indent))
