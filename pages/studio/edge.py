"""The pages' edge: an unexpected error becomes one line and an error id in the page; the
traceback goes to the server's log (and ASCENT_HOME/logs/errors.log) under that id."""

from collections.abc import Callable
from functools import wraps
from typing import ParamSpec

import streamlit as st

from core import errorlog, summary

P = ParamSpec("P")


def show_unexpected(exc: Exception, where: str) -> None:
    error_id = errorlog.record(exc, where=where, to_stderr=True)
    st.error(summary.md(errorlog.user_message(exc, error_id, page=True)), icon=":material/error:")


def guarded(fn: Callable[P, None]) -> Callable[P, None]:
    """For fragments, which rerun on their own, outside the router's edge."""

    @wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # st.stop and st.rerun are not Exceptions: they pass
            show_unexpected(exc, f"fragment {fn.__name__}")

    return run
