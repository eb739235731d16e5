"""Ascent's router: page config, the sign-in gate, navigation over pages/ (at the top), the local
worker, a bar with the device and who is signed in, and the edge that turns an unexpected error into one line with an error id."""

import streamlit as st

from core import access, jobs
from core.config import describe_device
from pages.studio import edge, session


@st.cache_resource(ttl=60, show_spinner=False)
def _device() -> str:
    return describe_device()


@st.cache_resource(show_spinner=False)
def _say_refusal(message: str) -> None:
    print(f"ascent: {message}", flush=True)  # once, in the server's log


def main() -> None:
    st.set_page_config(page_title="Ascent", page_icon="📈", layout="wide")
    refusal = access.serving_refusal(st.get_option("server.address") or "")
    if refusal:
        _say_refusal(refusal)
        st.error(refusal, icon=":material/lock:")
        return
    actor = session.current_actor()
    if actor is None:
        st.navigation([st.Page(session.sign_in_form, title="Sign in", default=True)], position="hidden").run()
        return
    jobs.ensure_worker()
    page = st.navigation(
        [
            st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
            st.Page("pages/datasets.py", title="Datasets", icon=":material/dataset:"),
            st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
            st.Page("pages/runs.py", title="Runs", icon=":material/table:"),
            st.Page("pages/predict.py", title="Predict", icon=":material/online_prediction:"),
        ],
        position="top",  # no sidebar: pages keep the whole width, on narrow screens too
    )
    with st.container(horizontal=True, horizontal_alignment="right", vertical_alignment="center"):
        st.caption(f"Device: **{_device()}**", width="content")
        session.signed_in_bar(actor)
    page.run()


try:
    main()
except Exception as exc:  # st.stop and st.rerun are not Exceptions: they pass
    edge.show_unexpected(exc, "studio page")
