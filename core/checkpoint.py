"""Checkpoints as safetensors: weights for the best model, weights plus optimiser state for resume.

Each file carries the run's resolved config (and whatever the task needs to rebuild the model)
as JSON in the safetensors metadata, so a checkpoint explains itself. Writes are atomic and
fsynced (core.atomic).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from core import atomic

_META_KEY = "ascent"


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def _write(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    cpu = _cpu(tensors)
    atomic.write_with(path, lambda tmp: save_file(cpu, str(tmp), metadata={_META_KEY: json.dumps(meta)}))


def read_metadata(path: Path) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get(_META_KEY, "{}")
    return dict(json.loads(raw))


def save_weights(path: Path, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    _write(path, dict(model.state_dict()), meta)


def load_weights(path: Path, model: torch.nn.Module) -> dict[str, Any]:
    model.load_state_dict(load_file(str(path)))
    return read_metadata(path)


def save_training_state(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
) -> None:
    """Everything needed to continue training exactly where it stopped."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, param_state in opt["state"].items():
        for name, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = value
            else:
                scalars.setdefault(str(idx), {})[name] = value
    meta = {"state": state, "param_groups": opt["param_groups"], "optim_scalars": scalars}
    _write(path, tensors, meta)


def training_epoch(path: Path) -> int:
    """The last finished epoch a training state holds (0 when there is none)."""
    if not path.exists():
        return 0
    return int(read_metadata(path).get("state", {}).get("epoch", 0))


def load_training_state(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
) -> dict[str, Any]:
    meta = read_metadata(path)
    tensors = load_file(str(path))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    device = next(model.parameters()).device
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            # AdamW keeps `step` on the CPU unless capturable/fused.
            opt_state.setdefault(int(idx), {})[name] = value if name == "step" else value.to(device)
    for idx, values in meta.get("optim_scalars", {}).items():
        opt_state.setdefault(int(idx), {}).update(values)
    optimizer.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
    return dict(meta["state"])
