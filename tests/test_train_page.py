"""The Train page in AppTest: the settings fitted to the data shown before launch and used by
the run, the time budget field, checks before queueing, and how a followed run ended."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import jobs
from core.data.ingest import ingest_file
from core.data.samples import bbc_news_csv, fashion_mnist_zip
from db.models import RunStatus

ROOT = Path(__file__).resolve().parents[1]


def _train_page() -> AppTest:
    return AppTest.from_file(str(ROOT / "pages" / "train.py"), default_timeout=60).run()


@pytest.fixture
def clothes(home: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    return ingest_file(fashion_mnist_zip(tmp_path / "c.zip", per_class=8, classes=("trouser", "bag")))


def _plain(markdown: str) -> str:
    """Text shown as Markdown, without its escapes."""
    return markdown.replace("\\", "").replace("\u2060", "")


def _box(at: AppTest, label: str):  # type: ignore[no-untyped-def]
    return next(w for w in [*at.number_input, *at.text_input] if w.label == label)


def test_fitted_settings_are_shown_and_used(clothes) -> None:  # type: ignore[no-untyped-def]
    at = _train_page()
    assert not at.exception
    fitted = next(m.value for m in at.markdown if "Fitted to your data" in m.value)
    assert (
        "Image size: **64 px**" in fitted and "about 28 px" in fitted and "Time budget: **100 s**" in fitted
    )
    assert _box(at, "Image size (px)").value == 64 and _box(at, "Batch size").value == 16
    assert _box(at, "Time budget (s)").value == "auto"
    flips = next(c for c in at.checkbox if c.label == "Horizontal flips")
    assert flips.value is False
    _box(at, "Time budget (s)").set_value("45")
    assert _box(at, "Processes").value == 1
    _box(at, "Processes").set_value(3)  # 16 does not split over 3: refused in one line
    next(b for b in at.button if b.label == "Launch").click().run()
    assert _plain(at.error[0].value) == (
        "a batch of 16 does not split over 3 processes; give a batch size that is a multiple of 3"
    )
    assert not jobs.list_runs()
    _box(at, "Processes").set_value(2)
    next(b for b in at.button if b.label == "Launch").click().run()
    assert not at.exception and "queued" in at.success[0].value
    (run,) = jobs.list_runs()
    cfg = run.config
    assert (cfg["image_size"], cfg["batch_size"], cfg["flip"], cfg["budget_s"], cfg["head_first"]) == (
        64, 16, False, 45, True,
    )  # fmt: skip
    assert cfg["processes"] == 2 and cfg["fit_image_size"] is True  # 64 px left as fitted


def test_a_bad_budget_and_a_missing_model_are_refused_before_queueing(home: Path, tmp_path: Path) -> None:
    ingest_file(bbc_news_csv(tmp_path / "n.csv", per_class=6, chars=120), task="text-classification")
    at = _train_page()
    _box(at, "Time budget (s)").set_value("soon")
    next(b for b in at.button if b.label == "Launch").click().run()
    assert "'soon' is no time budget" in _plain(at.error[0].value) and not jobs.list_runs()

    model = next(s for s in at.selectbox if s.label == "Model")
    assert model.options[1].startswith("hf-transformer")
    model.select_index(1).run()
    next(b for b in at.button if b.label == "Launch").click().run()
    assert "give the Hugging Face model" in _plain(at.error[0].value) and not jobs.list_runs()


def test_a_followed_run_says_how_it_ended(clothes, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    asked: list[bool] = []
    monkeypatch.setattr(jobs, "ensure_worker", lambda grace_s=60.0: asked.append(True) or False)
    at = _train_page()
    assert not asked  # nothing waits
    _box(at, "Epochs").set_value(1)
    next(b for b in at.button if b.label == "Launch").click().run()
    (run,) = jobs.list_runs()
    assert asked  # a run waits: the page makes sure a worker will take it
    assert jobs.claim("a test worker") is not None  # running now, as a worker would have it
    jobs.finish(run.id, RunStatus.FAILED, "out of memory on the device\ntraceback lines")
    at.run()
    assert not at.exception
    said = [_plain(e.value) for e in at.error]
    assert any(f"Run {run.id}" in e and "failed: out of memory on the device" in e for e in said), said
    assert not any("traceback lines" in e for e in said)


def test_a_sweep_from_the_form_queues_its_first_trials(home: Path, data_dir: Path) -> None:
    wine = ingest_file(data_dir / "wine.csv")
    at = _train_page()
    _box(at, "Search space").set_value("lr=1e-3..1e-2 log; colour=red,blue")
    next(b for b in at.button if b.label == "Start sweep").click().run()
    assert "'colour' is not a setting a sweep varies" in _plain(at.error[0].value) and not jobs.list_runs()

    _box(at, "Search space").set_value("lr=1e-3..1e-2 log; batch_size=16,32")
    _box(at, "Trials").set_value(3)
    _box(at, "At once").set_value(2)
    _box(at, "Epochs per trial").set_value(2)
    next(b for b in at.button if b.label == "Start sweep").click().run()
    assert not at.exception and any("Sweep 1 queued: 2 trial run(s)" in _plain(s.value) for s in at.success)
    runs = jobs.list_runs()
    assert len(runs) == 2 and all(r.tags == ["sweep:1"] and r.config["epochs"] == 2 for r in runs)
    assert all(r.dataset_id == wine.id and 1e-3 <= r.config["lr"] <= 1e-2 for r in runs)


def test_a_detector_starts_from_a_hugging_face_repo(home: Path, tmp_path: Path) -> None:
    from core.data import scenes

    ingest_file(scenes.detection_zip(tmp_path / "boxes.zip", 12, size=64, seed=4))
    at = _train_page()
    weights = next(s for s in at.selectbox if s.label == "Initial weights")
    assert weights.options == ["default", "none"]
    _box(at, "Epochs").set_value(1)
    _box(at, "Or from a Hugging Face repo").set_value("../boxes")
    next(b for b in at.button if b.label == "Launch").click().run()
    assert "'hub:../boxes' names no Hugging Face repo; give hub:ORG/NAME" in _plain(at.error[0].value)
    assert not jobs.list_runs()
    _box(at, "Or from a Hugging Face repo").set_value(" someone/boxes ")
    next(b for b in at.button if b.label == "Launch").click().run()
    assert not at.exception and "queued" in at.success[0].value
    (run,) = jobs.list_runs()
    assert run.config["weights"] == "hub:someone/boxes" and run.task == "object-detection"
