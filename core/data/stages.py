"""The stages of a long ingest (unpacking, decoding every image or clip, writing), reported to
whoever shows progress: the CLI on a terminal. Nothing is reported when no one listens."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

T = TypeVar("T")
# (stage, done, total): total 0 for a stage without a count.
Reporter = Callable[[str, int, int], None]
_reporter: ContextVar[Reporter | None] = ContextVar("ingest_reporter", default=None)
EVERY_S = 0.2  # at most this often for a counted stage


def report(stage: str, done: int = 0, total: int = 0) -> None:
    listener = _reporter.get()
    if listener is not None:
        listener(stage, done, total)


def each(stage: str, items: Sequence[T] | Iterable[T], total: int | None = None) -> Iterator[T]:
    """`items`, reporting `stage` with how many are done (a few times a second)."""
    listener = _reporter.get()
    if listener is None:
        yield from items
        return
    count = total if total is not None else len(items) if isinstance(items, Sequence) else 0
    last = 0.0
    done = 0
    for item in items:
        now = time.monotonic()
        if now - last >= EVERY_S:
            listener(stage, done, count)
            last = now
        yield item
        done += 1
    listener(stage, done, count)


@contextmanager
def reporting(listener: Reporter) -> Iterator[None]:
    """Send the stages of ingests in this context to `listener`."""
    token = _reporter.set(listener)
    try:
        yield
    finally:
        _reporter.reset(token)
