"""Ascent's router: page config and navigation over pages/."""

import streamlit as st

st.set_page_config(page_title="Ascent", page_icon=":material/monitoring:", layout="wide")
page = st.navigation([st.Page("pages/runs.py", title="Runs", icon=":material/table:", default=True)])
page.run()
