"""Runs: the table (filter, sort, page), comparison of selected runs, and a run's detail."""

from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from core import certificate, jobs, summary
from core.access import Action, can
from core.data.ingest import list_datasets
from core.errors import AscentError
from db.models import RunStatus
from db.queries import SORTS, RunFilter
from pages.studio import notice
from pages.studio.edge import guarded
from pages.studio.session import page_actor

PAGE_SIZE = 50

actor = page_actor()
st.title("Runs")
notice.show()
datasets = list_datasets()
names = {d.id: d.name for d in datasets}

f1, f2, f3, f4 = st.columns(4)
task = f1.selectbox("Task", [None, *sorted(summary.MAIN_METRIC)], format_func=lambda t: t or "all tasks")
dataset = f2.selectbox(
    "Dataset", [None, *names], format_func=lambda i: "all datasets" if i is None else summary.plain(names[i])
)
status = f3.selectbox(
    "Status", [None, *(s.value for s in RunStatus)], format_func=lambda s: s or "any status"
)
text = f4.text_input("Search name, model, tags")
s1, s2, s3 = st.columns([2, 1, 1])
sort = s1.selectbox(
    "Sort by", [*SORTS, "metric"], format_func=lambda s: "best main metric" if s == "metric" else s
)
descending = s2.toggle("Descending", value=True)
where = RunFilter(status=status, task=task, dataset_id=dataset, text=text or None)
total = jobs.count_runs(where)
pages = max(1, -(-total // PAGE_SIZE))
page = s3.number_input(f"Page (of {pages})", 1, pages, 1)

if total == 0:
    st.info("No runs match." if jobs.count_runs() else "No runs yet: launch one on the Train page.")
    st.stop()

metric = summary.MAIN_METRIC.get(task or "", "val_f1_macro") if sort == "metric" else None
runs = jobs.list_runs(
    where=where,
    sort=sort,
    descending=descending,
    metric=metric,
    limit=PAGE_SIZE,
    offset=(page - 1) * PAGE_SIZE,
)
table = summary.runs_table(runs, names)
st.caption(f"{total} runs · select rows to compare them or see one in detail")
event = st.dataframe(
    table, hide_index=True, width="stretch", on_select="rerun", selection_mode="multi-row", key="runs-table"
)
st.download_button(
    "Download this page of runs (CSV)",
    summary.csv_bytes(table),
    file_name="runs.csv",
    icon=":material/download:",
    key="runs-csv",
)
ticked = {runs[i].id for i in event.selection.rows} if event and event.selection else set()
by_id = {r.id: r for r in runs}
if (gone := st.session_state.pop("runs-deleted", None)) is not None:
    st.session_state["runs-picked"] = [i for i in st.session_state.get("runs-picked", []) if i != gone]
picked = st.multiselect(
    "Also select by id",
    list(by_id),
    format_func=lambda i: f"{i} · {summary.plain(by_id[i].name)}",
    key="runs-picked",
)
selected = [r for r in runs if r.id in ticked or r.id in picked]


def show_tradeoffs(ids: list[int], labels: dict[int, str]) -> None:
    """Validation metric against latency and against size, best trade-offs marked."""
    points = summary.tradeoffs(ids, labels)
    if points.empty:
        return
    st.markdown(
        f"**Which to ship?** {points['metric'].iloc[0]} against batch-1 latency and file size of the certified "
        "variants; ringed points are the best trade-offs (nothing else is both better and cheaper)."
    )
    for column, (cost, best) in zip(
        st.columns(2), (("latency (ms)", "best for latency"), ("size (MB)", "best for size")), strict=True
    ):
        base = alt.Chart(points).encode(
            x=alt.X(f"{cost}:Q", scale=alt.Scale(zero=False)),
            y=alt.Y("value:Q", title=points["metric"].iloc[0], scale=alt.Scale(zero=False)),
            color="run:N",
            tooltip=["run", "variant", "value", "latency (ms)", "size (MB)", "status"],
        )
        dots = base.mark_point(filled=True, size=90).encode(shape="variant:N")
        rings = base.transform_filter(f"datum['{best}']").mark_point(size=320, strokeWidth=2, color="black")
        labels_ = base.mark_text(dy=-12, fontSize=10).encode(text="variant:N")
        column.altair_chart(dots + rings + labels_, width="stretch")


@st.fragment(run_every="2s")
@guarded
def watch_certificate(run_id: int) -> None:
    """The certificate being measured in a background process (started here or from another
    tab): progress, then the page again."""
    lines = certificate.log_lines(run_id)
    if certificate.measuring(run_id):
        done, steps, what = certificate.progress(lines)
        st.progress(done / steps, text=f"Measuring the certificate: {summary.md(what)}")
        return
    proc = st.session_state["certifying"].pop(run_id, None)
    code = proc.wait() if proc is not None else None
    if code or (lines and lines[-1].startswith("error:")):
        st.session_state["certify-failed"][run_id] = "\n".join(lines[-8:]) or f"exit code {code}"
    st.rerun(scope="app")


if len(selected) >= 2:
    st.header(f"Compare {len(selected)} runs")
    ids = [r.id for r in selected]
    labels = {r.id: f"{r.id} · {r.name}" for r in selected}
    keys = sorted(
        {p.key for r in selected for p in jobs.metric_history(r.id)}
        - {"export_max_abs_diff", "export_n_samples", "export_top1_agreement"}
    )
    key = st.selectbox("Curve", keys, index=keys.index("val_loss") if "val_loss" in keys else 0)
    st.line_chart(
        summary.curves(ids, [key], {i: summary.plain(v) for i, v in labels.items()}), x_label="epoch"
    )
    left, right = st.columns(2)
    left.markdown("**Best metrics**")
    left.dataframe(summary.metrics_side_by_side(selected), width="stretch")
    diff = summary.param_diff(ids)
    right.markdown("**Parameters** (differences highlighted)")
    only = right.toggle("Only differences")
    shown = diff[diff["differs"]] if only else diff
    right.dataframe(
        shown.drop(columns="differs").style.apply(
            lambda row: ["background-color: #fff3b0" if diff.loc[row.name, "differs"] else "" for _ in row],
            axis=1,
        ),
        width="stretch",
    )

    show_tradeoffs(ids, labels)

run = selected[0] if len(selected) == 1 else None
if run is None:
    st.stop()

st.header(f"Run {run.id} · {summary.md(run.name)}")
st.caption(
    f"{run.status} · {run.task} · {run.model} · dataset {summary.md(names.get(run.dataset_id or -1, '(deleted)'))} · "
    f"device {summary.md(run.device or '-')} · created {summary.when(run.created_at)} by "
    f"{summary.md(run.created_by or 'no signed-in user')} · attempts {run.attempts}"
)
if run.error:
    st.error(summary.md(run.error.splitlines()[0]))
metrics = {k: v for k, v in sorted(run.best_metrics.items()) if not k.startswith("export_")}
if metrics:
    st.dataframe(
        pd.DataFrame({"best": metrics, "last": {k: run.metrics.get(k) for k in metrics}}), width="stretch"
    )
    st.line_chart(summary.curves([run.id], ["train_loss", "val_loss"]), x_label="epoch")

report = summary.report(run.id)
if report and report["kind"] == "classification":
    st.subheader("Confusion matrix (validation split)")
    cells = pd.DataFrame(
        [
            (t, p, n)
            for t, row in zip(report["labels"], report["confusion"], strict=True)
            for p, n in zip(report["labels"], row, strict=True)
        ],
        columns=["true", "predicted", "count"],
    )
    heat = (
        alt.Chart(cells)
        .mark_rect()
        .encode(
            x="predicted:N",
            y="true:N",
            color=alt.Color("count:Q", scale=alt.Scale(scheme="blues")),
            tooltip=["true", "predicted", "count"],
        )
    )
    st.altair_chart(heat + heat.mark_text(color="black").encode(text="count:Q"), width="stretch")
    st.dataframe(pd.DataFrame(report["per_class"]), hide_index=True, width="stretch")
elif report:
    st.subheader("Predicted against true (validation split)")
    st.scatter_chart(pd.DataFrame(report["points"], columns=["true", "predicted"]), x="true", y="predicted")
    st.write(report["residuals"])

if "export_max_abs_diff" in run.metrics:
    st.subheader("Export check")
    e1, e2, e3 = st.columns(3)
    e1.metric("max |PyTorch − ONNX Runtime|", f"{run.metrics['export_max_abs_diff']:.2e}")
    if "export_top1_agreement" in run.metrics:
        e2.metric("top-1 agreement", f"{run.metrics['export_top1_agreement']:.2%}")
    e3.metric("validation samples", int(run.metrics.get("export_n_samples", 0)))

if run.status == "succeeded":
    st.subheader("Export certificate")
    records = certificate.certificate(run.id)
    if records:
        table = summary.certificate_table(records)
        st.dataframe(
            table.style.apply(
                lambda row: ["background-color: #fde2e1" if row["status"] == "flagged" else "" for _ in row],
                axis=1,
            ),
            width="stretch",
        )
        if any(r.status == "flagged" for r in records):
            st.warning("Flagged variants agree with PyTorch on fewer top-1 classes than their threshold.")
        with st.expander("How each variant was made"):
            st.markdown("\n".join(f"- **{r.variant}**: {r.method}" for r in records))
        cols = st.columns(len(records))
        for col, r in zip(cols, records, strict=True):
            path = Path(r.path)
            if path.exists():
                col.download_button(
                    f"{r.variant} ({r.bytes / 1e6:.1f} MB)",
                    path.read_bytes(),
                    file_name=path.name,
                    key=f"dl-v-{r.variant}",
                )
        show_tradeoffs([run.id], {run.id: f"{run.id} · {run.name}"})
    else:
        st.caption(
            "Not measured yet: fp32 and int8 variants (fp16 on a GPU) checked on the whole validation split "
            "and timed at batch 1 and 32 against PyTorch."
        )
    measuring: dict[int, Any] = st.session_state.setdefault("certifying", {})
    failed: dict[int, str] = st.session_state.setdefault("certify-failed", {})
    if run.id in failed:
        st.error("Measuring the certificate failed:")
        st.code(failed[run.id], language=None)
    if run.id in measuring or certificate.measuring(run.id):
        watch_certificate(run.id)
    elif can(actor, Action.MEASURE) and st.button(
        "Measure the certificate" if not records else "Measure again", key=f"certify-{run.id}"
    ):
        failed.pop(run.id, None)
        try:
            measuring[run.id] = certificate.start(run.id, actor=actor)
            st.rerun()
        except AscentError as exc:
            st.error(summary.md(exc))

files = summary.artifact_paths(run.id)
if files:
    st.subheader("Downloads")
    cols = st.columns(4)
    for col, kind in zip(cols, ("onnx", "checkpoint", "config", "report"), strict=True):
        if kind in files:
            col.download_button(
                f"{kind} ({files[kind].stat().st_size / 1e6:.1f} MB)",
                files[kind].read_bytes(),
                file_name=files[kind].name,
                key=f"dl-{kind}",
            )
with st.expander("Log"):
    st.code(summary.log_tail(run.id) or "(empty)", language=None)

if run.status in (RunStatus.LOST, RunStatus.FAILED, RunStatus.CANCELLED):
    left, right = st.columns(2)
    try:
        if can(actor, Action.TRAIN) and left.button(
            "Resume", key=f"resume-{run.id}", icon=":material/replay:"
        ):
            jobs.resume(run.id, actor=actor)
            notice.after_rerun(f"Run {run.id} queued again; it continues from its last checkpoint.")
        lost = run.status == RunStatus.LOST and can(actor, Action.CANCEL)
        if lost and right.button("Cancel (stop trying)", key=f"cancel-lost-{run.id}", icon=":material/stop:"):
            jobs.cancel(run.id, actor=actor)
            notice.after_rerun(f"Run {run.id} cancelled.")
    except AscentError as exc:
        st.error(summary.md(exc))

if can(actor, Action.EDIT, run.created_by):
    with st.expander("Rename, tag, delete"):
        new_name = st.text_input("Name", value=run.name, key=f"name-{run.id}")
        tags = st.text_input("Tags (comma-separated)", value=", ".join(run.tags), key=f"tags-{run.id}")
        if st.button("Save", key=f"save-{run.id}"):
            try:
                jobs.rename(run.id, new_name, actor=actor)
                jobs.set_tags(run.id, tags.split(","), actor=actor)
                notice.after_rerun(f"Run {run.id} saved.")
            except AscentError as exc:
                st.error(summary.md(exc))
        sure = st.checkbox("Yes, delete this run and its files", key=f"sure-{run.id}")
        if st.button("Delete run", disabled=not sure, key=f"del-{run.id}"):
            try:
                jobs.delete_run(run.id, actor=actor)
                st.session_state["runs-deleted"] = run.id  # unpicked before the picker is drawn again
                notice.after_rerun(f"Run {run.id} deleted with its files.")
            except AscentError as exc:
                st.error(summary.md(exc))
