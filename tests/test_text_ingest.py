"""Text ingest: tables and zips of BBC News articles, column detection, encodings, the quality
report, and every unusable upload refused with nothing left behind."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from core.data.ingest import get_dataset, guess_upload, ingest_file, list_datasets
from core.data.samples import BBC_CLASSES, bbc_news, bbc_news_csv
from core.errors import DatasetError

TASK = "text-classification"


def _nothing_written(home: Path) -> None:
    datasets = home / "datasets"
    assert not datasets.exists() or list(datasets.iterdir()) == []
    assert list_datasets() == []


def _csv(tmp_path: Path, df: pd.DataFrame, name: str = "texts.csv", **kwargs: str) -> Path:
    path = tmp_path / name
    df.to_csv(path, index=False, **kwargs)
    return path


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def _stored(ds) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    return pd.read_parquet(Path(ds.path) / "data.parquet")


def _news(per_class: int = 4) -> pd.DataFrame:
    """BBC News openings as (text, topic), `per_class` articles of each of the 5 topics."""
    return pd.DataFrame(bbc_news(per_class=per_class, chars=300), columns=["text", "topic"])


def test_bbc_csv_becomes_a_text_classification_dataset(home: Path, tmp_path: Path) -> None:
    ds = ingest_file(bbc_news_csv(tmp_path / "bbc.csv", per_class=12, chars=400), task=TASK)
    assert ds.task == TASK and ds.format == "csv" and ds.n_items == 60
    assert ds.schema["classes"] == list(BBC_CLASSES)
    assert ds.schema["text_column"] == "text" and ds.schema["label_column"] == "label"
    rep = ds.report
    assert rep["class_counts"] == dict.fromkeys(BBC_CLASSES, 12) and rep["imbalance_ratio"] == 1.0
    assert rep["rows"] == rep["examples"] == 60
    assert rep["empty_texts"] == rep["missing_labels"] == rep["duplicate_texts"] == 0
    lengths = rep["length_tokens"]
    assert lengths["median"] > 10 and lengths["min"] <= lengths["median"] <= lengths["p95"] <= lengths["max"]
    assert lengths["max"] < 200  # 400 characters of English
    assert sum(lengths["histogram"]["counts"]) == 60 and ds.schema["p95_tokens"] == lengths["p95"]
    stored = _stored(ds)
    assert stored.columns.tolist() == ["text", "label"]
    original = pd.read_csv(tmp_path / "bbc.csv")
    assert stored["text"].tolist() == original["text"].tolist()
    assert stored["label"].tolist() == original["label"].tolist()
    assert len(ds.sha256) == 64 and get_dataset(ds.id) == ds


def test_columns_found_by_name(home: Path, tmp_path: Path) -> None:
    news = _news()
    df = pd.DataFrame({"id": range(len(news)), "review": news["text"], "sentiment": news["topic"]})
    ds = ingest_file(_csv(tmp_path, df), task=TASK)
    assert (ds.schema["text_column"], ds.schema["label_column"]) == ("review", "sentiment")
    assert ds.schema["classes"] == list(BBC_CLASSES)


def test_columns_found_by_shape_when_the_names_say_nothing(home: Path, tmp_path: Path) -> None:
    news = _news()
    df = pd.DataFrame({"a": news["text"], "b": news["topic"], "c": [f"note {i}" for i in range(len(news))]})
    ds = ingest_file(_csv(tmp_path, df), task=TASK)
    assert (ds.report["text_column"], ds.report["label_column"]) == ("a", "b")
    assert ds.report["class_counts"] == dict.fromkeys(BBC_CLASSES, 4)
    # What the Datasets page proposes for the same upload before it is added.
    guess = guess_upload("texts.csv", (tmp_path / "texts.csv").read_bytes())
    assert (guess.task, guess.text_column, guess.target) == (TASK, "a", "b")


def test_columns_given_explicitly_and_text_column_implies_the_task(home: Path, tmp_path: Path) -> None:
    news = _news()
    headlines = news["text"].str.split(".").str[0]
    df = pd.DataFrame({"text": news["text"], "headline": headlines, "label": "news", "topic": news["topic"]})
    ds = ingest_file(_csv(tmp_path, df), text_column="headline", target="topic")
    assert ds.task == TASK
    assert (ds.schema["text_column"], ds.schema["label_column"]) == ("headline", "topic")
    assert _stored(ds)["text"].tolist() == headlines.tolist()


def test_unknown_column_lists_the_columns(home: Path, tmp_path: Path) -> None:
    path = _csv(tmp_path, _news())
    with pytest.raises(DatasetError, match=r"no column named 'tweet'; the columns are: text, topic"):
        ingest_file(path, text_column="tweet")
    with pytest.raises(DatasetError, match=r"no column named 'mood'"):
        ingest_file(path, task=TASK, target="mood")
    _nothing_written(home)


def test_json_lines_and_parquet(home: Path, tmp_path: Path) -> None:
    news = _news()
    jsonl = tmp_path / "news.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"id": i, "text": t, "label": y}) + "\n" for i, (t, y) in enumerate(news.values)),
        encoding="utf-8",
    )
    ds = ingest_file(jsonl, task=TASK)
    assert ds.format == "jsonl" and ds.n_items == 20 and ds.schema["classes"] == list(BBC_CLASSES)
    assert _stored(ds)["text"].tolist() == news["text"].tolist()

    news.rename(columns={"text": "content", "topic": "category"}).to_parquet(tmp_path / "news.parquet")
    ds = ingest_file(tmp_path / "news.parquet", task=TASK)
    assert ds.format == "parquet" and ds.schema["text_column"] == "content"
    assert ds.report["class_counts"] == dict.fromkeys(BBC_CLASSES, 4)


def test_utf8_with_a_byte_order_mark_is_read_without_it(home: Path, tmp_path: Path) -> None:
    news = _news()
    ds = ingest_file(_csv(tmp_path, news, encoding="utf-8-sig"), task=TASK)
    assert ds.schema["text_column"] == "text"  # the header was not read as "\ufefftext"
    first = _stored(ds)["text"].iloc[0]
    assert first == news["text"].iloc[0] and not first.startswith("\ufeff")

    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(
        b"\xef\xbb\xbf" + b'{"text": "caf\xc3\xa9 opens", "label": "a"}\n{"text": "b", "label": "b"}\n'
    )
    assert _stored(ingest_file(jsonl, task=TASK))["text"].tolist() == ["café opens", "b"]


NOT_UTF8 = {
    "latin-1 csv": ("latin-1", "csv"),
    "utf-16 csv": ("utf-16", "csv"),
    "latin-1 json lines": ("latin-1", "jsonl"),
    "utf-16 json lines": ("utf-16", "jsonl"),
}


@pytest.mark.parametrize("case", list(NOT_UTF8))
def test_other_encodings_are_refused_with_a_hint(home: Path, tmp_path: Path, case: str) -> None:
    encoding, suffix = NOT_UTF8[case]
    rows = [("Le café de la gare ferme", "fr"), ("The café by the station closes", "en")]
    if suffix == "csv":
        content = "text,label\n" + "".join(f"{t},{y}\n" for t, y in rows)
    else:
        content = "".join(json.dumps({"text": t, "label": y}, ensure_ascii=False) + "\n" for t, y in rows)
    path = tmp_path / f"upload.{suffix}"
    path.write_bytes(content.encode(encoding))
    with pytest.raises(DatasetError, match=r"not UTF-8 text.*save it as UTF-8"):
        ingest_file(path, task=TASK)
    _nothing_written(home)


def test_report_counts_empty_texts_missing_labels_and_duplicates(home: Path, tmp_path: Path) -> None:
    rows = [(f"A fine film, number {i}, well worth seeing.", "pos") for i in range(10)]
    rows += [(f"A dull film, number {i}, best avoided.", "neg") for i in range(10)]
    rows += [rows[0], rows[0]]  # exact duplicates
    rows += [("The film was fine.", "pos"), ("The film was fine.", "neg")]  # conflicting labels
    rows += [("", "pos"), ("   ", "neg")]  # empty texts
    rows += [("A text nobody labelled.", None)]
    ds = ingest_file(_csv(tmp_path, pd.DataFrame(rows, columns=["text", "label"])), task=TASK)
    rep = ds.report
    assert rep["rows"] == 27 and rep["examples"] == ds.n_items == 24
    assert rep["empty_texts"] == 2 and rep["missing_labels"] == 1
    assert rep["duplicate_texts"] == 3 and rep["conflicting_duplicates"] == 1
    assert rep["conflict_examples"] == [{"text": "The film was fine.", "labels": ["neg", "pos"]}]
    assert rep["class_counts"] == {"neg": 11, "pos": 13}
    assert rep["imbalance_ratio"] == pytest.approx(13 / 11)
    stored = _stored(ds)
    assert len(stored) == 24 and stored["text"].str.strip().ne("").all() and stored["label"].notna().all()
    assert "A text nobody labelled." not in stored["text"].tolist()


def _class_folders(top: str = "") -> dict[str, bytes]:
    return {f"{top}{label}/{i}.txt": text.encode() for i, (text, label) in enumerate(bbc_news(per_class=3))}


@pytest.mark.parametrize("top", ["", "bbc/"], ids=["class folders", "inside one top folder"])
def test_zip_of_class_folders_of_txt_files(home: Path, tmp_path: Path, top: str) -> None:
    entries = _class_folders(top)
    entries[f"{top}tech/bom.txt"] = "\ufeffA new phone with a bigger screen.".encode()
    entries[f"{top}tech/notes.md"] = b"not a text example"
    entries[f"__MACOSX/{top}tech/._0.txt"] = b"resource fork"
    entries[f"{top}.DS_Store"] = b"finder"
    ds = ingest_file(_zip(tmp_path / "bbc.zip", entries), task=TASK)
    assert ds.format == "zip" and ds.n_items == 16
    assert ds.schema["classes"] == list(BBC_CLASSES)
    assert ds.report["class_counts"] == {**dict.fromkeys(BBC_CLASSES, 3), "tech": 4}
    stored = _stored(ds)
    assert stored.columns.tolist() == ["text", "label"]
    assert "A new phone with a bigger screen." in stored["text"].tolist()
    assert set(stored["text"]) - {"A new phone with a bigger screen."} == {
        t for t, _ in bbc_news(per_class=3)
    }


BAD_ZIPS = {
    "path escape": ({"a/1.txt": b"one", "b/2.txt": b"two", "../x.txt": b"evil"}, "outside its folder"),
    "absolute path": ({"a/1.txt": b"one", "/tmp/x.txt": b"evil"}, "absolute path"),
    "no txt file": ({"a/1.csv": b"x,y", "b/2.png": b"\x89PNG"}, r"holds no \.txt file"),
    "one class": ({"news/1.txt": b"one", "news/2.txt": b"two"}, "one class"),
    "one class in a top folder": ({"top/news/1.txt": b"one", "top/news/2.txt": b"two"}, "one class"),
    "files at the top": ({"1.txt": b"one", "b/2.txt": b"two"}, "in a folder named after its class"),
    "latin-1 file": ({"a/1.txt": "caf\xe9".encode("latin-1"), "b/2.txt": b"two"}, r"a/1\.txt is not UTF-8"),
    "only empty files": ({"a/1.txt": b"", "b/2.txt": b"  \n"}, "no row has both a text"),
}


@pytest.mark.parametrize("case", list(BAD_ZIPS))
def test_bad_text_zips_are_refused_and_leave_nothing(home: Path, tmp_path: Path, case: str) -> None:
    entries, message = BAD_ZIPS[case]
    with pytest.raises(DatasetError, match=message):
        ingest_file(_zip(tmp_path / "bad.zip", entries), task=TASK)
    _nothing_written(home)


def _table(**columns: list[object]) -> bytes:
    return pd.DataFrame(columns).to_csv(index=False).encode()


BAD_TABLES = {
    "empty file": (b"", {}, r"empty \(0 bytes\)"),
    "header only": (b"text,label\n", {}, "no rows"),
    "one class": (_table(text=["good", "fine", "great"], label=["pos"] * 3), {}, r"one class \('pos'\)"),
    "all texts empty": (_table(text=["", " ", None], label=["a", "b", "a"]), {}, r"no row has both.*3 empty"),
    "all labels missing": (_table(text=["a b", "c d"], label=[None, None]), {}, "2 missing labels"),
    "label is the text column": (
        _table(text=["a b", "c d"], label=["x", "y"]),
        {"text_column": "text", "target": "text"},
        "cannot be both the text and the label column",
    ),
    "no text-like column": (
        _table(x=[1.5, 2.5, 3.5], y=[0, 1, 0]),
        {},
        "no column holds text.*--text-column",
    ),
    "a label per row": (
        _table(text=[f"text {i}" for i in range(1001)], id=[f"row-{i}" for i in range(1001)]),
        {"target": "id"},
        "1001 distinct labels",
    ),
}


@pytest.mark.parametrize("case", list(BAD_TABLES))
def test_unusable_tables_are_refused_and_leave_nothing(home: Path, tmp_path: Path, case: str) -> None:
    content, options, message = BAD_TABLES[case]
    path = tmp_path / "upload.csv"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=message):
        ingest_file(path, task=TASK, **options)
    _nothing_written(home)


def test_broken_files_and_other_types_are_refused(home: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine", "label": "a"}\nthis is not json\n')
    with pytest.raises(DatasetError, match="not JSON Lines"):
        ingest_file(broken, task=TASK)
    one_field = tmp_path / "one.jsonl"
    one_field.write_text('{"text": "a"}\n{"text": "b"}\n')
    with pytest.raises(DatasetError, match="needs a text field and a label field"):
        ingest_file(one_field, task=TASK)
    doc = tmp_path / "notes.docx"
    doc.write_bytes(b"PK\x03\x04 not a table")
    with pytest.raises(DatasetError, match="text-classification takes a CSV, TSV, Parquet or JSON Lines"):
        ingest_file(doc, task=TASK)
    _nothing_written(home)


def test_the_text_task_is_detected_without_being_asked(home: Path, tmp_path: Path) -> None:
    """A free-text column or a zip of .txt files is text classification unless told otherwise."""
    news = ingest_file(_csv(tmp_path, _news(4).rename(columns={"topic": "label"})))
    assert news.task == TASK and news.schema["text_column"] == "text"
    folders = ingest_file(_zip(tmp_path / "news.zip", _class_folders()))
    assert folders.task == TASK and folders.format == "zip"
    forced = ingest_file(
        _csv(tmp_path, _news(4).assign(words=lambda d: d["text"].str.len()), name="t.csv"),
        task="tabular-regression",
        target="words",
    )
    assert forced.task == "tabular-regression"
