"""The Runs page as a user reads it: the duration sort, metric names, the table's columns and
gaps, comparison charts, the confusion matrix, and one download per file. Two real wine runs
are trained once for the module; the sort runs on made-up timestamps, on each database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import _home
from streamlit.testing.v1 import AppTest

from core import bundle, jobs, summary
from core.data.ingest import ingest_file
from core.worker import Worker

ROOT = Path(__file__).resolve().parents[1]


def _page() -> AppTest:
    return AppTest.from_file(str(ROOT / "pages" / "runs.py"), default_timeout=60).run()


def test_duration_sorts_by_how_long_runs_ran(any_home: Path, data_dir: Path) -> None:
    """Finish order and duration order differ here; the sort follows durations (a run that
    never started last, both ways), in SQL on SQLite and PostgreSQL alike."""
    from sqlalchemy import update

    from db.models import Run
    from db.session import session_scope

    ds = ingest_file(data_dir / "wine.csv")
    t0 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    spans = {"long": (0, 600), "middle": (540, 660), "short": (300, 360.5), "queued": None}
    ids = {name: jobs.submit(jobs.config_for(ds.id, name=name)).id for name in spans}
    with session_scope() as s:
        for name, span in spans.items():
            if span is not None:
                start, end = (t0 + timedelta(seconds=x) for x in span)
                s.execute(
                    update(Run)
                    .where(Run.id == ids[name])
                    .values(status="succeeded", started_at=start, finished_at=end, heartbeat_at=end)
                )
    runs = jobs.list_runs(sort="duration", descending=True)
    assert [r.name for r in runs] == ["long", "middle", "short", "queued"]
    assert [summary.duration_s(r) for r in runs] == [600.0, 120.0, 60.5, None]
    assert [r.name for r in jobs.list_runs(sort="duration", descending=False)] == [
        "short",
        "middle",
        "long",
        "queued",
    ]

    at = _page()
    next(s for s in at.selectbox if s.label == "Sort by").set_value("duration").run()
    table = at.dataframe[0].value
    assert list(table["name"]) == ["long", "middle", "short", "queued"]
    assert list(table["duration (s)"].fillna(-1)) == [600.0, 120.0, 60.5, -1]


@pytest.fixture(scope="module")
def wine_runs(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[list[int]]:
    """Two finished wine runs (an MLP and a linear model); the first has a certificate whose
    files are the run's checkpoint and ONNX export, as a real measurement records them."""
    with pytest.MonkeyPatch.context() as mp:
        for _ in _home(tmp_path_factory.mktemp("runs-page"), mp, "sqlite"):
            ds = ingest_file(data_dir / "wine.csv")
            ids = [
                jobs.submit(jobs.config_for(ds.id, epochs=3, name="wine mlp")).id,
                jobs.submit(jobs.config_for(ds.id, epochs=2, model="linear", name="wine linear")).id,
            ]
            Worker(poll_s=0.1, idle_exit_s=0.3).run()
            assert [jobs.get_run(i).status for i in ids] == ["succeeded"] * 2
            _certify_without_timing(ids[0])
            yield ids


def _certify_without_timing(run_id: int) -> None:
    from db import queries
    from db.session import session_scope

    folder = jobs.run_dir(run_id)
    row = {"batch": 1, "p50_ms": 0.03, "p95_ms": 0.05, "peak_mb": 700.0}
    with session_scope() as s:
        for variant, file in (("pytorch", "best.safetensors"), ("fp32", "model.onnx")):
            queries.save_export(
                session=s,
                run_id=run_id,
                variant=variant,
                path=str(folder / file),
                bytes=(folder / file).stat().st_size,
                status="ok",
                method=variant,
                max_abs_diff=0.0,
                top1_agreement=1.0,
                metric_name="accuracy",
                metric_value=0.97,
                metric_change=0.0,
                n_samples=36,
                latency_ms=0.03,
                measurements=[
                    {**row, "provider": "pytorch-cpu" if variant == "pytorch" else "CPUExecutionProvider"}
                ],
            )


def _no_none_shown(at: AppTest) -> None:
    """Every table shows a gap as "—", and no cell holds the words None, nan or null."""
    for frame in at.dataframe:
        assert frame.proto.placeholder == "—"
        cells = frame.value.astype(str).to_numpy().ravel().tolist() + [str(i) for i in frame.value.index]
        assert not {"None", "nan", "null"} & set(cells), cells


def test_the_table_names_metrics_counts_runs_and_shows_no_none(wine_runs: list[int]) -> None:
    at = _page()
    assert not at.exception and not at.error
    assert at.caption[0].value.startswith("2 runs ·")
    table = at.dataframe[0]
    assert set(table.value["main metric"]) == {"validation F1 (macro)"}
    shown = list(table.proto.column_order)
    assert shown[:2] == ["id", "name"] and {"task", "tags", "size (MB)"}.isdisjoint(shown)  # fits 1400 px
    _no_none_shown(at)
    columns = next(m for m in at.multiselect if m.label == "Columns")
    columns.set_value([*columns.value, "task"]).run()
    assert "task" in at.dataframe[0].proto.column_order

    at.text_input[0].set_value("linear").run()
    assert at.caption[0].value.startswith("1 run ·")


def test_comparing_two_runs_colours_each_run_and_names_the_metrics(wine_runs: list[int]) -> None:
    import json

    at = _page()
    at.multiselect[0].set_value(wine_runs).run()
    assert not at.exception and not at.error
    curve = next(s for s in at.selectbox if s.label == "Curve")
    assert (
        curve.value == "val_loss" and "validation loss" in curve.options and "val_loss" not in curve.options
    )
    spec = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    assert spec["encoding"]["color"]["field"] == "run"
    assert spec["encoding"]["color"]["scale"]["scheme"] == "tableau10"  # a hue per run
    assert spec["encoding"]["color"]["legend"]["orient"] == "bottom"
    best = at.dataframe[1].value
    assert {"validation F1 (macro)", "validation loss"} <= set(best.index)
    assert not {"learning rate", "samples/s"} & set(best.index)
    _no_none_shown(at)


def test_a_runs_detail_reads_for_people(wine_runs: list[int]) -> None:
    import json

    at = _page()
    at.multiselect[0].set_value([wine_runs[0]]).run()
    assert not at.exception and not at.error
    metrics = at.dataframe[1].value
    assert {"train loss", "validation F1 (macro)", "learning rate", "samples/s"} <= set(metrics.index)
    assert metrics.loc[["learning rate", "samples/s"], "best"].isna().all()  # no "best" speed or rate
    assert metrics.loc["validation loss", "best"] <= metrics.loc["validation loss", "last"]
    _no_none_shown(at)

    def confusion() -> dict[str, Any]:
        return next(
            s
            for s in (json.loads(c.proto.spec) for c in at.get("vega_lite_chart"))
            if any(layer.get("mark", {}).get("type") == "rect" for layer in s.get("layer", []))
        )

    marks = [layer["mark"]["type"] for layer in confusion()["layer"]]
    assert marks == ["rect", "text"]  # counts printed in the cells
    toggle = next(t for t in at.toggle if t.label.startswith("Normalised"))
    toggle.set_value(True).run()
    assert not at.exception
    assert confusion()["layer"][1]["encoding"]["text"]["field"] == "text"
    report = summary.report(wine_runs[0])
    assert report is not None
    shares = summary.confusion_cells(report, normalised=True)
    assert (
        shares["text"].str.endswith("%").all() and shares.groupby("true")["share"].sum().round(6).eq(1).all()
    )

    buttons = at.get("download_button")
    files = [b for b in buttons if b.label != "Download this page of runs (CSV)" and "bundle" not in b.label]
    labels = [b.label.split(" (")[0] for b in files]
    assert labels == ["pytorch", "fp32", "config", "report"]  # the checkpoint and ONNX file once each
    kept = summary.artifact_paths(wine_runs[0])
    distinct = {p.resolve() for kind, p in kept.items() if kind in summary.DOWNLOAD_KINDS}
    assert len(files) == len(distinct)
    assert at.code[-1].proto.wrap_lines
    # "Use this model": how to serve the run and call it, with a validation row's real columns.
    use = next(e for e in at.expander if e.label == "Use this model")
    shown = [c.value for c in use.code]
    assert shown[0].startswith(f"# python -m core serve --run {wine_runs[0]}\ncurl -s -X POST")
    assert '"alcohol": ' in shown[0] and '"target"' not in shown[0] and "'alcohol': " in shown[1]
    # ... and its bundle: a zip per variant on disk, how to run it, and the runtime called in Python.
    assert [b.label for b in buttons if "bundle" in b.label] == [
        f"{v} bundle (zip)" for v in bundle.variants(wine_runs[0])
    ]
    assert shown[2].startswith(
        f"unzip ascent-run-{wine_runs[0]}-fp32.zip && cd ascent-run-{wine_runs[0]}-fp32\n"
    )
    assert shown[2].endswith("python predict.py example.csv")
    assert (
        "import ascent_runtime as rt" in shown[3]
        and "    'alcohol': [" in shown[3]
        and "'target'" not in shown[3]
    )


def test_a_sweep_shows_its_trials_best_run_and_charts(home: Path, data_dir: Path) -> None:
    from core import sweeps
    from db.models import RunStatus

    ds = ingest_file(data_dir / "wine.csv")
    made = sweeps.create(ds.id, trials=3, parallel=3, space="lr=1e-3..1e-2 log", epochs=2)
    for n, t in enumerate(made.trial_list):  # as a worker would have finished them
        assert jobs.claim("a test worker") is not None
        jobs.record_metrics(t.run_id, step=1, epoch=1, values={"val_f1_macro": 0.5 + 0.1 * n})
        jobs.finish(t.run_id, RunStatus.SUCCEEDED)
    sweeps.advance(made.id)
    at = _page()
    assert not at.exception
    (box,) = [e for e in at.expander if e.label.startswith("Sweeps (1)")]
    said = " ".join(m.value for m in box.markdown).replace("\\", "")
    best = made.trial_list[-1].run_id
    assert f"best: run {best} ({summary.metric_label('val_f1_macro')} = 0.7)" in said, said
    table = box.dataframe[0].value
    assert list(table["state"]) == ["complete"] * 3 and list(table["run"]) == [
        t.run_id for t in made.trial_list
    ]
    assert [s.label for s in box.selectbox] == ["Sweep", "Parameter"]
