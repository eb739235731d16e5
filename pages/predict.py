"""Predict: a finished run's ONNX file, input the way its task takes it, top-k and latency."""

import io
from pathlib import Path

import pandas as pd
import streamlit as st

from core import jobs, summary
from core.errors import AscentError
from core.explain import TextExplainer
from core.models.audio import log_mel
from core.runtime import Predictor, RuntimeInputError, prepare_clip
from pages.studio.session import page_actor

actor = page_actor()  # every role may predict


@st.cache_resource(max_entries=8)
def predictor(path: str, mtime: float) -> Predictor:
    """One ONNX Runtime session per exported file (and version of it)."""
    return Predictor(path)


@st.cache_resource(max_entries=2)
def explainer(run_dir: str, mtime: float) -> TextExplainer:
    """The run's PyTorch model and tokenizer, for token attributions."""
    return TextExplainer(run_dir)


def explain(run_id: int, text: str) -> None:
    run_dir = summary.artifact_paths(run_id)["checkpoint"].parent
    try:
        with st.spinner("Attributing the prediction to tokens (integrated gradients)…"):
            found = explainer(str(run_dir), (run_dir / "best.safetensors").stat().st_mtime).explain(text)
    except (AscentError, OSError) as exc:
        st.warning(f"No token attribution: {summary.md(exc)}")
        return
    st.markdown(f"**Why {summary.md(found.label)}?** Green tokens push towards it, red ones against it.")
    st.html(summary.highlight_html(text, found.tokens))
    st.caption(
        f"Integrated gradients through the token embeddings, 32 steps from a padding baseline; "
        f"completeness error {found.convergence_delta:.2g}."
    )


def show_top(pred, k: int = 5) -> None:  # type: ignore[no-untyped-def]
    top = pd.DataFrame(pred.top(k), columns=["label", "probability"]).set_index("label")
    st.markdown(f"### {summary.md(pred.label)}")
    st.bar_chart(top, horizontal=True)


def show_batch(out: pd.DataFrame, what: str, model: Predictor) -> None:
    st.caption(f"{len(out)} {what} in {model.last_latency_ms:.1f} ms on {model.provider}")
    st.dataframe(out, width="stretch")
    st.download_button("Download predictions (CSV)", summary.csv_bytes(out), file_name="predictions.csv")


st.title("Predict")
finished = [
    r for r in jobs.list_runs(status="succeeded", limit=500) if "onnx" in summary.artifact_paths(r.id)
]
if not finished:
    st.info("No finished run with an exported model yet: train one on the Train page.")
    st.stop()

run = st.selectbox(
    "Run", finished, format_func=lambda r: f"{r.id} · {summary.plain(r.name)} ({r.task}, {r.model})"
)
path = summary.artifact_paths(run.id)["onnx"]
model = predictor(str(path), Path(path).stat().st_mtime)

if model.task == "text-classification":
    st.caption(
        f"{len(model.labels)} classes; texts are cut at {model.tokenizer_spec.get('max_length')} tokens."
    )
    one, many = st.tabs(["One text", "A file of texts"])
    with one, st.form("text"):
        text = st.text_area("Text", placeholder="Type or paste a text to classify")
        if st.form_submit_button("Predict", type="primary"):
            try:
                (pred,) = model.predict_texts([text])
                show_top(pred)
                st.caption(f"{model.last_latency_ms:.1f} ms on {model.provider}")
                explain(run.id, text)
            except RuntimeInputError as exc:
                st.error(summary.md(exc))
    with many:
        upload = st.file_uploader("A .txt file with one text per line", type=["txt"])
        if upload is not None:
            try:
                lines = [line for line in upload.getvalue().decode("utf-8-sig").splitlines() if line.strip()]
                preds = model.predict_texts(lines)
                out = pd.DataFrame(
                    {
                        "text": lines,
                        "prediction": [p.label for p in preds],
                        "probability": [p.probabilities[p.label or ""] for p in preds],
                    }
                )
                show_batch(out, "texts", model)
            except UnicodeDecodeError:
                st.error(f"{summary.md(upload.name)} is not UTF-8 text; save it as UTF-8")
            except RuntimeInputError as exc:
                st.error(summary.md(exc))
elif model.task == "audio-classification":
    rate, samples = model.audio
    st.caption(f"Clips are mixed to mono, resampled to {rate} Hz and centred in {samples / rate:g} s.")
    source = st.radio("Input", ["Upload", "Microphone"], horizontal=True)
    clip = (
        st.file_uploader("A WAV or FLAC clip", type=["wav", "flac"])
        if source == "Upload"
        else st.audio_input("Record a clip")
    )
    if clip is not None:
        data = clip.getvalue()
        st.audio(data)
        try:
            (pred,) = model.predict_audio([data])
            left, right = st.columns([3, 2])
            with right:
                show_top(pred)
                st.caption(f"{model.last_latency_ms:.1f} ms on {model.provider}")
            wave = prepare_clip(data, rate, samples)
            left.image(
                summary.spectrogram_image(log_mel(wave, rate, int(model.inputs[0].get("n_mels", 64)))),
                caption="Log-mel spectrogram the model sees (time →, frequency ↑)",
            )
        except RuntimeInputError as exc:
            st.error(summary.md(exc))
elif model.task == "image-classification":
    h, w = model.image_size
    st.caption(f"Images are resized to {w}×{h} as in validation. {len(model.labels)} classes.")
    source = st.radio("Input", ["Upload", "Camera"], horizontal=True)
    image = (
        st.file_uploader("Image", type=["png", "jpg", "jpeg", "webp", "bmp"])
        if source == "Upload"
        else st.camera_input("Take a picture")
    )
    if image is not None:
        left, right = st.columns([1, 2])
        left.image(image.getvalue(), width=220)
        with right:
            try:
                (pred,) = model.predict_images([image.getvalue()])
                show_top(pred)
                st.caption(f"{model.last_latency_ms:.1f} ms on {model.provider}")
            except RuntimeInputError as exc:
                st.error(summary.md(exc))
else:
    one, many = st.tabs(["One row", "A CSV of rows"])
    with one, st.form("row"):
        row: dict[str, list[object]] = {}
        for spec in model.inputs:
            for column in spec["columns"]:
                if spec["dtype"] == "float32":
                    row[column] = [
                        st.number_input(
                            summary.md(column),
                            value=None,
                            format="%g",
                            placeholder="missing",
                            key=f"row-{run.id}-{column}",
                        )
                    ]
                else:
                    row[column] = [
                        st.selectbox(
                            summary.md(column),
                            [None, *spec["codes"][column]],
                            format_func=lambda v: "(missing)" if v is None else summary.plain(v),
                            key=f"row-{run.id}-{column}",
                        )
                    ]
        if st.form_submit_button("Predict", type="primary"):
            (pred,) = model.predict_table(row)
            if pred.value is not None:
                st.metric(summary.md(run.name), f"{pred.value:.4g}")
            else:
                show_top(pred)
            st.caption(f"{model.last_latency_ms:.2f} ms on {model.provider}")
    with many:
        upload = st.file_uploader("CSV with the feature columns", type=["csv"])
        if upload is not None:
            try:
                df = pd.read_csv(io.BytesIO(upload.getvalue()))
                preds = model.predict_table(
                    {c: df[c].astype(object).where(df[c].notna(), None).tolist() for c in df.columns}
                )
                out = df.copy()
                if model.task.endswith("regression"):
                    out["prediction"] = [p.value for p in preds]
                else:
                    out["prediction"] = [p.label for p in preds]
                    out["probability"] = [p.probabilities[p.label or ""] for p in preds]
                show_batch(out, "rows", model)
            except (RuntimeInputError, ValueError) as exc:
                st.error(summary.md(exc))
