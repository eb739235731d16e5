"""Home and Datasets as a user meets them: a sample's way to its run, an upload previewed and
checked before it is added, and a quality report without empty charts."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import jobs
from core.config import get_settings
from core.data.ingest import ingest_file, list_datasets
from core.summary import upload_limit_mb
from tests.conftest import train_here

ROOT = Path(__file__).resolve().parents[1]


def _page(name: str) -> AppTest:
    return AppTest.from_file(str(ROOT / "pages" / f"{name}.py"), default_timeout=60).run()


def _charts(at: AppTest) -> list:  # type: ignore[type-arg]
    return list(at.get("vega_lite_chart"))


def test_a_sample_added_from_home_links_to_its_run_and_counts_it(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run stays queued (conftest keeps in-process pages from starting a worker).
    # AppTest starts every run in Streamlit's old pages-folder mode, which page_actor leaves with a
    # rerun that would swallow the click; the real server leaves it once, at its first request.
    from streamlit.runtime.pages_manager import PagesManager

    init = PagesManager.__init__

    def router_only(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        init(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", router_only)
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60).run()
    assert not at.exception
    assert [m.value for m in at.metric][:2] == ["0", "0"]
    next(b for b in at.button if b.key == "sample-wine").click().run()
    assert not at.exception and not at.error
    (run,) = jobs.list_runs()
    assert run.status == "queued"
    assert f"run {run.id} queued" in at.success[0].value and "'Wine'" in at.success[0].value
    (link,) = at.get("page_link")
    assert link.proto.label == f"Watch run {run.id} learn" and link.proto.page == "train"
    assert [m.value for m in at.metric][:2] == ["1", "1"]  # counted without another click

    # A quick sample can be over before Train is opened: Train still says how it ended.
    train_here(run.id)
    at.switch_page("pages/train.py").run()
    assert not at.exception
    (ended,) = [s.value for s in at.success if f"Run {run.id} ·" in s.value]
    assert "Wine succeeded: best validation F1" in ended


def test_an_upload_is_previewed_before_it_is_added(home: Path, data_dir: Path) -> None:
    at = _page("datasets")
    (uploader,) = at.get("file_uploader")
    assert "MB" not in uploader.label  # the limit is the uploader's own line, shown once
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] == get_settings().max_upload_bytes // (1024 * 1024)
    # 500 MB everywhere; a larger setting (512 MB would print as "1GB") is offered as 500 MB.
    assert uploader.proto.max_upload_size_mb == 500
    assert [upload_limit_mb(n << 20, 4096) for n in (200, 512, 999, 1024, 2500)] == [
        200,
        500,
        500,
        1000,
        2000,
    ]
    assert any("Parquet" in c.value and "zip" in c.value and "refused" in c.value for c in at.caption)

    data = (data_dir / "diabetes.csv").read_bytes()
    uploader.set_value(("diabetes.csv", data, "text/csv")).run()
    assert not at.exception and not at.error and not at.warning
    assert any("Before adding: diabetes" in m.value for m in at.markdown)
    assert list(at.dataframe[0].value.columns)[-1] == "target"  # the chosen file, not a dataset
    next(b for b in at.button if b.label == "Add dataset").click().run()
    assert not at.exception
    (ds,) = list_datasets()
    assert f"Added dataset {ds.id}" in at.success[0].value
    assert not any("Before adding" in m.value for m in at.markdown)  # the uploader emptied


def test_the_same_file_twice_is_warned_and_added_only_on_purpose(home: Path, data_dir: Path) -> None:
    first = ingest_file(data_dir / "wine.csv")
    at = _page("datasets")
    at.get("file_uploader")[0].set_value(("wine.csv", (data_dir / "wine.csv").read_bytes(), "text/csv")).run()
    assert not at.exception
    (warning,) = at.warning
    assert f"already dataset {first.id} 'wine'" in warning.value
    add = next(b for b in at.button if b.label == "Add dataset")
    assert add.disabled
    next(c for c in at.checkbox if c.label == "Add it anyway").check().run()
    next(b for b in at.button if b.label == "Add dataset").click().run()
    assert not at.exception and len(list_datasets()) == 2


def test_a_clean_table_has_no_missing_values_chart(home: Path, data_dir: Path) -> None:
    ingest_file(data_dir / "wine.csv")
    at = _page("datasets")
    assert not at.exception
    assert any(m.value.startswith("No missing values") for m in at.markdown)
    assert len(_charts(at)) == 1  # class balance only


def test_missing_values_are_charted_per_column_that_has_some(home: Path, tmp_path: Path) -> None:
    table = tmp_path / "gaps.csv"
    table.write_text(
        "a,b,target\n" + "".join(f"{'' if i % 7 == 0 else i},{i % 5},{i % 2}\n" for i in range(60))
    )
    ingest_file(table)
    at = _page("datasets")
    assert not at.exception
    assert any(m.value.startswith("Missing values per column") for m in at.markdown)
    assert len(_charts(at)) == 2


def test_regression_target_statistics_are_a_table(home: Path, data_dir: Path) -> None:
    ingest_file(data_dir / "diabetes.csv")
    at = _page("datasets")
    assert not at.exception
    stats = at.dataframe[-1].value
    assert list(stats["statistic"]) == ["mean", "std", "min", "max"]
    assert not at.get("json")
