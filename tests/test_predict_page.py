"""The Predict page as people use it, in AppTest against real tiny runs: sorted top-k bars, a
regression result named by its target, a one-row form prefilled from the data (or a pasted line),
batch results scored against a target column, and several images at once."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from conftest import train_here
from streamlit.testing.v1 import AppTest

from core import jobs
from core.config import RunConfig
from core.data.ingest import ingest_file

ROOT = Path(__file__).resolve().parents[1]


def _predict_page(run_id: int) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / "predict.py"), default_timeout=60).run()
    at.selectbox[0].set_value(next(r for r in jobs.list_runs() if r.id == run_id)).run()
    assert not at.exception
    return at


def _train(*configs: RunConfig) -> list[int]:
    ids = [jobs.submit(cfg).id for cfg in configs]
    train_here(*ids)
    assert [jobs.get_run(i).status for i in ids] == ["succeeded"] * len(ids)
    return ids


def _bars(at: AppTest) -> list[tuple[str, float]]:
    """(label, probability) in the order the last top-k chart's data holds them, and its sort."""
    import pyarrow as pa

    # The last chart with layers (bars and their labels): a table row's explanation follows it.
    chart = next(c for c in reversed(at.get("vega_lite_chart")) if "layer" in json.loads(c.proto.spec))
    layers = json.loads(chart.proto.spec)["layer"]
    assert all(layer["encoding"]["y"]["sort"] == "-x" for layer in layers)  # drawn highest first
    (data,) = chart.proto.datasets
    frame = pa.ipc.open_stream(data.data.data).read_pandas()
    return list(zip(frame["label"], frame["probability"], strict=True))


def test_table_runs_prefill_paste_warn_sort_name_and_score(home: Path, tmp_path: Path) -> None:
    from core.data.samples import sklearn_csv

    wine_csv = sklearn_csv("wine", tmp_path / "wine.csv")
    diabetes = pd.read_csv(sklearn_csv("diabetes", tmp_path / "d.csv"))
    diabetes.rename(columns={"target": "progression"}).to_csv(tmp_path / "diabetes.csv", index=False)
    wine = ingest_file(wine_csv)
    wine_run, diabetes_run = _train(
        jobs.config_for(wine.id, epochs=3, name="wine"),
        jobs.config_for(ingest_file(tmp_path / "diabetes.csv").id, epochs=3, name="diabetes"),
    )

    # The form starts from a row the run validated on, named in a caption.
    at = _predict_page(wine_run)
    table = pd.read_csv(wine_csv)
    fields = {n.label.replace("\\", ""): n.value for n in at.number_input}
    assert list(fields) == [c for c in table.columns if c != "target"]
    assert all(v is not None for v in fields.values())
    (row,) = table[(table.drop(columns="target") == pd.Series(fields)).all(axis=1)].index
    assert any(f"Prefilled with row {row + 1} of dataset" in c.value for c in at.caption)

    # Predict: the top-k bars, the most probable first.
    at.button[0].click().run()
    assert not at.exception and not at.warning
    bars = _bars(at)
    assert [p for _, p in bars] == sorted((p for _, p in bars), reverse=True)
    assert any(m.value == f"### {bars[0][0]}" for m in at.markdown)

    # Every field emptied: a warning, and nothing predicted.
    for box in at.number_input:
        box.set_value(None)
    at.button[0].click().run()
    assert "Every field is empty" in at.warning[0].value
    assert not any("on CPUExecutionProvider" in c.value for c in at.caption)

    # A pasted CSV line fills the fields; a wrong one says what the model takes.
    first = table.drop(columns="target").iloc[5]
    at.text_input[0].set_value(",".join(str(v) for v in first)).run()
    assert [n.value for n in at.number_input] == pytest.approx(first.tolist(), rel=1e-6)
    at.text_input[0].set_value("1,2,3").run()
    assert "the line has 3 values, the model takes 13" in at.warning[0].value

    # A CSV of rows still holding the target: predictions first, accuracy above the table.
    at.file_uploader[0].set_value(("new.csv", table.head(30).to_csv(index=False).encode(), "text/csv")).run()
    assert not at.exception and not at.error
    out = at.dataframe[0].value
    assert list(out.columns[:2]) == ["predicted target", "probability"]
    assert list(out.columns[2:]) == list(table.columns)
    assert any(m.value.startswith("**Accuracy ") and "(30 rows)" in m.value for m in at.markdown)

    # Regression: the result is named by the target, the batch scored with RMSE and MAE.
    at = _predict_page(diabetes_run)
    at.button[0].click().run()
    assert not at.exception
    (metric,) = at.metric
    assert metric.label == "Predicted progression"
    patients = diabetes.rename(columns={"target": "progression"}).head(20).to_csv(index=False).encode()
    at.file_uploader[0].set_value(("patients.csv", patients, "text/csv")).run()
    assert at.dataframe[0].value.columns[0] == "predicted progression"
    assert any(m.value.startswith("**RMSE ") and "MAE" in m.value for m in at.markdown)


def test_several_images_predicted_at_once(home: Path, tmp_path: Path) -> None:
    from core.data.samples import fashion_mnist_zip

    z = fashion_mnist_zip(tmp_path / "f.zip", per_class=12, classes=("trouser", "bag", "sneaker"))
    (run,) = _train(jobs.config_for(ingest_file(z).id, model="small-cnn", image_size=32, epochs=1, workers=0))
    held = fashion_mnist_zip(tmp_path / "h.zip", per_class=2, classes=("trouser", "bag"), offset=700)
    with zipfile.ZipFile(held) as zf:
        images = [(Path(n).name, zf.read(n), "image/png") for n in zf.namelist() if n.endswith(".png")]
    assert len(images) == 4

    at = _predict_page(run)
    assert at.file_uploader[0].accept_multiple_files
    at.file_uploader[0].set_value([*images, ("broken.png", b"not an image", "image/png")]).run()
    assert not at.exception
    (error,) = at.error  # the one file that is no image says so in its card; the others predict
    assert "not a readable image" in error.value
    assert len(at.get("image")) == 4
    assert len(at.get("vega_lite_chart")) == 4  # one top-k per image
    assert sum(m.value.startswith("**") for m in at.markdown) == 4  # its label
    assert any(c.value.startswith("4 images in ") for c in at.caption)
    (download,) = at.get("download_button")
    assert "Download predictions" in download.proto.label
