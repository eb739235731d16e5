"""The model registry: builders registered with @register_model, looked up by task.

The Train page and `python -m core train --model` read their choices from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.errors import ConfigError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    tasks: tuple[str, ...]
    description: str
    build: Callable[..., Any]
    default: bool
    # RunConfig values this model wants unless the user sets them (e.g. image_size, lr).
    defaults: dict[str, Any]


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    *,
    tasks: tuple[str, ...],
    description: str,
    default: bool = False,
    defaults: dict[str, Any] | None = None,
    name: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a builder under `name` or its function name (underscores read as dashes)."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        key = name or fn.__name__.strip("_").replace("_", "-")
        _REGISTRY[key] = ModelSpec(key, tasks, description, fn, default, dict(defaults or {}))
        return fn

    return decorate


def _load() -> None:
    # Each module registers its models on import.
    from core.models import audio, dense, llm, speech, tabular, text, translation, vision  # noqa: F401


def all_models() -> list[ModelSpec]:
    _load()
    return list(_REGISTRY.values())


def models_for(task: str) -> list[ModelSpec]:
    """Models that can train `task`, the default first."""
    return sorted((m for m in all_models() if task in m.tasks), key=lambda m: not m.default)


def get_model(name: str, task: str) -> ModelSpec:
    choices = models_for(task)
    for spec in choices:
        if spec.name == name:
            return spec
    known = ", ".join(m.name for m in choices) or "none"
    raise ConfigError(f"model '{name}' cannot train {task}; choose one of: {known}")


def default_model(task: str) -> str:
    choices = models_for(task)
    if not choices:
        raise ConfigError(f"Ascent has no model that trains {task} yet; the dataset stays for when it does")
    return choices[0].name
