"""Pages run in Streamlit's AppTest against a real database."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from core import jobs
from core.data.ingest import ingest_file

ROOT = Path(__file__).resolve().parents[1]


def test_router_and_empty_runs_page(home: Path) -> None:
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60).run()
    assert not at.exception
    assert at.title[0].value == "Runs"
    assert "No runs yet" in at.info[0].value


def test_runs_page_lists_runs_from_the_database(home: Path, data_dir: Path) -> None:
    ds = ingest_file(data_dir / "wine.csv")
    first = jobs.submit(jobs.config_for(ds.id, epochs=2))
    second = jobs.submit(jobs.config_for(ds.id, model="linear", name="linear baseline"))
    jobs.cancel(second.id)
    at = AppTest.from_file(str(ROOT / "pages" / "runs.py"), default_timeout=60).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["id"]) == [second.id, first.id]
    assert list(table["status"]) == ["cancelled", "queued"]
    assert list(table["name"]) == ["linear baseline", "mlp-wine"]
    assert set(table["dataset"]) == {"wine"}
