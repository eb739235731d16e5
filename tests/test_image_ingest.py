"""Image zips: layouts, formats, the quality report, and every unsafe or unusable zip refused."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data.ingest import ingest_file, list_datasets
from core.data.samples import fashion_mnist_zip
from core.errors import DatasetError


def _png(seed: int, mode: str = "RGB", size: tuple[int, int] = (20, 16), fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 255, (size[1], size[0], channels), dtype=np.uint8)
    img = Image.fromarray(arr[..., 0] if channels == 1 else arr, mode=mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def _nothing_written(home: Path) -> None:
    datasets = home / "datasets"
    assert not datasets.exists() or list(datasets.iterdir()) == []
    assert list_datasets() == []


def test_class_folders_in_every_format_and_mode(home: Path, tmp_path: Path) -> None:
    entries = {
        "pets/cats/a.png": _png(1),
        "pets/cats/b.jpg": _png(2, fmt="JPEG"),
        "pets/cats/c.webp": _png(3, fmt="WEBP"),
        "pets/dogs/d.bmp": _png(4, fmt="BMP"),
        "pets/dogs/e.png": _png(5, mode="RGBA"),
        "pets/dogs/f.png": _png(6, mode="L", size=(40, 30)),
        "pets/dogs/g.png": _png(1),  # the same bytes as cats/a.png: a likely label error
        "pets/dogs/readme.txt": b"not an image",
        "pets/dogs/broken.jpg": b"this is a text file with a .jpg name",
        "__MACOSX/pets/cats/._a.png": b"resource fork",
        "pets/.DS_Store": b"finder",
    }
    ds = ingest_file(_zip(tmp_path / "pets.zip", entries))
    rep = ds.report
    assert ds.task == "image-classification" and ds.n_items == 7
    assert ds.schema["classes"] == ["cats", "dogs"]
    assert rep["class_counts"] == {"cats": 3, "dogs": 4} and rep["imbalance_ratio"] == pytest.approx(
        4 / 3, rel=1e-3
    )
    assert list(rep["unreadable"]) == ["dogs/broken.jpg"]
    assert rep["skipped_files"] == ["dogs/readme.txt"]
    assert rep["cross_class_duplicates"] == [["cats: cats/a.png", "dogs: dogs/g.png"]]
    assert rep["modes"] == {"RGB": 5, "RGBA": 1, "L": 1}
    assert rep["width"] == {"min": 20, "median": 20, "max": 40}
    stored = sorted(
        p.relative_to(Path(ds.path)).as_posix() for p in Path(ds.path, "images").rglob("*") if p.is_file()
    )
    assert stored == [
        f"images/{p}"
        for p in [
            "cats/a.png",
            "cats/b.jpg",
            "cats/c.webp",
            "dogs/d.bmp",
            "dogs/e.png",
            "dogs/f.png",
            "dogs/g.png",
        ]
    ]


def test_csv_of_path_and_label(home: Path, tmp_path: Path) -> None:
    entries = {f"img/{i}.png": _png(10 + i) for i in range(6)}
    entries["labels.csv"] = (
        "path,label\n" + "".join(f"img/{i}.png,{'odd' if i % 2 else 'even'}\n" for i in range(6))
    ).encode()
    ds = ingest_file(_zip(tmp_path / "csv.zip", entries))
    assert ds.report["layout"] == "csv" and ds.report["class_counts"] == {"even": 3, "odd": 3}


def test_fashion_mnist_sample_zip(home: Path, tmp_path: Path) -> None:
    z = fashion_mnist_zip(tmp_path / "f.zip", per_class=5, classes=("bag", "sneaker", "trouser"))
    ds = ingest_file(z)
    assert ds.n_items == 15 and ds.schema["classes"] == ["bag", "sneaker", "trouser"]
    assert ds.report["modes"] == {"L": 15} and ds.report["width"]["max"] == 28


def _symlink_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a/1.png", _png(1))
        zf.writestr("b/2.png", _png(2))
        info = zipfile.ZipInfo("b/link.png")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    return path


BAD_ZIPS = {
    "path escape": ({"a/1.png": _png(1), "../../evil.png": _png(2)}, "outside its folder"),
    "absolute path": ({"a/1.png": _png(1), "/tmp/evil.png": _png(2)}, "absolute path"),
    "no class folders": ({"1.png": _png(1), "2.png": _png(2)}, "no class folders"),
    "one class": ({"cats/1.png": _png(1), "cats/2.png": _png(2)}, "only one class"),
    "no readable image": ({"a/1.png": b"text", "b/2.jpg": b"more text"}, "no readable image"),
    "csv naming a missing file": (
        {"x/1.png": _png(1), "labels.csv": b"path,label\nx/1.png,a\nx/2.png,b\n"},
        "not in the zip",
    ),
}


@pytest.mark.parametrize("case", list(BAD_ZIPS))
def test_bad_zips_are_refused_and_leave_nothing(home: Path, tmp_path: Path, case: str) -> None:
    entries, message = BAD_ZIPS[case]
    with pytest.raises(DatasetError, match=message):
        ingest_file(_zip(tmp_path / "bad.zip", entries))
    _nothing_written(home)


def test_links_are_refused(home: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="link"):
        ingest_file(_symlink_zip(tmp_path / "link.zip"))
    _nothing_written(home)


def test_zip_bomb_and_entry_count_limits(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = _zip(tmp_path / "bomb.zip", {"a/1.png": _png(1), "b/zeros.png": bytes(50_000_000)})
    assert bomb.stat().st_size < 200_000
    monkeypatch.setenv("ASCENT_MAX_UNPACKED_BYTES", str(10_000_000))
    with pytest.raises(DatasetError, match="zip bomb"):
        ingest_file(bomb)
    monkeypatch.setenv("ASCENT_MAX_ZIP_ENTRIES", "10")
    many = _zip(tmp_path / "many.zip", {f"c{i % 2}/{i}.png": _png(i) for i in range(12)})
    with pytest.raises(DatasetError, match="12 entries, over the limit of 10"):
        ingest_file(many)
    _nothing_written(home)


def test_a_renamed_text_file_is_not_a_zip(home: Path, tmp_path: Path) -> None:
    fake = tmp_path / "photos.zip"
    fake.write_text("these are my holiday notes, not a zip")
    with pytest.raises(DatasetError, match="not a valid zip archive"):
        ingest_file(fake)
    with pytest.raises(DatasetError, match="a zip of images is image-classification"):
        ingest_file(
            _zip(tmp_path / "ok.zip", {"a/1.png": _png(1), "b/2.png": _png(2)}), task="tabular-regression"
        )
    _nothing_written(home)
