"""The "Why …?" panels of the Predict page: which tokens, features, pixels or sounds drove a
prediction, each with its method and its cost (core/explain.py computes them)."""

import hashlib
from typing import Any

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from core import summary
from core.errors import AscentError
from core.explain import (
    DENSE_METHODS,
    MAP_METHODS,
    DenseExplainer,
    MapExplainer,
    MapExplanation,
    Part,
    PartExplanation,
    TableExplainer,
    TextExplainer,
    clip_overlay_png,
    image_overlay,
    part_overlay,
    where_in_clip,
    where_in_image,
)
from core.models.audio import log_mel
from core.runtime import RuntimeInputError, load_original


@st.cache_resource(max_entries=2)
def text_explainer(run_dir: str, mtime: float) -> TextExplainer:
    """The run's PyTorch model and tokenizer, for token attributions."""
    return TextExplainer(run_dir)


def text(run_id: int, text: str) -> None:
    """Which tokens drove a text's prediction: shaded, green for, red against."""
    run_dir = summary.artifact_paths(run_id)["checkpoint"].parent
    try:
        with st.spinner("Attributing the prediction to tokens (integrated gradients)…"):
            found = text_explainer(str(run_dir), (run_dir / "best.safetensors").stat().st_mtime).explain(text)
    except (AscentError, OSError) as exc:
        st.warning(f"No token attribution: {summary.md(exc)}")
        return
    st.markdown(f"**Why {summary.md(found.label)}?** Green tokens push towards it, red ones against it.")
    st.html(summary.highlight_html(text, found.tokens))
    st.caption(
        f"Integrated gradients through the token embeddings, 32 steps from a padding baseline; "
        f"completeness error {found.convergence_delta:.2g}."
    )


@st.cache_resource(max_entries=2, show_spinner=False)
def table_explainer(run_id: int, mtime: float) -> TableExplainer:
    """The run's PyTorch model rebuilt on its dataset, for feature attributions."""
    return TableExplainer(run_id)


FEATURES_DRAWN = 15  # features the explanation's chart shows, the strongest first


def row(run_id: int, row: dict[str, Any]) -> None:
    """Which features drove the row's prediction: signed Shapley values as bars."""
    checkpoint = summary.artifact_paths(run_id)["checkpoint"]
    try:
        with st.spinner("Attributing the prediction to the features (Shapley values)…"):
            found = table_explainer(run_id, checkpoint.stat().st_mtime).explain(row)
    except (AscentError, OSError) as exc:
        st.warning(f"No feature attribution: {summary.md(exc)}")
        return
    shown = found.features[:FEATURES_DRAWN]
    frame = pd.DataFrame(
        {
            "feature": [f.feature for f in shown],
            "value": [summary.plain(f.value) for f in shown],
            "baseline": [summary.plain(f.baseline) for f in shown],
            "score": [f.score for f in shown],
            "direction": ["towards" if f.score >= 0 else "against" for f in shown],
        }
    )
    what = f"{summary.md(found.label)}" if found.label is not None else "the value"
    output = (lambda v: summary.percent(v)) if found.label is not None else (lambda v: summary.number(v, 4))
    st.markdown(f"**Why {what}?** Blue features push towards it, red ones against it.")
    chart = (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            y=alt.Y("feature:N", sort=list(frame["feature"]), title=None, axis=alt.Axis(labelLimit=220)),
            x=alt.X(
                "score:Q",
                title="contribution" + (" to the probability" if found.label is not None else ""),
                axis=alt.Axis(tickCount=6),
            ),
            color=alt.Color(
                "direction:N",
                scale=alt.Scale(domain=["towards", "against"], range=["#1f77b4", "#d62728"]),
                legend=None,
            ),
            tooltip=["feature", "value", "baseline", alt.Tooltip("score:Q", format="+.3g")],
        )
    )
    st.altair_chart(chart, width="stretch")
    st.caption(
        f"The baseline row (each feature at the dataset's median or commonest value) gives "
        f"{output(found.baseline_output)}, this row {output(found.output)}: the bars add up to the "
        f"difference. {found.method}; {found.evaluations} model evaluations, {found.seconds:.2f} s."
    )


@st.cache_resource(max_entries=2, show_spinner=False)
def map_explainer(run_id: int, mtime: float) -> MapExplainer:
    """The run's PyTorch image or audio model, for heatmaps."""
    return MapExplainer(run_id)


METHOD_NAMES = {"grad-cam": "Grad-CAM", "integrated-gradients": "Integrated gradients"}


def method_choice(run_id: int, task: str) -> str:
    """The heatmap method for this run's images or clips, the task's default first."""
    methods = {**MAP_METHODS, **DENSE_METHODS}[task]
    picked = st.segmented_control(
        "Explained by",
        methods,
        default=methods[0],
        format_func=lambda m: METHOD_NAMES[m],
        key=f"why-method-{run_id}",
        help="Grad-CAM: one pass forward and back, as coarse as the feature map it is taken on. "
        "Integrated gradients: 32 passes along the way from a black image (silence), finer.",
    )
    return str(picked or methods[0])


def _explained(run_id: int, data: bytes, method: str) -> MapExplanation | None:
    """The heatmap of one image or clip, remembered for the session (a toggle's rerun, another
    card's), with a progress bar while integrated gradients run."""
    checkpoint = summary.artifact_paths(run_id)["checkpoint"]
    key = f"why-{run_id}-{checkpoint.stat().st_mtime}-{method}-{hashlib.sha256(data).hexdigest()[:16]}"
    found: MapExplanation | None = st.session_state.get(key)
    if found is not None:
        return found
    bar = st.progress(0.0, text=f"{METHOD_NAMES[method]}…")
    try:
        explainer = map_explainer(run_id, checkpoint.stat().st_mtime)
        found = explainer.explain(
            explainer.prepare(data),
            method=method,
            on_progress=lambda share: bar.progress(share, text=f"{METHOD_NAMES[method]}: {share:.0%}"),
        )
    except (AscentError, RuntimeInputError, OSError) as exc:
        st.warning(f"No heatmap: {summary.md(exc)}")
        return None
    finally:
        bar.empty()
    st.session_state[key] = found
    return found


def image(run_id: int, data: bytes, method: str) -> None:
    """Where in the image the evidence for its predicted class lies, as a heatmap over it."""
    found = _explained(run_id, data, method)
    if found is None:
        return
    st.image(
        image_overlay(load_original(data), found.heatmap, longest=480),
        caption=f"Why {found.label}: strongest in {where_in_image(found.heatmap)}",
        width="stretch",
    )
    st.caption(_cost(found))


def clip(run_id: int, data: bytes, wave: np.ndarray, method: str) -> None:
    """Where in the clip's log-mel spectrogram the evidence lies: time and frequency marked."""
    found = _explained(run_id, data, method)
    if found is None:
        return
    explainer = map_explainer(run_id, summary.artifact_paths(run_id)["checkpoint"].stat().st_mtime)
    t0, t1, f0, f1 = where_in_clip(found.heatmap, explainer.rate)
    st.markdown(
        f"**Why {summary.md(found.label)}?** The evidence is coloured over the spectrogram; half of it "
        f"lies in the framed part, {t0:.2f}-{t1:.2f} s and {f0:,.0f}-{f1:,.0f} Hz."
    )
    st.image(clip_overlay_png(log_mel(wave, explainer.rate, explainer.n_mels), found.heatmap, explainer.rate))
    st.caption(_cost(found))


@st.cache_resource(max_entries=2, show_spinner=False)
def dense_explainer(run_id: int, mtime: float) -> DenseExplainer:
    """The run's PyTorch detector or segmenter, for per-box and per-class heatmaps."""
    return DenseExplainer(run_id)


def _part_name(n: int, part: Part) -> str:
    if part.box is not None:
        return f"{n}. {part.label} {part.score:.0%}"
    return f"{part.label} ({part.score:.1%} of the pixels)"


def dense(run_id: int, task: str, data: bytes, threshold: float | None) -> None:
    """Where in the image the evidence for one box (detection) or one class's pixels
    (segmentation) lies: a heatmap over the image with the part marked, and the share inside."""
    detection = task == "object-detection"
    checkpoint = summary.artifact_paths(run_id)["checkpoint"]
    try:
        explainer = dense_explainer(run_id, checkpoint.stat().st_mtime)
        prepared = explainer.prepare(data)
        parts = explainer.parts(prepared, threshold=threshold)
    except (AscentError, RuntimeInputError, OSError) as exc:
        st.warning(f"No heatmap: {summary.md(exc)}")
        return
    if not parts:
        st.info(f"No box scores {threshold or 0:.0%} or more: lower the lowest score shown to explain one.")
        return
    left, right = st.columns([3, 2])
    with right:
        at = st.selectbox(
            "Box to explain" if detection else "Class to explain",
            range(len(parts)),
            format_func=lambda i: _part_name(i + 1, parts[i]),
            key=f"why-part-{run_id}",
        )
        method = method_choice(run_id, task)
    part = parts[min(int(at or 0), len(parts) - 1)]
    digest = hashlib.sha256(data).hexdigest()[:16]
    key = f"why-{run_id}-{checkpoint.stat().st_mtime}-{method}-{digest}-{part.label}-{part.cell}"
    found: PartExplanation | None = st.session_state.get(key)
    if found is None:
        bar = right.progress(0.0, text=f"{METHOD_NAMES[method]}…")
        try:
            found = explainer.explain(
                prepared,
                part,
                method=method,
                on_progress=lambda share: bar.progress(share, text=f"{METHOD_NAMES[method]}: {share:.0%}"),
            )
        except (AscentError, OSError) as exc:
            right.warning(f"No heatmap: {summary.md(exc)}")
            return
        finally:
            bar.empty()
        st.session_state[key] = found
    where = "inside the box" if detection else "on the pixels given it (outlined)"
    left.image(
        part_overlay(load_original(data), found, explainer.classes),
        caption=f"Why {found.part.label}: the evidence for it over the image",
        width="stretch",
    )
    right.markdown(f"**{found.inside:.0%} of the evidence lies {where}.**")
    right.caption(f"{_cost(found)[:-1]}, towards {found.target}.")


def _cost(found: MapExplanation | PartExplanation) -> str:
    passes = f"{found.evaluations} pass{'es' * (found.evaluations != 1)}"
    return f"{found.method[0].upper()}{found.method[1:]}: {passes}, {found.seconds:.2f} s."
