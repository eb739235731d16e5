"""The chat playground's models: each run's exported generator, and the base model a run was
fine-tuned from, exported once to ONNX (under ASCENT_HOME/base-models), so that every answer side
by side comes from ONNX Runtime through the same loop (core.runtime.Generator).

Exporting a base model takes a minute or two on a CPU: it runs in a background thread of the
process that asks (one at a time), never in a page's script run; pages poll `base_status`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from core.config import get_settings
from core.errors import ConfigError

_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="base-export")
_exports: dict[str, Future[Path]] = {}
_lock = threading.Lock()


def base_source(run_id: int) -> str:
    """The folder (or hub id) a text-generation run started from, from its checkpoint."""
    from core import checkpoint, jobs
    from core.train import BEST

    path = jobs.run_dir(run_id) / BEST
    if not path.is_file():
        raise ConfigError(f"run {run_id} has no checkpoint, so its base model is unknown")
    meta = checkpoint.read_metadata(path)
    try:
        return str(json.loads(meta["arch"])["source"])
    except (KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"run {run_id} is no text-generation run of this version") from exc


def base_path(source: str) -> Path:
    """Where the base model `source` is (or will be) exported."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    return get_settings().home / "base-models" / digest / "model.onnx"


def base_status(source: str) -> tuple[Path | None, str]:
    """(the exported file when it is there, else None; what is happening, in words)."""
    path = base_path(source)
    if path.is_file():
        return path, "ready"
    with _lock:
        future = _exports.get(source)
    if future is None:
        return None, "not exported yet"
    if future.done() and future.exception() is not None:
        return None, f"its export failed: {future.exception()}"
    return None, "exporting to ONNX (once, a minute or two on a CPU)"


def prepare_base(source: str) -> None:
    """Start exporting the base model `source` in the background, unless it is done or under way
    (a failed attempt is tried again)."""
    with _lock:
        future = _exports.get(source)
        if base_path(source).is_file() or (future is not None and not future.done()):
            return
        _exports[source] = _pool.submit(export_base, source)


def export_base(source: str) -> Path:
    """Export the base model `source` as a generator file (staged, then moved into place)."""
    import torch

    from core.models.llm import load_causal
    from core.tasks.generation import DEFAULT_CONTEXT, PREPROCESS, cache_shape, io_names, write_generator

    dest = base_path(source)
    if dest.is_file():
        return dest
    net = load_causal(source)
    lm = net.module.eval()
    layers = cache_shape(lm.config)[0]
    meta = {
        "ascent.task": "text-generation",
        "ascent.labels": "[]",
        "ascent.inputs": json.dumps([{"name": n} for n in io_names(layers)[0]]),
        "ascent.preprocess": PREPROCESS,
        "ascent.run": json.dumps({"base": source, "model": Path(source).name or source}),
        "ascent.output": "logits",
    }
    dest.parent.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=dest.parent.parent))
    try:
        with torch.no_grad():
            write_generator(lm, net.tokenizer, staging / "model.onnx", meta, DEFAULT_CONTEXT)
        shutil.rmtree(dest.parent, ignore_errors=True)
        staging.rename(dest.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest
