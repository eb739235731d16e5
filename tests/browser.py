"""The studio in a real browser for tests: Debian's Chromium driven by Playwright against
`streamlit run` on 127.0.0.1 (the `studio` and `page` fixtures in conftest.py), and the steps a
person takes (open a page from the navigation, wait for the script, screenshot at two widths)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "test-output" / "e2e"
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_studio(home: Path) -> Iterator[str]:
    """`streamlit run streamlit_app.py` on 127.0.0.1, stopped (with its worker) afterwards."""
    port = _free_port()
    log = (home.parent / "streamlit.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.address", "127.0.0.1",
         "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def open_browser(studio: str):  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    OUTPUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000}, base_url=studio)
        pg = context.new_page()
        pg.set_default_timeout(60_000)
        try:
            yield pg
        finally:
            context.close()
            browser.close()


TITLES = {"/": "Home", "/datasets": "Datasets", "/train": "Train", "/runs": "Runs", "/predict": "Predict"}


def open_page(page, path: str) -> None:  # type: ignore[no-untyped-def]
    """Enter through the app's front door, then use the navigation at the top as a person does."""
    if page.url in ("about:blank", "") or path == "/":
        page.goto("/")
        page.get_by_role("heading", name="Ascent").first.wait_for()
    if path != "/":
        page.locator('[data-testid="stTopNav"]').get_by_text(TITLES[path], exact=True).click()
        page.get_by_role("heading", name=TITLES[path]).first.wait_for()
    settle(page)


def settle(page) -> None:  # type: ignore[no-untyped-def]
    """Wait until Streamlit has finished running the script."""
    page.wait_for_timeout(300)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=120_000)


def shot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    """The page at 1400 px (name.png) and at 800 px wide (name-800.png)."""
    settle(page)
    page.screenshot(path=str(OUTPUT / f"{name}.png"), full_page=True)
    page.set_viewport_size({"width": 800, "height": 1000})
    page.wait_for_timeout(400)
    page.screenshot(path=str(OUTPUT / f"{name}-800.png"), full_page=True)
    page.set_viewport_size({"width": 1400, "height": 1000})
    page.wait_for_timeout(200)


def launch_and_wait(page, epochs: str, extra: dict[str, str] | None = None) -> None:  # type: ignore[no-untyped-def]
    open_page(page, "/train")
    page.get_by_role("spinbutton", name="Epochs", exact=True).fill(epochs)
    for label, value in (extra or {}).items():
        page.get_by_role("spinbutton", name=label, exact=True).fill(value)
    page.get_by_role("button", name="Launch").click()
    page.get_by_text("queued:").wait_for()
    shot(page, "train")
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.get_by_text("No run is going on").wait_for(timeout=240_000)
    except PlaywrightTimeout as exc:
        raise AssertionError(f"the run did not end in 240 s: {runs_said()}") from exc
    # The run this page launched says how it ended, with a way to it.
    page.get_by_text("succeeded").first.wait_for()
    page.get_by_role("link", name="See it on Runs").first.wait_for()
    page.get_by_role("link", name="See it on Runs").first.scroll_into_view_if_needed()
    shot(page, "train-ended")


def runs_said() -> str:
    """One line on this home's latest runs, workers and their logs' last lines: what a failed
    wait needs in CI's short summary, where the logs themselves are out of reach."""
    from core import jobs
    from core.config import get_settings

    home = get_settings().home

    def tail(path: Path, n: int) -> str:
        return " | ".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else "none"

    runs = "; ".join(
        f"run {r.id} {r.status} on {r.device or 'no device'} (log: {tail(jobs.run_dir(r.id) / 'run.log', 3)})"
        for r in jobs.list_runs(limit=3)
    )
    return f"{runs or 'no runs'}; a worker alive: {jobs.worker_alive()}; worker.log: {tail(home / 'worker.log', 6)}"
