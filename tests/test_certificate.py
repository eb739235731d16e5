"""The export certificate: variants produced, checked against PyTorch on the whole validation
split, timed in fresh processes, stored in SQL; a variant under its threshold is flagged."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import train_here
from test_cli import cli, cli_json

from core import certificate, jobs
from core.data.ingest import ingest_file
from core.errors import ConfigError


@pytest.fixture
def wine_run(home: Path, data_dir: Path) -> int:
    ds = ingest_file(data_dir / "wine.csv")
    run = jobs.submit(jobs.config_for(ds.id, epochs=5))
    train_here(run.id)
    assert jobs.get_run(run.id).status == "succeeded"
    return run.id


def test_certificate_of_a_table_model(wine_run: int) -> None:
    records = certificate.certify(wine_run)
    assert [r.variant for r in records] == ["pytorch", "fp32", "int8"]
    base, fp32, int8 = records
    n_val = base.n_samples
    assert n_val == 36  # the whole validation split of wine (178 rows, 20 %)
    assert base.metric_name == "accuracy" and base.metric_change == 0.0
    assert fp32.status == "ok" and fp32.top1_agreement == 1.0 and fp32.max_abs_diff < 1e-4
    assert fp32.metric_value == base.metric_value and fp32.path.endswith("model.onnx")
    assert int8.path.endswith("model.int8.onnx") and Path(int8.path).exists() and int8.bytes > 0
    assert int8.status == ("ok" if int8.top1_agreement >= 0.95 else "flagged")  # type: ignore[operator]
    assert int8.method.startswith("dynamic int8")  # an MLP: no calibration needed
    for r in records:
        batches = sorted(m["batch"] for m in r.measurements)
        assert batches == [1, 32]
        for m in r.measurements:
            assert 0 < m["p50_ms"] <= m["p95_ms"] and m["peak_mb"] > 10 and m["calls"] >= 5
        assert r.latency_ms == min(m["p50_ms"] for m in r.measurements if m["batch"] == 1)
    assert {m["provider"] for m in fp32.measurements} == {"CPUExecutionProvider"}
    assert {m["provider"] for m in base.measurements} == {"pytorch-cpu"}
    assert certificate.certificate(wine_run) == records  # stored in SQL


def test_variants_under_their_threshold_are_flagged_not_hidden(
    wine_run: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(certificate.MIN_AGREEMENT, "fp32", 1.01)  # unreachable: must flag
    (base, fp32) = certificate.certify(wine_run, ("fp32",))
    assert base.variant == "pytorch" and fp32.status == "flagged" and fp32.top1_agreement == 1.0


def test_export_command(wine_run: int) -> None:
    doc = cli_json("export", "--run", str(wine_run), "--variants", "fp32")
    assert [d["variant"] for d in doc] == ["pytorch", "fp32"] and doc[1]["status"] == "ok"
    text = cli("export", "--run", str(wine_run), "--variants", "fp32").stdout
    assert "CPU:" in text and "pytorch-cpu:" in text and "fp32: the run's export (fp32)" in text
    bad = cli("export", "--run", str(wine_run), "--variants", "fp8", ok=False)
    assert bad.returncode != 0 and "unknown variant 'fp8'" in bad.stderr


def test_fp16_when_asked_for_without_a_gpu(wine_run: int) -> None:
    (base, fp32, fp16) = certificate.certify(wine_run, ("fp32", "fp16"))
    assert fp16.path.endswith("model.fp16.onnx") and fp16.bytes < 0.7 * fp32.bytes
    assert fp16.status == "ok" and fp16.top1_agreement == 1.0 and 0 < fp16.max_abs_diff < 1e-2
    assert fp16.metric_value == base.metric_value and "timed on the CPU" in fp16.method
    assert {m["provider"] for m in fp16.measurements} == {"CPUExecutionProvider"}


def test_certificates_of_an_image_and_a_text_model(home: Path, tmp_path: Path) -> None:
    from core.data.samples import bbc_news_csv, fashion_mnist_zip

    images = ingest_file(fashion_mnist_zip(tmp_path / "f.zip", per_class=20, classes=("trouser", "bag")))
    texts = ingest_file(bbc_news_csv(tmp_path / "b.csv", per_class=20, chars=200), task="text-classification")
    ids = [
        jobs.submit(jobs.config_for(images.id, model="small-cnn", image_size=32, epochs=2, workers=0)).id,
        jobs.submit(jobs.config_for(texts.id, model="text-cnn", epochs=3)).id,
    ]
    train_here(*ids)
    for run_id, n_val in zip(ids, (8, 20), strict=True):
        assert jobs.get_run(run_id).status == "succeeded"
        base, fp32, int8 = certificate.certify(run_id)
        assert base.n_samples == fp32.n_samples == int8.n_samples == n_val  # the whole split
        assert fp32.status == "ok" and fp32.top1_agreement == 1.0
        assert int8.top1_agreement is not None and int8.bytes < fp32.bytes
        assert int8.status == ("ok" if int8.top1_agreement >= 0.95 else "flagged")
        # The image CNN gets static int8 calibrated on its training images; text models get
        # dynamic int8 (the text CNN's weights are mostly its embedding, which static leaves float).
        static = "static int8" in int8.method and "training samples" in int8.method
        assert static == (run_id == ids[0]) and int8.method.startswith(("static", "dynamic"))


def test_runs_page_shows_the_certificate_and_its_columns(wine_run: int) -> None:
    from streamlit.testing.v1 import AppTest

    root = Path(__file__).resolve().parents[1]
    at = AppTest.from_file(str(root / "pages" / "runs.py"), default_timeout=60).run()
    assert at.dataframe[0].value["best latency (ms)"].isna().all()  # nothing measured yet
    at.multiselect[0].set_value([wine_run]).run()
    assert any("Export certificate" in h.value for h in at.subheader)
    assert any("Not measured yet" in c.value for c in at.caption)

    records = certificate.certify(wine_run, ("fp32",))
    at = AppTest.from_file(str(root / "pages" / "runs.py"), default_timeout=60).run()
    row = at.dataframe[0].value.iloc[0]
    assert row["best latency (ms)"] == round(records[1].latency_ms or 0, 2)
    assert row["size (MB)"] == round(records[1].bytes / 1e6, 2)
    at.multiselect[0].set_value([wine_run]).run()
    assert not at.exception and not at.error
    table = next(d.value for d in at.dataframe if "top-1 agreement" in getattr(d.value, "columns", []))
    assert list(table.index) == ["pytorch", "fp32"] and "CPU b32 p95 (ms)" in table.columns
    assert table["CPU b1 p50 (ms)"].notna().all()  # PyTorch and ONNX Runtime side by side
    assert not any(c.startswith("pytorch-cpu") for c in table.columns)
    assert any(b.label.startswith("fp32 (") for b in at.get("download_button"))
    assert any("**fp32**: the run's export (fp32)" in m.value for m in at.markdown)


def test_the_page_button_measures_in_a_background_process(wine_run: int) -> None:
    proc = certificate.start(wine_run)
    try:
        assert proc.wait(timeout=300) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [r.variant for r in certificate.certificate(wine_run)] == ["pytorch", "fp32", "int8"]
    lines = certificate.log_lines(wine_run)
    assert (
        lines[0] == "[1/8] loading the run's model and data"
        and "[8/8] int8: timing it at batch 1 and 32" in lines
    )
    assert certificate.progress(lines) == (7, 8, "int8: timing it at batch 1 and 32")
    assert "fp32" in "\n".join(lines)


def test_deleting_a_run_deletes_its_certificate(wine_run: int) -> None:
    (_, fp32) = certificate.certify(wine_run, ("fp32",))
    jobs.delete_run(wine_run)
    assert certificate.certificate(wine_run) == [] and not Path(fp32.path).exists()


def test_best_trade_offs_are_marked(home: Path, data_dir: Path) -> None:
    from core import summary

    assert summary._front([(0.9, 1.0), (0.95, 2.0), (0.9, 3.0), (0.8, 0.5)], True) == [
        True,
        True,
        False,
        True,
    ]
    assert summary._front([(50.0, 1.0), (40.0, 1.0)], False) == [False, True]  # RMSE: lower is better

    ds = ingest_file(data_dir / "wine.csv")
    ids = [jobs.submit(jobs.config_for(ds.id, epochs=3, model=m)).id for m in ("mlp", "linear")]
    train_here(*ids)
    for run_id in ids:
        certificate.certify(run_id, ("fp32",))
    points = summary.tradeoffs(ids)
    assert len(points) == 4 and set(points["variant"]) == {"pytorch", "fp32"}
    assert points["best for latency"].any() and points["best for size"].any()

    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "pages" / "runs.py"), default_timeout=60)
    at.run().multiselect[0].set_value(ids).run()
    assert not at.exception and not at.error
    assert any("Which to ship?" in m.value for m in at.markdown)
    assert len(at.get("vega_lite_chart")) >= 2  # metric against latency, and against size


def test_a_failed_measurement_shows_its_error_on_the_page(wine_run: int) -> None:
    from streamlit.testing.v1 import AppTest

    from core.data.ingest import get_dataset

    # The measurement starts, then cannot read the run's data.
    Path(get_dataset(jobs.get_run(wine_run).dataset_id or 0).path, "data.parquet").write_bytes(b"garbage")
    root = Path(__file__).resolve().parents[1]
    at = AppTest.from_file(str(root / "pages" / "runs.py"), default_timeout=60).run()
    at.multiselect[0].set_value([wine_run]).run()
    at.button(key=f"certify-{wine_run}").click().run()
    proc = at.session_state["certifying"][wine_run]
    assert proc.wait(timeout=120) != 0
    at.run()
    assert wine_run not in at.session_state["certifying"]
    assert "Measuring the certificate failed" in at.error[0].value and any(
        "Parquet" in c.value for c in at.code
    )
    assert certificate.certificate(wine_run) == []


def test_one_measurement_per_run_and_a_bounded_number_in_all(
    wine_run: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The measuring process holds its run's lock (and a slot) from the moment it is started;
    a second start of the same run, or one past ASCENT_MAX_MEASUREMENTS, is refused in words,
    and the locks go with the process."""
    other = jobs.submit(jobs.config_for(jobs.get_run(wine_run).dataset_id or 0, epochs=2)).id
    train_here(other)
    monkeypatch.setenv("ASCENT_MAX_MEASUREMENTS", "1")
    proc = certificate.start(wine_run)
    try:
        assert certificate.measuring(wine_run) and not certificate.measuring(other)
        with pytest.raises(ConfigError, match="being measured already"):
            certificate.start(wine_run)
        with pytest.raises(ConfigError, match="being measured already"):
            certificate.certify(wine_run)  # the command line too
        with pytest.raises(
            ConfigError, match=r"1 certificates are being measured already \(ASCENT_MAX_MEASUREMENTS\)"
        ):
            certificate.start(other)
        assert not certificate.measuring(other)  # the refused start left no lock behind
    finally:
        assert proc.wait(timeout=300) == 0
    assert not certificate.measuring(wine_run)
    assert [r.variant for r in certificate.certificate(wine_run)] == ["pytorch", "fp32", "int8"]


def test_a_timing_child_reports_its_own_peak_memory_not_its_parents() -> None:
    """Linux's ru_maxrss survives exec: a child of a process holding 600 MB reports 600 MB.
    The certificate's timing children read VmHWM, their program's own peak."""
    import subprocess
    import sys

    held = bytearray(600 * 1024 * 1024)
    held[::4096] = b"\x01" * len(held[::4096])  # resident, page by page
    code = (
        "import resource; from core.certificate import peak_memory_mb; "
        "print(peak_memory_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    own, inherited = map(float, out.stdout.split())
    assert inherited > 600 and own < 300, (own, inherited)
    del held
