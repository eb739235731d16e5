"""The playground's models: each run's export, and the base model a run was fine-tuned from,
exported once to ONNX (under ASCENT_HOME/base-models), so that answers, transcripts or
translations side by side come from ONNX Runtime through the same loop (core.runtime's
Generator, Transcriber, Translator).

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
    """The folder (or hub id) a fine-tuning run started from, from its checkpoint ("scratch"
    for a translation model trained from random weights)."""
    from core import checkpoint, jobs
    from core.train import BEST

    path = jobs.run_dir(run_id) / BEST
    if not path.is_file():
        raise ConfigError(f"run {run_id} has no checkpoint, so its base model is unknown")
    meta = checkpoint.read_metadata(path)
    try:
        return str(json.loads(meta["arch"])["source"])
    except (KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"run {run_id} is no fine-tuning run of this version") from exc


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


def prepare_base(source: str, task: str = "text-generation") -> None:
    """Start exporting the base model `source` of a `task` run in the background, unless it is
    done or under way (a failed attempt is tried again)."""
    with _lock:
        future = _exports.get(source)
        if base_path(source).is_file() or (future is not None and not future.done()):
            return
        _exports[source] = _pool.submit(export_base, source, task)


def export_base(source: str, task: str = "text-generation") -> Path:
    """Export the base model `source` as the task's runs export theirs: a generator file, or a
    transcriber's or translator's two graphs and tokenizer (staged, then moved into place)."""
    dest = base_path(source)
    if dest.is_file():
        return dest
    dest.parent.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=dest.parent.parent))
    try:
        _write_base(source, task, staging / "model.onnx")
        shutil.rmtree(dest.parent, ignore_errors=True)
        staging.rename(dest.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _meta(
    task: str, source: str, inputs: list[dict[str, str]], preprocess: str, output: str
) -> dict[str, str]:
    return {
        "ascent.task": task,
        "ascent.labels": "[]",
        "ascent.inputs": json.dumps(inputs),
        "ascent.preprocess": preprocess,
        "ascent.run": json.dumps({"base": source, "model": Path(source).name or source}),
        "ascent.output": output,
    }


def _write_base(source: str, task: str, path: Path) -> None:
    import torch

    if task == "speech-recognition":
        from core.export import export_transcriber
        from core.models.speech import load_whisper

        speech = load_whisper(source)
        meta = _meta(task, source, [{"name": "wave", "sample_rate": "16000"}], "16 kHz mono waves", "cross")
        with torch.no_grad():
            export_transcriber(speech.module, speech.processor.tokenizer, path, meta)
        return
    if task == "translation":
        from core.export import export_translator
        from core.models.translation import load_pretrained

        marian = load_pretrained(source)
        inputs = [{"name": "input_ids"}, {"name": "attention_mask"}]
        with torch.no_grad():
            export_translator(
                marian.module, marian.tokenizer, path, _meta(task, source, inputs, "tokenizer.json", "cross")
            )
        return
    from core.models.llm import load_causal
    from core.tasks.generation import DEFAULT_CONTEXT, PREPROCESS, cache_shape, io_names, write_generator

    net = load_causal(source)
    lm = net.module.eval()
    layers = cache_shape(lm.config)[0]
    meta = _meta(task, source, [{"name": n} for n in io_names(layers)[0]], PREPROCESS, "logits")
    with torch.no_grad():
        write_generator(lm, net.tokenizer, path, meta, DEFAULT_CONTEXT)
