"""Unexpected errors at the edge of the CLI and the pages: the user gets one line with an error
id; the traceback goes, under that id, to ASCENT_HOME/logs/errors.log (and the server's log).
"""

from __future__ import annotations

import contextlib
import secrets
import sys
import traceback
from datetime import UTC, datetime
from pathlib import Path

from core.config import get_settings


def log_path() -> Path:
    return get_settings().home / "logs" / "errors.log"


def record(exc: BaseException, *, where: str, to_stderr: bool = False) -> str:
    """Store the traceback of `exc` under a new error id and return the id.

    `to_stderr`: also print it to this process's standard error (the studio's server log);
    the CLI keeps its standard error to the one line the user reads."""
    error_id = secrets.token_hex(4)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    text = "".join(traceback.format_exception(exc))
    entry = f"--- error {error_id} at {stamp} in {where}\n{text}\n"
    with contextlib.suppress(OSError):  # a full disk must not hide the user's error line
        path = log_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write(entry)
    if to_stderr:
        print(entry, file=sys.stderr, flush=True)
    return error_id


def database_unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the database cannot be reached (worth its own plain message)."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    return isinstance(exc, (OperationalError, InterfaceError))


def user_message(exc: BaseException, error_id: str, *, page: bool = False) -> str:
    """The one line a user sees for an unexpected error. A page names no server path."""
    where = "the server's log" if page else str(log_path())
    if database_unreachable(exc):
        return (
            f"the database cannot be reached ({type(exc.__cause__ or exc).__name__}); is the server "
            f"running, and is ASCENT_DATABASE_URL right? (error id {error_id}, details in {where})"
        )
    return f"something went wrong on our side (error id {error_id}); the details are in {where}"
