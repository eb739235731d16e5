"""End to end in real Chromium (Debian's), driven by Playwright, against the studio started on
127.0.0.1 by the test: a table, an image set, texts and clips, from upload to prediction and
comparison, and a bad upload (speech, boxes, certificates and sign-in: test_e2e_more.py).
Screenshots of each page land in test-output/e2e/."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.browser import CHROMIUM
from tests.browser import launch_and_wait as _launch_and_wait
from tests.browser import open_page as _open
from tests.browser import shot as _shot

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)"
)


def test_table_upload_train_predict_compare(page, data_dir: Path) -> None:  # type: ignore[no-untyped-def]
    _open(page, "/")
    _shot(page, "home-empty")
    _open(page, "/datasets")
    page.locator('input[type="file"]').set_input_files(str(data_dir / "wine.csv"))
    page.get_by_text("Column to predict").wait_for()
    page.get_by_role("button", name="Add dataset").click()
    page.get_by_text("Added dataset 1").wait_for()
    _shot(page, "datasets")
    # The same file again: previewed, named as the dataset it already is, added only when asked.
    page.locator('input[type="file"]').set_input_files(str(data_dir / "wine.csv"))
    page.get_by_text("This file is already dataset 1").wait_for()
    page.get_by_text("Add it anyway").scroll_into_view_if_needed()
    _shot(page, "datasets-duplicate")
    assert page.get_by_role("button", name="Add dataset").is_disabled()

    _launch_and_wait(page, "8")
    _launch_and_wait(page, "4")

    _open(page, "/predict")
    page.get_by_text("Prefilled with row").wait_for()
    first = page.locator('[data-testid="stNumberInput"] input').first
    row = ",".join(["14.5", *["1"] * 12])  # a pasted CSV line fills the form
    page.get_by_role("textbox", name="Paste a row").fill(row)
    page.get_by_role("textbox", name="Paste a row").press("Enter")
    expect(first).to_have_value("14.5")
    page.get_by_role("button", name="Predict").click()
    page.get_by_text("on CPUExecutionProvider").wait_for()
    _shot(page, "predict-table")

    _open(page, "/runs")
    page.get_by_text("2 runs").wait_for()
    page.get_by_text("Also select by id").click()
    select = page.locator('[data-testid="stMultiSelect"]')
    select.locator("input").click()
    page.get_by_role("option").first.click()
    select.locator("input").click()
    page.get_by_role("option").first.click()
    page.keyboard.press("Escape")
    page.get_by_text("Compare 2 runs").wait_for()
    page.get_by_text("Parameters (differences highlighted)").wait_for()
    _shot(page, "runs-compare")


def test_home_sample_leads_to_its_run_then_to_runs(page) -> None:  # type: ignore[no-untyped-def]
    _open(page, "/")
    page.get_by_role("button", name="Add and train").first.click()  # Wine, the first card
    page.get_by_text("run 1 queued").wait_for(timeout=120_000)
    _shot(page, "home-added")
    page.get_by_role("link", name="Watch run 1 learn").click()
    page.get_by_role("heading", name="Train").first.wait_for()
    page.get_by_text("Run 1 · mlp-Wine").first.wait_for()
    page.get_by_role("link", name="See it on Runs").wait_for(timeout=240_000)  # it ended, and says so
    assert page.get_by_text("succeeded: best validation F1").count() >= 1
    page.get_by_role("link", name="See it on Runs").scroll_into_view_if_needed()
    _shot(page, "train-sample-ended")
    page.get_by_role("link", name="See it on Runs").click()
    page.get_by_role("heading", name="Runs").first.wait_for()
    page.get_by_text("1 run ·").wait_for()


def test_image_zip_train_predict_uploaded_image(page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from core.data.samples import fashion_mnist_zip

    z = fashion_mnist_zip(tmp_path / "clothes.zip", per_class=30, classes=("trouser", "sneaker", "bag"))
    _open(page, "/datasets")
    page.locator('input[type="file"]').set_input_files(str(z))
    page.get_by_role("button", name="Add dataset").click()
    page.get_by_text("Added dataset 1").wait_for()
    page.get_by_text("Quality report").wait_for()
    _shot(page, "datasets-images")

    _open(page, "/train")  # the settings fitted to 28 px images on this CPU, said before launch
    page.get_by_text("your images are about 28 px").wait_for()
    assert page.get_by_role("spinbutton", name="Image size (px)", exact=True).input_value() == "64"
    _shot(page, "train-fitted")
    _launch_and_wait(page, "2", {"Image size (px)": "64"})

    held_out = fashion_mnist_zip(tmp_path / "one.zip", per_class=1, classes=("sneaker",), offset=700)
    with zipfile.ZipFile(held_out) as zf:
        zf.extractall(tmp_path / "one")
    (image,) = (tmp_path / "one").rglob("*.png")
    _open(page, "/predict")
    page.locator('input[type="file"]').set_input_files(str(image))
    page.get_by_text("1 image in").wait_for()
    _shot(page, "predict-image")
    # Why: the heatmap of where the evidence lies, laid over the image, and where that is in words.
    page.locator('[data-testid="stCheckbox"]').filter(has_text="Why").first.click()
    page.get_by_text("strongest in the").wait_for()
    page.get_by_text("Grad-CAM on the deepest feature map of at least 4x4 cells (4x4)").wait_for()
    heatmap = page.locator('[data-testid="stImage"] img').nth(1)  # the image, then its heatmap
    expect(heatmap).to_have_js_property("complete", True)
    assert heatmap.evaluate("img => img.naturalWidth") == 320  # 28 px drawn at 320
    heatmap.scroll_into_view_if_needed()
    _shot(page, "predict-image-why")
    others = fashion_mnist_zip(tmp_path / "two.zip", per_class=1, classes=("trouser", "bag"), offset=700)
    with zipfile.ZipFile(others) as zf:
        zf.extractall(tmp_path / "two")
    # Two more join the first in the uploader: three cards, one CSV of them all.
    page.locator('input[type="file"]').set_input_files(sorted((tmp_path / "two").rglob("*.png")))
    page.get_by_text("3 images in").wait_for()
    page.get_by_role("button", name="Download predictions (CSV)").wait_for()
    _shot(page, "predict-images")

    _open(page, "/runs")
    _shot(page, "runs")
    page.get_by_test_id("stPopoverButton").filter(
        has_text="Columns", visible=True
    ).first.click()  # more than nine
    picker = page.locator('[data-testid="stPopoverBody"] [data-testid="stMultiSelect"]')
    picker.locator("input").click()
    page.get_by_role("option", name="task", exact=True).click()
    page.keyboard.press("Escape")
    expect(picker.get_by_text("task", exact=True)).to_have_count(1)
    page.get_by_text("Also select by id").click()  # one run: its confusion matrix, counts first
    select = page.locator('[data-testid="stMultiSelect"]').last
    select.locator("input").click()
    page.get_by_role("option").first.click()
    page.keyboard.press("Escape")
    toggle = page.get_by_text("Normalised (share of each true class)")
    toggle.wait_for()
    toggle.scroll_into_view_if_needed()
    _shot(page, "runs-confusion-counts")
    toggle.click()
    expect(page.get_by_label("Normalised (share of each true class)")).to_be_checked()
    _shot(page, "runs-confusion-shares")


def test_text_csv_train_type_a_sentence_see_highlighted_tokens(page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from core.data.samples import bbc_news_csv

    csv = bbc_news_csv(tmp_path / "news.csv", per_class=30, chars=300)
    _open(page, "/datasets")
    page.locator('input[type="file"]').set_input_files(str(csv))
    page.get_by_text("Text column").wait_for()  # the text task is recognised
    page.get_by_role("button", name="Add dataset").click()
    page.get_by_text("Added dataset 1").wait_for()
    page.get_by_text("Length in").wait_for()
    _shot(page, "datasets-texts")

    # The default model, MiniLM, fine-tuned briefly.
    _launch_and_wait(page, "2", {"Batch size": "16"})

    _open(page, "/predict")
    page.get_by_role("textbox", name="Text").fill(
        "The government minister said the election campaign would focus on tax"
    )
    page.get_by_role("button", name="Predict").click()
    page.get_by_text("ms on CPUExecutionProvider").wait_for()
    page.get_by_text("Green tokens push towards it").wait_for(timeout=120_000)
    spans = page.locator(".ascent-attribution span")
    spans.nth(9).wait_for()  # the shaded text renders just after its caption
    assert spans.count() >= 10
    assert "election" in page.locator(".ascent-attribution").inner_text()
    _shot(page, "predict-text")


def test_audio_zip_train_predict_uploaded_clip(page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from core.data.samples import _espeak, spoken_words_zip

    z = spoken_words_zip(
        tmp_path / "words.zip",
        words=("yes", "no", "up"),
        voices=("en-us", "en-gb", "en-029", "en-us+f3", "en-gb-scotland", "en-gb+m3"),
    )
    _open(page, "/datasets")
    page.locator('input[type="file"]').set_input_files(str(z))
    page.get_by_text("audio clips (WAV, FLAC)").wait_for()
    page.get_by_role("button", name="Add dataset").click()
    page.get_by_text("Added dataset 1").wait_for()
    page.get_by_text("Durations").wait_for()
    _shot(page, "datasets-audio")

    _launch_and_wait(page, "10")

    clip = tmp_path / "up.wav"
    _espeak("up", "en-gb-x-rp", 140, 55, clip)  # a voice the run never heard
    _open(page, "/predict")
    page.locator('input[type="file"]').set_input_files(str(clip))
    page.get_by_text("ms on CPUExecutionProvider").wait_for()
    page.get_by_text("Log-mel spectrogram the model sees").wait_for()
    assert page.locator('[data-testid="stAudio"]').count() >= 1
    _shot(page, "predict-audio")
    # Why: the evidence over the spectrogram, its span in seconds and Hz said.
    page.locator('[data-testid="stCheckbox"]').filter(has_text="Why").first.click()
    page.get_by_text("half of it lies in the framed part").wait_for()
    page.get_by_text("Integrated gradients at the log-mel layer from silence, 32 steps: 32 passes").wait_for()
    drawn = page.locator('[data-testid="stImage"] img').last  # time and frequency on its axes
    expect(drawn).to_have_js_property("complete", True)
    assert drawn.evaluate("img => img.naturalWidth") == 700
    drawn.scroll_into_view_if_needed()
    _shot(page, "predict-audio-why")


def test_a_bad_upload_shows_one_line_and_adds_nothing(page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from core.data.ingest import list_datasets

    bad = tmp_path / "spaced.csv"
    bad.write_text("a, a,target\n1,2,0\n3,4,1\n")
    _open(page, "/datasets")
    page.locator('input[type="file"]').set_input_files(str(bad))
    alert = page.locator('[data-testid="stAlertContentError"]')
    alert.wait_for()
    assert "have the same name 'a'" in alert.inner_text()
    assert "Traceback" not in page.inner_text("body") and "error id" not in page.inner_text("body")
    assert page.get_by_role("button", name="Add dataset").is_disabled()
    _shot(page, "datasets-bad-upload")
    assert list_datasets() == []
