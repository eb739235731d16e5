"""Runs: every run in the database with its status and main metric."""

import streamlit as st

from core import jobs
from core.data.ingest import list_datasets
from core.errors import AscentError

st.title("Runs")
st.caption(
    "Every training run, newest first. Add data and train from the command line: "
    "`python -m core datasets add FILE` then `python -m core train --dataset ID --wait`."
)

try:
    runs = jobs.list_runs(limit=500)
    datasets = {d.id: d.name for d in list_datasets()}
except AscentError as exc:
    st.error(str(exc))
    st.stop()

if not runs:
    st.info("No runs yet. Queue one with `python -m core train --dataset ID`.")
else:
    rows = []
    for run in runs:
        metric = next((k for k in ("val_f1_macro", "val_rmse") if k in run.best_metrics), None)
        rows.append(
            {
                "id": run.id,
                "name": run.name,
                "dataset": datasets.get(run.dataset_id or -1, "-"),
                "task": run.task,
                "model": run.model,
                "status": run.status,
                "main metric": metric or "-",
                "best": run.best_metrics.get(metric) if metric else None,
                "created": run.created_at.strftime("%Y-%m-%d %H:%M"),
            }
        )
    st.dataframe(rows, hide_index=True, width="stretch")
