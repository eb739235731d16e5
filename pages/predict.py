"""Predict: a finished run's ONNX file, input the way its task takes it, top-k and latency."""

import contextlib
import io
import time
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from core import jobs, overlays, playground, summary
from core.data.ingest import get_dataset
from core.errors import AscentError
from core.models.audio import log_mel
from core.runtime import (
    DEFAULT_THRESHOLD,
    Generation,
    Generator,
    Predictor,
    RuntimeInputError,
    Transcriber,
    Translator,
    load_original,
    prepare_clip,
)
from pages.studio import why
from pages.studio.session import page_actor

actor = page_actor()  # every role may predict
IMAGES_PER_ROW = 3


@st.cache_resource(max_entries=8)
def predictor(path: str, mtime: float) -> Predictor:
    """One ONNX Runtime session per exported file (and version of it)."""
    return Predictor(path)


def clip_input() -> Any:
    """A clip uploaded (WAV or FLAC) or recorded with the microphone, or None yet."""
    source = st.radio("Input", ["Upload", "Microphone"], horizontal=True)
    if source == "Upload":
        return st.file_uploader("A WAV or FLAC clip", type=["wav", "flac"])
    return st.audio_input("Record a clip")


@st.cache_resource(max_entries=4)
def transcriber(path: str, mtime: float) -> Transcriber:
    """A speech recogniser's two sessions and tokenizer."""
    return Transcriber(path)


@st.cache_resource(max_entries=4)
def translator(path: str, mtime: float) -> Translator:
    """A translation model's two sessions and tokenizer."""
    return Translator(path)


@st.cache_resource(max_entries=4)
def generator(path: str, mtime: float) -> Generator:
    """A generator file's tokenizer and settings around the Predict page's session of it."""
    return Generator(path, session=predictor(path, mtime).session)


BASE = "base"  # the playground's key for the base model a run started from


@st.fragment(run_every=3)
def wait_for_base(source: str) -> None:
    """The base model's export, polled until it is ready; then the page runs again."""
    path, status = playground.base_status(source)
    if path is not None:
        st.rerun()
    st.info(f"Base model: {summary.md(status)}.", icon=":material/hourglass_top:")


def base_file(run: Any) -> Path | None:
    """The exported base model `run` was fine-tuned from, once it is there; until then its
    export is started (in the background) and awaited; None also where it has none."""
    try:
        source = playground.base_source(run.id)
    except AscentError as exc:
        st.warning(summary.md(exc))
        return None
    if source == "scratch":
        st.info("This run trained from random weights: it has no base model to compare with.")
        return None
    found, _ = playground.base_status(source)
    if found is None:
        playground.prepare_base(source, run.task)
        wait_for_base(source)
    return found


def side_by_side(base: str, tuned: str, what: str) -> None:
    """The base model's output beside the run's, the run's words that differ marked."""
    left, right = st.columns(2)
    left.markdown(f"**Base model's {what}**  \n{summary.md(base) or '(nothing)'}")
    right.markdown(
        f"**This run's {what}**  \n{summary.word_diff_html(base, tuned) if tuned else '(nothing)'}",
        unsafe_allow_html=True,
    )
    st.caption(
        "Words the base model did not write are marked red; its words the run dropped are struck through."
    )


def chat(run: Any, path: Path, finished: list[Any]) -> None:
    """A conversation with the run's generator, answered side by side by the base model it
    started from and other generator runs when chosen; tokens stream in as they come."""
    others = [r for r in finished if r.task == "text-generation" and r.id != run.id]
    labels = {BASE: "the base model", **{r.id: f"run {r.id} · {summary.plain(r.name)}" for r in others}}
    left, right = st.columns([3, 2])
    beside = left.multiselect(
        "Answer beside it",
        list(labels),
        max_selections=2,
        format_func=labels.__getitem__,
        help="The same conversation, answered by the model this run started from or by other runs.",
    )
    with right.popover("Generation settings", icon=":material/tune:"):
        max_new = st.number_input("Max new tokens", 1, 2048, 128)
        temperature = st.slider(
            "Temperature", 0.0, 2.0, 0.0, 0.05, help="0 always picks the likeliest token."
        )
        top_p = st.slider(
            "Top-p", 0.05, 1.0, 1.0, 0.05, help="Sample from the smallest set of tokens this likely."
        )
        stops = st.text_input(
            "Stop strings", placeholder="comma-separated", help="The answer ends before any of them."
        )
    models: dict[Any, Generator] = {run.id: generator(str(path), path.stat().st_mtime)}
    for key in beside:
        if key == BASE:
            try:
                source = playground.base_source(run.id)
            except AscentError as exc:
                st.warning(summary.md(exc))
                continue
            base_file, _ = playground.base_status(source)
            if base_file is None:
                playground.prepare_base(source)
                wait_for_base(source)
                continue
            models[BASE] = generator(str(base_file), base_file.stat().st_mtime)
        else:
            other = summary.artifact_paths(int(key))["onnx"]
            models[key] = generator(str(other), Path(other).stat().st_mtime)
    names = {run.id: f"run {run.id}", **labels}
    history: list[dict[str, Any]] = st.session_state.setdefault(f"chat-{run.id}", [])
    for turn in history:
        st.chat_message("user").write(turn["prompt"])
        columns = st.columns(len(turn["answers"]))
        for column, (key, answer) in zip(columns, turn["answers"].items(), strict=True):
            with column.chat_message("assistant"):
                st.caption(names.get(key, str(key)))
                st.write(answer["text"])
                st.caption(answer["timing"])
    prompt = st.chat_input("Ask the model")
    if history and st.button("Clear the conversation", icon=":material/delete_sweep:"):
        history.clear()
        st.rerun()
    if not prompt:
        return
    st.chat_message("user").write(prompt)
    answers: dict[Any, dict[str, str]] = {}
    for column, (key, model) in zip(st.columns(len(models)), models.items(), strict=True):
        messages = []
        for turn in history:  # each model sees its own earlier answers
            if key in turn["answers"]:
                messages += [
                    {"role": "user", "content": turn["prompt"]},
                    {"role": "assistant", "content": turn["answers"][key]["text"]},
                ]
        messages.append({"role": "user", "content": prompt})
        result = Generation("", [], 0, 0.0, 0.0, "length")
        with column.chat_message("assistant"):
            st.caption(names.get(key, str(key)))
            try:
                stream = model.stream(
                    messages,
                    max_new_tokens=int(max_new),
                    temperature=float(temperature),
                    top_p=float(top_p),
                    stop=[s.strip() for s in stops.split(",") if s.strip()],
                    result=result,
                )
                st.write_stream(token.text for token in stream)
            except RuntimeInputError as exc:
                st.error(summary.md(exc))
                continue
            timing = (
                f"{len(result.tokens)} tokens · first after {result.first_token_ms:.0f} ms · "
                f"{result.ms_per_token:.1f} ms/token · {model.provider}"
            )
            st.caption(timing)
        answers[key] = {"text": result.text, "timing": timing}
    if answers:
        history.append({"prompt": prompt, "answers": answers})


@st.cache_data(ttl=600, max_entries=16, show_spinner=False)
def example(dataset_id: int | None, config: dict[str, Any]) -> tuple[str, int, dict[str, Any]] | None:
    """(dataset name, row number, row) of the first row the run validated on; None without it."""
    if dataset_id is None:
        return None
    try:
        dataset = get_dataset(dataset_id)
    except AscentError:
        return None
    found = summary.example_row(dataset, config)
    return None if found is None else (dataset.name, *found)


def bars(pred, k: int = 5) -> None:  # type: ignore[no-untyped-def]
    """The k most probable labels as bars, the most probable on top, each with its percentage."""
    top = summary.top_table(pred, k)
    base = alt.Chart(top).encode(
        x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1.15]), axis=None),
        y=alt.Y("label:N", sort="-x", title=None, axis=alt.Axis(labelOverlap=False, labelLimit=140)),
        tooltip=["label:N", alt.Tooltip("probability:Q", format=".1%")],
    )
    chart = base.mark_bar() + base.mark_text(align="left", dx=4).encode(
        text=alt.Text("probability:Q", format=".1%")
    )
    st.altair_chart(chart.properties(height=28 * len(top) + 8), width="stretch")


def show_top(pred, k: int = 5) -> None:  # type: ignore[no-untyped-def]
    st.markdown(f"### {summary.md(pred.label)}")
    bars(pred, k)


def show_batch(out: pd.DataFrame, what: str, model: Predictor) -> None:
    st.caption(f"{len(out)} {what} in {model.last_latency_ms:.1f} ms on {model.provider}")
    st.dataframe(out, width="stretch", hide_index=True)
    st.download_button(
        "Download predictions (CSV)", summary.csv_bytes(out), file_name="predictions.csv", on_click="ignore"
    )


def example_text(value: Any) -> str:
    """A value as the paste box's example shows it: 101 rather than 101.0, nothing for missing."""
    if value is None:
        return ""
    return f"{value:g}" if isinstance(value, float) else summary.plain(value)


def fill_from_paste(run_id: int, columns: list[str], codes: dict[str, list[str]]) -> None:
    """Put a pasted CSV line into the one-row form's fields (a text box's on_change)."""
    line = st.session_state.get(f"paste-{run_id}", "")
    if not line.strip():
        st.session_state[f"paste-{run_id}-problems"] = []
        return
    values, problems = summary.parse_row(line, columns, codes)
    for column, value in values.items():
        st.session_state[f"row-{run_id}-{column}"] = value
    st.session_state[f"paste-{run_id}-problems"] = problems


def image_grid(files: list[Any], model: Predictor, run_id: int) -> None:
    """Every image as a card with its top classes and, asked, a heatmap of why; three to a row,
    and one CSV of them all."""
    names = [f.name for f in files]
    try:
        preds = model.predict_images([f.getvalue() for f in files])
    except RuntimeInputError:  # one bad file: predict the others one by one, say which failed
        preds = []
        for f in files:
            try:
                preds.extend(model.predict_images([f.getvalue()]))
            except RuntimeInputError as exc:
                preds.append(exc)
    good = [(n, p) for n, p in zip(names, preds, strict=True) if not isinstance(p, Exception)]
    st.caption(
        f"{len(good)} image{'s' * (len(good) != 1)} in {model.last_latency_ms:.1f} ms on {model.provider}"
    )
    method = why.method_choice(run_id, model.task) if good else "grad-cam"
    for start in range(0, len(files), IMAGES_PER_ROW):
        row = st.columns(IMAGES_PER_ROW)
        for at, (column, f, pred) in enumerate(zip(row, files[start:], preds[start:], strict=False), start):
            with column.container(border=True):
                if isinstance(pred, Exception):  # not shown: it may not decode, or be huge
                    st.caption(summary.md(f.name))
                    st.error(summary.md(pred))
                else:
                    st.image(f.getvalue(), width=160)
                    st.caption(summary.md(f.name))
                    st.markdown(f"**{summary.md(pred.label)}**")
                    bars(pred, k=3)
                    if st.toggle(f"Why {summary.md(pred.label)}?", key=f"why-image-{run_id}-{at}-{f.name}"):
                        why.image(run_id, f.getvalue(), method)
    if good:
        table = summary.image_predictions([n for n, _ in good], [p for _, p in good])
        st.download_button(
            "Download predictions (CSV)",
            summary.csv_bytes(table),
            file_name="image-predictions.csv",
            on_click="ignore",
        )


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

if model.task == "text-generation":
    chat(run, Path(path), finished)
elif model.task == "text-classification":
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
                why.text(run.id, text)
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
                        "prediction": [p.label for p in preds],
                        "probability": [p.probabilities[p.label or ""] for p in preds],
                        "text": lines,
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
    clip = clip_input()
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
            if st.toggle(f"Why {summary.md(pred.label)}?", key=f"why-clip-{run.id}"):
                why.clip(run.id, data, wave, why.method_choice(run.id, run.task))
        except RuntimeInputError as exc:
            st.error(summary.md(exc))
elif model.task == "speech-recognition":
    speech = transcriber(str(path), Path(path).stat().st_mtime)
    st.caption(
        f"Clips are mixed to mono and resampled to {speech.settings['sample_rate']} Hz; "
        f"at most {speech.settings['max_seconds']:g} s each."
    )
    beside = st.toggle(
        "Beside the base model", help="The Whisper this run was fine-tuned from transcribes the clip too."
    )
    base = base_file(run) if beside else None
    clip = clip_input()
    if clip is not None:
        data = clip.getvalue()
        st.audio(data)
        try:
            with st.spinner("Transcribing"):
                (heard,) = speech.transcribe([data])
                before = transcriber(str(base), base.stat().st_mtime).transcribe([data])[0] if base else None
            if before is not None:
                side_by_side(before.text, heard.text, "transcript")
            else:
                st.markdown(f"**Transcript:** {summary.md(heard.text) or '(nothing heard)'}")
            per_token = heard.decode_ms / max(1, len(heard.tokens))
            st.caption(
                f"{heard.seconds:.1f} s of audio: encoder {heard.encode_ms:.0f} ms, {len(heard.tokens)} tokens at "
                f"{per_token:.1f} ms each, on {speech.provider}"
            )
        except RuntimeInputError as exc:
            st.error(summary.md(exc))
elif model.task == "translation":
    words = translator(str(path), Path(path).stat().st_mtime)
    st.caption(
        f"One sentence per line, up to {words.settings['max_source_tokens']} tokens each. "
        "Beam search keeps several candidate translations and returns the likeliest; 1 is greedy."
    )
    pretrained = run.model != "marian-small"
    beside = pretrained and st.toggle(
        "Beside the base model", help="The Marian model this run was fine-tuned from translates the text too."
    )
    base = base_file(run) if beside else None
    with st.form("translate"):
        given = st.text_area("Text to translate", height=120)
        beams = st.slider("Beams", 1, 8, 1)
        asked = st.form_submit_button("Translate", type="primary")
    if asked:
        lines = [line for line in given.splitlines() if line.strip()]
        if not lines:
            st.warning("Write a sentence to translate first.")
        else:
            try:
                with st.spinner("Translating"):
                    began = time.perf_counter()
                    found = words.translate(lines, beams=beams)
                    took_ms = (time.perf_counter() - began) * 1000
                    before = (
                        translator(str(base), base.stat().st_mtime).translate(lines, beams=beams)
                        if base
                        else None
                    )
            except RuntimeInputError as exc:
                st.error(summary.md(exc))
            else:
                st.dataframe(
                    pd.DataFrame({"source": lines, "translation": [f.text for f in found]}),
                    hide_index=True,
                    width="stretch",
                )
                for line, was, now in zip(lines, before or [], found, strict=False):
                    st.markdown(f"*{summary.md(line)}*")
                    side_by_side(was.text, now.text, "translation")
                tokens = sum(len(f.tokens) for f in found)
                st.caption(
                    f"{len(lines)} sentence{'s' * (len(lines) != 1)}, {tokens} tokens written in {took_ms:.0f} ms "
                    f"with {beams} beam{'s' * (beams != 1)}, on {words.provider}"
                )
elif model.task in ("object-detection", "semantic-segmentation"):
    detection = model.task == "object-detection"
    st.caption(
        f"Images of any size: the model resizes them itself. {len(model.labels)} classes"
        + (": boxes in the image's own pixels." if detection else "; a class for every pixel.")
    )
    source = st.radio("Input", ["Upload", "Camera"], horizontal=True)
    if source == "Upload":
        picked = st.file_uploader("An image", type=["png", "jpg", "jpeg", "webp", "bmp"])
    else:
        picked = st.camera_input("Take a picture")
    if detection:
        threshold = st.slider(
            "Lowest score shown",
            0.05,
            0.95,
            DEFAULT_THRESHOLD,
            0.05,
            help="Boxes scoring below this are hidden.",
        )
    else:
        opacity = st.slider("Mask opacity", 0.0, 1.0, 0.5, 0.05)
    if picked is not None:
        data = picked.getvalue()
        try:
            image = load_original(data)
            if detection:
                boxes = model.detect(data, threshold)
                drawn = overlays.draw_boxes(
                    image,
                    [b.box for b in boxes],
                    [model.labels.index(b.label) for b in boxes],
                    model.labels,
                    [b.score for b in boxes],
                    min_side=480,
                )
                left, right = st.columns([3, 2])
                left.image(
                    drawn,
                    caption=f"{len(boxes)} objects at a score of {threshold:.0%} or more",
                    width="stretch",
                )
                right.dataframe(
                    pd.DataFrame(
                        {
                            "class": [b.label for b in boxes],
                            "score": [round(b.score, 3) for b in boxes],
                            "x1, y1, x2, y2": [", ".join(f"{v:.0f}" for v in b.box) for b in boxes],
                        }
                    ),
                    hide_index=True,
                    width="stretch",
                )
                right.caption(f"{model.last_latency_ms:.1f} ms on {model.provider}")
                if boxes and st.toggle("Why these boxes?", key=f"why-boxes-{run.id}"):
                    why.dense(run.id, model.task, data, threshold)
            else:
                seg = model.segment(data)
                left, right = st.columns([3, 2])
                left.image(
                    overlays.blend_mask(image, seg.mask, len(model.labels), opacity),
                    caption="Classes over the image",
                    width="stretch",
                )
                shares = sorted(((k, v) for k, v in seg.shares.items() if v > 0), key=lambda kv: -kv[1])
                right.dataframe(
                    pd.DataFrame(
                        {"class": [k for k, _ in shares], "share of pixels": [f"{v:.1%}" for _, v in shares]}
                    ),
                    hide_index=True,
                    width="stretch",
                )
                right.caption(f"{model.last_latency_ms:.1f} ms on {model.provider}")
                if st.toggle("Why these classes?", key=f"why-classes-{run.id}"):
                    why.dense(run.id, model.task, data, None)
        except RuntimeInputError as exc:
            st.error(summary.md(exc))
elif model.task == "image-classification":
    h, w = model.image_size
    st.caption(f"Images are resized to {w}×{h} as in validation. {len(model.labels)} classes.")
    source = st.radio("Input", ["Upload", "Camera"], horizontal=True)
    if source == "Upload":
        images = st.file_uploader(
            "Images (one or several)", type=["png", "jpg", "jpeg", "webp", "bmp"], accept_multiple_files=True
        )
    else:
        shot = st.camera_input("Take a picture")
        images = [] if shot is None else [shot]
    if images:
        image_grid(list(images), model, run.id)
else:
    target = str(model.run.get("target") or "")
    classification = not model.task.endswith("regression")
    columns = model.columns
    codes = {
        c: list(spec["codes"][c])
        for spec in model.inputs
        if spec["dtype"] != "float32"
        for c in spec["columns"]
    }
    one, many = st.tabs(["One row", "A CSV of rows"])
    with one:
        found = example(run.dataset_id, run.config)
        fields = {c: f"row-{run.id}-{c}" for c in columns}
        if found is not None and not any(key in st.session_state for key in fields.values()):
            for column, key in fields.items():  # the first time this run's form shows
                with contextlib.suppress(ValueError):
                    st.session_state[key] = summary.form_value(found[2].get(column), codes.get(column))
        if found is not None:
            name, number, values = found
            known = values.get(target)
            st.caption(
                f"Prefilled with row {number + 1} of dataset {summary.md(name)}, a row the run validated on"
                + (f"; its {summary.md(target)} is **{summary.md(known)}**." if known is not None else ".")
            )
        st.text_input(
            "Paste a row",
            key=f"paste-{run.id}",
            placeholder=", ".join(columns)
            if found is None
            else "for example: " + ",".join(example_text(found[2].get(c)) for c in columns),
            help=(
                "One CSV line with the feature columns in this order: "
                + ", ".join(summary.md(c) for c in columns)
                + ". Press Enter to fill the fields below; an empty value is missing, quotes work as in CSV."
            ),
            on_change=fill_from_paste,
            args=(run.id, columns, codes),
        )
        for problem in st.session_state.get(f"paste-{run.id}-problems", []):
            st.warning(summary.md(problem))
        with st.form("row"):
            row: dict[str, list[object]] = {}
            grid = st.columns(2)  # three cut the values short at 800 px
            per = -(-len(columns) // 2)  # down each column in the table's order, as Tab moves
            for i, column in enumerate(columns):
                with grid[i // per]:
                    if column not in codes:
                        row[column] = [
                            st.number_input(
                                summary.md(column),
                                value=None,
                                format="%g",
                                placeholder="missing",
                                key=fields[column],
                            )
                        ]
                    else:
                        row[column] = [
                            st.selectbox(
                                summary.md(column),
                                [None, *codes[column]],
                                format_func=lambda v: "(missing)" if v is None else summary.plain(v),
                                key=fields[column],
                            )
                        ]
            if st.form_submit_button("Predict", type="primary"):
                if all(v == [None] for v in row.values()):
                    st.warning("Every field is empty: fill in at least one value, or paste a row above.")
                else:
                    (pred,) = model.predict_table(row)
                    if pred.value is not None:
                        st.metric(f"Predicted {summary.md(target or 'value')}", summary.number(pred.value, 4))
                    else:
                        show_top(pred)
                    st.caption(f"{model.last_latency_ms:.2f} ms on {model.provider}")
                    if run.dataset_id is not None:
                        why.row(run.id, {column: values[0] for column, values in row.items()})
    with many:
        upload = st.file_uploader(
            "CSV with the feature columns",
            type=["csv"],
            help=f"Columns: {', '.join(columns)}. With a {target} column too, the predictions are scored against it.",
        )
        if upload is not None:
            try:
                df = pd.read_csv(io.BytesIO(upload.getvalue()))
                preds = model.predict_table(
                    {c: df[c].astype(object).where(df[c].notna(), None).tolist() for c in df.columns}
                )
                if target and target in df.columns:
                    scores = summary.scores_against_target(df[target], preds, classification)
                    rows = int(scores.get("rows", 0))
                    if "accuracy" in scores:
                        st.markdown(
                            f"**Accuracy {summary.percent(scores['accuracy'])}** against the file's "
                            f"{summary.md(target)} column ({rows} rows)."
                        )
                    elif "rmse" in scores:
                        st.markdown(
                            f"**RMSE {summary.number(scores['rmse'])} · MAE {summary.number(scores['mae'])}** "
                            f"against the file's {summary.md(target)} column ({rows} rows)."
                        )
                show_batch(summary.table_predictions(df, preds, target, classification), "rows", model)
            except (RuntimeInputError, ValueError) as exc:
                st.error(summary.md(exc))
