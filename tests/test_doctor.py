"""The data doctor and dataset versions: labels flipped on purpose rank at the top of the likely
label errors (tables, images), copied rows are found as duplicates and those straddling the
default split as leaks (recounted here), a far-off row is an outlier, features are cached, texts
and clips are examined too; a revision is a new dataset version whose parent and runs keep their
files; and in Chromium the Doctor tab lists suspects with their images, an exclusion makes a new
version, and a run trained on it names that version."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import doctor
from core.data.ingest import get_dataset, ingest_file
from tests.conftest import ROOT, wait_for


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "core", *argv], cwd=ROOT, capture_output=True, text=True)


def _flipped(labels: list[str], share: float, seed: int) -> tuple[list[str], set[int]]:
    """`labels` with a `share` of them moved to another class at random, and which moved."""
    rng = np.random.default_rng(seed)
    classes = sorted(set(labels))
    moved = rng.choice(len(labels), size=round(share * len(labels)), replace=False)
    out = list(labels)
    for i in moved:
        out[i] = str(rng.choice([c for c in classes if c != out[i]]))
    return out, {int(i) for i in moved}


def _precision(report: dict, flipped: set[int]) -> float:  # type: ignore[type-arg]
    top = [s["item"] for s in report["label_issues"][: len(flipped)]]
    return len(set(top) & flipped) / len(flipped)


def test_flipped_rows_top_the_list_copies_leak_and_a_revision_leaves_the_old_version(
    home: Path, data_dir: Path, tmp_path: Path
) -> None:
    wine = pd.read_csv(data_dir / "wine.csv")
    wine["target"] = wine["target"].map(lambda v: f"cultivar {v}")
    labels, flipped = _flipped(wine["target"].tolist(), 0.10, seed=3)
    wine["target"] = labels
    copies = wine.iloc[[5, 60, 120, 150]].copy()  # four rows again, items 178-181
    far = wine.iloc[[10]].copy()
    far[[c for c in wine.columns if c != "target"]] *= 40  # item 182: far from every other row
    table = pd.concat([wine, copies, far], ignore_index=True)
    table.to_csv(tmp_path / "wine-noisy.csv", index=False)
    ds = ingest_file(tmp_path / "wine-noisy.csv")

    done = _cli("doctor", "--dataset", str(ds.id), "--limit", "40", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["judged"] == report["items"] == len(table)
    assert report["method"].startswith("5-fold cross-validation of scikit-learn's MLP")
    # 18 of 183 labels flipped (10 %): most of the top 18 suspects are those.
    assert _precision(report, flipped) >= 0.6, report["label_issues"][:18]
    top = report["label_issues"][0]
    assert top["given"] == table["target"].iloc[top["item"]] and top["suggested"] != top["given"]

    pairs = {(d["a"], d["b"]) for d in report["duplicates"]}
    assert pairs == {(5, 178), (60, 179), (120, 180), (150, 181)}
    from core.config import RunConfig
    from core.tasks import split_indices

    y = np.array([sorted(set(labels)).index(v) for v in table["target"]])
    _, val = split_indices(
        y, stratify=True, val_fraction=RunConfig.model_fields["val_fraction"].default, seed=0
    )
    straddle = {(a, b) for a, b in pairs if (a in set(val)) != (b in set(val))}
    assert report["leaks"] == len(straddle) == sum(d["leak"] for d in report["duplicates"])
    assert report["outliers"][0]["item"] == 182
    assert {o["a"] for o in report["overlap"]} <= set(report["classes"])
    assert doctor.last_report(ds.id) == report  # what the Doctor tab shows

    text = _cli("doctor", "--dataset", str(ds.id), "--limit", "3")
    assert text.returncode == 0, text.stderr
    assert "likely label errors:" in text.stdout and "across train and validation" in text.stdout

    # Act on the suspects: a new version; the old one and its files stay as they were.
    before = (Path(ds.path) / "data.parquet").read_bytes()
    drop = [s["item"] for s in report["label_issues"][:3]]
    change = {s["item"]: s["suggested"] for s in report["label_issues"][3:5]}
    done = _cli(
        "datasets",
        "revise",
        str(ds.id),
        "--exclude",
        *map(str, drop),
        "--relabel",
        *(f"{i}={label}" for i, label in change.items()),
        "--json",
    )
    assert done.returncode == 0, done.stderr
    made = json.loads(done.stdout)
    assert (made["version"], made["parent_id"], made["name"]) == (2, ds.id, ds.name)
    assert made["n_items"] == len(table) - 3
    assert made["report"]["revision"] == {
        "from": ds.id,
        "excluded": sorted(drop),
        "relabelled": {str(k): v for k, v in sorted(change.items())},
    }
    revised = pd.read_parquet(Path(made["path"]) / "data.parquet")
    kept = [i for i in range(len(table)) if i not in drop]
    expected = table["target"].iloc[kept].tolist()
    for i, label in change.items():
        expected[kept.index(i)] = label
    assert revised["target"].tolist() == expected
    assert (
        revised.drop(columns="target")
        .round(6)
        .equals(table.drop(columns="target").iloc[kept].reset_index(drop=True).round(6))
    )
    assert (Path(ds.path) / "data.parquet").read_bytes() == before
    assert get_dataset(ds.id).n_items == len(table) and get_dataset(ds.id).version == 1
    listed = _cli("datasets", "list")
    assert f"v2 of {ds.id}" in listed.stdout, listed.stdout

    # A second revision of the first version is version 3 of the line, not a second "2".
    again = _cli("datasets", "revise", str(ds.id), "--exclude", "0", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["version"] == 3


def _clothes_zip(path: Path, per_class: int, share: float) -> tuple[Path, dict[str, str]]:
    """Fashion-MNIST trousers, bags and sneakers, a share of them in another class's folder;
    returns the zip and {file name: true class} of the moved ones."""
    from PIL import Image

    from core.data.samples import FASHION_MNIST_CLASSES, fashion_mnist

    images, labels = fashion_mnist("train")
    classes = ("trouser", "bag", "sneaker")
    entries = []
    for name in classes:
        rows = np.flatnonzero(labels == FASHION_MNIST_CLASSES.index(name))[:per_class]
        entries += [(name, int(i)) for i in rows]
    given, moved = _flipped([c for c, _ in entries], share, seed=1)
    with zipfile.ZipFile(path, "w") as zf:
        for (_, i), folder in zip(entries, given, strict=True):
            buf = io.BytesIO()
            Image.fromarray(images[i], mode="L").save(buf, format="PNG")
            zf.writestr(f"clothes/{folder}/{i}.png", buf.getvalue())
    return path, {f"{entries[k][1]}.png": entries[k][0] for k in moved}


def test_flipped_images_top_the_list_features_are_cached_and_a_version_links_its_files(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.data.versions import revise

    z, moved = _clothes_zip(tmp_path / "clothes.zip", per_class=20, share=0.1)
    ds = ingest_file(z)
    index = pd.read_parquet(Path(ds.path) / "index.parquet")
    flipped = {i for i, p in enumerate(index["path"]) if Path(p).name in moved}
    assert len(flipped) == 6

    report = doctor.examine(ds.id)
    assert report["features"] == "EfficientNet-Lite0 ImageNet features"
    assert _precision(report, flipped) >= 0.6, (report["label_issues"][:6], flipped)
    cached = list((home / "cache" / "doctor").glob(f"{ds.id}-*-image-v*.npy"))
    assert len(cached) == 1 and np.load(cached[0]).shape == (60, 1280)

    import efficientnet_lite_pytorch

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the features were computed again instead of read from the cache")

    monkeypatch.setattr(efficientnet_lite_pytorch.EfficientNet, "from_name", no_model)
    assert doctor.examine(ds.id)["label_issues"] == report["label_issues"]

    drop = sorted(flipped)[:2]
    made = revise(ds.id, exclude=drop)
    new_index = pd.read_parquet(Path(made.path) / "index.parquet")
    assert new_index["path"].tolist() == [p for i, p in enumerate(index["path"]) if i not in drop]
    assert made.n_items == 58 and made.report["class_counts"] == new_index["label"].value_counts().to_dict()
    for rel in new_index["path"]:  # the same files, linked rather than copied
        assert (
            os.stat(Path(made.path) / "images" / rel).st_ino == os.stat(Path(ds.path) / "images" / rel).st_ino
        )
    for i in drop:
        assert not (Path(made.path) / "images" / index["path"][i]).exists()
        assert (Path(ds.path) / "images" / index["path"][i]).exists()

    # Deleting a dataset takes its cached features and report along; its version keeps its files.
    from core.data.ingest import delete_dataset

    delete_dataset(ds.id)
    assert not list((home / "cache" / "doctor").glob(f"{ds.id}-*"))
    assert get_dataset(made.id).parent_id is None
    assert all((Path(made.path) / "images" / rel).is_file() for rel in new_index["path"])  # links stay


def test_texts_and_clips_are_examined_and_a_background_examination_reports(
    home: Path, tmp_path: Path
) -> None:
    from core.data.samples import bbc_news_csv, spoken_words_zip

    news = bbc_news_csv(tmp_path / "news.csv", per_class=6)
    lone = pd.DataFrame(
        {"text": ["Showers clear by noon, then a dry, bright afternoon."], "label": ["weather"]}
    )
    pd.concat([pd.read_csv(news), lone]).to_csv(news, index=False)  # a class of one: not judged
    texts = ingest_file(news)
    exam = doctor.start(texts.id)
    assert doctor.start(texts.id) is exam  # one examination of a dataset at a time
    wait_for(lambda: exam.poll().finished, timeout=240)
    assert exam.error is None and exam.process.returncode == 0
    assert not exam.progress.exists() and not exam.progress.with_suffix(".err").exists()
    report = doctor.last_report(texts.id)
    assert report is not None and (report["judged"], report["items"]) == (30, 31)
    assert report["features"] == "MiniLM sentence embeddings"
    assert "1 item of a class of one not judged" in report["method"]
    assert report["accuracy"] > 0.6  # sentence embeddings tell the five topics apart

    clips = ingest_file(
        spoken_words_zip(tmp_path / "words.zip", words=("yes", "no"), voices=("en-us", "en-gb", "en-au"))
    )
    found = doctor.examine(clips.id, folds=2)
    assert found["features"] == "log-mel band statistics" and found["judged"] == clips.n_items
    assert found["method"].startswith("2-fold cross-validation of logistic regression")

    # A dataset the doctor does not take: the background examination ends with that one line.
    pairs = tmp_path / "pairs.csv"
    pd.DataFrame({"en": ["a cat", "a dog"] * 5, "es": ["un gato", "un perro"] * 5}).to_csv(pairs, index=False)
    other = ingest_file(pairs)
    failed = doctor.start(other.id)
    wait_for(lambda: failed.poll().finished, timeout=120)
    assert failed.error is not None and "examines classification datasets" in failed.error
    assert doctor.last_report(other.id) is None


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="Debian's chromium is not installed")
def test_doctor_tab_lists_image_suspects_an_exclusion_makes_a_version_a_run_names_it(  # type: ignore[no-untyped-def]
    page, tmp_path: Path
) -> None:
    from tests.browser import launch_and_wait, open_page, settle, shot

    z, _ = _clothes_zip(tmp_path / "clothes.zip", per_class=12, share=0.12)
    open_page(page, "/datasets")
    page.locator('input[type="file"]').set_input_files(str(z))
    page.get_by_role("button", name="Add dataset").click()
    page.get_by_text("Added dataset 1").wait_for()
    page.get_by_role("tab", name="Doctor").click()
    page.get_by_role("button", name="Examine this dataset").click()
    page.get_by_role("heading", name="Likely label errors").wait_for(timeout=240_000)
    settle(page)
    choices = page.get_by_role("radiogroup")  # one per suspect: keep, exclude, relabel
    choices.nth(2).wait_for()  # the examination found at least three of the four moved images
    assert page.locator('[data-testid="stImage"]').count() >= choices.count()  # each with its image
    first = page.get_by_text("labelled").first.inner_text()  # "#12 labelled bag, looks like trouser"
    item = int(first.split("#")[1].split()[0])
    shot(page, "datasets-doctor")

    choices.first.get_by_text("exclude", exact=True).click()
    settle(page)
    page.get_by_role("button", name="Make a new version (1 excluded, 0 relabelled)").click()
    page.get_by_text("Made dataset 2").wait_for()
    page.get_by_text("Version 2, made from dataset 1: 1 item excluded").wait_for()
    shot(page, "datasets-version")
    assert get_dataset(2).n_items == get_dataset(1).n_items - 1
    assert get_dataset(2).report["revision"]["excluded"] == [item]

    launch_and_wait(page, "1", {"Image size (px)": "32"})
    open_page(page, "/runs")
    page.get_by_text("Also select by id").click()
    select = page.locator('[data-testid="stMultiSelect"]').last
    select.locator("input").click()
    page.get_by_role("option").first.click()
    page.keyboard.press("Escape")
    page.get_by_text("dataset clothes v2").first.wait_for()
    shot(page, "runs-dataset-version")
