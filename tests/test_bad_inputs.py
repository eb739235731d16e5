"""The bad-input battery: every way a user can hand the command line something wrong, over
every modality, each answered with exit status 1 and one line on stderr that says what to fix
(never a traceback, never an error id, which would mean an unexpected error), and nothing
written: no new file under ASCENT_HOME, no new row in any table.

Each case runs `python -m core ...` in a fresh process (three at a time: they only read)
against one home that holds a trained run of each modality (tables, images, texts, audio),
a queued run and a run whose dataset was deleted. The cases marked for PostgreSQL run there
too, in test_bad_inputs_postgres.py (CI sets ASCENT_TEST_DATABASE_URL): a file of its own so
the two test processes build the two homes side by side.
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import time
import uuid
import warnings
import wave
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("ASCENT_TEST_DATABASE_URL", "")
TABLES = (
    "datasets",
    "runs",
    "params",
    "metrics",
    "latest_metrics",
    "artifacts",
    "exports",
    "users",
    "app_settings",
    "workers",
)


# --- the files users hand over -------------------------------------------------------------


def _png(size: tuple[int, int] = (24, 20), seed: int = 0, mode: str = "RGB") -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    if mode == "L":
        img = Image.new("L", size)  # a blank page compresses to almost nothing, whatever its size
    else:
        img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _wav(seconds: float, rate: int = 8000, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    samples = (rng.normal(0, 0.2, int(seconds * rate)).clip(-1, 1) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return buf.getvalue()


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def _text(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def _wine_rows(n: int = 60) -> str:
    from sklearn.datasets import load_wine

    return load_wine(as_frame=True).frame.sample(n, random_state=0).to_csv(index=False)


def _files(d: Path) -> dict[str, Path]:
    """Every bad (and a few good) files, by name."""
    from PIL import Image

    f: dict[str, Path] = {}
    f["empty.csv"] = _text(d / "empty.csv", b"")
    f["header-only.csv"] = _text(d / "header-only.csv", "a,b,target\n")
    f["one-column.csv"] = _text(d / "one-column.csv", "target\n1\n2\n")
    f["latin1.csv"] = _text(d / "latin1.csv", "name,target\ncaf\xe9,1\nthe,0\n".encode("latin-1"))
    f["binary.csv"] = _text(d / "binary.csv", b"\x00\x01\x02PK\x03\x04" * 50)
    f["ragged.csv"] = _text(d / "ragged.csv", "a,b,target\n1,2,0\n3,4,1,9,9\n5,6,0\n")
    f["collide.csv"] = _text(d / "collide.csv", "a, a,target\n1,2,0\n3,4,1\n")
    f["duplicate.csv"] = _text(d / "duplicate.csv", "a,a,target\n1,2,0\n3,4,1\n")
    wide = pd.DataFrame(np.zeros((2, 2001)), columns=[f"c{i}" for i in range(2001)])
    wide.to_csv(d / "wide.csv", index=False)
    f["wide.csv"] = d / "wide.csv"
    f["long-cell.csv"] = _text(d / "long-cell.csv", "note,x,target\n" + "y" * 100_001 + ",1,0\nok,2,1\n")
    pd.DataFrame({"x": [[1, 2], [3]], "target": [0, 1]}).to_parquet(d / "lists.parquet")
    f["lists.parquet"] = d / "lists.parquet"
    pd.DataFrame({"x": [{"a": 1}, {"a": 2}], "target": [0, 1]}).to_parquet(d / "structs.parquet")
    f["structs.parquet"] = d / "structs.parquet"
    f["corrupt.parquet"] = _text(d / "corrupt.parquet", b"PAR1 this is not parquet")
    f["wine.csv"] = _text(d / "wine.csv", _wine_rows())
    f["photo.png"] = _text(d / "photo.png", _png())
    f["marian-folder"] = d / "marian-folder"  # a config.json is all the check before a run reads
    f["marian-folder"].mkdir()
    _text(f["marian-folder"] / "config.json", '{"model_type": "marian"}')
    f["no-target-values.csv"] = _text(d / "no-target-values.csv", "a,b,target\n1,2,\n3,4,\n")
    f["one-class.csv"] = _text(d / "one-class.csv", "a,b,target\n1,2,x\n3,4,x\n5,1,x\n")
    f["constant.csv"] = _text(d / "constant.csv", "a,b,target\n1,7,0\n1,7,1\n1,7,0\n")
    f["long-label.csv"] = _text(d / "long-label.csv", f"a,target\n1,{'L' * 300}\n2,short\n")
    f["table.xlsx"] = _text(d / "table.xlsx", b"PK\x03\x04 not really a workbook")
    rng = np.random.default_rng(0)
    levels = pd.DataFrame({f"cat{j}": [f"value-{j}-{i % 900}" for i in range(1800)] for j in range(3)})
    levels["target"] = rng.integers(0, 2, 1800)
    levels.to_csv(d / "many-levels.csv", index=False)
    f["many-levels.csv"] = d / "many-levels.csv"
    f["not-json.jsonl"] = _text(d / "not-json.jsonl", "{this is not json}\n")
    f["nested.jsonl"] = _text(
        d / "nested.jsonl",
        "".join(json.dumps({"text": {"nested": i}, "label": i % 2}) + "\n" for i in range(6)),
    )
    f["empty.jsonl"] = _text(d / "empty.jsonl", "   \n")
    f["no-instructions.jsonl"] = _text(d / "no-instructions.jsonl", '{"a": 1, "b": 2}\n' * 3)
    f["no-answers.jsonl"] = _text(d / "no-answers.jsonl", '{"prompt": "why?", "response": ""}\n' * 3)
    f["one-pair.jsonl"] = _text(d / "one-pair.jsonl", '{"prompt": "why?", "response": "because"}\n')
    news = "".join(
        f"story number {i} about the markets and the vote today,{'a' if i % 2 else 'b'}\n" for i in range(20)
    )
    f["news.csv"] = _text(d / "news.csv", "text,label\n" + news)
    one_topic = "".join(f"the long story number {i} of one single topic only\n" for i in range(10))
    f["one-topic.csv"] = _text(d / "one-topic.csv", "text,label\n" + one_topic.replace("\n", ",a\n"))
    long_labels = "".join(
        f"a story of some length number {i},{'x' * 300 if i % 2 else 'y'}\n" for i in range(10)
    )
    f["long-labels.csv"] = _text(d / "long-labels.csv", "text,label\n" + long_labels)
    f["texts-at-top.zip"] = _zip(d / "texts-at-top.zip", {"a.txt": b"hello there", "b.txt": b"more"})
    f["texts-latin1.zip"] = _zip(d / "texts-latin1.zip", {"a/1.txt": b"caf\xe9", "b/2.txt": b"fine"})
    f["texts-long.zip"] = _zip(d / "texts-long.zip", {"a/1.txt": b"w " * 60_000, "b/2.txt": b"fine"})

    f["garbage.zip"] = _text(d / "garbage.zip", b"this is not a zip archive at all")
    f["escape.zip"] = _zip(d / "escape.zip", {"a/1.png": _png(), "../../evil.png": _png()})
    f["absolute.zip"] = _zip(d / "absolute.zip", {"a/1.png": _png(), "/tmp/evil.png": _png()})
    with zipfile.ZipFile(d / "link.zip", "w") as zf:
        zf.writestr("a/1.png", _png())
        zf.writestr("b/2.png", _png(seed=1))
        info = zipfile.ZipInfo("b/link.png")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    f["link.zip"] = d / "link.zip"
    f["long-name.zip"] = _zip(d / "long-name.zip", {f"{'n' * 300}/1.png": _png(), "b/2.png": _png(seed=1)})
    f["file-and-folder.zip"] = _zip(
        d / "file-and-folder.zip",
        {"img": _png(), "img/x.png": _png(seed=1), "labels.csv": b"path,label\nimg,a\nimg/x.png,b\n"},
    )
    with zipfile.ZipFile(d / "twice.zip", "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate it is asked to write
        zf.writestr("a/1.png", _png())
        zf.writestr("a/1.png", _png(seed=2))
        zf.writestr("b/2.png", _png(seed=1))
    f["twice.zip"] = d / "twice.zip"
    f["bomb.zip"] = _zip(d / "bomb.zip", {"a/1.png": _png(), "b/zeros.png": bytes(30_000_000)})
    f["many-entries.zip"] = _zip(
        d / "many-entries.zip", {f"{'ab'[i % 2]}/{i}.png": _png(seed=i) for i in range(12)}
    )
    f["flat.zip"] = _zip(d / "flat.zip", {"1.png": _png(), "2.png": _png(seed=1)})
    f["one-class.zip"] = _zip(d / "one-class.zip", {"cats/1.png": _png(), "cats/2.png": _png(seed=1)})
    f["unreadable.zip"] = _zip(d / "unreadable.zip", {"a/1.png": b"text", "b/2.jpg": b"more text"})
    f["csv-missing.zip"] = _zip(
        d / "csv-missing.zip", {"x/1.png": _png(), "labels.csv": b"path,label\nx/1.png,a\nx/2.png,b\n"}
    )
    f["csv-columns.zip"] = _zip(
        d / "csv-columns.zip", {"x/1.png": _png(), "labels.csv": b"file,class\nx/1.png,a\n"}
    )
    huge = _png((10_000, 10_000), mode="L")  # 100 megapixels, over the 64-megapixel limit
    f["huge.zip"] = _zip(d / "huge.zip", {"a/1.png": huge, "b/2.png": huge})
    f["huge.png"] = _text(d / "huge.png", huge)
    yolo = {"images/a.png": _png(), "classes.txt": b"cat\ndog\n"}
    f["yolo-pixels.zip"] = _zip(d / "yolo-pixels.zip", {**yolo, "labels/a.txt": b"1 12 10 6 4\n"})
    f["yolo-corners.zip"] = _zip(d / "yolo-corners.zip", {**yolo, "labels/a.txt": b"0 0.2 0.3 0.9 0.8\n"})
    rle = {"counts": "PP0", "size": [20, 24]}
    coco = {
        "images": [{"id": 1, "file_name": "a.png"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "segmentation": rle}
        ],
        "categories": [{"id": 1, "name": "cat"}],
    }
    f["coco-rle.zip"] = _zip(
        d / "coco-rle.zip", {"annotations.json": json.dumps(coco).encode(), "a.png": _png()}
    )
    f["mask-size.zip"] = _zip(
        d / "mask-size.zip",
        {"images/a.png": _png(), "masks/a.png": _png((12, 10), mode="L"), "classes.txt": b"bg\nroad\n"},
    )
    f["not-an-image.png"] = _text(d / "not-an-image.png", b"plain text, not pixels")
    Image.new("RGB", (8, 8)).save(d / "tiny.png")
    f["tiny.png"] = d / "tiny.png"

    f["no-clips.zip"] = _zip(d / "no-clips.zip", {"yes/readme.txt": b"no audio here", "no/x.txt": b"none"})
    f["clip-at-top.zip"] = _zip(d / "clip-at-top.zip", {"1.wav": _wav(0.5), "yes/2.wav": _wav(0.5, seed=1)})
    f["bad-clips.zip"] = _zip(d / "bad-clips.zip", {"yes/1.wav": b"RIFF garbage", "no/2.wav": b""})
    f["one-word.zip"] = _zip(d / "one-word.zip", {"yes/1.wav": _wav(0.5), "yes/2.wav": _wav(0.5, seed=1)})
    f["long-clips.zip"] = _zip(d / "long-clips.zip", {"yes/1.wav": _wav(3.0), "no/2.wav": _wav(3.0, seed=1)})
    f["long.wav"] = _text(d / "long.wav", _wav(3.0))
    f["speech-columns.zip"] = _zip(
        d / "speech-columns.zip", {"metadata.csv": b"path,words\na.wav,hi\n", "a.wav": _wav(0.5)}
    )
    f["speech-unlisted.zip"] = _zip(
        d / "speech-unlisted.zip",
        {"metadata.csv": b"file_name,transcription\ngone.wav,hi\n", "a.wav": _wav(0.5)},
    )
    f["speech-unreadable.zip"] = _zip(
        d / "speech-unreadable.zip",
        {"metadata.csv": b"file_name,transcription\na.wav,hi\n", "a.wav": b"RIFF junk"},
    )
    f["speech.zip"] = _zip(
        d / "speech.zip",
        {"metadata.csv": b"file_name,transcription\na.wav,hello there\n", "a.wav": _wav(1.0)},
    )
    pairs = [
        ("the cat sleeps", "el gato duerme"),
        ("the dog eats", "el perro come"),
        ("a red car", "un coche rojo"),
    ]
    f["pairs.csv"] = _text(
        d / "pairs.csv", "source,target\n" + "".join(f"{a} {i},{b} {i}\n" for i in range(4) for a, b in pairs)
    )
    f["pairs-unnamed.csv"] = _text(
        d / "pairs-unnamed.csv", "a,b\n" + "".join(f"{a},{b}\n" for a, b in pairs * 2)
    )
    f["pairs-few.csv"] = _text(d / "pairs-few.csv", "en,es\n" + "".join(f"{a},{b}\n" for a, b in pairs))
    f["not-audio.wav"] = _text(d / "not-audio.wav", b"RIFF....WAVEnot really")
    f["rows-latin1.csv"] = _text(d / "rows-latin1.csv", b"alcohol\n\xff\xfe\x00")
    f["texts.txt"] = _text(d / "texts.txt", "a text to classify\n")
    f["texts-latin1.txt"] = _text(d / "texts-latin1.txt", b"caf\xe9 au lait\n")
    return f


# --- the cases -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    argv: list[str]  # {name} is a file above; {run:kind} and {ds:kind} are ids from the home
    expect: str  # part of the one line: what is wrong, or what to do
    env: dict[str, str] = field(default_factory=dict)
    stdin: str = ""
    postgres: bool = False  # also run it on PostgreSQL


LONG = "n" * 201
CASES: dict[str, Case] = {
    # tables
    "empty file": Case(["datasets", "add", "{empty.csv}"], "is empty (0 bytes)", postgres=True),
    "header without rows": Case(["datasets", "add", "{header-only.csv}"], "has a header but no rows"),
    "one column": Case(["datasets", "add", "{one-column.csv}"], "a table needs a target column"),
    "not UTF-8": Case(["datasets", "add", "{latin1.csv}"], "is not UTF-8 text"),
    "binary named .csv": Case(["datasets", "add", "{binary.csv}"], "looks like a binary file"),
    "ragged rows": Case(["datasets", "add", "{ragged.csv}"], "is not a consistent table"),
    "names that collide once trimmed": Case(["datasets", "add", "{collide.csv}"], "have the same name 'a'"),
    "a name twice": Case(["datasets", "add", "{duplicate.csv}"], "have the same name 'a'"),
    "2,001 columns": Case(["datasets", "add", "{wide.csv}"], "over the limit of 2,000 (ASCENT_MAX_COLUMNS)"),
    "a cell of 100,001 characters": Case(["datasets", "add", "{long-cell.csv}"], "ASCENT_MAX_CELL_CHARS"),
    "a Parquet list column": Case(["datasets", "add", "{lists.parquet}"], "holds lists, structs or binary"),
    "a Parquet struct column": Case(
        ["datasets", "add", "{structs.parquet}"], "holds lists, structs or binary"
    ),
    "a corrupt Parquet file": Case(
        ["datasets", "add", "{corrupt.parquet}"], "is not a readable Parquet file"
    ),
    "no such target": Case(["datasets", "add", "{wine.csv}", "--target", "nope"], "no column named 'nope'"),
    "a target without values": Case(
        ["datasets", "add", "{no-target-values.csv}"], "every value of the target"
    ),
    "one class": Case(["datasets", "add", "{one-class.csv}"], "has only one class"),
    "regression of text labels": Case(
        ["datasets", "add", "{one-class.csv}", "--task", "tabular-regression"], "is not numeric"
    ),
    "no usable feature": Case(["datasets", "add", "{constant.csv}"], "no usable feature column"),
    "a label of 300 characters": Case(
        ["datasets", "add", "{long-label.csv}"], "class labels are at most 200"
    ),
    "an unsupported file type": Case(["datasets", "add", "{table.xlsx}"], "unsupported file type '.xlsx'"),
    "a file that is not there": Case(["datasets", "add", "/nowhere/at/all.csv"], "does not exist"),
    "an unknown task": Case(["datasets", "add", "{wine.csv}", "--task", "poetry"], "invalid choice"),
    "a dataset name of 201 characters": Case(
        ["datasets", "add", "{wine.csv}", "--name", LONG], "at most 200 characters", postgres=True
    ),
    "a dataset name on two lines": Case(["datasets", "add", "{wine.csv}", "--name", "a\nb"], "one line"),
    "a schema over its size limit": Case(
        ["datasets", "add", "{many-levels.csv}"],
        "ASCENT_MAX_SCHEMA_BYTES",
        {"ASCENT_MAX_SCHEMA_BYTES": "20000"},
    ),
    "an upload over its size limit": Case(
        ["datasets", "add", "{wine.csv}"], "ASCENT_MAX_UPLOAD_BYTES", {"ASCENT_MAX_UPLOAD_BYTES": "1000"}
    ),
    "show a dataset that is not there": Case(
        ["datasets", "show", "999"], "no dataset with id 999", postgres=True
    ),
    "delete a dataset that is not there": Case(["datasets", "delete", "999"], "no dataset with id 999"),
    # texts
    "JSON Lines that are not JSON": Case(["datasets", "add", "{not-json.jsonl}"], "is not JSON Lines"),
    "JSON Lines with objects in a field": Case(
        ["datasets", "add", "{nested.jsonl}"], "holds lists or objects"
    ),
    "empty JSON Lines": Case(["datasets", "add", "{empty.jsonl}"], "one JSON object per line"),
    "text and label the same column": Case(
        ["datasets", "add", "{news.csv}", "--text-column", "text", "--target", "text"], "cannot be both"
    ),
    "no such text column": Case(
        ["datasets", "add", "{news.csv}", "--text-column", "body"], "no column named 'body'"
    ),
    "texts of one topic": Case(
        ["datasets", "add", "{one-topic.csv}", "--text-column", "text"], "has one class"
    ),
    "text labels of 300 characters": Case(
        ["datasets", "add", "{long-labels.csv}", "--text-column", "text"], "over 200 characters"
    ),
    "a text zip with files at the top": Case(
        ["datasets", "add", "{texts-at-top.zip}"], "in a folder named after"
    ),
    "a text zip in Latin-1": Case(["datasets", "add", "{texts-latin1.zip}"], "is not UTF-8"),
    "a text file over the cell limit": Case(
        ["datasets", "add", "{texts-long.zip}", "--task", "text-classification"], "ASCENT_MAX_CELL_CHARS"
    ),
    # images
    "a .zip that is not one": Case(["datasets", "add", "{garbage.zip}"], "is not a valid zip archive"),
    "a zip entry escaping its folder": Case(["datasets", "add", "{escape.zip}"], "points outside its folder"),
    "a zip entry with an absolute path": Case(["datasets", "add", "{absolute.zip}"], "has an absolute path"),
    "a link in a zip": Case(["datasets", "add", "{link.zip}"], "contains a link"),
    "a folder name of 300 characters": Case(
        ["datasets", "add", "{long-name.zip}"], "has a name over 255 bytes"
    ),
    "a file that is also a folder": Case(
        ["datasets", "add", "{file-and-folder.zip}"], "also files inside a folder"
    ),
    "a zip entry twice": Case(["datasets", "add", "{twice.zip}"], "twice"),
    "a zip bomb": Case(
        ["datasets", "add", "{bomb.zip}"], "is it a zip bomb?", {"ASCENT_MAX_UNPACKED_BYTES": "10000000"}
    ),
    "too many zip entries": Case(
        ["datasets", "add", "{many-entries.zip}"], "ASCENT_MAX_ZIP_ENTRIES", {"ASCENT_MAX_ZIP_ENTRIES": "5"}
    ),
    "images without class folders": Case(["datasets", "add", "{flat.zip}"], "no class folders"),
    "images of one class": Case(["datasets", "add", "{one-class.zip}"], "only one class"),
    "no readable image": Case(["datasets", "add", "{unreadable.zip}"], "no readable image"),
    "a labels CSV naming a missing image": Case(["datasets", "add", "{csv-missing.zip}"], "not in the zip"),
    "a labels CSV without path,label": Case(
        ["datasets", "add", "{csv-columns.zip}"], "needs the columns path,label"
    ),
    "two 100-megapixel PNGs": Case(["datasets", "add", "{huge.zip}"], "over the limit of 64 megapixels"),
    # boxes and masks
    "YOLO boxes in pixels": Case(["datasets", "add", "{yolo-pixels.zip}"], "values over 1 look like pixels"),
    "YOLO corners for centres": Case(
        ["datasets", "add", "{yolo-corners.zip}"], "looks like corners (x1 y1 x2 y2)"
    ),
    "COCO RLE masks for segmentation": Case(
        ["datasets", "add", "{coco-rle.zip}", "--task", "semantic-segmentation"],
        "RLE masks are not supported",
    ),
    "a mask of another size than its image": Case(
        ["datasets", "add", "{mask-size.zip}"], "a mask has its image's size"
    ),
    # audio
    "audio from a table": Case(
        ["datasets", "add", "{wine.csv}", "--task", "audio-classification"], "takes a zip"
    ),
    "an audio zip without clips": Case(
        ["datasets", "add", "{no-clips.zip}", "--task", "audio-classification"], "holds no .wav or .flac"
    ),
    "a clip outside a class folder": Case(
        ["datasets", "add", "{clip-at-top.zip}"], "in a folder named after"
    ),
    "unreadable clips": Case(["datasets", "add", "{bad-clips.zip}"], "no readable clip"),
    "clips of one word": Case(["datasets", "add", "{one-word.zip}"], "only one class"),
    "transcripts without their column": Case(
        ["datasets", "add", "{speech-columns.zip}"], "needs a file_name column and a transcript column"
    ),
    "transcripts of clips the zip lacks": Case(
        ["datasets", "add", "{speech-unlisted.zip}"], "has a transcript (rows name clips the zip lacks"
    ),
    "transcribed clips that cannot be read": Case(
        ["datasets", "add", "{speech-unreadable.zip}"], "no readable clip with a transcript"
    ),
    "clips without transcripts as speech": Case(
        ["datasets", "add", "{one-word.zip}", "--task", "speech-recognition"], "has no transcripts"
    ),
    # translation
    "pairs without source and target columns": Case(
        ["datasets", "add", "{pairs-unnamed.csv}", "--task", "translation"],
        "has no source and target columns",
    ),
    "a source column that is not there": Case(
        ["datasets", "add", "{pairs.csv}", "--source-column", "nope", "--target-column", "target"],
        "has no column 'nope'",
    ),
    "one side of the pair named": Case(
        ["datasets", "add", "{pairs-unnamed.csv}", "--source-column", "a"], "name both columns"
    ),
    "three pairs": Case(["datasets", "add", "{pairs-few.csv}"], "translation needs at least 4"),
    "LoRA on a model from scratch": Case(
        ["train", "--dataset", "{ds:pairs}", "--finetune", "lora"], "marian-small starts from scratch"
    ),
    "diff a run with itself": Case(["runs", "diff", "{run:table}", "{run:table}"], "give two different runs"),
    "diff runs of two datasets": Case(
        ["runs", "diff", "{run:table}", "{run:image}"], "compare runs of one dataset"
    ),
    "diff a run not trained yet": Case(
        ["runs", "diff", "{run:table}", "{run:queued}"], "has no stored validation predictions: it is queued"
    ),
    "diff a translation run": Case(
        ["runs", "diff", "{run:translation}", "{run:table}"], "(translation) keeps none yet"
    ),
    "diff a run whose dataset was deleted": Case(
        ["runs", "diff", "{run:table}", "{run:orphan}"], "dataset was deleted"
    ),
    "diff listing no samples": Case(
        ["runs", "diff", "{run:table}", "{run:image}", "--limit", "0"], "0 is not a positive whole number"
    ),
    "slice by a column the table lacks": Case(
        ["runs", "slices", "{run:table}", "--by", "nope"], "'nope' is no slice of dataset"
    ),
    "slice three runs": Case(
        ["runs", "slices", "{run:table}", "{run:image}", "{run:text}"], "give one run, or two different runs"
    ),
    "slice into one range": Case(
        ["runs", "slices", "{run:table}", "--bins", "1"], "--bins must be between 2"
    ),
    "serve on an address not this machine's": Case(
        ["serve", "--host", "192.0.2.1"], "it is not an address of this machine"
    ),
    "serve a run not there": Case(["serve", "--run", "999"], "no run with id 999"),
    "serve a run not trained yet": Case(["serve", "--run", "{run:queued}"], "has no exported model to serve"),
    "serve on no port": Case(["serve", "--port", "0"], "--port 0 is no port"),
    "bundle a run not there": Case(
        ["bundle", "--run", "999", "--out", "/nowhere/b.zip"], "no run with id 999"
    ),
    "bundle a run not trained yet": Case(
        ["bundle", "--run", "{run:queued}", "--out", "/nowhere/b.zip"], "has no exported model to bundle"
    ),
    "bundle a variant never measured": Case(
        ["bundle", "--run", "{run:table}", "--variant", "fp16", "--out", "/nowhere/b.zip"],
        "has no fp16 variant to bundle; choose from fp32",
    ),
    "bundle into a folder not there": Case(
        ["bundle", "--run", "{run:table}", "--out", "/nowhere/b.zip"], "/nowhere is not a folder"
    ),
    "bundle into a file not a zip": Case(
        ["bundle", "--run", "{run:table}", "--out", "{wine.csv}"], "is neither a folder nor a .zip file"
    ),
    "explain a translation run": Case(
        ["explain", "--run", "{run:translation}", "{photo.png}"],
        "explain takes table, text, image, audio, detection and segmentation runs",
    ),
    "explain a segmentation run with a text": Case(
        ["explain", "--run", "{run:masks}", "--text", "hello"], "a segmentation run explains images"
    ),
    "explain a segmentation run without images": Case(
        ["explain", "--run", "{run:masks}"], "give the images (PNG, JPEG, WebP or BMP files) to explain"
    ),
    "explain a segmentation run by an unknown method": Case(
        ["explain", "--run", "{run:masks}", "{photo.png}", "--method", "shap"],
        "'shap' is no method for semantic-segmentation",
    ),
    "explain a segmentation run above a score": Case(
        ["explain", "--run", "{run:masks}", "{photo.png}", "--threshold", "0.5"],
        "--threshold is for detection runs",
    ),
    "explain a segmentation class the run lacks": Case(
        ["explain", "--run", "{run:masks}", "{photo.png}", "--label", "sideways"],
        "'sideways' is no class of run",
    ),
    "explain a table as a segmentation image": Case(
        ["explain", "--run", "{run:masks}", "{wine.csv}"], "wine.csv: not a readable image"
    ),
    "explain a segmentation image into a file": Case(
        ["explain", "--run", "{run:masks}", "{photo.png}", "--out", "{wine.csv}"], "is a file; give a folder"
    ),
    "explain a table as an image": Case(
        ["explain", "--run", "{run:image}", "{wine.csv}"], "wine.csv: not a readable image"
    ),
    "explain an image by an unknown method": Case(
        ["explain", "--run", "{run:image}", "{photo.png}", "--method", "shap"],
        "'shap' is no method for image-classification; give one of: grad-cam, integrated-gradients",
    ),
    "explain an image run with a text": Case(
        ["explain", "--run", "{run:image}", "--text", "hello"], "an image run explains images"
    ),
    "explain an image into a file": Case(
        ["explain", "--run", "{run:image}", "{photo.png}", "--out", "{wine.csv}"], "is a file; give a folder"
    ),
    "explain an image not there": Case(
        ["explain", "--run", "{run:image}", "/no/photo.png"], "/no/photo.png does not exist"
    ),
    "explain an audio run without clips": Case(
        ["explain", "--run", "{run:audio}"], "give the clips (WAV or FLAC files) to explain"
    ),
    "explain an image as a clip": Case(
        ["explain", "--run", "{run:audio}", "{photo.png}"], "photo.png: not a readable WAV or FLAC clip"
    ),
    "explain a table run by a heatmap method": Case(
        ["explain", "--run", "{run:table}", "{wine.csv}", "--method", "grad-cam"],
        "--method is for image, audio, detection and segmentation runs",
    ),
    "importance of an image run": Case(
        ["explain", "--run", "{run:image}", "--importance"], "--importance is for table runs"
    ),
    "importance of given rows": Case(
        ["explain", "--run", "{run:table}", "{wine.csv}", "--importance"], "give it alone, without rows"
    ),
    "explain a text run into a folder": Case(
        ["explain", "--run", "{run:text}", "--text", "hello", "--out", "why"],
        "--out is for image, audio, detection",
    ),
    "explain a run not trained yet": Case(
        ["explain", "--run", "{run:queued}", "{wine.csv}"], "only a finished run can be explained"
    ),
    "explain rows for a class the run lacks": Case(
        ["explain", "--run", "{run:table}", "{wine.csv}", "--label", "sideways"], "'sideways' is no class"
    ),
    "explain a table run without rows": Case(["explain", "--run", "{run:table}"], "give the rows to explain"),
    "explain a text run with a file": Case(
        ["explain", "--run", "{run:text}", "{wine.csv}"], "a text run explains texts"
    ),
    "explain a table run with a text": Case(
        ["explain", "--run", "{run:table}", "--text", "hello"], "a table run explains rows"
    ),
    "doctor a speech dataset": Case(
        ["doctor", "--dataset", "{ds:speech}"], "the doctor examines classification datasets", postgres=True
    ),
    "doctor with one fold": Case(
        ["doctor", "--dataset", "{ds:table}", "--folds", "1"], "--folds must be between"
    ),
    "doctor listing nothing": Case(
        ["doctor", "--dataset", "{ds:table}", "--limit", "0"], "--limit must be 1"
    ),
    "doctor by another dataset's run": Case(
        ["doctor", "--dataset", "{ds:table}", "--run", "{run:text}"], "give a run of dataset"
    ),
    "doctor by a run not trained yet": Case(
        ["doctor", "--dataset", "{ds:table}", "--run", "{run:queued}"], "has no stored validation predictions"
    ),
    "doctor a dataset that is not there": Case(["doctor", "--dataset", "4040"], "no dataset with id 4040"),
    "relabel to a class the dataset lacks": Case(
        ["datasets", "revise", "{ds:table}", "--relabel", "3=sideways"],
        "'sideways' is not a class",
        postgres=True,
    ),
    "exclude an item past the end": Case(
        ["datasets", "revise", "{ds:table}", "--exclude", "100000"], "there is no item 100000"
    ),
    "revise without a change": Case(["datasets", "revise", "{ds:table}"], "nothing to change"),
    "exclude and relabel one item": Case(
        ["datasets", "revise", "{ds:table}", "--exclude", "3", "--relabel", "3=1"],
        "both excluded and relabelled",
    ),
    "relabel without an equals sign": Case(
        ["datasets", "revise", "{ds:table}", "--relabel", "3:1"], "write ITEM=LABEL"
    ),
    "revise a speech dataset": Case(
        ["datasets", "revise", "{ds:speech}", "--exclude", "0"], "only classification datasets"
    ),
    "hf-t5 without weights": Case(
        ["train", "--dataset", "{ds:pairs}", "--model", "hf-t5"], "hf-t5 needs the T5 model"
    ),
    "a Marian folder for hf-t5": Case(
        ["train", "--dataset", "{ds:pairs}", "--model", "hf-t5", "--weights", "{marian-folder}"],
        "is a marian model; train it with --model hf-marian",
    ),
    "hf-marian without weights": Case(
        ["train", "--dataset", "{ds:pairs}", "--model", "hf-marian"], "hf-marian needs the Marian model"
    ),
    "translate nothing": Case(["predict", "--run", "{run:translation}"], "give --text TEXT"),
    "translate an empty text": Case(
        ["predict", "--run", "{run:translation}", "--text", " "], "the text is empty"
    ),
    "translate with sampling": Case(
        ["predict", "--run", "{run:translation}", "--text", "the cat", "--top-p", "0.9"],
        "are for text generation",
    ),
    "translate past the model's length": Case(
        ["predict", "--run", "{run:translation}", "--text", "the cat", "--max-new-tokens", "100000"],
        "--max-new-tokens must be between 1 and",
    ),
    "translate with 40 beams": Case(
        ["predict", "--run", "{run:translation}", "--text", "the cat", "--beams", "40"], "over the most, 16"
    ),
    "beams for a table model": Case(
        ["predict", "--run", "{run:table}", "--beams", "2", "{wine.csv}"],
        "--beams is for speech recognition and translation",
    ),
    "hf-whisper without weights": Case(
        ["train", "--dataset", "{ds:speech}", "--model", "hf-whisper"], "hf-whisper needs the Whisper model"
    ),
    "clips over the duration limit": Case(
        ["datasets", "add", "{long-clips.zip}"], "over the 2 s limit", {"ASCENT_MAX_CLIP_SECONDS": "2"}
    ),
    # training
    "train on a dataset that is not there": Case(
        ["train", "--dataset", "999"], "no dataset with id 999", postgres=True
    ),
    "a model of another task": Case(
        ["train", "--dataset", "{ds:table}", "--model", "audio-cnn"], "audio-cnn"
    ),
    "zero epochs": Case(["train", "--dataset", "{ds:table}", "--epochs", "0"], "epochs"),
    "epochs that are not a number": Case(
        ["train", "--dataset", "{ds:table}", "--epochs", "ten"], "invalid int"
    ),
    "a negative learning rate": Case(["train", "--dataset", "{ds:table}", "--lr", "-1"], "lr"),
    "a run name of 201 characters": Case(
        ["train", "--dataset", "{ds:table}", "--name", LONG], "at most 200 characters", postgres=True
    ),
    "start from a run that is not there": Case(
        ["train", "--dataset", "{ds:table}", "--init-from", "999"], "no run with id 999"
    ),
    "no --dataset": Case(["train"], "the following arguments are required: --dataset"),
    "a time budget that is no number": Case(
        ["train", "--dataset", "{ds:table}", "--budget", "soon"], "'soon' is no time budget"
    ),
    "a time budget of 5 s": Case(["train", "--dataset", "{ds:table}", "--budget", "5"], "10 s to 7 days"),
    "a batch that does not split over the processes": Case(
        ["train", "--dataset", "{ds:table}", "--batch-size", "16", "--processes", "3"],
        "a batch of 16 does not split over 3 processes",
    ),
    "no processes": Case(
        ["train", "--dataset", "{ds:table}", "--processes", "0"], "processes: Input should be"
    ),
    "an executor that does not exist": Case(
        ["worker", "--idle-exit", "0"],
        "ASCENT_EXECUTOR: Input should be 'local' or 'ray'",
        env={"ASCENT_EXECUTOR": "bogus"},
    ),
    "a Ray cluster that does not answer": Case(
        ["cluster"],
        "no Ray cluster answers at ASCENT_RAY_ADDRESS=127.0.0.1:9",
        env={"ASCENT_RAY_ADDRESS": "127.0.0.1:9"},
    ),
    "a sweep over a setting it cannot vary": Case(
        ["sweep", "--dataset", "{ds:table}", "--trials", "2", "--space", "colour=1..2"],
        "space: 'colour' is not a setting a sweep varies",
    ),
    "a sweep range upside down": Case(
        ["sweep", "--dataset", "{ds:table}", "--trials", "2", "--space", "lr=0.1..0.001"],
        "the low end must be below the high end",
    ),
    "a sweep value no run takes": Case(
        ["sweep", "--dataset", "{ds:table}", "--trials", "2", "--space", "batch_size=0,16"],
        "space: batch_size=0: batch_size: Input should be greater than or equal to 1",
    ),
    "more trials at once than trials": Case(
        ["sweep", "--dataset", "{ds:table}", "--trials", "2", "--parallel", "3"],
        "parallel: give 1 to the number of trials (2)",
    ),
    "a sweep that does not exist": Case(["sweeps", "show", "999"], "sweep 999 does not exist"),
    "hf-transformer without a model to fine-tune": Case(
        ["train", "--dataset", "{ds:text}", "--model", "hf-transformer"], "needs the Hugging Face model"
    ),
    "generation data without instruction columns": Case(
        ["datasets", "add", "{no-instructions.jsonl}", "--task", "text-generation"],
        "has no instruction columns",
    ),
    "instructions without one answer": Case(
        ["datasets", "add", "{no-answers.jsonl}"], "no usable example", postgres=True
    ),
    "instructions of one example": Case(["datasets", "add", "{one-pair.jsonl}"], "needs two or more"),
    "LoRA on layers named with semicolons": Case(
        ["train", "--dataset", "{ds:chat}", "--lora-targets", "q_proj;v_proj"], "names no layers"
    ),
    "a LoRA rank of 0": Case(["train", "--dataset", "{ds:chat}", "--lora-rank", "0"], "lora_rank"),
    "hf-causal-lm without a model to fine-tune": Case(
        ["train", "--dataset", "{ds:chat}", "--model", "hf-causal-lm"], "hf-causal-lm needs the chat model"
    ),
    # runs
    "show a run that is not there": Case(["runs", "show", "999"], "no run with id 999", postgres=True),
    "cancel a run that is not there": Case(["runs", "cancel", "999"], "no run with id 999"),
    "resume a finished run": Case(
        ["runs", "resume", "{run:table}"], "only lost, failed or cancelled runs resume"
    ),
    "resume a run whose dataset is gone": Case(["runs", "resume", "{run:stopped}"], "dataset was deleted"),
    "a run id that is not a number": Case(["runs", "show", "one"], "invalid int"),
    "cancel a finished run": Case(
        ["runs", "cancel", "{run:table}"], "only queued, running or lost runs cancel"
    ),
    "list runs of an unknown status": Case(["runs", "list", "--status", "bogus"], "invalid choice"),
    "a device that is none": Case(["train", "--dataset", "{ds:table}", "--device", "gpu"], "is no device"),
    # predicting
    "predict with a run not trained yet": Case(
        ["predict", "--run", "{run:queued}", "{wine.csv}"], "has no exported model"
    ),
    "predict from a file that is not there": Case(
        ["predict", "--run", "{run:table}", "/no/rows.csv"], "does not exist"
    ),
    "predict from rows not in UTF-8": Case(
        ["predict", "--run", "{run:table}", "{rows-latin1.csv}"], "is not UTF-8 text"
    ),
    "predict a table model from text": Case(
        ["predict", "--run", "{run:table}", "--text", "hello"], "--text is for text"
    ),
    "predict a table model from nothing": Case(
        ["predict", "--run", "{run:table}"], "give the files to predict"
    ),
    "predict from an empty file": Case(["predict", "--run", "{run:table}", "{empty.csv}"], "is empty"),
    "predict rows from a zip": Case(
        ["predict", "--run", "{run:table}", "{escape.zip}"], "CSV, TSV or Parquet"
    ),
    "predict with --top-k 0": Case(
        ["predict", "--run", "{run:image}", "{tiny.png}", "--top-k", "0"], "not a positive"
    ),
    "predict with --threshold 2": Case(
        ["predict", "--run", "{run:image}", "{tiny.png}", "--threshold", "2"], "is not between 0 and 1"
    ),
    "ask a generator nothing": Case(["predict", "--run", "{run:chat}"], "give the prompt with --text"),
    "ask a generator for no tokens": Case(
        ["predict", "--run", "{run:chat}", "--text", "hi", "--max-new-tokens", "0"],
        "max new tokens must be 1",
    ),
    "ask a generator with a top-p of 2": Case(
        ["predict", "--run", "{run:chat}", "--text", "hi", "--top-p", "2"], "top-p in (0, 1]"
    ),
    "ask a generator about a file": Case(
        ["predict", "--run", "{run:chat}", "{wine.csv}"], "takes --text PROMPT, not files"
    ),
    "ask a generator a blank prompt": Case(
        ["predict", "--run", "{run:chat}", "--text", " "], "the prompt is empty"
    ),
    "ask a generator with a negative temperature": Case(
        ["predict", "--run", "{run:chat}", "--text", "hi", "--temperature", "-1"],
        "temperature must be 0 or more",
    ),
    "ask a generator more than its context holds": Case(
        ["predict", "--run", "{run:chat}", "--text", "kettle " * 9000], "over the model's context of 8192"
    ),
    "sampling settings for a classifier": Case(
        ["predict", "--run", "{run:text}", "--text", "hi", "--temperature", "1"], "are for text generation"
    ),
    "start a segmenter from a missing weights file": Case(
        ["train", "--dataset", "{ds:masks}", "--weights", "/nonexistent/boxes.safetensors"],
        "weights file /nonexistent/boxes.safetensors does not exist",
    ),
    "start a segmenter from a folder without weights": Case(
        ["train", "--dataset", "{ds:masks}", "--weights", "/"],
        "folder / holds no model.safetensors or best.safetensors",
    ),
    "start a segmenter from a malformed hub id": Case(
        ["train", "--dataset", "{ds:masks}", "--weights", "hub:../x"],
        "'hub:../x' names no Hugging Face repo; give hub:ORG/NAME",
    ),
    "predict masks without --out": Case(["predict", "--run", "{run:masks}", "{tiny.png}"], "give --out DIR"),
    "predict masks into a file": Case(
        ["predict", "--run", "{run:masks}", "{tiny.png}", "--out", "{wine.csv}"], "is a file; give a folder"
    ),
    "predict an image that is not one": Case(
        ["predict", "--run", "{run:image}", "{not-an-image.png}"], "not a readable image"
    ),
    "predict a 100-megapixel image": Case(
        ["predict", "--run", "{run:image}", "{huge.png}"], "over the limit of 64"
    ),
    "predict a text model from files": Case(["predict", "--run", "{run:text}", "{texts.txt}"], "not files"),
    "predict texts not in UTF-8": Case(
        ["predict", "--run", "{run:text}", "--text-file", "{texts-latin1.txt}"], "is not UTF-8 text"
    ),
    "predict a text model from nothing": Case(["predict", "--run", "{run:text}"], "give --text TEXT"),
    "predict a clip that is not audio": Case(
        ["predict", "--run", "{run:audio}", "{not-audio.wav}"], "not a readable WAV"
    ),
    "predict a clip over the duration limit": Case(
        ["predict", "--run", "{run:audio}", "{long.wav}"],
        "over the limit of 2 s",
        {"ASCENT_MAX_CLIP_SECONDS": "2"},
    ),
    # the certificate
    "measure a run not trained yet": Case(["export", "--run", "{run:queued}"], "only a finished run"),
    "measure a run whose dataset is gone": Case(["export", "--run", "{run:orphan}"], "dataset was deleted"),
    "measure an unknown variant": Case(
        ["export", "--run", "{run:table}", "--variants", "fp8"], "unknown variant 'fp8'"
    ),
    # users
    "a password of 5 characters": Case(
        ["users", "add", "eve", "--password-stdin"], "at least 8", stdin="short\n"
    ),
    "a user name with spaces": Case(
        ["users", "add", "eve adams", "--password-stdin"], "letters, digits", stdin="long enough\n"
    ),
    "a user name taken": Case(
        ["users", "add", "ada", "--password-stdin"], "already exists", stdin="long enough\n", postgres=True
    ),
    "a password not given": Case(["users", "add", "eve"], "--password-stdin"),
    "an empty standard input": Case(["users", "add", "eve", "--password-stdin"], "standard input is empty"),
    "an unknown role": Case(["users", "add", "eve", "--role", "owner", "--password-stdin"], "invalid choice"),
    "delete a user who is not there": Case(["users", "delete", "nobody"], "no user named 'nobody'"),
    "delete the last admin": Case(["users", "delete", "ada"], "is the last admin"),
    "an API key for nobody": Case(["users", "key", "nobody"], "no user named 'nobody'"),
    "an API key's label too long": Case(["users", "key", "ada", "--label", LONG], "at most 200 characters"),
    "the API keys of nobody": Case(["users", "keys", "--user", "nobody"], "no user named 'nobody'"),
    "revoke an API key not there": Case(["users", "revoke-key", "999"], "no API key with id 999"),
    "a new password for nobody": Case(
        ["users", "passwd", "nobody", "--password-stdin"], "no user", stdin="long enough\n"
    ),
}


# --- the home the cases run against ----------------------------------------------------------


@dataclass
class Home:
    env: dict[str, str]
    url: str
    ids: dict[str, int]
    root: Path


def _cli(
    home: Home, argv: list[str], env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core", *argv],
        cwd=ROOT,
        env={**home.env, **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _ok(home: Home, argv: list[str], stdin: str = "") -> dict:  # type: ignore[type-arg]
    done = _cli(home, [*argv, "--json"], stdin=stdin)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _build_home(root: Path, url: str, files: dict[str, Path], *, full: bool) -> Home:
    """Datasets and runs of every modality (tables only when not `full`), trained by a real
    worker; a queued run; a run whose dataset was deleted; one admin user."""
    from core.data import scenes
    from core.data.samples import HELPDESK_FILE, fashion_mnist_zip, spoken_words_zip
    from tests.conftest import tiny_llama

    env = {
        **os.environ,
        "ASCENT_HOME": str(root),
        "ASCENT_DEVICE": "cpu",
        "ASCENT_WORKER_IDLE_EXIT_S": "2",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("ASCENT_DATABASE_URL", None)
    if url:
        env["ASCENT_DATABASE_URL"] = url
    home = Home(env, url or f"sqlite:///{root / 'ascent.db'}", {}, root)
    table = _ok(home, ["datasets", "add", str(files["wine.csv"])])
    home.ids["ds:table"] = table["id"]
    home.ids["ds:speech"] = _ok(home, ["datasets", "add", str(files["speech.zip"])])["id"]
    home.ids["ds:pairs"] = _ok(home, ["datasets", "add", str(files["pairs.csv"])])["id"]
    home.ids["run:table"] = _ok(home, ["train", "--dataset", str(table["id"]), "--epochs", "2"])["id"]
    if full:
        images = fashion_mnist_zip(root.parent / "clothes.zip", per_class=12, classes=("bag", "trouser"))
        ds = _ok(home, ["datasets", "add", str(images)])["id"]
        home.ids["run:image"] = _ok(
            home,
            ["train", "--dataset", str(ds), "--model", "small-cnn", "--epochs", "1", "--image-size", "32"],
        )["id"]
        ds = home.ids["ds:text"] = _ok(home, ["datasets", "add", str(files["news.csv"])])["id"]
        home.ids["run:text"] = _ok(
            home, ["train", "--dataset", str(ds), "--model", "text-cnn", "--epochs", "1"]
        )["id"]
        words = spoken_words_zip(root.parent / "words.zip", words=("yes", "no"), voices=("en-us", "en-gb"))
        ds = _ok(home, ["datasets", "add", str(words)])["id"]
        home.ids["run:audio"] = _ok(home, ["train", "--dataset", str(ds), "--epochs", "1"])["id"]
        scenes_zip = scenes.segmentation_zip(root.parent / "masks.zip", 12, size=64, seed=5)
        ds = home.ids["ds:masks"] = _ok(home, ["datasets", "add", str(scenes_zip)])["id"]
        home.ids["run:masks"] = _ok(
            home, ["train", "--dataset", str(ds), "--epochs", "1", "--image-size", "64", "--batch-size", "8"]
        )["id"]
        ds = home.ids["ds:chat"] = _ok(home, ["datasets", "add", str(HELPDESK_FILE)])["id"]
        tiny = tiny_llama(root.parent / "tiny-llama")
        home.ids["run:chat"] = _ok(
            home,
            [
                "train",
                "--dataset",
                str(ds),
                "--model",
                "hf-causal-lm",
                "--weights",
                str(tiny),
                "--epochs",
                "1",
            ],
        )["id"]
        home.ids["run:translation"] = _ok(
            home, ["train", "--dataset", str(home.ids["ds:pairs"]), "--epochs", "1"]
        )["id"]
        orphan_ds = _ok(home, ["datasets", "add", str(files["wine.csv"]), "--name", "gone"])["id"]
        home.ids["run:orphan"] = _ok(home, ["train", "--dataset", str(orphan_ds), "--epochs", "1"])["id"]
        home.ids["run:stopped"] = _ok(home, ["train", "--dataset", str(orphan_ds), "--name", "stopped"])["id"]
        _ok(home, ["runs", "cancel", str(home.ids["run:stopped"])])
    # Two workers (each run in its own child process): much of a tiny run is starting Python.
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "core", "worker", "--idle-exit", "1", "--poll", "0.2"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2 if full else 1)
    ]
    logs = [w.communicate(timeout=900)[0] for w in workers]
    for kind in ("table", "image", "text", "audio", "masks", "chat", "translation", "orphan"):
        if f"run:{kind}" in home.ids:
            run = _ok(home, ["runs", "show", str(home.ids[f"run:{kind}"])])
            assert run["status"] == "succeeded", (kind, run["error"], [log[-1000:] for log in logs])
    if full:
        assert _cli(home, ["datasets", "delete", str(orphan_ds)]).returncode == 0
        cancelled = _ok(home, ["train", "--dataset", str(table["id"]), "--name", "waiting"])["id"]
        home.ids["run:queued"] = cancelled  # stays queued: no worker runs any more
    _ok(home, ["users", "add", "ada", "--password-stdin"], stdin="correct horse\n")
    _ok(home, ["users", "add", "bob", "--role", "member", "--password-stdin"], stdin="battery staple\n")
    return home


def _fresh_postgres() -> tuple[str, Callable[[], None]]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"ascent_bad_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False), drop


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _files(tmp_path_factory.mktemp("bad-files"))


@pytest.fixture(scope="module")
def sqlite_home(tmp_path_factory: pytest.TempPathFactory, files: dict[str, Path]) -> Iterator[Home]:
    yield _build_home(tmp_path_factory.mktemp("bad-sqlite") / "home", "", files, full=True)


def _snapshot(home: Home) -> tuple[set[str], dict[str, int]]:
    """Every file under the home (the database's own journal files aside) and every row count."""
    from sqlalchemy import create_engine, text

    paths = {
        str(p.relative_to(home.root))
        for p in home.root.rglob("*")
        if not p.name.endswith(("-wal", "-shm", ".migrate.lock", "worker.log"))
    }
    engine = create_engine(home.url)
    try:
        with engine.connect() as conn:
            rows = {t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar() or 0) for t in TABLES}
    finally:
        engine.dispose()
    return paths, rows


def _argv(case: Case, home: Home, files: dict[str, Path]) -> list[str]:
    out = []
    for arg in case.argv:
        if arg.startswith("{") and arg.endswith("}"):
            key = arg[1:-1]
            out.append(str(home.ids[key]) if key in home.ids else str(files[key]))
        else:
            out.append(arg)
    return out


@dataclass(frozen=True)
class Outcome:
    done: subprocess.CompletedProcess[str]
    changed: str  # files or rows that differ after the whole battery ran ("" when none)


def _battery(home: Home, files: dict[str, Path], names: list[str]) -> dict[str, Outcome]:
    """Every case, three processes at a time (they only read), between one snapshot of the
    home before and one after: any file or row a case left behind shows in the second."""
    from concurrent.futures import ThreadPoolExecutor

    before = _snapshot(home)
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {
            n: pool.submit(_cli, home, _argv(CASES[n], home, files), CASES[n].env, CASES[n].stdin)
            for n in names
        }
        done = {n: f.result() for n, f in futures.items()}
    after = _snapshot(home)
    changed = ""
    if after != before:
        changed = f"new files {sorted(after[0] - before[0])[:5]}, rows {before[1]} -> {after[1]}"
    return {n: Outcome(d, changed) for n, d in done.items()}


def _check(case: Case, outcome: Outcome) -> None:
    done = outcome.done
    lines = done.stderr.splitlines()
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert len(lines) == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "error id" not in done.stderr, done.stderr
    assert lines[0].startswith("error: ") and case.expect in lines[0], lines[0]
    assert not outcome.changed, f"refused inputs left things behind: {outcome.changed}"


@pytest.fixture(scope="module")
def sqlite_outcomes(sqlite_home: Home, files: dict[str, Path]) -> dict[str, Outcome]:
    return _battery(sqlite_home, files, list(CASES))


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_refused_in_one_line_and_writes_nothing(
    name: str, sqlite_outcomes: dict[str, Outcome]
) -> None:
    _check(CASES[name], sqlite_outcomes[name])


def test_the_battery_is_large_and_covers_every_surface() -> None:
    assert len(CASES) >= 50
    commands = {c.argv[0] for c in CASES.values()}
    assert commands == {
        "explain",
        "doctor",
        "datasets",
        "train",
        "runs",
        "predict",
        "export",
        "users",
        "worker",
        "cluster",
        "sweep",
        "sweeps",
        "serve",
        "bundle",
    }


# --- the prediction cases again, over HTTP ---------------------------------------------------


@dataclass(frozen=True)
class Call:
    """A battery case's input as a program sends it to `python -m core serve`."""

    run: str  # a {run:kind} key of the home
    body: dict[str, Any] | bytes | list[str]  # JSON, raw bytes sent as JSON, or file keys as a form
    status: int
    expect: str  # part of the one-line detail
    query: str = ""


# Each prediction case of the battery: its request over HTTP, or why it has none.
OVER_HTTP: dict[str, Call | str] = {
    "translate nothing": Call("run:translation", {"texts": []}, 422, "'texts' is empty"),
    "translate an empty text": Call(
        "run:translation", {"texts": [" "]}, 422, "each text must be a non-empty"
    ),
    "translate with sampling": Call(
        "run:translation", {"texts": ["the cat"], "top_p": 0.9}, 422, "top_p are for text generation runs"
    ),
    "translate past the model's length": Call(
        "run:translation",
        {"texts": ["the cat"], "max_new_tokens": 100000},
        422,
        "unknown field(s) max_new_tokens",
    ),
    "translate with 40 beams": Call(
        "run:translation", {"texts": ["the cat"]}, 422, "beams 40 is out of range", "?beams=40"
    ),
    "beams for a table model": Call(
        "run:table", {"rows": [{}]}, 422, "beams is for speech recognition", "?beams=2"
    ),
    "predict with a run not trained yet": Call("run:queued", {"rows": [{}]}, 409, "has no exported model"),
    "predict from a file that is not there": "a path on the client's disk: nothing to send",
    "predict from rows not in UTF-8": Call(
        "run:table", '{"rows": [{"alcohol": "caf\xe9"}]}'.encode("latin-1"), 422, "not valid JSON"
    ),
    "predict a table model from text": Call("run:table", {"texts": ["hello"]}, 422, 'takes JSON {"rows"'),
    "predict a table model from nothing": Call("run:table", {}, 422, 'takes JSON {"rows"'),
    "predict from an empty file": Call("run:table", {"rows": []}, 422, "'rows' is empty"),
    "predict rows from a zip": Call("run:table", ["escape.zip"], 415, 'takes JSON {"rows"'),
    "predict with --top-k 0": "the endpoint has no top-k: it answers the five likeliest classes",
    "predict with --threshold 2": Call(
        "run:image", ["tiny.png"], 422, "threshold is for detection runs", "?threshold=2"
    ),
    "ask a generator nothing": Call("run:chat", {}, 422, 'text-generation takes JSON {"prompt"'),
    "ask a generator for no tokens": Call(
        "run:chat", {"prompt": "hi", "max_new_tokens": 0}, 422, "max_new_tokens must be from 1 to"
    ),
    "ask a generator with a top-p of 2": Call(
        "run:chat", {"prompt": "hi", "top_p": 2}, 422, "top-p in (0, 1]"
    ),
    "ask a generator about a file": Call("run:chat", ["wine.csv"], 415, "text-generation takes JSON"),
    "ask a generator a blank prompt": Call(
        "run:chat", {"prompt": " "}, 422, "the prompt must be a non-empty"
    ),
    "ask a generator with a negative temperature": Call(
        "run:chat", {"prompt": "hi", "temperature": -1}, 422, "temperature must be 0 or more"
    ),
    "ask a generator more than its context holds": Call(
        "run:chat", {"prompt": "kettle " * 9000}, 422, "over the model's context of 8192"
    ),
    "sampling settings for a classifier": Call(
        "run:text", {"texts": ["hi"], "temperature": 1}, 422, "temperature are for text generation runs"
    ),
    "predict masks without --out": "the endpoint answers each mask as a PNG in the JSON: no folder to name",
    "predict masks into a file": "the endpoint answers each mask as a PNG in the JSON: no folder to name",
    "predict an image that is not one": Call("run:image", ["not-an-image.png"], 422, "not a readable image"),
    "predict a 100-megapixel image": Call("run:image", ["huge.png"], 422, "over the limit of 64"),
    "predict a text model from files": Call("run:text", ["texts.txt"], 415, 'takes JSON {"texts"'),
    "predict texts not in UTF-8": Call(
        "run:text", '{"texts": ["caf\xe9"]}'.encode("latin-1"), 422, "not valid JSON"
    ),
    "predict a text model from nothing": Call("run:text", {"texts": []}, 422, "'texts' is empty"),
    "predict a clip that is not audio": Call("run:audio", ["not-audio.wav"], 422, "not a readable WAV"),
    "predict a clip over the duration limit": Call("run:audio", ["long.wav"], 422, "over the limit of 2 s"),
}


def test_every_prediction_case_has_its_http_twin() -> None:
    assert set(OVER_HTTP) == {n for n, c in CASES.items() if c.argv[0] == "predict"}
    assert sum(isinstance(c, Call) for c in OVER_HTTP.values()) >= 25


def test_the_prediction_cases_over_http_get_one_line_and_write_nothing(
    sqlite_home: Home, files: dict[str, Path], sqlite_outcomes: dict[str, Outcome]
) -> None:
    """The endpoint on the battery's home (it has users: every call carries a key), each case's
    request sent: its 4xx status and one line saying what to fix, and the home unchanged."""
    import socket
    import urllib.error
    import urllib.request

    key = _ok(sqlite_home, ["users", "key", "ada", "--label", "battery"])["key"]  # before the snapshot
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "core", "serve", "--port", str(port)],
        cwd=ROOT,
        env={**sqlite_home.env, "ASCENT_MAX_CLIP_SECONDS": "2"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"

    def send(call: Call) -> tuple[int, Any]:
        url = f"{base}/runs/{sqlite_home.ids[call.run]}/predict{call.query}"
        if isinstance(call.body, list):
            boundary = uuid.uuid4().hex
            body = (
                b"".join(
                    f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
                    f"Content-Type: application/octet-stream\r\n\r\n".encode()
                    + files[name].read_bytes()
                    + b"\r\n"
                    for name in call.body
                )
                + f"--{boundary}--\r\n".encode()
            )
            kind = f"multipart/form-data; boundary={boundary}"
        else:
            body = call.body if isinstance(call.body, bytes) else json.dumps(call.body).encode()
            kind = "application/json"
        request = urllib.request.Request(url, data=body, headers={"Content-Type": kind, "X-API-Key": key})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    try:
        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        before = _snapshot(sqlite_home)
        answers = {name: send(call) for name, call in OVER_HTTP.items() if isinstance(call, Call)}
        after = _snapshot(sqlite_home)
    finally:
        server.terminate()
        said = server.communicate(timeout=30)[0]
    wrong = {
        name: answer
        for name, answer in answers.items()
        if not (
            answer[0] == OVER_HTTP[name].status  # type: ignore[union-attr]
            and set(answer[1]) == {"detail"}
            and "\n" not in answer[1]["detail"]
            and OVER_HTTP[name].expect in answer[1]["detail"]  # type: ignore[union-attr]
        )
    }
    assert not wrong, (wrong, said[-2000:])
    assert after == before, f"refused requests left things behind: {before} -> {after}"
