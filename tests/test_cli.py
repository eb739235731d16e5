"""End to end through `python -m core`, on real data shipped by scikit-learn."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def cli_json(*args: str) -> Any:
    return json.loads(cli(*args, "--json").stdout)


def _plain_onnxruntime(model: Path, feeds_code: str, tmp_path: Path) -> Any:
    """Run the exported file with onnxruntime and numpy only, outside the repository."""
    header = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np
        import onnxruntime as ort
        sess = ort.InferenceSession({str(model)!r}, providers=["CPUExecutionProvider"])
        meta = sess.get_modelmeta().custom_metadata_map
        """
    )
    footer = textwrap.dedent(
        """
        out = sess.run(None, feeds)[0]
        assert not any(m.split(".")[0] in ("core", "db") for m in sys.modules), "Ascent was imported"
        print(json.dumps({"out": out.tolist(), "labels": json.loads(meta["ascent.labels"]), "task": meta["ascent.task"]}))
        """
    )
    script = header + feeds_code + "\n" + footer
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_wine_classification_end_to_end(home: Path, data_dir: Path, tmp_path: Path) -> None:
    ds = cli_json("datasets", "add", str(data_dir / "wine.csv"), "--name", "wine")
    assert ds["task"] == "tabular-classification" and ds["report"]["rows"] == 178
    assert [d["id"] for d in cli_json("datasets", "list")] == [ds["id"]]

    run = cli_json("train", "--dataset", str(ds["id"]), "--epochs", "25", "--seed", "1", "--wait")
    assert run["status"] == "succeeded" and run["best_metrics"]["val_accuracy"] >= 0.9
    assert run["metrics"]["export_top1_agreement"] == 1.0
    onnx_path = Path(run["artifacts"]["onnx"])
    assert onnx_path.exists() and Path(run["artifacts"]["checkpoint"]).suffix == ".safetensors"

    rows = pd.read_csv(data_dir / "wine.csv").sample(12, random_state=0)
    features = rows.drop(columns=["target"])
    features.to_csv(tmp_path / "new_wines.csv", index=False)
    result = cli_json("predict", "--run", str(run["id"]), str(tmp_path / "new_wines.csv"))
    assert result["provider"] == "CPUExecutionProvider" and len(result["predictions"]) == 12
    labels = [p["label"] for p in result["predictions"]]
    assert sum(a == str(b) for a, b in zip(labels, rows["target"], strict=True)) >= 10
    assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-5 for p in result["predictions"])

    columns = json.dumps(features.columns.tolist())
    plain = _plain_onnxruntime(
        onnx_path,
        f"import csv\n"
        f"rows = list(csv.DictReader(open({str(tmp_path / 'new_wines.csv')!r})))\n"
        f"cols = json.loads(meta['ascent.inputs'])[0]['columns']\n"
        f"assert cols == {columns}\n"
        f"feeds = {{'numeric': np.array([[float(r[c]) for c in cols] for r in rows], dtype=np.float32)}}",
        tmp_path,
    )
    assert plain["task"] == "tabular-classification"
    assert [plain["labels"][max(range(3), key=row.__getitem__)] for row in plain["out"]] == labels

    listed = cli_json("runs", "list")
    assert [r["id"] for r in listed] == [run["id"]] and listed[0]["status"] == "succeeded"
    shown = cli_json("runs", "show", str(run["id"]))
    assert set(shown["artifacts"]) == {"log", "checkpoint", "config", "report", "predictions", "onnx"}
    text = cli("runs", "list").stdout
    assert "mlp-wine" in text and "succeeded" in text


def test_diabetes_regression_end_to_end(home: Path, data_dir: Path, tmp_path: Path) -> None:
    ds = cli_json("datasets", "add", str(data_dir / "diabetes.csv"))
    assert ds["task"] == "tabular-regression"
    run = cli_json("train", "--dataset", str(ds["id"]), "--epochs", "40", "--lr", "0.003", "--wait")
    assert run["status"] == "succeeded"
    assert run["best_metrics"]["val_r2"] > 0.3 and run["best_metrics"]["val_rmse"] < 65
    df = pd.read_csv(data_dir / "diabetes.csv").head(5).drop(columns=["target"])
    df.to_parquet(tmp_path / "patients.parquet")
    result = cli_json("predict", "--run", str(run["id"]), str(tmp_path / "patients.parquet"))
    values = [p["value"] for p in result["predictions"]]
    assert len(values) == 5 and all(25 < v < 350 for v in values)
    assert "label" not in result["predictions"][0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["datasets", "show", "99"], "no dataset with id 99"),
        (["runs", "show", "7"], "no run with id 7"),
        (["train", "--dataset", "5"], "no dataset with id 5"),
        (["predict", "--run", "3", "x.csv"], "no run with id 3"),
        (["datasets", "add", "/nonexistent.csv"], "does not exist"),
    ],
)
def test_errors_are_one_line_on_stderr_and_exit_non_zero(home: Path, args: list[str], message: str) -> None:
    for extra in ([], ["--json"]):
        proc = cli(*args, *extra, ok=False)
        assert proc.returncode == 1 and proc.stdout == ""
        assert proc.stderr.count("\n") == 1 and message in proc.stderr


def test_cli_refuses_bad_hyperparameters_and_wrong_input(home: Path, data_dir: Path, tmp_path: Path) -> None:
    ds = cli_json("datasets", "add", str(data_dir / "wine.csv"))
    proc = cli("train", "--dataset", str(ds["id"]), "--epochs", "0", ok=False)
    assert proc.returncode == 1 and "epochs" in proc.stderr and proc.stderr.count("\n") == 1
    proc = cli("train", "--dataset", str(ds["id"]), "--model", "transformer", ok=False)
    assert "choose one of: mlp, linear" in proc.stderr
    run = cli_json("train", "--dataset", str(ds["id"]), "--epochs", "1", "--wait")
    (tmp_path / "wrong.csv").write_text("colour,size\nred,3\n")
    proc = cli("predict", "--run", str(run["id"]), str(tmp_path / "wrong.csv"), ok=False)
    assert proc.returncode == 1 and "missing column(s) alcohol" in proc.stderr


def test_cancel_and_resume_from_the_command_line(home: Path, data_dir: Path) -> None:
    ds = cli_json("datasets", "add", str(data_dir / "wine.csv"))
    queued = cli_json("train", "--dataset", str(ds["id"]), "--epochs", "3")
    assert queued["status"] == "queued"
    assert cli_json("runs", "cancel", str(queued["id"]))["status"] == "cancelled"
    resumed = cli_json("runs", "resume", str(queued["id"]), "--wait")
    assert resumed["status"] == "succeeded" and resumed["attempts"] == 1
    proc = cli("runs", "resume", str(queued["id"]), ok=False)
    assert "only lost, failed or cancelled runs resume" in proc.stderr


def test_a_failed_run_with_wait_prints_the_run_and_exits_non_zero(
    home: Path, data_dir: Path, tmp_path: Path
) -> None:
    ds = cli_json("datasets", "add", str(data_dir / "wine.csv"))
    Path(ds["path"], "data.parquet").write_bytes(b"not parquet any more")
    proc = cli("train", "--dataset", str(ds["id"]), "--epochs", "2", "--wait", "--json", ok=False)
    assert proc.returncode == 1
    run = json.loads(proc.stdout)
    assert run["status"] == "failed" and "Parquet" in run["error"]
    assert proc.stderr.count("\n") == 1 and f"run {run['id']} is failed" in proc.stderr
    proc = cli("predict", "--run", str(run["id"]), str(data_dir / "wine.csv"), ok=False)
    assert "has no exported model" in proc.stderr


def test_images_end_to_end(home: Path, tmp_path: Path) -> None:
    import zipfile

    from core.data.samples import fashion_mnist_zip

    z = fashion_mnist_zip(tmp_path / "clothes.zip", per_class=40, classes=("trouser", "sneaker", "bag"))
    ds = cli_json("datasets", "add", str(z))
    assert ds["task"] == "image-classification" and ds["n_items"] == 120
    run = cli_json("train", "--dataset", str(ds["id"]), "--image-size", "64", "--epochs", "3", "--wait")
    assert run["model"] == "efficientnet-lite0" and run["config"]["weights"] == "default"
    assert run["status"] == "succeeded" and run["metrics"]["export_top1_agreement"] == 1.0
    # Its validation predictions are stored by item: the index's images, their own labels.
    import pandas as pd

    from core.compare import items

    stored = pd.read_parquet(run["artifacts"]["predictions"])
    index = pd.read_parquet(Path(ds["path"]) / "index.parquet")
    assert len(stored) == 24 and (stored["true"] == index["label"].iloc[stored["item"]].to_numpy()).all()
    shown = items(ds["id"], stored["item"].tolist()[:3])
    assert shown.kind == "image" and shown.paths is not None
    assert [p.parent.name for p in shown.paths] == stored["true"].tolist()[:3]

    held_out = fashion_mnist_zip(tmp_path / "new.zip", per_class=3, classes=("trouser", "bag"), offset=500)
    with zipfile.ZipFile(held_out) as zf:
        zf.extractall(tmp_path / "new")
    files = sorted((tmp_path / "new").rglob("*.png"))
    result = cli_json("predict", "--run", str(run["id"]), "--top-k", "2", *map(str, files))
    preds = result["predictions"]
    assert len(preds) == 6 and all(len(p["top"]) == 2 for p in preds)
    assert all(p["top"][0]["probability"] >= p["top"][1]["probability"] for p in preds)
    truth = [f.parent.name for f in files]
    assert sum(p["label"] == t for p, t in zip(preds, truth, strict=True)) >= 4

    plain = _plain_onnxruntime(
        Path(run["artifacts"]["onnx"]),
        "from PIL import Image\n"
        "spec = json.loads(meta['ascent.inputs'])[0]\n"
        "h, w = spec['shape'][1], spec['shape'][2]\n"
        f"paths = {[str(f) for f in files]!r}\n"
        "feeds = {'image': np.stack([np.asarray(Image.open(p).convert('RGB').resize((w, h), Image.BILINEAR)) for p in paths])}",
        tmp_path,
    )
    assert [plain["labels"][int(np.argmax(row))] for row in plain["out"]] == [p["label"] for p in preds]

    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    proc = cli("predict", "--run", str(run["id"]), str(bad), ok=False)
    assert proc.returncode == 1 and "notes.png: not a readable image" in proc.stderr
