"""Text datasets and models through `python -m core`: add a BBC News CSV, train the text CNN once,
predict from --text and --text-file, and the errors a user can hit (--text on a table run too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from core.data.samples import BBC_CLASSES, bbc_news, bbc_news_csv
from tests.test_cli import cli, cli_json

TASK = "text-classification"


def _check_predictions(result: dict[str, Any], texts: list[str], k: int) -> None:
    assert result["provider"] == "CPUExecutionProvider" and result["latency_ms"] > 0
    preds = result["predictions"]
    assert [p["text"] for p in preds] == texts
    for p in preds:
        top = p["top"]
        assert len(top) == k and top[0]["label"] == p["label"]
        assert {t["label"] for t in top} <= set(BBC_CLASSES)
        probabilities = [t["probability"] for t in top]
        assert probabilities == sorted(probabilities, reverse=True)
        if k == len(BBC_CLASSES):
            assert {t["label"] for t in top} == set(BBC_CLASSES)
            assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)


def test_text_cnn_end_to_end(home: Path, tmp_path: Path, data_dir: Path) -> None:
    # A one-epoch table run queued first, shares the worker: --text on it must be refused.
    wine = cli_json("datasets", "add", str(data_dir / "wine.csv"))
    table_run = cli_json("train", "--dataset", str(wine["id"]), "--epochs", "1")

    csv = bbc_news_csv(tmp_path / "bbc.csv", per_class=30, chars=300)
    ds = cli_json("datasets", "add", str(csv), "--task", TASK, "--name", "bbc")
    assert ds["task"] == TASK and ds["n_items"] == 150 and ds["format"] == "csv"
    assert ds["schema"]["classes"] == list(BBC_CLASSES) and ds["schema"]["text_column"] == "text"
    assert ds["report"]["class_counts"] == dict.fromkeys(BBC_CLASSES, 30)

    run = cli_json(
        "train", "--dataset", str(ds["id"]), "--model", "text-cnn", "--max-length", "64",
        "--epochs", "4", "--batch-size", "16", "--seed", "1", "--wait",
    )  # fmt: skip
    assert run["status"] == "succeeded" and run["model"] == "text-cnn" and run["task"] == TASK
    assert run["metrics"]["export_top1_agreement"] == 1.0
    assert Path(run["artifacts"]["onnx"]).exists()

    held_out = [t for t, _ in bbc_news(per_class=1, offset=200, chars=300)]
    result = cli_json("predict", "--run", str(run["id"]), "--text", held_out[0], "--text", held_out[3])
    _check_predictions(result, [held_out[0], held_out[3]], k=5)

    lines = tmp_path / "texts.txt"
    lines.write_text(f"{held_out[2]}\n\n{held_out[3]}\n{held_out[4]}\n", encoding="utf-8")
    result = cli_json("predict", "--run", str(run["id"]), "--text-file", str(lines), "--top-k", "2")
    _check_predictions(result, held_out[2:5], k=2)  # the blank line is skipped

    out = cli("predict", "--run", str(run["id"]), "--text", "Shares fell as profits slumped").stdout
    assert "CPUExecutionProvider" in out and any(c in out for c in BBC_CLASSES)

    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 society".encode("latin-1"))
    for args, message in [
        ([], "give --text TEXT or --text-file FILE"),
        ([str(csv)], "a text model takes --text or --text-file, not files"),
        (["--text-file", str(latin)], "latin.txt is not UTF-8 text"),
    ]:
        proc = cli("predict", "--run", str(run["id"]), *args, ok=False)
        assert proc.returncode == 1 and proc.stdout == ""
        assert proc.stderr.count("\n") == 1 and message in proc.stderr

    assert cli_json("runs", "show", str(table_run["id"]))["status"] == "succeeded"
    proc = cli("predict", "--run", str(table_run["id"]), "--text", "a fine wine", ok=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert f"run {table_run['id']} is tabular-classification; --text is for text models" in proc.stderr


def test_datasets_add_finds_the_columns_and_prints_the_report(home: Path, tmp_path: Path) -> None:
    news = pd.DataFrame(bbc_news(per_class=4, chars=300), columns=["a", "b"])
    news = pd.concat([news, news.iloc[[0]], pd.DataFrame({"a": [""], "b": ["tech"]})], ignore_index=True)
    news.to_csv(tmp_path / "news.csv", index=False)
    ds = cli_json("datasets", "add", str(tmp_path / "news.csv"), "--text-column", "a")
    assert ds["task"] == TASK and ds["schema"]["label_column"] == "b" and ds["n_items"] == 21
    assert ds["report"]["duplicate_texts"] == 1 and ds["report"]["empty_texts"] == 1

    text = cli("datasets", "add", str(tmp_path / "news.csv"), "--task", TASK).stdout
    assert "text-classification, 21 texts in 5 classes (text 'a', label 'b')" in text
    assert "length in tokens: median" in text
    assert "empty texts: 1" in text and "duplicate texts: 1" in text
    listed = cli_json("datasets", "list")
    assert [d["task"] for d in listed] == [TASK, TASK]


def test_datasets_add_errors_are_one_line_on_stderr(home: Path, tmp_path: Path) -> None:
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\xe9 ouvert,a\nferm\xe9,b\n".encode("latin-1"))
    one_class = tmp_path / "one.csv"
    one_class.write_text("text,label\ngood film,pos\nfine film,pos\n")
    cases = [
        (latin, ["--task", TASK], "latin.csv is not UTF-8 text"),
        (one_class, ["--task", TASK, "--json"], "has one class ('pos')"),
        (one_class, ["--text-column", "review"], "no column named 'review'; the columns are: text, label"),
    ]
    for path, extra, message in cases:
        proc = cli("datasets", "add", str(path), *extra, ok=False)
        assert proc.returncode == 1 and proc.stdout == ""
        assert proc.stderr.count("\n") == 1 and message in proc.stderr
    assert cli_json("datasets", "list") == []
