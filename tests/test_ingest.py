"""Ingest of tables: task detection, the quality report, and every bad input we refuse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.data.ingest import get_dataset, ingest_file, list_datasets
from core.errors import DatasetError


def _nothing_written(home: Path) -> None:
    datasets = home / "datasets"
    assert not datasets.exists() or list(datasets.iterdir()) == []
    assert list_datasets() == []


def test_wine_csv_becomes_a_classification_dataset(home: Path, data_dir: Path) -> None:
    ds = ingest_file(data_dir / "wine.csv")
    assert ds.task == "tabular-classification"
    assert ds.n_items == 178 and ds.schema["target"] == "target"
    assert ds.schema["classes"] == ["0", "1", "2"]
    assert len(ds.schema["features"]) == 13
    assert ds.report["class_counts"] == {"0": 59, "1": 71, "2": 48}
    assert ds.report["imbalance_ratio"] == pytest.approx(71 / 48, rel=1e-3)
    stored = Path(ds.path)
    assert (stored / "data.parquet").exists() and (stored / "original.csv").exists()
    assert len(ds.sha256) == 64 and get_dataset(ds.id) == ds


def test_diabetes_is_detected_as_regression_and_can_be_forced(home: Path, data_dir: Path) -> None:
    ds = ingest_file(data_dir / "diabetes.csv")
    assert ds.task == "tabular-regression" and ds.report["target_stats"]["max"] == 346.0
    wine = ingest_file(data_dir / "wine.csv", task="tabular-regression", name="wine as numbers")
    assert wine.task == "tabular-regression" and wine.report["task_detected"] == "tabular-classification"


def test_parquet_with_text_labels_and_tsv(home: Path, data_dir: Path) -> None:
    iris = ingest_file(data_dir / "iris.parquet")
    assert iris.format == "parquet" and iris.schema["classes"] == ["setosa", "versicolor", "virginica"]
    bc = ingest_file(data_dir / "breast_cancer.tsv")
    assert bc.task == "tabular-classification" and len(bc.schema["features"]) == 30


def test_quality_report_counts_missing_duplicates_constant_and_drops_identifiers(
    home: Path, tmp_path: Path
) -> None:
    rng = np.random.default_rng(1)
    n = 200
    df = pd.DataFrame(
        {
            "id": [f"user-{i}" for i in range(n)],
            "age": rng.integers(18, 80, n).astype(float),
            "city": rng.choice(["Oslo", "Lima", "Pune"], n),
            "constant": 7,
            "empty": np.nan,
            "churn": rng.choice(["yes", "no"], n, p=[0.2, 0.8]),
        }
    )
    df.loc[:9, "age"] = np.nan
    df.loc[:4, "city"] = None
    df = pd.concat([df, df.iloc[[10, 11]]], ignore_index=True)
    path = tmp_path / "churn.csv"
    df.to_csv(path, index=False)
    ds = ingest_file(path, target="churn")
    rep = ds.report
    assert rep["rows"] == n + 2 and rep["duplicate_rows"] == 2
    assert rep["missing_per_column"]["age"] == 10 and rep["missing_per_column"]["city"] == 5
    assert rep["constant_columns"] == ["constant"]
    assert set(rep["dropped_columns"]) == {"id", "constant", "empty"}
    assert {f["name"]: f["kind"] for f in ds.schema["features"]} == {"age": "numeric", "city": "categorical"}
    assert sum(rep["class_counts"].values()) == n + 2 and rep["imbalance_ratio"] > 1


BAD_INPUTS = {
    "empty file": (b"", "empty"),
    "only whitespace": (b"  \n\n", "empty"),
    "header only": (b"a,b,y\n", "no rows"),
    "one column": (b"y\n1\n2\n", "1 column"),
    "binary bytes": (bytes(range(256)) * 4, "UTF-8"),
    "latin-1 text": ("name,y\ncaf\xe9,1\nbar,0\n".encode("latin-1"), "UTF-8"),
    "ragged rows": (b"a,b,y\n1,2,0\n1,2,3,4,5\n", "consistent"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_files_are_refused_and_write_nothing(home: Path, tmp_path: Path, case: str) -> None:
    content, message = BAD_INPUTS[case]
    path = tmp_path / "upload.csv"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=message):
        ingest_file(path)
    _nothing_written(home)


def _csv(tmp_path: Path, df: pd.DataFrame, name: str = "t.csv") -> Path:
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


def test_unknown_target_lists_the_columns(home: Path, data_dir: Path) -> None:
    with pytest.raises(DatasetError, match=r"no column named 'price'; the columns are: alcohol"):
        ingest_file(data_dir / "wine.csv", target="price")
    _nothing_written(home)


def test_one_class_target(home: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="only one class"):
        ingest_file(_csv(tmp_path, pd.DataFrame({"x": [1, 2, 3], "y": ["a", "a", "a"]})))
    _nothing_written(home)


def test_no_usable_feature_column(home: Path, tmp_path: Path) -> None:
    df = pd.DataFrame({"same": [1] * 60, "y": [0, 1] * 30, "id": [f"row{i}" for i in range(60)]})
    with pytest.raises(DatasetError, match="no usable feature column.*same: constant"):
        ingest_file(_csv(tmp_path, df), target="y")
    _nothing_written(home)


def test_regression_on_text_target_is_refused(home: Path, tmp_path: Path) -> None:
    df = pd.DataFrame({"x": [1, 2, 3, 4], "y": ["a", "b", "a", "b"]})
    with pytest.raises(DatasetError, match="not numeric"):
        ingest_file(_csv(tmp_path, df), task="tabular-regression")
    _nothing_written(home)


def test_target_all_missing(home: Path, tmp_path: Path) -> None:
    df = pd.DataFrame({"x": [1, 2, 3], "y": [None, None, None]})
    with pytest.raises(DatasetError, match="every value of the target"):
        ingest_file(_csv(tmp_path, df), target="y")
    _nothing_written(home)


def test_file_over_the_size_limit(home: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASCENT_MAX_UPLOAD_BYTES", "1000")
    with pytest.raises(DatasetError, match="over the 0.0 MB limit|over the .* limit"):
        ingest_file(data_dir / "wine.csv")
    _nothing_written(home)


def test_not_a_parquet_file_and_unsupported_types(home: Path, tmp_path: Path) -> None:
    fake = tmp_path / "data.parquet"
    fake.write_text("a,b\n1,2\n")
    with pytest.raises(DatasetError, match="not a readable Parquet file"):
        ingest_file(fake)
    doc = tmp_path / "notes.docx"
    doc.write_bytes(b"PK\x03\x04 not a table")
    with pytest.raises(DatasetError, match="unsupported file type '.docx'"):
        ingest_file(doc)
    with pytest.raises(DatasetError, match="does not exist"):
        ingest_file(tmp_path / "missing.csv")
    _nothing_written(home)


def test_a_database_failure_leaves_no_files(
    home: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from db import queries

    def broken(**_: object) -> None:
        raise RuntimeError("database went away")

    monkeypatch.setattr(queries, "set_dataset_path", broken)
    with pytest.raises(RuntimeError, match="went away"):
        ingest_file(data_dir / "wine.csv")
    _nothing_written(home)


def test_an_upload_is_guessed_once_per_content_from_its_first_rows(home: Path, tmp_path: Path) -> None:
    """The Datasets page asks on every rerun: the answer is kept by content hash, and a table
    is judged from its first rows (a bad row far down does not make the guess fail)."""
    from core.data import ingest

    rows = "".join(f"{i},{i % 3}\n" for i in range(5_000))
    data = ("x,target\n" + rows + "oops,1,2,3\n").encode()
    guess = ingest.guess_upload("big.csv", data)
    assert guess.columns == ["x", "target"] and guess.target == "target"
    assert ingest.guess_upload("big.csv", data) is guess  # kept, not parsed again
    assert ingest.guess_upload("big.csv", data + b"1,1\n") is not guess
