"""Datasets: upload, validation errors in plain words, preview, quality report, delete."""

import pandas as pd
import streamlit as st

from core import summary
from core.data.ingest import delete_dataset, ingest_upload, list_datasets, table_columns
from core.errors import AscentError

st.title("Datasets")

with st.container(border=True):
    st.subheader("Add a dataset")
    upload = st.file_uploader(
        "A table (CSV, TSV, Parquet) or a zip of images (one folder per class, or a CSV of path,label)",
        type=["csv", "tsv", "parquet", "zip"],
    )
    options: dict[str, str | None] = {}
    ready = upload is not None
    if upload is not None and not upload.name.lower().endswith(".zip"):
        try:
            columns, guess = table_columns(upload.name, upload.getvalue())
            options["target"] = st.selectbox("Column to predict", columns, index=columns.index(guess))
            choice = st.radio("Task", ["detect", "classification", "regression"], horizontal=True)
            options["task"] = None if choice == "detect" else f"tabular-{choice}"
        except AscentError as exc:
            st.error(str(exc))
            ready = False
    if upload is not None:
        options["name"] = st.text_input("Name", value=upload.name.rsplit(".", 1)[0]) or None
    if st.button("Add dataset", type="primary", disabled=not ready) and upload is not None:
        try:
            with st.spinner("Checking the data…"):
                ds = ingest_upload(upload.name, upload.getvalue(), **options)
            st.success(f"Added dataset {ds.id}: {ds.task}, {ds.n_items} items.")
        except AscentError as exc:
            st.error(str(exc))

datasets = list_datasets()
if not datasets:
    st.info("No datasets yet. Upload one above, or add a sample on the Home page.")
    st.stop()

st.dataframe(
    pd.DataFrame(
        [
            {
                "id": d.id,
                "name": d.name,
                "task": d.task,
                "items": d.n_items,
                "MB": round(d.bytes / 1e6, 2),
                "added": summary.when(d.created_at),
            }
            for d in datasets
        ]
    ),
    hide_index=True,
    width="stretch",
)
ds = st.selectbox("Dataset", datasets, format_func=summary.dataset_label)
report = ds.report

st.subheader("Preview")
if ds.task == "image-classification":
    for label, paths in summary.sample_images(ds).items():
        st.markdown(f"**{label}**")
        st.image([str(p) for p in paths], width=96)
else:
    st.dataframe(summary.preview_table(ds), width="stretch")

st.subheader("Quality report")
if "class_counts" in report:
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
if "missing_per_column" in report:
    missing = pd.Series(report["missing_per_column"], name="missing values")
    st.markdown(
        f"Missing values per column ({report['missing_cells']} cells); {report['duplicate_rows']} duplicate rows"
    )
    st.bar_chart(missing)
    if report.get("dropped_columns"):
        st.warning(
            "Columns left out: " + "; ".join(f"{c} ({r})" for c, r in report["dropped_columns"].items())
        )
if "target_stats" in report:
    st.write({"target": report["target"], **report["target_stats"]})

with st.expander("Delete this dataset"):
    st.caption("Its files go; its runs stay, without a dataset.")
    sure = st.checkbox(f"Yes, delete '{ds.name}'", key=f"confirm-delete-{ds.id}")
    if st.button("Delete", disabled=not sure, key=f"delete-{ds.id}"):
        try:
            delete_dataset(ds.id)
            st.success(f"Deleted dataset {ds.id}.")
            st.rerun()
        except AscentError as exc:
            st.error(str(exc))
