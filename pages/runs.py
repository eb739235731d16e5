"""Runs: the table (filter, sort, page), comparison of selected runs, and a run's detail."""

from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from core import bundle, certificate, jobs, overlays, serve, summary, sweeps
from core.access import Action, can
from core.data.ingest import list_datasets
from core.errors import AscentError
from core.runtime import Predictor
from db.models import RunStatus
from db.queries import SORTS, RunFilter
from pages.studio import notice
from pages.studio.edge import guarded
from pages.studio.session import page_actor

PAGE_SIZE = 50
# What the table shows until someone picks more under "Columns": it fits 1400 px.
DEFAULT_COLUMNS = [
    "id",
    "name",
    "dataset",
    "model",
    "status",
    "main metric",
    "best",
    "duration (s)",
    "created",
]
NUMBERS = ["best", "duration (s)", "best latency (ms)", "size (MB)"]
COLOURS = alt.Scale(scheme="tableau10")  # distinct hues, one per run (or per metric)
BLANK = "—"  # what a table shows for a value it does not have
FIELD = 220  # px: four filters fill a row at 1400 px and wrap two by two on a narrow screen
HALF = 440  # px: two halves side by side at 1400 px, one above the other on a narrow screen

actor = page_actor()
st.title("Runs")
notice.show()
datasets = list_datasets()
names = {d.id: summary.dataset_name(d) for d in datasets}

filters = st.container(horizontal=True)
task = filters.selectbox(
    "Task", [None, *sorted(summary.MAIN_METRIC)], format_func=lambda t: t or "all tasks", width=FIELD
)
dataset = filters.selectbox(
    "Dataset",
    [None, *names],
    format_func=lambda i: "all datasets" if i is None else summary.plain(names[i]),
    width=FIELD,
)
status = filters.selectbox(
    "Status", [None, *(s.value for s in RunStatus)], format_func=lambda s: s or "any status", width=FIELD
)
text = filters.text_input("Search name, model, tags", width=FIELD)
order = st.container(horizontal=True, vertical_alignment="bottom")
sort = order.selectbox(
    "Sort by",
    [*SORTS, "metric"],
    format_func=lambda s: "best main metric" if s == "metric" else s,
    width=FIELD,
)
descending = order.toggle("Descending", value=True)
where = RunFilter(status=status, task=task, dataset_id=dataset, text=text or None)
total = jobs.count_runs(where)
pages = max(1, -(-total // PAGE_SIZE))
page = order.number_input(f"Page (of {pages})", 1, pages, 1, width=FIELD // 2)

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
st.caption(f"{total} run{'' if total == 1 else 's'} · select rows to compare them or see one in detail")
table_slot = st.container()  # the table goes above the controls that shape it
by_id = {r.id: r for r in runs}
if (gone := st.session_state.pop("runs-deleted", None)) is not None:
    st.session_state["runs-picked"] = [i for i in st.session_state.get("runs-picked", []) if i != gone]
picked = st.multiselect(
    "Also select by id",
    list(by_id),
    format_func=lambda i: f"{i} · {summary.plain(by_id[i].name)}",
    key="runs-picked",
)
tools = st.container(horizontal=True)
with tools.popover("Columns", icon=":material/view_column:", help="Choose the table's columns"):
    chosen = st.multiselect("Columns", list(table.columns), default=DEFAULT_COLUMNS, key="runs-columns")
event = table_slot.dataframe(
    table.style.format(summary.formats(NUMBERS), na_rep=BLANK),
    hide_index=True,
    width="stretch",
    column_order=[c for c in table.columns if c in chosen] or DEFAULT_COLUMNS,
    column_config={"name": st.column_config.TextColumn(width="medium")},
    placeholder=BLANK,
    on_select="rerun",
    selection_mode="multi-row",
    key="runs-table",
)
tools.download_button(
    "Download this page of runs (CSV)",
    summary.csv_bytes(table),
    file_name="runs.csv",
    icon=":material/download:",
    key="runs-csv",
    on_click="ignore",  # a download needs no rerun (and one beside it can lose the download)
)
ticked = {runs[i].id for i in event.selection.rows} if event and event.selection else set()
selected = [r for r in runs if r.id in ticked or r.id in picked]


def line_chart(points: pd.DataFrame, by: str, y_title: str) -> alt.Chart:
    """One coloured line per value of `by` (a run, or a metric), legend underneath."""
    return (
        alt.Chart(points)
        .mark_line(point=alt.OverlayMarkDef(size=30))
        .encode(
            x=alt.X("epoch:Q", axis=alt.Axis(format="d", tickMinStep=1)),
            y=alt.Y("value:Q", title=y_title, scale=alt.Scale(zero=False), axis=alt.Axis(format="~g")),
            color=alt.Color(
                f"{by}:N",
                scale=COLOURS,
                legend=alt.Legend(
                    orient="bottom", title=None, labelLimit=360, symbolStrokeWidth=3, columns=3
                ),
            ),
            tooltip=["run", "metric", "epoch", alt.Tooltip("value:Q", format=".4~g")],
        )
        .properties(height=300)
    )


def numbers(frame: pd.DataFrame) -> Any:
    """A table with its numbers shown for people (three significant digits, shares as
    percentages, also in rows named for one) and gaps as BLANK."""
    styled = frame.style.format(summary.formats(frame.select_dtypes("number").columns), na_rep=BLANK)
    shares = [label for label in frame.index if "agreement" in str(label)]
    if shares:
        styled = styled.format(summary.percent, subset=pd.IndexSlice[shares, :], na_rep=BLANK)
    return styled


def halves() -> tuple[DeltaGenerator, DeltaGenerator]:
    """Two containers side by side that stack when the screen is narrow."""
    row = st.container(horizontal=True)
    return row.container(width=HALF), row.container(width=HALF)


SAMPLES_SHOWN = 24  # disagreements the page shows as images or players
ROWS_SHOWN = 500  # disagreements the page lists with their rows or texts


def show_sample_diff(first: Any, second: Any) -> dict[str, Any] | None:
    """Two runs of one dataset on the validation items both held back: where they disagree,
    which is right, what the second fixed and broke, per class, and the items themselves.
    Returns the comparison (None when the runs cannot be compared)."""
    from core import compare

    a, b = sorted((first.id, second.id))
    st.subheader(f"Compare samples: run {a} against run {b}")
    try:
        found = compare.diff(a, b, limit=10_000)
    except AscentError as exc:
        st.info(summary.md(exc), icon=":material/info:")
        return None
    if found["kind"] == "regression":
        c1, c2, c3 = st.columns(3)
        c1.metric(f"Mean absolute error, run {a}", f"{found['mae_a']:.4g}")
        c2.metric(
            f"Mean absolute error, run {b}",
            f"{found['mae_b']:.4g}",
            delta=f"{found['mae_b'] - found['mae_a']:.3g}",
            delta_color="inverse",
        )
        c3.metric(f"Rows where run {b} came closer", f"{found['closer_b']} of {found['common']}")
        st.dataframe(
            pd.DataFrame(found["samples"][:200]), width="stretch", hide_index=True, placeholder=BLANK
        )
        return found
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Validation items in both", found["common"])
    c2.metric("They disagree on", found["disagree"])
    c3.metric(f"Fixed by run {b}", found["fixed"], help=f"run {a} got them wrong, run {b} right")
    c4.metric(f"Broken by run {b}", found["broken"], help=f"run {a} got them right, run {b} wrong")
    st.caption(
        f"Accuracy on these items: run {a} {found['accuracy_a']:.3f}, run {b} {found['accuracy_b']:.3f}."
        + (
            f" {found['only_a'] + found['only_b']} items only one run held back (another seed) are left out."
            if found["only_a"] or found["only_b"]
            else ""
        )
    )
    per_class = pd.DataFrame(found["per_class"]).rename(
        columns={"right_a": f"right in run {a}", "right_b": f"right in run {b}", "support": "items"}
    )
    st.dataframe(per_class, width="stretch", hide_index=True, placeholder=BLANK)
    labels = ["every label", *[c["label"] for c in found["per_class"]]]
    label = st.selectbox("Disagreements involving", labels, key=f"diff-label-{a}-{b}")
    shown = [s for s in found["samples"] if label == "every label" or label in (s["true"], s["a"], s["b"])]
    if not shown:
        st.caption(
            "They agree on every item" + ("" if label == "every label" else f" involving {label}") + "."
        )
        return found
    shown = shown[:ROWS_SHOWN]
    try:
        content = compare.items(found["dataset"], [s["item"] for s in shown])
    except AscentError as exc:
        st.info(summary.md(exc), icon=":material/info:")
        return found
    verdict = {"a": f"run {a} right", "b": f"run {b} right", "neither": "both wrong"}
    table = pd.DataFrame(
        [
            {
                "item": s["item"],
                "true": s["true"],
                f"run {a}": s["a"],
                f"run {b}": s["b"],
                "who is right": verdict[s["right"]],
            }
            for s in shown
        ]
    )
    if content.kind == "row" and content.rows is not None:
        table = pd.concat([table, content.rows.reset_index(drop=True)], axis=1)
    elif content.kind == "text" and content.texts is not None:
        table = table.assign(text=content.texts)
    st.dataframe(table, width="stretch", hide_index=True, placeholder=BLANK)
    if content.paths is not None:
        st.caption(f"The first {min(len(shown), SAMPLES_SHOWN)} of {len(shown)}, with both predictions:")
        columns = st.columns(4)
        for i, (s, path) in enumerate(zip(shown[:SAMPLES_SHOWN], content.paths, strict=False)):
            with columns[i % 4]:
                caption = f"#{s['item']} · true {s['true']} · run {a}: {s['a']} · run {b}: {s['b']}"
                if content.kind == "image":
                    st.image(str(path), caption=caption, width="stretch")
                else:
                    st.audio(str(path))
                    st.caption(caption)
    return found


def show_slices(run_ids: list[int], dataset_id: int) -> None:
    """The validation metric per slice (class, a table column's ranges, text length, clip
    duration) of one run, or two side by side."""
    from core import compare

    try:
        choices = compare.slice_choices(dataset_id)
    except AscentError:
        return
    key = "-".join(map(str, run_ids))
    by = st.selectbox(
        "Slice by",
        choices,
        key=f"slice-by-{key}",
        help="The validation items cut by their class, by ranges of a column's values (about equal "
        "counts), by text length or by clip duration.",
    )
    try:
        found = compare.slices(run_ids, by=by)
    except AscentError as exc:
        st.info(summary.md(exc), icon=":material/info:")
        return
    runs = [f"run {r}" for r in run_ids]
    what = "accuracy" if found["metric"] == "accuracy" else "mean absolute error"
    frame = pd.DataFrame(found["slices"])
    long = frame.melt(id_vars=["slice", "items"], value_vars=runs, var_name="run", value_name=what)
    chart = (
        alt.Chart(long)
        .mark_bar()
        .encode(
            y=alt.Y("slice:N", sort=list(frame["slice"]), title=by),
            x=alt.X(
                f"{what}:Q",
                title=what,
                axis=alt.Axis(format=".0%" if what == "accuracy" else "~s", tickCount=5),
            ),
            yOffset="run:N",
            color=alt.Color("run:N", legend=alt.Legend(orient="bottom") if len(runs) > 1 else None),
            tooltip=["slice", "run", alt.Tooltip(f"{what}:Q", format=".3f"), "items"],
        )
    )
    st.altair_chart(chart, width="stretch")
    shown = {r: "{:.1%}" if what == "accuracy" else "{:.4g}" for r in runs}
    st.dataframe(frame.style.format(shown), hide_index=True, width="stretch", placeholder=BLANK)


def show_importance(run_id: int) -> None:
    """How much the model leans on each feature: the metric's worsening when that feature is
    shuffled among the validation rows. Measured when asked (seconds), kept for the session."""
    from core.explain import TableExplainer

    key = f"importance-{run_id}"
    found = st.session_state.get(key)
    if found is None:
        st.caption(
            "How much the model leans on each feature: each one's values are shuffled among the "
            "validation rows, five times, and the main metric's worsening is measured."
        )
        if not st.button("Measure feature importance", key=f"{key}-go", icon=":material/insights:"):
            return
        bar = st.progress(0.0, text="Shuffling the features one by one…")
        try:
            found = TableExplainer(run_id).importance(
                on_progress=lambda share: bar.progress(share, text=f"Shuffling the features: {share:.0%}")
            )
        except AscentError as exc:
            st.warning(f"No importance: {summary.md(exc)}")
            return
        finally:
            bar.empty()
        st.session_state[key] = found
    label = summary.metric_label(found.metric)
    frame = pd.DataFrame(
        {
            "feature": [f.feature for f in found.features],
            "drop": [f.drop for f in found.features],
            "spread": [f.spread for f in found.features],
        }
    )
    shown = frame.head(20)
    chart = (
        alt.Chart(shown)
        .mark_bar()
        .encode(
            y=alt.Y("feature:N", sort=list(shown["feature"]), title=None, axis=alt.Axis(labelLimit=220)),
            x=alt.X("drop:Q", title=f"worsening of {label} when shuffled", axis=alt.Axis(tickCount=6)),
            tooltip=["feature", alt.Tooltip("drop:Q", format=".4f"), alt.Tooltip("spread:Q", format=".4f")],
        )
    )
    st.altair_chart(chart, width="stretch")
    method = found.method.replace(found.metric, label)
    st.caption(
        f"{label[0].upper()}{label[1:]} on the validation split as it is: {found.value:.4g}. "
        f"{method[0].upper()}{method[1:]}; {found.evaluations} evaluations, {found.seconds:.1f} s. "
        "Near 0 (or below): the model does not need that feature here."
    )


def show_tradeoffs(ids: list[int], labels: dict[int, str]) -> None:
    """Validation metric against latency and against size, best trade-offs marked."""
    points = summary.tradeoffs(ids, labels)
    if points.empty:
        return
    metric = summary.metric_label(points["metric"].iloc[0])
    latency = "ms per token" if points["metric"].iloc[0] == "perplexity" else "batch-1 latency"
    digits = summary.telling_digits(points["value"].tolist())  # close values told apart
    shown, ticks = f".{digits}~g", f".{digits + 1}~g"  # ticks fall between the values
    st.markdown(
        f"**Which to ship?** {metric} against {latency} and file size of the certified variants; "
        "ringed and named points are the best trade-offs (nothing else is both better and cheaper). "
        "Hover a point for its figures."
    )
    for column, (cost, best) in zip(
        halves(), (("latency (ms)", "best for latency"), ("size (MB)", "best for size")), strict=True
    ):
        base = alt.Chart(points).encode(
            # Latencies span orders of magnitude (PyTorch eager against int8): a log axis keeps
            # them apart; sizes start from 0, the size of nothing.
            x=alt.X(
                f"{cost}:Q",
                scale=alt.Scale(type="log") if cost.startswith("latency") else alt.Scale(zero=True),
                # Sizes in plain digits (100, not 1e+2).
                axis=alt.Axis(format="~g" if cost.startswith("latency") else ".3~r", tickCount=5),
                title=f"{latency} (ms)" if cost.startswith("latency") else cost,
            ),
            y=alt.Y(
                "value:Q", title=metric, scale=alt.Scale(zero=False, padding=14), axis=alt.Axis(format=ticks)
            ),
            color=alt.Color(
                "run:N", scale=COLOURS, legend=alt.Legend(orient="bottom", title=None, labelLimit=300)
            ),
            tooltip=[
                "run",
                "variant",
                alt.Tooltip("value:Q", title=metric, format=shown),
                alt.Tooltip("latency (ms):Q", format=".3~g"),
                alt.Tooltip("size (MB):Q", format=".3~g"),
                "status",
            ],
        )
        dots = base.mark_point(filled=True, size=90).encode(
            shape=alt.Shape("variant:N", legend=alt.Legend(orient="top", title=None))
        )
        ringed = base.transform_filter(f"datum['{best}']")
        rings = ringed.mark_point(size=320, strokeWidth=2)
        names_ = ringed.mark_text(dy=-16, fontSize=11).encode(text="variant:N", color=alt.value("#31333F"))
        column.altair_chart((dots + rings + names_).properties(height=340), width="stretch")


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


def show_sweeps() -> None:
    """The sweeps: a sweep's trials, its best run, what mattered, and each parameter against
    the metric."""
    found = sweeps.list_sweeps()
    if not found:
        return
    with st.expander(f"Sweeps ({len(found)})", icon=":material/tune:", expanded=len(selected) == 0):
        sweep = st.selectbox(
            "Sweep",
            found,
            format_func=lambda s: (
                f"Sweep {s.id} · dataset {summary.plain(names.get(s.dataset_id, str(s.dataset_id)))} · "
                f"{s.trials_asked}/{s.trials} trials · {'going on' if s.open else 'done'}"
            ),
        )
        best = (
            f"best: run {sweep.best_run} ({summary.metric_label(sweep.metric)} = {sweep.best_value:.4g})"
            if sweep.best_run is not None
            else "no trial has finished yet"
        )
        st.markdown(
            f"{'Maximising' if sweep.direction == 'maximize' else 'Minimising'} "
            f"**{summary.md(summary.metric_label(sweep.metric))}** over `{sweep.space}`, "
            f"{sweep.parallel} trial(s) at a time; **{summary.md(best)}**. Trials that did worse than the "
            "earlier ones at the same epoch are stopped early: **pruned**."
        )
        frame = sweeps.trials_table(sweep)
        st.dataframe(
            frame,
            hide_index=True,
            width="stretch",
            placeholder=BLANK,
            column_config={
                c: st.column_config.NumberColumn(format="%.4g")
                for c in frame.columns
                if pd.api.types.is_float_dtype(frame[c])
            }
            | {
                sweep.metric: st.column_config.NumberColumn(summary.metric_label(sweep.metric), format="%.4g")
            },
        )
        left, right = halves()
        weights = sweeps.importance(sweep.id)
        with left:
            st.markdown("**What mattered** (parameter importance)")
            if weights:
                st.bar_chart(pd.Series(weights, name="importance"), horizontal=True, height=220)
            else:
                st.caption("Appears once two trials have finished with different results.")
        done = frame[frame["state"] == "complete"]
        with right:
            numeric = [c for c in frame.columns[5:] if pd.api.types.is_numeric_dtype(frame[c])]
            st.markdown("**Each parameter against the metric** (finished trials)")
            if done.empty or not numeric:
                st.caption("Appears once a trial has finished.")
            else:
                param = st.selectbox("Parameter", numeric, key=f"sweep-param-{sweep.id}")
                chart = (
                    alt.Chart(done)
                    .mark_circle(size=90)
                    .encode(
                        x=alt.X(param, scale=alt.Scale(type="log" if (done[param] > 0).all() else "linear")),
                        y=alt.Y(sweep.metric, title=summary.metric_label(sweep.metric)),
                        tooltip=["trial", "run", param, sweep.metric],
                    )
                    .properties(height=220)
                )
                st.altair_chart(chart, width="stretch")


show_sweeps()

if len(selected) >= 2:
    st.header(f"Compare {len(selected)} runs")
    ids = [r.id for r in selected]
    labels = {r.id: f"{r.id} · {summary.plain(r.name)}" for r in selected}
    keys = sorted(
        {p.key for r in selected for p in jobs.metric_history(r.id)}
        - {
            "export_max_abs_diff",
            "export_n_samples",
            "export_top1_agreement",
            "export_box_agreement",
            "export_pixel_agreement",
            "export_token_agreement",
        },
        key=summary.metric_label,
    )
    if keys:
        key = st.selectbox(
            "Curve",
            keys,
            index=keys.index("val_loss") if "val_loss" in keys else 0,
            format_func=summary.metric_label,
        )
        st.altair_chart(
            line_chart(summary.curve_points(ids, [key], labels), "run", summary.metric_label(key)),
            width="stretch",
        )
    left, right = halves()
    left.markdown("**Best metrics**")
    left.dataframe(numbers(summary.metrics_side_by_side(selected)), width="stretch", placeholder=BLANK)
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
        placeholder=BLANK,
    )

    show_tradeoffs(ids, labels)
    if len(selected) == 2 and (compared := show_sample_diff(*selected)) is not None:
        what = "accuracy" if compared["kind"] == "classification" else "mean absolute error"
        st.markdown(f"**By slice** ({what} of each run on the items both held back)")
        show_slices(sorted(r.id for r in selected), compared["dataset"])

run = selected[0] if len(selected) == 1 else None
if run is None:
    st.stop()

st.header(f"Run {run.id} · {summary.md(run.name)}")
took = summary.duration_s(run)
st.caption(
    f"{run.status} · {run.task} · {run.model} · dataset {summary.md(names.get(run.dataset_id or -1, '(deleted)'))} · "
    f"device {summary.md(run.device or BLANK)} · created {summary.when(run.created_at)} by "
    f"{summary.md(run.created_by or 'no signed-in user')} · "
    + (f"ran {summary.format_eta(took)} · " if took is not None else "")
    + f"attempts {run.attempts}"
)
if run.error:
    st.error(summary.md(run.error.splitlines()[0]))
metrics = summary.run_metrics(run)
if not metrics.empty:
    left, right = halves()
    left.dataframe(numbers(metrics), width="stretch", placeholder=BLANK)
    losses = summary.curve_points([run.id], ["train_loss", "val_loss"], {run.id: f"run {run.id}"})
    if not losses.empty:
        right.altair_chart(line_chart(losses, "metric", "loss"), width="stretch")


def confusion_matrix(report: dict[str, Any], key: str) -> None:
    """Counts (or shares of each true class) printed in cells shaded by the share."""
    classes = [str(c) for c in report["labels"]]
    normalised = st.toggle("Normalised (share of each true class)", key=key)
    cells = summary.confusion_cells(report, normalised)
    step = max(16, min(56, 720 // max(1, len(classes))))
    base = alt.Chart(cells).encode(
        x=alt.X("predicted:N", sort=classes, axis=alt.Axis(labelAngle=0 if len(classes) <= 6 else -45)),
        y=alt.Y("true:N", sort=classes),
    )
    heat = base.mark_rect().encode(
        color=alt.Color("share:Q", scale=alt.Scale(scheme="blues", domain=[0, 1]), legend=None),
        tooltip=[
            "true",
            "predicted",
            "count",
            alt.Tooltip("share:Q", title="share of true class", format=".1%"),
        ],
    )
    layers = heat
    if step >= 26:  # room for a number in each cell
        layers += base.mark_text(fontSize=12 if step < 40 else 14).encode(
            text="text:N",
            color=alt.condition("datum.share > 0.5", alt.value("white"), alt.value("#31333F")),
        )
    st.altair_chart(layers.properties(width=alt.Step(step), height=alt.Step(step)), width="content")


@st.cache_resource(max_entries=2)
def segmenter(path: str, mtime: float) -> Predictor:
    """The run's exported segmenter, for the masks of its worst validation images."""
    return Predictor(path)


report = summary.report(run.id)
if report and report["kind"] == "classification":
    st.subheader("Confusion matrix (validation split)")
    confusion_matrix(report, key=f"confusion-normalised-{run.id}")
    st.dataframe(
        numbers(pd.DataFrame(report["per_class"])), hide_index=True, width="stretch", placeholder=BLANK
    )
elif report and report["kind"] == "detection":
    st.subheader("Detection quality (validation split)")
    m1, m2 = st.columns(2)
    m1.metric("mAP at IoU 0.5", summary.percent(report["map50"]))
    m2.metric("mAP at IoU 0.5–0.95 (COCO)", summary.percent(report["map"]))
    left, right = st.columns(2)
    left.markdown("Average precision per class (IoU 0.5)")
    left.bar_chart(pd.Series({c["label"]: c["ap50"] for c in report["per_class"]}, name="AP"))
    right.markdown("Precision against recall (IoU 0.5, mean over classes)")
    curve = report["pr_curve"]
    right.line_chart(
        pd.DataFrame({"precision": curve["precision"]}, index=pd.Index(curve["recall"], name="recall"))
    )
    st.markdown("Worst validation images: true boxes dashed, found boxes solid (score 30% or more)")
    shown = [(overlays.worst_detection(item, report["labels"]), item) for item in report["worst"]]
    st.image(
        [picture for picture, _ in shown],
        caption=[
            f"found {i['recall']:.0%} of its objects, {i['false_positives']} false alarms" for _, i in shown
        ],
        width=220,
    )
elif report and report["kind"] == "segmentation":
    st.subheader("Segmentation quality (validation split)")
    m1, m2 = st.columns(2)
    m1.metric("mean IoU", summary.percent(report["miou"]))
    m2.metric("pixel accuracy", summary.percent(report["pixel_accuracy"]))
    left, right = st.columns(2)
    left.markdown("IoU per class")
    left.bar_chart(pd.Series({c["label"]: c["iou"] for c in report["per_class"]}, name="IoU"))
    with right:
        st.markdown("Pixels: true class against predicted")
        confusion_matrix(report, key=f"confusion-normalised-{run.id}")
    st.markdown("Worst validation images: the true mask, then the model's")
    onnx = summary.artifact_paths(run.id).get("onnx")
    model = segmenter(str(onnx), Path(onnx).stat().st_mtime) if onnx and Path(onnx).is_file() else None
    for item in report["worst"][:3]:
        pictures = overlays.worst_segmentation(item, report["labels"], model)
        st.image(
            pictures, caption=[f"true (mean IoU {item['miou']:.0%})", "predicted"][: len(pictures)], width=220
        )
elif report and report["kind"] == "generation":
    st.subheader("Answers to fixed validation prompts, epoch by epoch")
    st.caption("Greedy answers; epoch 0 is the base model before training.")
    for prompt, expected, answers in summary.answers_by_prompt(summary.generations(run.id)):
        st.markdown(f"**{summary.md(prompt)}**  \nexpected: {summary.md(expected)}")
        st.dataframe(answers, hide_index=True, width="stretch")
    st.subheader("Hardest validation examples (highest loss per token)")
    st.dataframe(numbers(pd.DataFrame(report["hardest"])), hide_index=True, width="stretch")
elif report and report["kind"] == "speech":
    st.subheader("Transcripts of fixed validation clips, epoch by epoch")
    st.caption(
        f"Greedy transcripts; epoch 0 is the base model before training. Word error rate "
        f"{summary.percent(report['wer'])}, character error rate {summary.percent(report['cer'])} on the "
        f"{report['clips']} validation clips, after {summary.md(report['normaliser'])}."
    )
    for clip, reference, heard in summary.answers_by_prompt(summary.generations(run.id)):
        st.markdown(f"**{summary.md(clip)}**  \nreference: {summary.md(reference)}")
        st.dataframe(heard.rename(columns={"answer": "transcript"}), hide_index=True, width="stretch")
    st.subheader("Validation clips with the most word errors")
    st.dataframe(numbers(pd.DataFrame(report["hardest"])), hide_index=True, width="stretch")
elif report and report["kind"] == "translation":
    st.subheader("Translations of fixed validation sentences, epoch by epoch")
    t1, t2, t3 = st.columns(3)
    t1.metric("BLEU", summary.number(report["bleu"]), help=report["scorer"])
    t2.metric("chrF", summary.number(report["chrf"]), help=report["scorer"])
    t3.metric(
        "chrF of the source copied",
        summary.number(report["copy_chrf"]),
        help="The score of writing each source sentence unchanged: a model that learnt anything beats it.",
    )
    st.caption(
        f"Greedy translations; epoch 0 is the model before training. Scores on the {report['pairs']} "
        f"validation pairs by {summary.md(report['scorer'])}."
    )
    for source, reference, written in summary.answers_by_prompt(summary.generations(run.id)):
        st.markdown(f"**{summary.md(source)}**  \nreference: {summary.md(reference)}")
        st.dataframe(written.rename(columns={"answer": "translation"}), hide_index=True, width="stretch")
    st.subheader("Validation pairs of lowest chrF")
    st.caption(
        "Words of the translation the reference lacks are marked red; words it misses, struck through."
    )
    for item in report["hardest"][:5]:
        st.markdown(
            f"{summary.md(item['source'])}  \n"
            f"{summary.word_diff_html(item['reference'], item['translation'])} · chrF {item['chrf']:.1f}",
            unsafe_allow_html=True,
        )
    st.dataframe(numbers(pd.DataFrame(report["hardest"])), hide_index=True, width="stretch")
elif report:
    st.subheader("Predicted against true (validation split)")
    st.scatter_chart(pd.DataFrame(report["points"], columns=["true", "predicted"]), x="true", y="predicted")
    r1, r2, r3 = st.columns(3)
    r1.metric("mean error", summary.number(report["residuals"]["mean"]))
    r2.metric("error spread (std)", summary.number(report["residuals"]["std"]))
    r3.metric("largest |error|", summary.number(report["residuals"]["max_abs"]))

stored = (jobs.run_dir(run.id) / "predictions.parquet").is_file()
if report and report["kind"] in ("classification", "regression") and run.dataset_id is not None and stored:
    st.subheader("Metrics by slice (validation split)")
    show_slices([run.id], run.dataset_id)

if run.task in ("tabular-classification", "tabular-regression") and run.status == "succeeded":
    st.subheader("Feature importance (validation split)")
    show_importance(run.id)

if "export_max_abs_diff" in run.metrics:
    st.subheader("Export check")
    e1, e2, e3 = st.columns(3)
    e1.metric("max |PyTorch − ONNX Runtime|", f"{run.metrics['export_max_abs_diff']:.2e}")
    agreements = {
        "export_top1_agreement": "top-1 agreement",
        "export_box_agreement": "boxes found alike (IoU ≥ 0.9)",
        "export_pixel_agreement": "pixels alike",
        "export_token_agreement": "greedy tokens alike",
        "export_transcript_agreement": "transcripts alike",
        "export_translation_agreement": "translations alike",
    }
    for key, words in agreements.items():
        if key in run.metrics:
            e2.metric(words, summary.percent(run.metrics[key]))
    e3.metric("validation samples", int(run.metrics.get("export_n_samples", 0)))

offered: list[Path] = []  # files the certificate offers, not offered again under Downloads
generator = run.task == "text-generation"
seq2seq = {"speech-recognition": "clip", "translation": "sentence"}.get(run.task)
if run.status == "succeeded":
    st.subheader("Export certificate")
    records = certificate.certificate(run.id)
    agreement = summary.AGREEMENT_WORDS.get(run.task, "top-1 agreement")
    if records:
        table = summary.certificate_table(records, agreement)
        st.dataframe(
            numbers(table).apply(
                lambda row: ["background-color: #fde2e1" if row["status"] == "flagged" else "" for _ in row],
                axis=1,
            ),
            width="stretch",
            placeholder=BLANK,
            # Units move to the caption so that the table fits the page.
            column_config={
                **{c: c.removesuffix(" (ms)") for c in table.columns if c.endswith(" (ms)")},
                "top-1 agreement": "top-1",
                "box agreement": "boxes alike",
                "pixel agreement": "pixels alike",
                "token agreement": "tokens alike",
                "transcripts alike": "alike",
                "translations alike": "alike",
                "peak memory (MB)": "peak memory",
            },
        )
        compared = {
            "object-detection": " max |diff| compares the boxes' scores.",
            "semantic-segmentation": " max |diff| compares the pixels' confidences.",
        }
        if seq2seq:
            rtf = (
                " The real-time factor is seconds of compute per second of audio."
                if seq2seq == "clip"
                else ""
            )
            st.caption(
                f"Every validation {seq2seq} decoded greedily by each variant's two graphs; alike: exactly "
                f"PyTorch's tokens. Latency in ms at batch 1 over the first validation {seq2seq}s: the "
                f"encoder, each token (p50), each whole {seq2seq}.{rtf} Size (both graphs) and peak memory "
                "in MB; max |diff| compares the encoder's outputs on the first batch."
            )
        elif generator:
            st.caption(
                "Greedy answers to the validation prompts, each variant's tokens against PyTorch's up to "
                "the first difference; perplexity of the validation answers. Latency in ms at batch 1: "
                "the first token after a validation prompt, then each of the next tokens (p50 median, "
                "p95 95th percentile). Size and peak memory in MB; max |diff| compares the first "
                "tokens' logits."
            )
        else:
            st.caption(
                "Latency in ms at batch 1 and 32: p50 is the median call, p95 the 95th percentile. "
                "Size and peak memory in MB." + compared.get(run.task, "")
            )
        if any(r.status == "flagged" for r in records):
            st.warning(f"Flagged variants' {agreement} with PyTorch is under their threshold.")
        with st.expander("How each variant was made"):
            st.markdown("\n".join(f"- **{r.variant}**: {r.method}" for r in records))
        buttons = st.container(horizontal=True)
        for r in records:
            # An encoder-decoder's variant is two files: its model, then its decoding step.
            two = seq2seq and r.variant != "pytorch"
            files = [(Path(r.path), "")] + (
                [(certificate.decoder_file(Path(r.path)), " decoder")] if two else []
            )
            for path, part in files:
                if path.exists() and path.resolve() not in {p.resolve() for p in offered}:  # one per file
                    offered.append(path)
                    buttons.download_button(
                        f"{r.variant}{part} ({summary.file_size(path.stat().st_size)})",  # the file's size
                        path.read_bytes,  # read when clicked: a generator is hundreds of MB
                        file_name=path.name,
                        help=f"{path.name}: the file measured as {r.variant}",
                        icon=":material/download:",
                        key=f"dl-v-{r.variant}{part.strip()}",
                        on_click="ignore",
                    )
        show_tradeoffs([run.id], {run.id: f"{run.id} · {run.name}"})
    elif seq2seq:
        st.caption(
            f"Not measured yet: fp32 and int8 (MatMul weights) variants of both graphs (fp16 on a GPU) "
            f"decode every validation {seq2seq} as PyTorch does, and their encoder, ms per token and "
            f"ms per {seq2seq} are timed at batch 1."
        )
    elif generator:
        st.caption(
            "Not measured yet: fp32 and int8 (MatMul weights) variants (fp16 on a GPU) continue the "
            "validation prompts as PyTorch does, their perplexity is measured, and their first token "
            "and ms per token timed at batch 1."
        )
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

files = summary.downloads(run.id, offered)
if files:
    st.subheader("Downloads" if not offered else "Other files")
    buttons = st.container(horizontal=True)
    for label, path in files:
        buttons.download_button(
            label,
            path.read_bytes,  # read when clicked: a generator is hundreds of MB
            file_name=path.name,
            help=path.name,
            icon=":material/download:",
            key=f"dl-{label.split(' ')[0]}",
            on_click="ignore",
        )
if run.status == RunStatus.SUCCEEDED and "onnx" in summary.artifact_paths(run.id):
    ways = serve.snippets(run.id)
    with st.expander("Use this model", icon=":material/api:"):
        *served, packed = st.tabs(["curl", "Python", "Bundle"] if ways else ["Bundle"])
        for tab, (kind, language) in zip(served, (("curl", "bash"), ("python", "python")), strict=False):
            tab.caption(
                "Serve it with the first line, then call it from anywhere that reaches the port "
                "(see docs/serving.md for every task's body and answer)."
            )
            tab.code(ways[kind], language=language, wrap_lines=kind == "curl")
        packed.caption(
            "One zip with the model, its runner and a README: it runs with numpy and onnxruntime "
            "alone, on any machine (see docs/serving.md)."
        )
        row = packed.container(horizontal=True)
        for variant in bundle.variants(run.id):
            row.download_button(
                f"{variant} bundle (zip)",
                lambda variant=variant: bundle.cached(run.id, variant).read_bytes(),  # made when clicked
                file_name=bundle.file_name(run.id, variant),
                mime="application/zip",
                icon=":material/package_2:",
                key=f"bundle-{variant}",
                on_click="ignore",
            )
        how = bundle.snippets(run.id)
        packed.code(how["shell"], language="bash", wrap_lines=True)
        packed.code(how["python"], language="python")
with st.expander("Log"):
    st.code(summary.log_tail(run.id) or "(empty)", language=None, wrap_lines=True)

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
