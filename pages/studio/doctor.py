"""The Datasets page's Doctor tab: examine a classification dataset in the background, show the
likely label errors with their content, the near-duplicates (leaks across the split first), the
outliers and the overlapping classes; exclude or relabel suspects into a new dataset version."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from core import compare, doctor, summary
from core.access import Action, can
from core.errors import AscentError
from db.queries import DatasetInfo
from pages.studio import notice

SUSPECTS_SHOWN = 12  # label suspects shown as cards, the first of the ranked list
PAIRS_SHOWN = 6  # near-duplicate pairs shown with their content
KEEP, EXCLUDE = "keep", "exclude"
THUMB = 128  # px: image suspects as thumbnails


def show(ds: DatasetInfo, actor: Any) -> None:
    if ds.task not in doctor.DOCTORED:
        st.info(
            f"The doctor examines classification datasets ({', '.join(doctor.DOCTORED)}); "
            f"this one is {ds.task}.",
            icon=":material/info:",
        )
        return
    st.caption(
        "Every item gets class probabilities from a model that never saw it (5-fold cross-validation "
        "of a fast model on cached features); items whose label that model finds unlikely are "
        "listed first. Near-duplicates, outliers and classes that overlap come from the same features. "
        "Excluding or relabelling makes a new version: this one and its runs stay as they are."
    )
    _progress(ds.id)
    report = doctor.last_report(ds.id)
    exam = doctor.examination(ds.id)
    running = exam is not None and not exam.finished
    label = "Examine again" if report else "Examine this dataset"
    if st.button(label, key=f"doctor-start-{ds.id}", disabled=running, icon=":material/stethoscope:"):
        doctor.start(ds.id)
        st.rerun()
    if exam is not None and exam.finished and exam.error:
        st.error(summary.md(exam.error))
    if report is None:
        return
    _report(ds, report, actor if can(actor, Action.UPLOAD) else None)


@st.fragment(run_every=1.0)
def _progress(dataset_id: int) -> None:
    """A progress bar while an examination runs; the page reloads once it ends."""
    exam = doctor.examination(dataset_id)
    if exam is None:
        return
    key = f"doctor-followed-{dataset_id}"
    if exam.finished:
        if st.session_state.pop(key, False):
            st.rerun(scope="app")
        return
    st.session_state[key] = True
    share = exam.done / exam.total if exam.total else 0.0
    counted = f" ({exam.done} of {exam.total})" if exam.total else ""
    st.progress(min(share, 1.0), text=f"Examining: {exam.stage}{counted}")


def _content(ds: DatasetInfo, ids: list[int]) -> compare.Items | None:
    try:
        return compare.items(ds.id, ids)
    except AscentError as exc:
        st.info(summary.md(exc), icon=":material/info:")
        return None


def _show_item(content: compare.Items, i: int) -> None:
    if content.kind == "image" and content.paths is not None:
        st.image(str(content.paths[i]), width=THUMB)
    elif content.kind == "clip" and content.paths is not None:
        st.audio(str(content.paths[i]))
    elif content.kind == "text" and content.texts is not None:
        text = content.texts[i]
        st.markdown(summary.md(text[:300] + ("…" if len(text) > 300 else "")))
    elif content.rows is not None:
        row = content.rows.iloc[i]
        st.caption(summary.md(", ".join(f"{k} = {v}" for k, v in row.items())[:400]))


def _report(ds: DatasetInfo, report: dict[str, Any], reviser: Any) -> None:
    """The report; `reviser` (the actor, None when they may not add datasets) acts on it."""
    from datetime import datetime

    may_revise = reviser is not None
    st.markdown(
        f"Examined {summary.when(datetime.fromisoformat(report['examined_at']))}: {report['judged']} of {report['items']} items by "
        f"{summary.md(report['method'])}; out-of-sample accuracy **{report['accuracy']:.1%}** "
        f"({report['seconds']:g} s)."
    )
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Likely label errors", report["label_issues_found"])
    c2.metric("Near-duplicate pairs", report["duplicates_found"])
    c3.metric("Across train and validation", report["leaks"], help="pairs a default run would split: leakage")
    c4.metric("Outliers", report["outliers_found"])

    suspects = report["label_issues"]
    choices: dict[int, str] = {}
    if suspects:
        st.subheader("Likely label errors")
        count = st.slider(
            "Suspects shown", 1, len(suspects), min(SUSPECTS_SHOWN, len(suspects)), key=f"doctor-n-{ds.id}"
        )
        shown = suspects[:count]
        content = _content(ds, [s["item"] for s in shown])
        if content is not None:
            columns = st.columns(4)
            for i, s in enumerate(shown):
                with columns[i % 4].container(border=True):
                    _show_item(content, i)
                    st.markdown(
                        f"**#{s['item']}** labelled **{summary.md(s['given'])}**, looks like "
                        f"**{summary.md(s['suggested'])}** ({s['suggested_probability']:.0%})"
                    )
                    if may_revise:
                        choices[s["item"]] = st.radio(
                            f"Item {s['item']}",
                            [KEEP, EXCLUDE, f"relabel as {s['suggested']}"],
                            horizontal=True,
                            label_visibility="collapsed",
                            key=f"doctor-act-{ds.id}-{s['item']}",
                        )
        if may_revise:
            _revise(ds, suspects, choices, reviser)
    else:
        st.success("No likely label errors: every label agrees with what the model expects.")

    if report["duplicates"]:
        st.subheader("Near-duplicates")
        st.caption(
            "Pairs whose features are nearly identical; a pair split between training and validation "
            "lets a run score on what it memorised (leak)."
        )
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "items": f"{d['a']}, {d['b']}",
                        "labels": " / ".join(d["labels"]),
                        "similarity": d["similarity"],
                        "leak": d["leak"],
                    }
                    for d in report["duplicates"]
                ]
            ),
            hide_index=True,
            width="stretch",
        )
        pairs = report["duplicates"][:PAIRS_SHOWN]
        if ds.task in ("image-classification", "audio-classification"):
            content = _content(ds, [i for d in pairs for i in (d["a"], d["b"])])
            if content is not None:
                columns = st.columns(min(len(pairs), 3))
                for n, d in enumerate(pairs):
                    with columns[n % len(columns)].container(border=True):
                        left, right = st.columns(2)
                        with left:
                            _show_item(content, 2 * n)
                        with right:
                            _show_item(content, 2 * n + 1)
                        st.caption(f"#{d['a']} and #{d['b']} · {' / '.join(d['labels'])}")
    if report["outliers"]:
        st.subheader("Outliers")
        st.caption("Items far from every other item (beyond the upper quartile + 3 IQR of that distance).")
        outliers = report["outliers"][:SUSPECTS_SHOWN]
        content = _content(ds, [o["item"] for o in outliers])
        if content is not None and content.kind in ("image", "clip"):
            columns = st.columns(4)
            for i, o in enumerate(outliers):
                with columns[i % 4]:
                    _show_item(content, i)
                    st.caption(f"#{o['item']} · {o['label']} · distance {o['distance']:.3g}")
        else:
            table = pd.DataFrame(report["outliers"])
            if content is not None and content.texts is not None:
                table = table.head(len(content.texts)).assign(text=content.texts)
            st.dataframe(table, hide_index=True, width="stretch")
    if report["overlap"]:
        st.subheader("Classes the model mixes up")
        st.dataframe(
            pd.DataFrame(report["overlap"]).rename(
                columns={"a": "class", "b": "with class", "items": "items", "joint": "share of items"}
            ),
            hide_index=True,
            width="stretch",
        )


def _revise(ds: DatasetInfo, suspects: list[dict[str, Any]], choices: dict[int, str], actor: Any) -> None:
    from core.data.versions import revise

    suggested = {s["item"]: s["suggested"] for s in suspects}
    exclude = [i for i, c in choices.items() if c == EXCLUDE]
    relabel = {i: suggested[i] for i, c in choices.items() if c not in (KEEP, EXCLUDE)}
    what = f"{len(exclude)} excluded, {len(relabel)} relabelled"
    if st.button(
        f"Make a new version ({what})",
        key=f"doctor-revise-{ds.id}",
        disabled=not exclude and not relabel,
        type="primary",
        icon=":material/difference:",
    ):
        try:
            made = revise(ds.id, exclude=exclude, relabel=relabel, actor=actor)
        except AscentError as exc:
            st.error(summary.md(exc))
            return
        st.session_state["datasets-chosen"] = made.id
        notice.after_rerun(
            f"Made dataset {made.id} · {summary.md(summary.dataset_name(made))} ({what}); "
            f"dataset {ds.id} and its runs are unchanged."
        )
