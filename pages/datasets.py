"""Datasets: upload (previewed and checked before it is added), validation errors in plain words,
preview, quality report, delete."""

import pandas as pd
import streamlit as st

from core import overlays, summary
from core.access import Action, can
from core.config import get_settings
from core.data.ingest import (
    delete_dataset,
    get_dataset,
    guess_upload,
    ingest_upload,
    list_datasets,
    same_file,
)
from core.data.translation import find_columns
from core.errors import AscentError
from pages.studio import doctor as doctor_view
from pages.studio import notice
from pages.studio.session import page_actor

actor = page_actor()
# One limit, shown once (the uploader's own line) and enforced by the browser before sending.
upload_mb = summary.upload_limit_mb(get_settings().max_upload_bytes, st.get_option("server.maxUploadSize"))
st.title("Datasets")
notice.show()

TASK_CHOICES = {
    "detect (table)": None,
    "table: classification": "tabular-classification",
    "table: regression": "tabular-regression",
    "text classification": "text-classification",
    "text generation (instructions)": "text-generation",
    "translation (source and target)": "translation",
}
_UPLOADER = "datasets-upload-round"  # bumped after an add, so the uploader empties


def add_form() -> None:
    """Pick a file, see what it holds and what the studio makes of it, then add it."""
    st.subheader("Add a dataset")
    if not can(actor, Action.UPLOAD):
        st.caption(f"You are a {actor.role.value}: a member or admin adds datasets.")
        return
    upload = st.file_uploader(
        "A table (CSV, TSV, Parquet, JSON Lines) with a column to predict, a text column or instructions "
        "(prompt and response, or chat messages) or sentence pairs to translate, or a zip of "
        "class folders of images, of .txt files or of WAV/FLAC clips, of clips with transcripts, "
        "or of images with boxes or masks",
        type=summary.UPLOAD_TYPES,
        max_upload_size=upload_mb,
        key=f"upload-{st.session_state.get(_UPLOADER, 0)}",
    )
    st.caption(f"Accepted: {summary.UPLOAD_TYPES_IN_WORDS}.")
    if upload is None:
        return
    options: dict[str, str | None] = {}
    ready = True
    st.markdown(f"**Before adding: {summary.md(upload.name)}**, what it holds")
    try:
        guess = guess_upload(upload.name, upload.getvalue())
        st.dataframe(summary.upload_preview(upload.name, upload.getvalue()), hide_index=True, height=248)
        if upload.name.lower().endswith(".zip"):
            kinds = {
                "image-classification": "images",
                "text-classification": "texts (.txt)",
                "audio-classification": "audio clips (WAV, FLAC)",
                "speech-recognition": "clips with transcripts (metadata.csv or LibriSpeech)",
                "object-detection": "images with boxes (COCO, YOLO, VOC)",
                "semantic-segmentation": "images with masks",
            }
            options["task"] = st.radio(
                "The zip holds",
                list(kinds),
                index=list(kinds).index(guess.task or "image-classification"),
                format_func=kinds.__getitem__,
                horizontal=True,
            )
        else:
            labels = list(TASK_CHOICES)
            current = next(k for k, v in TASK_CHOICES.items() if v == guess.task)
            choice = st.radio("Task", labels, index=labels.index(current), horizontal=True)
            options["task"] = TASK_CHOICES[choice]
            columns = guess.columns
            if options["task"] == "translation":
                left, right = st.columns(2)
                found = find_columns(columns) or (columns[0], columns[min(1, len(columns) - 1)])
                options["source_column"] = left.selectbox(
                    "Source column (to translate)",
                    columns,
                    index=columns.index(found[0]),
                    format_func=summary.plain,
                )
                rest = [c for c in columns if c != options["source_column"]] or columns
                options["target_column"] = right.selectbox(
                    "Target column (its translation)",
                    rest,
                    index=rest.index(found[1]) if found[1] in rest else 0,
                    format_func=summary.plain,
                )
            elif options["task"] == "text-generation":
                st.caption(
                    "Instructions: prompt and response columns, a messages column of chat turns, "
                    "or one text column."
                )
            elif options["task"] == "text-classification":
                left, right = st.columns(2)
                text_guess = guess.text_column or columns[0]
                options["text_column"] = left.selectbox(
                    "Text column", columns, index=columns.index(text_guess), format_func=summary.plain
                )
                rest = [c for c in columns if c != options["text_column"]]
                label_guess = guess.target if guess.target in rest else rest[0]
                options["target"] = right.selectbox(
                    "Label column", rest, index=rest.index(label_guess), format_func=summary.plain
                )
            else:
                target_guess = guess.target if guess.target in columns else columns[-1]
                options["target"] = st.selectbox(
                    "Column to predict",
                    columns,
                    index=columns.index(target_guess),
                    format_func=summary.plain,
                )
    except AscentError as exc:
        st.error(summary.md(exc))
        ready = False
    twin = same_file(upload.getvalue())
    if twin is not None:
        st.warning(
            f"This file is already dataset {twin.id} '{summary.md(twin.name)}' (the same bytes). "
            "Adding it again makes a second copy.",
            icon=":material/content_copy:",
        )
        ready = ready and st.checkbox("Add it anyway", key=f"twin-{twin.id}")
    options["name"] = st.text_input("Name", value=upload.name.rsplit(".", 1)[0]) or None
    if st.button("Add dataset", type="primary", disabled=not ready):
        try:
            with st.spinner("Checking the data…"):
                added = ingest_upload(upload.name, upload.getvalue(), actor=actor, **options)
        except AscentError as exc:
            st.error(summary.md(exc))
        else:
            st.session_state[_UPLOADER] = st.session_state.get(_UPLOADER, 0) + 1
            st.session_state["datasets-chosen"] = added.id
            notice.after_rerun(
                f"Added dataset {added.id} '{summary.md(added.name)}': {added.task}, {added.n_items} {summary.ITEM_WORDS.get(added.task, 'rows')}."
            )


with st.container(border=True):
    add_form()

datasets = list_datasets()
if not datasets:
    st.info("No datasets yet. Upload one above, or add a sample on the Home page.")
    st.stop()

st.header("Your datasets", divider="gray")

st.dataframe(
    pd.DataFrame(
        [
            {
                "id": d.id,
                "name": d.name,
                "version": d.version,
                "task": d.task,
                "items": d.n_items,
                "MB": round(d.bytes / 1e6, 2),
                "added": summary.when(d.created_at),
                "by": d.created_by or "(no sign-in)",
            }
            for d in datasets
        ]
    ),
    hide_index=True,
    width="stretch",
)
# The dataset just added is shown first; a choice whose dataset is gone falls back to the first.
if "datasets-chosen" in st.session_state:
    chosen = st.session_state.pop("datasets-chosen")
    st.session_state["datasets-tab"] = "Preview and quality"  # a new dataset opens on its preview
    st.session_state["datasets-choice"] = next((d for d in datasets if d.id == chosen), datasets[0])
if st.session_state.get("datasets-choice") not in datasets:
    st.session_state.pop("datasets-choice", None)
choice = st.selectbox("Dataset", datasets, format_func=summary.dataset_label, key="datasets-choice")
ds = get_dataset(choice.id)
report = ds.report

# Keyed, so the chosen tab stays chosen when the page above it changes (a notice goes); only
# the chosen tab's content runs.
overview, doctor_tab = st.tabs(["Preview and quality", "Doctor"], key="datasets-tab", on_change="rerun")
with overview:
    if overview.open:
        st.subheader(f"Dataset {ds.id} · {summary.md(summary.dataset_name(ds))}: preview")
        if "revision" in report:
            change = report["revision"]
            st.caption(
                f"Version {ds.version}, made from dataset {change['from']}: "
                f"{summary.counted(len(change['excluded']), 'item')} excluded, "
                f"{len(change['relabelled'])} relabelled "
                "(item numbers below are this version's)."
            )
        if ds.task == "image-classification":
            for label, paths in summary.sample_images(ds).items():
                st.markdown(f"**{summary.md(label)}**")
                st.image([str(p) for p in paths], width=96)
        elif ds.task == "audio-classification":
            for label, paths in summary.sample_clips(ds).items():
                st.markdown(f"**{summary.md(label)}**")
                for column, clip in zip(st.columns(len(paths)), paths, strict=True):
                    column.audio(str(clip))
        elif ds.task == "speech-recognition":
            st.caption(f"Layout: {summary.md(report['layout'])}; the first clips with their transcripts.")
            for clip, transcript in summary.sample_transcripts(ds):
                left, right = st.columns([2, 3], vertical_alignment="center")
                left.audio(str(clip))
                right.markdown(summary.md(transcript))
        elif ds.task in ("object-detection", "semantic-segmentation"):
            drawn = "box outlined" if ds.task == "object-detection" else "mask tinted"
            st.caption(f"Every {drawn} over its image: a few images per class.")
            for label, pictures in overlays.scene_preview(ds).items():
                st.markdown(f"**{summary.md(label)}**")
                st.image(pictures, width=160)
        elif ds.task == "text-generation":
            st.caption(
                f"Layout: {summary.md(report['layout'])}; the first examples as the model learns them."
            )
            st.dataframe(pd.DataFrame(report["examples_shown"]), hide_index=True, width="stretch")
        elif ds.task == "translation":
            langs = report["languages"]
            named = (
                f" ({langs['source']} to {langs['target']})" if langs["source"] and langs["target"] else ""
            )
            st.caption(
                f"Source column '{summary.md(report['columns']['source'])}', target column "
                f"'{summary.md(report['columns']['target'])}'{named}: the first pairs."
            )
            st.dataframe(pd.DataFrame(report["pairs_shown"]), hide_index=True, width="stretch")
        elif ds.task == "text-classification":
            st.caption(
                f"Text column '{summary.md(ds.schema['text_column'])}', "
                f"label column '{summary.md(ds.schema['label_column'])}'"
            )
            st.dataframe(summary.sample_texts(ds), hide_index=True, width="stretch")
        else:
            st.dataframe(summary.preview_table(ds), width="stretch")

        st.subheader(f"Dataset {ds.id} · {summary.md(summary.dataset_name(ds))}: quality report")
        if ds.task == "object-detection":
            left, right = st.columns(2)
            left.markdown(f"Boxes per class ({report['boxes']} boxes)")
            left.bar_chart(pd.Series(report["class_counts"], name="boxes"))
            right.markdown("Box sizes (small under 32×32 px, large over 96×96)")
            sizes = pd.DataFrame(
                {"size": list(report["box_sizes"]), "boxes": list(report["box_sizes"].values())}
            )
            right.bar_chart(sizes, x="size", y="boxes", sort=False)
            st.write(
                {
                    "images without objects (kept as background)": report["background_images"],
                    "objects per image": report["objects_per_image"],
                    "box side / image side": report["box_relative_side"],
                    "crowd boxes (not trained on)": report["crowd_boxes"],
                    "unreadable (left out)": report["unreadable"],
                    "width": report["width"],
                    "height": report["height"],
                }
            )
        elif ds.task == "semantic-segmentation":
            left, right = st.columns(2)
            left.markdown("Share of labelled pixels per class")
            left.bar_chart(pd.Series(report["class_pixel_share"], name="pixels"))
            right.markdown("Images holding each class")
            right.bar_chart(pd.Series(report["class_counts"], name="images"))
            st.write(
                {
                    "ignored pixels (255)": report["ignored_pixel_share"],
                    "images with background only": report["background_only_images"],
                    "unreadable (left out)": report["unreadable"],
                    "width": report["width"],
                    "height": report["height"],
                }
            )
        elif ds.task == "text-generation":
            left, right = st.columns(2)
            left.markdown(f"Length in {report['length_unit']} (median {report['length_tokens']['median']:g})")
            left.bar_chart(summary.length_histogram(report))
            right.write(
                {
                    "examples": report["examples"],
                    "left out": report["left_out"] or "none",
                    "exact duplicates": report["duplicate_examples"],
                    "turns per example": report["turns"],
                    f"over {report['context']} tokens (left out of a run unless its context is raised)": report[
                        "over_context"
                    ],
                }
            )
        elif ds.task == "translation":
            left, right = st.columns(2)
            words = report["length_words"]
            left.markdown(
                f"Words per sentence (median {words['source']['median']:g} in the source, "
                f"{words['target']['median']:g} in the target)"
            )
            left.bar_chart(summary.pair_length_histogram(report), stack=False)
            right.write(
                {
                    "pairs": report["pairs"],
                    "left out": report["left_out"] or "none",
                    "exact duplicate pairs": report["duplicate_pairs"],
                    "target same as source (untranslated?)": report["untranslated"],
                    "lengths over 3x apart (misaligned?)": report["misaligned"],
                }
            )
            if report["misaligned_shown"]:
                st.markdown("Pairs whose lengths look misaligned")
                st.dataframe(pd.DataFrame(report["misaligned_shown"]), hide_index=True, width="stretch")
        elif ds.task == "speech-recognition":
            left, right = st.columns(2)
            left.markdown(
                f"Durations (median {report['seconds']['median']:.2f} s; {report['minutes']:g} minutes in all)"
            )
            left.bar_chart(summary.duration_histogram(report))
            words = report["words"]
            right.write(
                {
                    "words": f"{words['total']} in all, median {words['median']:g} per clip, {words['vocabulary']} different",
                    "words per second (median)": report["words_per_second"]["median"],
                    "words per second unlike speech (wrong transcript?)": report["odd_rate"],
                    "left out": report["left_out"] or "none",
                }
            )
            st.write(
                {
                    "clips without a transcript (left out)": report["untranscribed"],
                    "rows whose clip is missing (left out)": report["missing_clips"],
                    "sample rates (Hz: clips)": report["sample_rates"],
                    "unreadable (left out)": report["unreadable"],
                    f"over {report['max_clip_seconds']:g} s (left out)": report["too_long"],
                    "silent clips": report["silent"],
                    "clipped clips": report["clipped"],
                }
            )
        elif "class_counts" in report:
            left, right = st.columns(2)
            left.markdown(f"Class balance (imbalance ratio {report['imbalance_ratio']})")
            left.bar_chart(pd.Series(report["class_counts"], name="items"))
            if ds.task == "image-classification":
                right.markdown("Files")
                right.write(
                    {
                        "unreadable (left out)": report["unreadable"],
                        "exact duplicates": report["duplicate_images"],
                        "same image in several classes": report["cross_class_duplicates"],
                        "width": report["width"],
                        "height": report["height"],
                        "colour modes": report["modes"],
                    }
                )
            if ds.task == "audio-classification":
                right.markdown(
                    f"Durations (median {report['seconds']['median']:.2f} s; runs use clips of "
                    f"{ds.schema['clip_seconds']:g} s)"
                )
                right.bar_chart(summary.duration_histogram(report))
                st.write(
                    {
                        "sample rates (Hz: clips)": report["sample_rates"],
                        "channels (count: clips)": report["channels"],
                        "unreadable (left out)": report["unreadable"],
                        f"over {report.get('max_clip_seconds', 60):g} s (left out)": report.get(
                            "too_long", {}
                        ),
                        "silent clips": report["silent"],
                        "clipped clips": report["clipped"],
                    }
                )
            if ds.task == "text-classification":
                right.markdown(
                    f"Length in {report['length_unit']} (median {report['length_tokens']['median']:g})"
                )
                right.bar_chart(summary.length_histogram(report))
                st.write(
                    {
                        "examples": report["examples"],
                        "empty texts (left out)": report["empty_texts"],
                        "missing labels (left out)": report["missing_labels"],
                        "exact duplicates": report["duplicate_texts"],
                        "duplicates with conflicting labels": report["conflicting_duplicates"],
                    }
                )
                if report["conflict_examples"]:
                    st.warning("Same text, different labels (label errors?)")
                    st.dataframe(pd.DataFrame(report["conflict_examples"]), hide_index=True, width="stretch")
        if "missing_per_column" in report:
            missing = summary.missing_values(report)
            duplicates = f"{report['duplicate_rows']} duplicate rows"
            if missing.empty:
                st.markdown(f"No missing values; {duplicates}")
            else:
                st.markdown(f"Missing values per column ({report['missing_cells']} cells); {duplicates}")
                st.bar_chart(missing)
            if report.get("dropped_columns"):
                st.warning(
                    "Columns left out: "
                    + summary.md("; ".join(f"{c} ({r})" for c, r in report["dropped_columns"].items()))
                )
        if "target_stats" in report:
            st.markdown(f"Target '{summary.md(report['target'])}'")
            st.dataframe(summary.target_stats_table(report), hide_index=True, width=320)

        if can(actor, Action.EDIT, ds.created_by):
            with st.expander("Delete this dataset"):
                st.caption("Its files go; its runs stay, without a dataset.")
                sure = st.checkbox(f"Yes, delete '{summary.md(ds.name)}'", key=f"confirm-delete-{ds.id}")
                if st.button("Delete", disabled=not sure, key=f"delete-{ds.id}"):
                    try:
                        delete_dataset(ds.id, actor=actor)
                        notice.after_rerun(f"Deleted dataset {ds.id} ({summary.md(ds.name)}).")
                    except AscentError as exc:
                        st.error(summary.md(exc))


if doctor_tab.open:
    with doctor_tab:
        doctor_view.show(ds, actor)
