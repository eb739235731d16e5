"""End to end in real Chromium, continued (the file is split so that the two test processes
share the browser tests): a speech zip fine-tuned and a clip transcribed, boxes drawn, trained,
predicted and one of them explained, a run's certificate measured from its page and a variant downloaded, and
signing in with roles. Screenshots land in test-output/e2e/ beside test_e2e.py's."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from playwright.sync_api import expect

from tests.browser import CHROMIUM
from tests.browser import launch_and_wait as _launch_and_wait
from tests.browser import open_page as _open
from tests.browser import settle as _settle
from tests.browser import shot as _shot

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)"
)


@pytest.mark.skipif(
    not Path("/usr/share/pocketsphinx/test/data").is_dir(), reason="needs Debian's pocketsphinx-testdata"
)
def test_speech_zip_fine_tune_whisper_transcribe_uploaded_clip(page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from test_speech import audiofolder_zip, read_speech

    speech = read_speech()
    z = audiofolder_zip(tmp_path / "read.zip", [(c.name, c, t) for c, t in speech])
    _open(page, "/datasets")
    page.locator('input[type="file"]').set_input_files(str(z))
    page.get_by_text("clips with transcripts (metadata.csv or LibriSpeech)").wait_for()
    page.get_by_role("button", name="Add dataset").click()
    page.get_by_text("Added dataset 1").wait_for()
    page.get_by_text("ten of clubs").first.wait_for()  # a clip's transcript beside its player
    _shot(page, "datasets-speech")

    _launch_and_wait(page, "1")

    _open(page, "/predict")
    clip = next(c for c, _ in speech if c.name.endswith("0880.wav"))
    page.locator('input[type="file"]').set_input_files(str(clip))
    page.get_by_text("Transcript:").wait_for(timeout=120_000)
    assert "young man" in page.get_by_text("Transcript:").locator("..").inner_text()
    page.get_by_text("tokens at").wait_for()
    _shot(page, "predict-speech")


def test_detection_zip_overlays_train_predict_boxes(page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from core.data import scenes

    z = scenes.detection_zip(tmp_path / "boxes.zip", 48, size=96, seed=4)
    _open(page, "/datasets")
    page.locator('input[type="file"]').set_input_files(str(z))
    page.get_by_text("images with boxes (COCO, YOLO, VOC)").wait_for()  # the layout was recognised
    page.get_by_role("button", name="Add dataset").click()
    page.get_by_text("Added dataset 1").wait_for()
    page.get_by_text("Every box outlined over its image").wait_for()
    page.get_by_text("Boxes per class").wait_for()
    expect(page.locator('[data-testid="stImage"] img').nth(7)).to_be_visible()  # a few drawn images per class
    _shot(page, "datasets-boxes")

    _launch_and_wait(page, "6", {"Image size (px)": "64"})

    # One of its scenes (six epochs on 48 scenes find little in new ones), 96 px for a 64 px model.
    with zipfile.ZipFile(z) as zf:
        image = tmp_path / "scene.png"
        image.write_bytes(zf.read("images/scene-0000.png"))
    _open(page, "/predict")
    page.get_by_text("Images of any size").wait_for()
    page.locator('input[type="file"]').set_input_files(str(image))
    page.get_by_text("ms on CPUExecutionProvider").wait_for()
    slider = page.get_by_role("slider", name="Lowest score shown")
    slider.focus()
    page.keyboard.press("Home")  # the lowest threshold: every box the model is at all sure of
    page.get_by_text("objects at a score of 5% or more").wait_for()
    _settle(page)
    caption = page.get_by_text("objects at a score of 5% or more").inner_text()
    assert int(caption.split()[0]) >= 1, caption
    expect(page.locator('[data-testid="stDataFrame"]')).to_have_count(1)
    _shot(page, "predict-boxes")

    # Why the first box: its heatmap over the image, the share inside the box said.
    page.get_by_text("Why these boxes?").click()
    page.get_by_text("of the evidence lies inside the box").wait_for(timeout=60_000)
    page.get_by_text("towards the", exact=False).wait_for()
    expect(
        page.get_by_text("Why ", exact=False).filter(has_text="the evidence for it over the image")
    ).to_be_visible()
    _shot(page, "predict-boxes-why")


def test_certificate_measured_from_the_run_page_then_a_variant_downloaded(  # type: ignore[no-untyped-def]
    page, data_dir: Path, tmp_path: Path
) -> None:
    from conftest import wait_for

    from core import certificate, jobs, summary
    from core.data.ingest import ingest_file
    from core.runtime import Predictor

    ds = ingest_file(data_dir / "wine.csv")
    run = jobs.submit(jobs.config_for(ds.id, epochs=5))
    _open(page, "/")  # the studio starts its worker, which trains the run
    wait_for(lambda: jobs.get_run(run.id).status == "succeeded", timeout=240)

    _open(page, "/runs")
    select = page.locator('[data-testid="stMultiSelect"]')
    select.locator("input").click()
    page.get_by_role("option").first.click()
    page.keyboard.press("Escape")
    page.get_by_text("Not measured yet").wait_for()
    page.get_by_role("button", name="Measure the certificate").click()
    page.get_by_text("Measuring the certificate:").wait_for()
    _shot(page, "certificate-measuring")
    page.get_by_role("button", name="Measure again").wait_for(timeout=300_000)  # the page came back by itself
    page.get_by_text("Which to ship?").wait_for()
    assert page.locator('[data-testid="stVegaLiteChart"]').count() >= 2  # metric against latency and size
    _shot(page, "certificate")

    int8 = next(r for r in certificate.certificate(run.id) if r.variant == "int8")
    with page.expect_download() as download:
        page.get_by_role("button", name=f"int8 ({summary.file_size(int8.bytes)})").click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name == "model.int8.onnx" and saved.read_bytes() == Path(int8.path).read_bytes()
    table = pd.read_csv(data_dir / "wine.csv")
    int8_answers = [p.label for p in Predictor(saved).predict_table(table.to_dict("list"))]
    fp32_answers = [
        p.label for p in Predictor(jobs.run_dir(run.id) / "model.onnx").predict_table(table.to_dict("list"))
    ]
    assert np.mean(np.array(int8_answers) == np.array(fp32_answers)) >= 0.9  # the file works on its own

    # The int8 variant as a bundle, from "Use this model": its zip holds that file and its runner.
    page.get_by_text("Use this model").click()
    page.get_by_role("tab", name="Bundle").click()
    page.get_by_text("python predict.py example.csv").first.wait_for()
    _shot(page, "use-this-model-bundle")
    with page.expect_download() as download:
        page.get_by_role("button", name="int8 bundle (zip)").click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name == f"ascent-run-{run.id}-int8.zip"
    with zipfile.ZipFile(saved) as z:
        folder = f"ascent-run-{run.id}-int8"
        assert {f"{folder}/predict.py", f"{folder}/ascent_runtime.py", f"{folder}/example.csv"} <= set(
            z.namelist()
        )
        assert z.read(f"{folder}/model.onnx") == Path(int8.path).read_bytes()


def _sign_in(page, name: str, password: str) -> None:  # type: ignore[no-untyped-def]
    page.get_by_role("textbox", name="User name").fill(name)
    page.get_by_role("textbox", name="Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def test_sign_in_roles_and_user_text_shown_as_text(page, data_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """With users, a fresh server's first request (a bookmark of /runs) gets only the sign-in
    form; a wrong password is refused; a viewer browses and predicts but sees no delete; a
    name written as Markdown that would fetch an image shows as its characters, and nothing is
    fetched; the session survives a reload and ends with sign-out."""
    from core import access, jobs
    from core.access import Actor
    from core.data.ingest import ingest_file
    from core.worker import Worker
    from db.models import Role

    trap = "![x](http://127.0.0.1:9/x)"
    access.add_user("ada", "correct horse")
    access.add_user("val", "staple battery", "viewer")
    ds = ingest_file(data_dir / "wine.csv", name=trap, actor=Actor("ada", Role.ADMIN))
    jobs.submit(jobs.config_for(ds.id, epochs=2, name=trap), actor=Actor("ada", Role.ADMIN))
    Worker(poll_s=0.1, idle_exit_s=0.3).run()
    fetched: list[str] = []
    page.on("request", lambda r: fetched.append(r.url) if "127.0.0.1:9/" in r.url else None)

    page.goto("/runs")  # the first request this server gets
    page.get_by_role("button", name="Sign in").wait_for()
    _settle(page)
    assert page.locator('[data-testid="stTopNav"]').count() == 0
    assert "wine" not in page.inner_text("body").lower() and trap not in page.inner_text("body")
    _shot(page, "sign-in")

    _sign_in(page, "val", "wrong password")
    page.get_by_text("wrong user name or password").wait_for()
    _shot(page, "sign-in-refused")
    page.wait_for_timeout(1200)  # the failed attempt holds the next one back a second
    _sign_in(page, "val", "staple battery")
    page.get_by_text("Signed in as val (viewer)").wait_for()

    _open(page, "/runs")
    page.get_by_text("1 run ·").wait_for()
    select = page.locator('[data-testid="stMultiSelect"]')
    select.locator("input").click()
    page.get_by_role("option").first.click()
    page.keyboard.press("Escape")
    heading = page.get_by_role("heading", name="Run 1 ·")
    heading.wait_for()
    assert heading.inner_text().replace("\u2060", "") == f"Run 1 · {trap}"  # the characters, no image
    assert page.locator('a[href*="127.0.0.1:9"]').count() == 0  # and no link either
    assert page.get_by_text("Rename, tag, delete").count() == 0  # a viewer changes nothing
    assert page.get_by_role("button", name="Measure the certificate").count() == 0
    _shot(page, "runs-as-viewer")
    _open(page, "/datasets")
    page.get_by_text("a member or admin adds datasets").wait_for()
    assert page.get_by_text("Delete this dataset").count() == 0
    assert page.locator('input[type="file"]').count() == 0

    page.reload()  # the signed cookie keeps the session
    page.get_by_text("Signed in as val (viewer)").wait_for()
    _open(page, "/predict")
    page.get_by_role("button", name="Predict").click()
    page.get_by_text("on CPUExecutionProvider").wait_for()
    _shot(page, "predict-as-viewer")

    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("button", name="Sign in").wait_for()
    page.reload()
    page.get_by_role("button", name="Sign in").wait_for()  # the old cookie signs nobody in
    _settle(page)
    assert page.locator('[data-testid="stTopNav"]').count() == 0
    assert fetched == []
