"""Home: what Ascent is, counts, recent runs, and one-click samples that train in a minute."""

import streamlit as st
from streamlit.errors import StreamlitPageNotFoundError

from core import jobs, summary
from core.access import Action, can
from core.data.ingest import list_datasets
from core.data.samples import SAMPLES, Sample, add_sample
from core.errors import AscentError
from db.queries import RunFilter
from pages.studio import notice
from pages.studio.session import page_actor

actor = page_actor()
st.title("Ascent")
notice.show()
_ADDED = "home-sample-added"  # (dataset id, run id, sample title) of the last "Add and train"


def added_banner() -> None:
    """After "Add and train": what was added, and the way to the run's live progress."""
    added = st.session_state.pop(_ADDED, None)
    if added is None:
        return
    dataset_id, run_id, title = added
    with st.container(horizontal=True, vertical_alignment="center", wrap=True):
        st.success(
            f"Dataset {dataset_id} '{summary.md(title)}' added; run {run_id} queued.",
            icon=":material/check_circle:",
        )
        try:
            st.page_link("pages/train.py", label=f"Watch run {run_id} learn", icon=":material/monitoring:")
        except StreamlitPageNotFoundError:  # this page run alone, without the router's pages
            st.caption("Open Train at the top to watch it learn.")


added_banner()
st.markdown(
    "Upload a table, a folder of images, a set of texts or sound clips, train a model from scratch or fine-tune a pretrained one, "
    "and get one ONNX file that predicts with ONNX Runtime alone. Or teach a chat model your own answers "
    "from a set of questions and answers, a speech model to write what your clips say, or a translator "
    "on pairs of sentences.  \n"
    "Every run is stored with its metrics, curves, checkpoints and export check, so you can compare them."
)

datasets = list_datasets()
runs = jobs.list_runs(limit=8)
col1, col2, col3 = st.columns(3)
col1.metric("Datasets", len(datasets))
col2.metric("Runs", jobs.count_runs())
col3.metric(
    "Running or queued",
    jobs.count_runs(RunFilter(status="running")) + jobs.count_runs(RunFilter(status="queued")),
)

st.subheader("Start with a sample")
st.caption("Each button adds a real dataset shipped with installed packages and trains a quick model on it.")
may_train = can(actor, Action.UPLOAD) and can(actor, Action.TRAIN)
if not may_train:
    st.caption(
        f"You are a {actor.role.value}: you can browse runs and predict; a member or admin adds data and trains."
    )


def card(sample: Sample) -> None:
    """A sample's card: what it is, and a button that adds it and queues its quick run."""
    with st.container(border=True, width=220, height="stretch"):
        st.markdown(f"**{sample.title}**")
        st.caption(sample.description)
        if st.button(
            "Add and train",
            key=f"sample-{sample.key}",
            icon=":material/rocket_launch:",
            disabled=not may_train,
            width="stretch",
        ):
            try:
                with st.spinner(f"Adding {sample.title}…"):
                    ds = add_sample(sample.key, actor=actor)
                    run = jobs.submit(jobs.config_for(ds.id, **sample.quick_start), actor=actor)
            except (AscentError, FileNotFoundError) as exc:
                st.error(summary.md(exc))
            else:
                st.session_state[_ADDED] = (ds.id, run.id, sample.title)
                # The Train page follows it, so it says how the run ended even when the run is
                # over before that page is opened (a quick sample can be).
                st.session_state.setdefault("train-following", []).append(run.id)
                st.rerun()  # the counters above count what was just added


# Fixed-width cards that wrap: as many to a row as fit, so narrow windows never squeeze them.
with st.container(horizontal=True, wrap=True):
    for sample in SAMPLES.values():
        card(sample)

st.subheader("Recent runs")
if runs:
    names = {d.id: d.name for d in datasets}
    st.dataframe(summary.runs_table(runs, names), hide_index=True, width="stretch", placeholder="—")
else:
    st.info("No runs yet: add a sample above, or upload data on the Datasets page.")
