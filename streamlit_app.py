"""Ascent's router: page config, navigation over pages/, the local worker, the device."""

import streamlit as st

from core import jobs
from core.config import describe_device


@st.cache_resource(ttl=60)
def _device() -> str:
    return describe_device()


st.set_page_config(page_title="Ascent", page_icon=":material/monitoring:", layout="wide")
jobs.ensure_worker()
st.sidebar.caption(f"Device: **{_device()}**")
page = st.navigation(
    [
        st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
        st.Page("pages/datasets.py", title="Datasets", icon=":material/dataset:"),
        st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
        st.Page("pages/runs.py", title="Runs", icon=":material/table:"),
        st.Page("pages/predict.py", title="Predict", icon=":material/online_prediction:"),
    ]
)
page.run()
