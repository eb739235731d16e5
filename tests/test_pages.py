"""Every page in Streamlit's AppTest against a real database: empty, and with runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import _home, train_here, wait_for
from streamlit.testing.v1 import AppTest

from core import jobs
from core.data.ingest import ingest_file
from core.jobs import ensure_worker

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["home", "datasets", "train", "runs", "predict"]


def _page(name: str) -> AppTest:
    return AppTest.from_file(str(ROOT / "pages" / f"{name}.py"), default_timeout=60).run()


@pytest.mark.parametrize("name", PAGES)
def test_every_page_renders_on_an_empty_database(home: Path, name: str) -> None:
    at = _page(name)
    assert not at.exception
    assert at.title[0].value == name.capitalize() if name != "home" else at.title[0].value == "Ascent"


def test_router_shows_the_device_and_starts_a_worker(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs, "ensure_worker", ensure_worker)  # the real one (conftest makes it a no-op)
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60).run()
    assert not at.exception
    assert "Device: **CPU (no GPU visible)**" in " ".join(c.value for c in at.caption)
    wait_for(jobs.worker_alive, timeout=60)
    at.run()  # a rerun while the worker is alive starts no second one
    assert not at.exception
    from core import config
    from db import queries
    from db.session import session_scope

    config.database()
    with session_scope() as s:
        assert len(queries.alive_workers(session=s, within_s=300)) == 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[list[int]]:
    """Two finished wine runs and one diabetes run, trained by a real worker once for the
    module (the tests that read them change nothing the others read)."""
    with pytest.MonkeyPatch.context() as mp:
        for _ in _home(tmp_path_factory.mktemp("pages-trained"), mp, "sqlite"):
            wine = ingest_file(data_dir / "wine.csv")
            diabetes = ingest_file(data_dir / "diabetes.csv")
            ids = [
                jobs.submit(jobs.config_for(wine.id, epochs=3, name="wine fast")).id,
                jobs.submit(
                    jobs.config_for(wine.id, epochs=3, lr=0.01, model="linear", name="wine linear")
                ).id,
                jobs.submit(jobs.config_for(diabetes.id, epochs=3)).id,
            ]
            train_here(*ids)
            assert [jobs.get_run(i).status for i in ids] == ["succeeded"] * 3
            yield ids


def test_every_page_renders_with_runs(trained: list[int]) -> None:
    for name in PAGES:
        at = _page(name)
        assert not at.exception, name
        assert not at.error, name


def test_train_page_launches_a_run(home: Path, data_dir: Path) -> None:
    ds = ingest_file(data_dir / "iris.parquet")
    at = _page("train")
    at.number_input[0].set_value(4)
    at.text_input[0].set_value("from the page")
    at.button[0].click().run()
    assert not at.exception and "queued" in at.success[0].value
    (run,) = jobs.list_runs()
    assert run.name == "from the page" and run.dataset_id == ds.id and run.config["epochs"] == 4
    assert any(f"Run {run.id} · from the page" in m.value for m in at.markdown)


def test_runs_page_compares_and_shows_a_run(trained: list[int]) -> None:
    at = _page("runs")
    table = at.dataframe[0].value
    assert list(table["id"]) == sorted(trained, reverse=True)
    assert set(table["status"]) == {"succeeded"}
    at.multiselect[0].set_value(trained[:2]).run()
    assert not at.exception
    assert any("Compare 2 runs" in h.value for h in at.header)
    params = at.dataframe[2].value
    assert params.loc["model"].tolist() == ["linear", "mlp"] and params.loc["task"].nunique() == 1
    next(t for t in at.toggle if t.label == "Only differences").set_value(True).run()
    assert set(at.dataframe[2].value.index) == {"lr", "model", "name"}
    at.multiselect[0].set_value([trained[0]]).run()
    assert any(f"Run {trained[0]} · wine fast" in h.value for h in at.header)
    assert any("Confusion matrix" in s.value for s in at.subheader)
    assert any("Export check" in s.value for s in at.subheader)


def test_runs_page_filters_and_renames(trained: list[int]) -> None:
    at = _page("runs")
    at.text_input[0].set_value("linear").run()
    assert list(at.dataframe[0].value["name"]) == ["wine linear"]
    at.selectbox[0].set_value("tabular-regression").run()
    assert at.info[0].value == "No runs match."
    at = _page("runs")
    at.multiselect[0].set_value([trained[2]]).run()
    assert any("Predicted against true" in s.value for s in at.subheader)
    name_box = next(t for t in at.text_input if t.label == "Name")
    name_box.set_value("diabetes baseline")
    next(b for b in at.button if b.label == "Save").click().run()
    assert jobs.get_run(trained[2]).name == "diabetes baseline"


def test_predict_page_predicts_one_table_row(trained: list[int], data_dir: Path) -> None:
    at = _page("predict")
    at.selectbox[0].set_value(next(r for r in jobs.list_runs() if r.id == trained[0])).run()
    import pandas as pd

    first = pd.read_csv(data_dir / "wine.csv").iloc[0]
    for box in at.number_input:  # labels are column names with Markdown escaped (malic\_acid)
        box.set_value(float(first[box.label.replace("\\", "")]))
    at.button[0].click().run()
    assert not at.exception
    assert any(m.value.startswith("### ") for m in at.markdown)
    assert any("on CPUExecutionProvider" in c.value for c in at.caption)


@pytest.mark.parametrize(
    ("key", "task"),
    [
        ("wine", "tabular-classification"),
        ("bbc", "text-classification"),
        ("words", "audio-classification"),
        ("helpdesk", "text-generation"),
        ("orbly-speech", "speech-recognition"),
        ("apertium", "translation"),
    ],
)
def test_home_sample_adds_data_and_queues_a_run(home: Path, key: str, task: str) -> None:
    from core.data.samples import SAMPLES

    at = _page("home")
    next(b for b in at.button if b.key == f"sample-{key}").click().run()
    assert not at.exception and "queued" in at.success[0].value
    (run,) = jobs.list_runs()
    assert run.status == "queued" and run.task == task
    assert all(run.config[k] == v for k, v in SAMPLES[key].quick_start.items())


@pytest.fixture
def text_run(home: Path, tmp_path: Path) -> int:
    """A finished text-cnn run on BBC News openings, trained by a real worker."""
    from core.data.samples import bbc_news_csv

    ds = ingest_file(bbc_news_csv(tmp_path / "bbc.csv", per_class=30, chars=300), task="text-classification")
    run = jobs.submit(jobs.config_for(ds.id, model="text-cnn", epochs=6, name="bbc cnn"))
    train_here(run.id)
    assert jobs.get_run(run.id).status == "succeeded"
    return run.id


def test_text_pages_show_the_data_the_options_and_explain_a_prediction(text_run: int) -> None:
    at = _page("datasets")
    assert not at.exception and not at.error
    assert "sports" in at.dataframe[1].value["label"].tolist()  # texts per class
    assert any("Length in" in m.value for m in at.markdown)

    at = _page("train")
    labels = [n.label for n in at.number_input]
    assert {"Max tokens per text", "Frozen lower layers", "Gradient accumulation"} <= set(labels)

    at = _page("runs")
    at.multiselect[0].set_value([text_run]).run()
    assert not at.exception and not at.error
    assert any("Confusion matrix" in h.value for h in at.subheader)
    assert any("Export check" in h.value for h in at.subheader)

    at = _page("predict")
    assert not at.exception
    sentence = "The striker scored twice as the team won the cup final"
    at.text_area[0].set_value(sentence)
    at.button[0].click().run()
    assert not at.exception and not at.error
    assert any(m.value.startswith("### ") for m in at.markdown)
    assert any("on CPUExecutionProvider" in c.value for c in at.caption)
    (highlight,) = [h for h in at.get("html") if "ascent-attribution" in h.proto.body]
    import re

    assert re.sub(r"<[^>]+>", "", highlight.proto.body) == sentence  # the whole text, shaded
    assert highlight.proto.body.count("<span") >= 10  # one shaded span per token at least


def test_text_upload_offers_text_and_label_columns(home: Path) -> None:
    at = _page("datasets")
    assert any("JSON Lines" in u.label for u in at.get("file_uploader"))


def test_audio_pages_play_clips_and_predict_a_recorded_word(home: Path, tmp_path: Path) -> None:
    import zipfile

    from core.data.samples import spoken_words_zip

    z = spoken_words_zip(
        tmp_path / "w.zip",
        words=("yes", "no"),
        voices=("en-us", "en-gb", "en-029", "en-us+f3"),
        speeds=(150,),
    )
    ds = ingest_file(z)
    run = jobs.submit(jobs.config_for(ds.id, epochs=4, name="words"))
    train_here(run.id)
    assert jobs.get_run(run.id).status == "succeeded"

    at = _page("datasets")
    assert not at.exception and not at.error
    assert len(at.get("audio")) == 4  # two clips of each word
    assert any("Durations" in m.value for m in at.markdown)
    at = _page("train")
    assert {"Clip length (s)", "Mel bands"} <= {n.label for n in at.number_input}
    at = _page("runs")
    at.multiselect[0].set_value([run.id]).run()
    assert not at.exception and not at.error
    assert any("Confusion matrix" in h.value for h in at.subheader)

    with zipfile.ZipFile(z) as zf:
        clip = zf.read(next(n for n in zf.namelist() if "/yes/" in n and n.endswith(".wav")))
    at = _page("predict")
    assert at.radio[0].options == ["Upload", "Microphone"]
    # AppTest cannot upload files; the page's own calls are what it runs on an upload.
    from core.models.audio import log_mel
    from core.runtime import Predictor, prepare_clip
    from core.summary import artifact_paths, spectrogram_image

    model = Predictor(artifact_paths(run.id)["onnx"])
    rate, samples = model.audio
    picture = spectrogram_image(log_mel(prepare_clip(clip, rate, samples), rate, 64))
    assert picture.shape == (64 * 4, (1 + samples // 160) * 4, 3) and picture.std() > 10
    (pred,) = model.predict_audio([clip])
    assert set(pred.probabilities) == {"no", "yes"}


def test_predict_page_takes_columns_whose_names_differ_only_in_spacing(home: Path, tmp_path: Path) -> None:
    """Two columns whose labels read alike once shown ("a b", "a  b") still get a field each."""
    table = tmp_path / "spaced.csv"
    table.write_text("a b,a  b,target\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(40)))
    run_id = jobs.submit(jobs.config_for(ingest_file(table).id, epochs=2)).id
    train_here(run_id)
    assert jobs.get_run(run_id).status == "succeeded"
    at = _page("predict")
    assert not at.exception and not at.error
    assert len(at.number_input) == 2
    at.button[0].click().run()
    assert not at.exception and any("on CPUExecutionProvider" in c.value for c in at.caption)
