"""Every registered tabular model trains and exports; the loop's schedule, early stopping,
checkpoints and resume; the ONNX file matches PyTorch on the validation split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch

from core import checkpoint
from core.config import RunConfig
from core.data.ingest import ingest_file
from core.models import default_model, models_for
from core.runtime import Predictor
from core.tasks import get_task
from core.train import BEST, LAST, EpochResult, autocast_dtype, cosine_with_warmup, train

TABULAR = ["tabular-classification", "tabular-regression"]


@pytest.fixture
def mixed_csv(tmp_path: Path) -> Path:
    """Numbers with gaps, a category with gaps and unseen values: what the graph must handle."""
    rng = np.random.default_rng(3)
    n = 400
    colour = rng.choice(["red", "green", "blue"], n)
    x = rng.normal(size=n)
    y_cls = np.where((x > 0) ^ (colour == "red"), "yes", "no")
    df = pd.DataFrame({"x": x, "z": rng.normal(size=n), "colour": colour, "label": y_cls})
    df["value"] = 3 * x + (colour == "blue") * 2.0 + rng.normal(scale=0.1, size=n)
    df.loc[::17, "x"] = np.nan
    df.loc[::23, "colour"] = None
    df.drop(columns=["value"]).to_csv(tmp_path / "mixed.csv", index=False)
    df.drop(columns=["label"]).to_csv(tmp_path / "mixed_regression.csv", index=False)
    return tmp_path / "mixed.csv"


def _prepare(path: Path, target: str, task: str, **cfg: object):  # type: ignore[no-untyped-def]
    ds = ingest_file(path, target=target, task=task)
    defaults: dict[str, object] = {"epochs": 3, "batch_size": 32, "model": default_model(task)}
    cfg_obj = RunConfig(task=task, dataset_id=ds.id, **{**defaults, **cfg})  # type: ignore[arg-type]
    return ds, cfg_obj, get_task(task).prepare(ds, cfg_obj, "cpu")


@pytest.mark.parametrize("task", TABULAR)
def test_every_registered_model_trains_and_exports(
    home: Path, mixed_csv: Path, task: str, tmp_path: Path
) -> None:
    classification = task.endswith("classification")
    target = "label" if classification else "value"
    path = mixed_csv if classification else mixed_csv.with_name("mixed_regression.csv")
    specs = models_for(task)
    assert {"mlp", "linear"} <= {m.name for m in specs}
    for spec in specs:
        ds, cfg, data = _prepare(path, target, task, model=spec.name, epochs=2)
        before = [p.detach().clone() for p in data.model.parameters()]
        run_dir = tmp_path / spec.name / task
        seen: list[EpochResult] = []
        outcome = train(cfg, data, device="cpu", run_dir=run_dir, on_epoch=seen.append)
        assert outcome.epochs_run == 2 and len(seen) == 2
        changed = [not torch.equal(a, b) for a, b in zip(before, data.model.parameters(), strict=True)]
        assert all(changed), f"{spec.name}: some parameters got no update"
        keys = set(seen[-1].metrics)
        if task.endswith("classification"):
            assert {"train_loss", "val_loss", "val_accuracy", "val_f1_macro", "samples_per_sec"} <= keys
        else:
            assert {"train_loss", "val_loss", "val_rmse", "val_mae", "val_r2", "samples_per_sec"} <= keys
        checkpoint.load_weights(run_dir / BEST, data.model)
        check = get_task(task).export(data, cfg, ds, run_dir / "model.onnx", run_id=1)
        assert check.n_samples == data.n_val and check.max_abs_diff < 1e-3
        if task.endswith("classification"):
            assert check.top1_agreement == 1.0


def test_export_follows_the_contract(home: Path, mixed_csv: Path, tmp_path: Path) -> None:
    ds, cfg, data = _prepare(mixed_csv, "label", "tabular-classification", epochs=8)
    train(cfg, data, device="cpu", run_dir=tmp_path)
    checkpoint.load_weights(tmp_path / BEST, data.model)
    path = tmp_path / "model.onnx"
    get_task(cfg.task).export(data, cfg, ds, path, run_id=42)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 18
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["ascent.task"] == "tabular-classification"
    assert json.loads(meta["ascent.labels"]) == ["no", "yes"]
    inputs = {i["name"]: i for i in json.loads(meta["ascent.inputs"])}
    assert inputs["numeric"]["columns"] == ["x", "z"] and inputs["numeric"]["dtype"] == "float32"
    assert sorted(inputs["categorical"]["codes"]["colour"]) == ["blue", "green", "red"]
    assert json.loads(meta["ascent.run"])["run_id"] == 42 and "ascent.preprocess" in meta
    graph_inputs = {i.name: i for i in model.graph.input}
    assert set(graph_inputs) == {"numeric", "categorical"}
    batch_dim = graph_inputs["numeric"].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # dynamic batch
    assert not list(tmp_path.glob("*.data"))  # one self-contained file

    # Raw values in: NaN numbers, missing and unseen categories, batch sizes 1 and 3.
    predictor = Predictor(path)
    one = predictor.predict_table({"x": [None], "z": [0.1], "colour": ["purple"]})
    three = predictor.predict_table({"x": [1.0, -1.0, 2.0], "z": [0, 0, 0], "colour": ["red", "blue", None]})
    assert len(one) == 1 and len(three) == 3
    for p in one + three:
        assert p.label in ("no", "yes") and sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_regression_export_returns_values_in_target_units(home: Path, data_dir: Path, tmp_path: Path) -> None:
    ds, cfg, data = _prepare(data_dir / "diabetes.csv", "target", "tabular-regression", epochs=30, lr=3e-3)
    train(cfg, data, device="cpu", run_dir=tmp_path)
    checkpoint.load_weights(tmp_path / BEST, data.model)
    get_task(cfg.task).export(data, cfg, ds, tmp_path / "model.onnx", run_id=1)
    df = pd.read_csv(data_dir / "diabetes.csv").drop(columns=["target"])
    preds = Predictor(tmp_path / "model.onnx").predict_table({c: df[c].tolist() for c in df})
    values = np.array([p.value for p in preds])
    assert 25 < values.mean() < 350 and values.std() > 10  # disease progression scale, not z-scores


def test_training_learns_wine(home: Path, data_dir: Path, tmp_path: Path) -> None:
    _, cfg, data = _prepare(data_dir / "wine.csv", "target", "tabular-classification", epochs=20)
    seen: list[EpochResult] = []
    train(cfg, data, device="cpu", run_dir=tmp_path, on_epoch=seen.append)
    assert seen[0].metrics["val_loss"] > seen[-1].metrics["val_loss"]
    assert max(r.metrics["val_accuracy"] for r in seen) >= 0.9


def test_early_stopping_and_best_checkpoint_carry_config(home: Path, data_dir: Path, tmp_path: Path) -> None:
    _, cfg, data = _prepare(
        data_dir / "wine.csv", "target", "tabular-classification", epochs=200, patience=2, lr=0.05
    )
    outcome = train(cfg, data, device="cpu", run_dir=tmp_path)
    assert outcome.status == "early_stopped" and outcome.epochs_run < 200
    assert outcome.epochs_run - outcome.best_epoch == 2
    meta = checkpoint.read_metadata(tmp_path / BEST)
    assert meta["config"]["patience"] == 2 and meta["epoch"] == outcome.best_epoch
    assert meta["classes"] == ["0", "1", "2"]


def test_resume_continues_from_the_last_checkpoint(home: Path, data_dir: Path, tmp_path: Path) -> None:
    _, cfg, data = _prepare(data_dir / "wine.csv", "target", "tabular-classification", epochs=6, patience=0)
    stop_after = {"n": 0}

    def stop_in_epoch_three() -> bool:
        stop_after["n"] += 1
        return stop_after["n"] > 2 * len(data.train) + 1  # type: ignore[arg-type]

    first = train(cfg, data, device="cpu", run_dir=tmp_path, should_stop=stop_in_epoch_three)
    assert first.status == "cancelled" and first.epochs_run == 2
    saved = checkpoint.read_metadata(tmp_path / LAST)["state"]
    assert saved["epoch"] == 2 and saved["step"] == 2 * len(data.train)  # type: ignore[arg-type]

    _, cfg2, data2 = _prepare(
        data_dir / "wine.csv", "target", "tabular-classification", epochs=6, patience=0, resume=True
    )
    epochs: list[int] = []
    second = train(cfg2, data2, device="cpu", run_dir=tmp_path, on_epoch=lambda r: epochs.append(r.epoch))
    assert epochs == [3, 4, 5, 6] and second.status == "completed"
    # The optimiser state came back too: AdamW's step count continues.
    assert checkpoint.read_metadata(tmp_path / LAST)["state"]["step"] == 6 * len(data2.train)  # type: ignore[arg-type]


def test_schedule_and_precision_choices() -> None:
    f = cosine_with_warmup(total_steps=100, warmup_steps=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) < f(20) and f(100) == pytest.approx(0.02)
    assert autocast_dtype("auto", "cpu") is None and autocast_dtype("bf16", "cpu") is None


def test_device_choice_on_a_machine_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from core.config import resolve_device
    from core.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("ASCENT_DEVICE", "auto")
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ConfigError, match="no GPU is visible"):
        resolve_device("cuda")
