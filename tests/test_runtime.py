"""core.runtime on its own: provider choice, input checks, category codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.runtime import Predictor, RuntimeInputError, as_category, create_session


def test_as_category_is_one_form_for_equal_values() -> None:
    assert as_category(3) == as_category(3.0) == as_category(np.int64(3)) == "3"
    assert as_category(2.5) == "2.5" and as_category(True) == "True"
    assert as_category(None) is None and as_category(float("nan")) is None and as_category("  ") is None
    assert as_category(" red ") == "red"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small exported model, made by a separate process like a real run would."""
    out = tmp_path_factory.mktemp("runtime")
    script = f"""
import os
from pathlib import Path
os.environ["ASCENT_HOME"] = {str(out / "home")!r}
import numpy as np, pandas as pd
from core.config import RunConfig
from core.data.ingest import ingest_file
from core.tasks import get_task
from core.train import train
rng = np.random.default_rng(0)
df = pd.DataFrame({{"size": rng.normal(size=300), "shape": rng.choice(["box", "ball"], 300)}})
df["kind"] = np.where(df["size"] > 0, "big", "small")
df.to_csv({str(out / "t.csv")!r}, index=False)
ds = ingest_file({str(out / "t.csv")!r})
cfg = RunConfig(task=ds.task, dataset_id=ds.id, epochs=5)
task = get_task(ds.task)
data = task.prepare(ds, cfg, "cpu")
train(cfg, data, device="cpu", run_dir=Path({str(out)!r}))
task.export(data, cfg, ds, Path({str(out / "model.onnx")!r}), run_id=1)
"""
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", script], cwd=root, check=True, capture_output=True, timeout=300)
    return out / "model.onnx"


def test_predictor_reads_everything_from_the_file(exported: Path) -> None:
    p = Predictor(exported)
    assert p.task == "tabular-classification" and p.labels == ["big", "small"]
    assert p.columns == ["size", "shape"]
    assert p.provider == p.session.get_providers()[0] == "CPUExecutionProvider"
    preds = p.predict_table({"size": [3.0, -3.0], "shape": ["box", "never seen"]})
    assert [x.label for x in preds] == ["big", "small"] and p.last_latency_ms > 0


def test_missing_columns_are_named(exported: Path) -> None:
    with pytest.raises(RuntimeInputError, match="missing column.*shape"):
        Predictor(exported).predict_table({"size": [1.0]})


def test_unknown_provider_request_falls_back_to_cpu(exported: Path) -> None:
    session = create_session(exported, providers=["CUDAExecutionProvider"])
    assert session.get_providers() == ["CPUExecutionProvider"]
