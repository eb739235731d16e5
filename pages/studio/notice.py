"""A message that outlives the rerun an action ends with ("Run 4 renamed."), shown once at the
top of the next run of the page."""

import streamlit as st

_KEY = "ascent-notice"


def after_rerun(message: str) -> None:
    """Show `message` (Markdown, already escaped) on the next run, then rerun."""
    st.session_state[_KEY] = message
    st.rerun()


def show() -> None:
    message = st.session_state.pop(_KEY, None)
    if message:
        st.success(message, icon=":material/check_circle:")
