"""A good model in a minute: defaults fitted to the data and the device, the head fitted on frozen
features before fine-tuning (cached), and time-boxed training that plans its epochs."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core import jobs
from core.data.ingest import ingest_file
from core.data.samples import fashion_mnist_zip
from core.errors import ConfigError
from core.head_first import fit_linear
from core.plan import Hardware, fitted_defaults, image_size, parse_budget, size_for_budget
from core.tasks import get_task
from core.train import EpochResult, plan_budget, train

CPU = Hardware("cpu", 2)
GPU = Hardware("cuda", 16, 80.0, "A GPU")


@pytest.fixture
def clothes(home: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Three Fashion-MNIST classes of 28 px images, 12 each."""
    zip_path = fashion_mnist_zip(
        tmp_path / "clothes.zip", per_class=12, classes=("trouser", "bag", "sneaker")
    )
    return ingest_file(zip_path)


def test_image_size_follows_the_data_within_the_devices_range() -> None:
    small = image_size(28, 224, CPU)
    assert small.value == 64 and "28 px" in small.why
    assert image_size(150, 224, CPU).value == 160
    assert image_size(800, 224, CPU).value == 224 and "CPU" in image_size(800, 224, CPU).why
    assert image_size(800, 224, GPU).value == 224 and "native" in image_size(800, 224, GPU).why
    assert image_size(28, 224, GPU).value == 64


def test_fitted_defaults_for_an_image_set_say_why(clothes) -> None:  # type: ignore[no-untyped-def]
    choices = {c.key: c for c in fitted_defaults(clothes, "efficientnet-lite0", {"image_size": 224}, CPU)}
    assert choices["image_size"].value == 64 and "28 px" in choices["image_size"].why
    assert choices["flip"].value is False and "digits" in choices["flip"].why
    assert choices["workers"].value == 0
    assert choices["budget_s"].value == 100 and choices["head_first"].value is True
    assert choices["batch_size"].value == 16
    on_gpu = {c.key: c for c in fitted_defaults(clothes, "efficientnet-lite0", {"image_size": 224}, GPU)}
    assert on_gpu["budget_s"].value is None and on_gpu["workers"].value == 8
    scratch = {c.key: c for c in fitted_defaults(clothes, "small-cnn", {"image_size": 64}, CPU)}
    assert "image_size" not in scratch and scratch["budget_s"].value is None and "head_first" not in scratch


def test_config_for_applies_fitted_values_and_the_users_win(clothes) -> None:  # type: ignore[no-untyped-def]
    cfg = jobs.config_for(clothes.id)
    assert (cfg.model, cfg.image_size, cfg.flip, cfg.workers, cfg.budget_s) == (
        "efficientnet-lite0", 64, False, 0, 100.0,
    )  # fmt: skip
    mine = jobs.config_for(clothes.id, image_size=96, flip=True, budget_s=0, batch_size=4)
    assert (mine.image_size, mine.flip, mine.budget_s, mine.batch_size) == (96, True, None, 4)
    assert jobs.config_for(clothes.id, budget_s=30).budget_s == 30


@pytest.fixture
def photos(home: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Three classes of 200 px colour photos (noise around a colour), 96 each."""
    rng = np.random.default_rng(0)
    path = tmp_path / "photos.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for label, colour in (("red", (200, 40, 40)), ("green", (40, 200, 40)), ("blue", (40, 40, 200))):
            for i in range(96):
                pixels = np.clip(rng.normal(colour, 40, (200, 200, 3)), 0, 255).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(pixels).save(buf, format="PNG")
                zf.writestr(f"{label}/{i}.png", buf.getvalue())
    return ingest_file(path)


def test_a_budget_lowers_a_fitted_image_size_until_its_epochs_fit() -> None:
    timed: list[int] = []

    def step_s_at(side: int) -> tuple[float, float]:  # 1 s a step at 200 px, growing with the pixels
        timed.append(side)
        return (side / 200) ** 2, (side / 200) ** 2  # the first step costs no more here

    common = {"n_train": 320, "n_val": 80, "batch": 32, "epochs": 2, "head_first": True}
    # At 200 px: 400 images' features (4.2 s) + 2 x (10 steps of 1 s + 80 images' forward) = 25.8 s.
    assert size_for_budget(size=200, step_s_at=step_s_at, seconds=30, **common).size == 200
    assert timed == [200]
    timed.clear()
    # 160 px takes 0.64 of that (16.5 s) and 128 px 0.41 (10.6 s): 128 is the largest that fits 12 s.
    plan = size_for_budget(size=200, step_s_at=step_s_at, seconds=12, **common)
    assert plan.size == 128 and timed == [200, 192, 160, 128]
    assert "128 px instead of 200 px" in plan.why and "the head's features and 2 epochs fit" in plan.why
    least = size_for_budget(size=200, step_s_at=step_s_at, seconds=1, **common)
    assert least.size == 64 and "the smallest" in least.why and "trains what fits" in least.why
    alone = size_for_budget(
        size=200, step_s_at=step_s_at, seconds=10.5, **{**common, "head_first": False, "epochs": 1}
    )
    assert alone.size == 192 and "so that one epoch fits" in alone.why  # 10.8 s at 200 px, 10.0 at 192


def test_only_a_fitted_image_size_is_lowered_for_a_budget(photos) -> None:  # type: ignore[no-untyped-def]
    from core.tasks import image

    cfg = jobs.config_for(photos.id)
    assert (cfg.image_size, cfg.fit_image_size, cfg.budget_s) == (192, True, 100.0)
    roomy, why = image.fit_to_budget(photos, cfg, "cpu", 3600)
    assert roomy.image_size == 192 and "the head's features and a quarter of an epoch fit" in why
    tight, why = image.fit_to_budget(photos, cfg, "cpu", 0.5)  # timed on this machine's CPU
    assert tight.image_size == 64 and "instead of 192 px" in why
    given = jobs.config_for(photos.id, image_size=192)
    assert not given.fit_image_size and image.fit_to_budget(photos, given, "cpu", 0.5)[0].image_size == 192


def test_a_run_stores_the_image_size_its_budget_planned(photos, worker) -> None:  # type: ignore[no-untyped-def]
    # 230 training photos: the head's features at 192 px alone take about 7 s on 2 cores.
    run = jobs.submit(jobs.config_for(photos.id, budget_s=10, epochs=2))
    assert run.config["image_size"] == 192
    done = jobs.wait(run.id, timeout_s=240)
    assert done.status == "succeeded", done.error
    log = (jobs.run_dir(run.id) / "run.log").read_text()
    assert "instead of 192 px" in log
    size = done.config["image_size"]
    assert size < 192 and not done.config["fit_image_size"]  # a resume keeps the planned size
    assert json.loads((jobs.run_dir(run.id) / "config.json").read_text())["image_size"] == size


def test_budgets_as_typed() -> None:
    assert parse_budget("auto") is None and parse_budget("none") == 0 and parse_budget("90s") == 90
    for bad, said in (("soon", "no time budget"), ("5", "10 s to 7 days")):
        with pytest.raises(ConfigError, match=said):
            parse_budget(bad)


def test_a_budget_plans_the_epochs_that_fit() -> None:
    # 10 steps an epoch at 0.5 s and 1 s a validation: 6 s an epoch. 8 steps into the first, 3
    # epochs take 2 + 6 + 6 = 14 s and 4 take 20 s: 3 fit in 19 s.
    plan = plan_budget(seconds_left=19, step_s=0.5, val_s=1, steps_done=8, steps_per_epoch=10, max_epochs=50)
    assert plan.epochs == 3 and plan.total_steps == 30
    assert (
        plan_budget(
            seconds_left=99, step_s=0.5, val_s=1, steps_done=8, steps_per_epoch=10, max_epochs=2
        ).epochs
        == 2
    )
    cut = plan_budget(seconds_left=3, step_s=0.5, val_s=1, steps_done=8, steps_per_epoch=100, max_epochs=5)
    assert (cut.epochs, cut.total_steps) == (1, 12) and "12 of 100 steps" in cut.describe(100, 3)


def test_fit_linear_learns_separable_features() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 40, generator=gen) * 4
    y = torch.arange(90) % 3
    x = centres[y] + torch.randn(90, 40, generator=gen) + 100  # far from the origin, as features are
    head = torch.nn.Linear(40, 3)
    fit_linear(head, x, y)
    with torch.no_grad():
        assert (head(x).argmax(1) == y).float().mean() == 1.0


def test_head_first_reports_epoch_zero_and_reuses_cached_features(clothes, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = jobs.config_for(clothes.id, image_size=32, epochs=1, batch_size=8)
    seen: list[EpochResult] = []
    said: list[str] = []
    data = get_task("image-classification").prepare(clothes, cfg, "cpu")
    assert data.head is not None and data.features_key
    outcome = train(
        cfg, data, device="cpu", run_dir=tmp_path / "a", on_epoch=seen.append,
        features_dir=tmp_path / "features", log=said.append,
    )  # fmt: skip
    assert [r.epoch for r in seen] == [0, 1] and outcome.status == "completed"
    assert seen[0].metrics["val_accuracy"] > 0.5  # 3 classes: the fitted head beats chance at once
    assert (tmp_path / "features" / f"{data.features_key}.safetensors").exists()
    assert "(cached)" not in said[0]
    again = get_task("image-classification").prepare(clothes, cfg, "cpu")
    train(
        cfg, again, device="cpu", run_dir=tmp_path / "b", features_dir=tmp_path / "features", log=said.append
    )
    assert "(cached)" in said[-1]
    off = get_task("image-classification").prepare(
        clothes, cfg.model_copy(update={"head_first": False}), "cpu"
    )
    assert off.head is None


def test_a_time_budget_stops_early_with_a_plan(clothes, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = jobs.config_for(clothes.id, model="small-cnn", image_size=32, epochs=500, batch_size=4, patience=0)
    data = get_task("image-classification").prepare(clothes, cfg, "cpu")
    said: list[str] = []
    began = time.monotonic()
    outcome = train(cfg, data, device="cpu", run_dir=tmp_path, deadline=began + 6, log=said.append)
    spent = time.monotonic() - began
    assert outcome.status == "budget" and 1 <= outcome.epochs_run < 500
    assert any(line.startswith("time budget:") and "fit in the" in line for line in said)
    assert spent < 6 + 5  # the last epoch and its validation may pass the deadline a little


def _cli_on_a_terminal(argv: list[str]) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run the CLI with stderr on a pseudo-terminal, as in a shell; returns what stderr showed."""
    import os
    import pty

    leader, follower = pty.openpty()
    import fcntl
    import struct
    import termios

    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))  # 120 columns
    proc = subprocess.Popen(
        [sys.executable, "-m", "core", *argv], stdout=subprocess.PIPE, stderr=follower, text=True
    )
    os.close(follower)
    shown = bytearray()
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    out, _ = proc.communicate(timeout=300)
    os.close(leader)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, ""), shown.decode(errors="replace")


def test_cli_train_budget_is_planned_and_logged_with_a_progress_bar(clothes, worker) -> None:  # type: ignore[no-untyped-def]
    base = [
        "train",
        "--dataset",
        str(clothes.id),
        "--model",
        "small-cnn",
        "--image-size",
        "32",
        "--patience",
        "0",
    ]
    # Long enough for several heartbeats, which carry the progress the bar draws.
    done, shown = _cli_on_a_terminal([*base, "--epochs", "400", "--budget", "12", "--wait"])
    assert done.returncode == 0, shown
    assert "run 1 · epoch" in shown and "steps" in shown and "ETA" in shown
    assert "succeeded" in done.stdout
    log = (jobs.run_dir(1) / "run.log").read_text()
    assert "time budget 12 s" in log and "stopped at its time budget" in log
    assert jobs.get_run(1).config["budget_s"] == 12

    done, shown = _cli_on_a_terminal([*base, "--epochs", "1", "--wait", "--json"])
    assert done.returncode == 0, shown
    assert json.loads(done.stdout)["status"] == "succeeded" and "steps" not in shown  # --json: no bar


def test_datasets_add_shows_its_stages_on_a_terminal(home: Path, tmp_path: Path) -> None:
    images = fashion_mnist_zip(tmp_path / "c.zip", per_class=20, classes=("trouser", "bag"))
    done, shown = _cli_on_a_terminal(["datasets", "add", str(images)])
    assert done.returncode == 0, shown
    assert "unpacking the zip" in shown and "decoding images 40/40" in shown and "keeping 40 images" in shown
    assert "dataset 1" in done.stdout
    done, shown = _cli_on_a_terminal(["datasets", "add", str(images), "--json"])
    assert done.returncode == 0 and "decoding" not in shown and json.loads(done.stdout)["id"] == 2
