"""Shared fixtures: a private ASCENT_HOME and database per test, real data from scikit-learn,
and a real worker process that each test stops."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("ASCENT_TEST_DATABASE_URL", "")
BACKENDS = ["sqlite", "postgresql"]


def _fresh_postgres_db() -> tuple[str, str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"ascent_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False), name


def _drop_postgres_db(name: str) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Run a test on SQLite always and on PostgreSQL when ASCENT_TEST_DATABASE_URL is set."""
    if request.param == "postgresql" and not PG_ADMIN_URL:
        pytest.skip("ASCENT_TEST_DATABASE_URL is not set (CI sets it)")
    return str(request.param)


def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str) -> Iterator[Path]:
    from db import session

    home = tmp_path / "home"
    monkeypatch.setenv("ASCENT_HOME", str(home))
    monkeypatch.setenv("ASCENT_HEARTBEAT_S", "0.3")
    monkeypatch.setenv("ASCENT_LOST_AFTER_S", "3")
    monkeypatch.setenv("ASCENT_WORKER_IDLE_EXIT_S", "30")
    monkeypatch.setenv("ASCENT_DEVICE", "cpu")
    # Pages run in this process (AppTest) start no background worker: a test that wants one
    # says so with the `worker` fixture. The studio's own process (browser tests) still does.
    from core import jobs

    monkeypatch.setattr(jobs, "ensure_worker", lambda grace_s=60.0: False)
    pg_name = None
    if backend == "postgresql":
        url, pg_name = _fresh_postgres_db()
        monkeypatch.setenv("ASCENT_DATABASE_URL", url)
    else:
        monkeypatch.delenv("ASCENT_DATABASE_URL", raising=False)
    try:
        yield home
    finally:
        _stop_workers(home)
        session.dispose_all()
        if pg_name:
            _drop_postgres_db(pg_name)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """ASCENT_HOME in tmp_path with a SQLite database."""
    yield from _home(tmp_path, monkeypatch, "sqlite")


@pytest.fixture
def any_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str) -> Iterator[Path]:
    """ASCENT_HOME in tmp_path on each database backend."""
    yield from _home(tmp_path, monkeypatch, backend)


def _stop_workers(home: Path) -> None:
    """Stop every worker (and its child) a test started through the CLI or a fixture."""
    import signal

    from core import config
    from db import queries
    from db.session import session_scope

    try:
        config.database()
        with session_scope() as s:
            workers = queries.alive_workers(session=s, within_s=86_400)
            running = [r.pid for r in queries.list_runs(session=s, status="running") if r.pid]
    except Exception:
        return
    for pid in [p for _, _, p in workers] + running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for pid in [p for _, _, p in workers] + running:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def worker(home: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real `python -m core worker` process for this test's home, stopped afterwards."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "core", "worker", "--poll", "0.2"],
        cwd=ROOT,
        stdout=(home.parent / "worker.out").open("wb"),
        stderr=subprocess.STDOUT,
    )
    yield proc
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.2, why=None):  # type: ignore[no-untyped-def]
    """The predicate's first true value, polled; on timeout, an error saying what `why()` says
    about the state things were left in (so that a CI failure explains itself)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s" + (f": {why()}" if why is not None else ""))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real tables shipped by scikit-learn, written as the files a user would upload."""
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris, load_wine

    d = tmp_path_factory.mktemp("data")
    load_wine(as_frame=True).frame.to_csv(d / "wine.csv", index=False)
    load_diabetes(as_frame=True, scaled=False).frame.to_csv(d / "diabetes.csv", index=False)
    iris = load_iris(as_frame=True)
    frame = iris.frame.copy()
    frame["target"] = [iris.target_names[t] for t in iris.target]
    frame.to_parquet(d / "iris.parquet", index=False)
    bc = load_breast_cancer(as_frame=True).frame
    bc.to_csv(d / "breast_cancer.tsv", sep="\t", index=False)
    return d


@pytest.fixture(scope="session")
def big_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic table large enough that training takes a while (cancel, crash, resume)."""
    import numpy as np

    rng = np.random.default_rng(0)
    n = 20_000
    x = rng.normal(size=(n, 8)).astype("float32")
    y = (x[:, 0] + 0.5 * x[:, 1] ** 2 > 0.5).astype(int)
    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(8)])
    df["colour"] = rng.choice(["red", "green", "blue"], size=n)
    df["label"] = y
    path = tmp_path_factory.mktemp("big") / "big.csv"
    df.to_csv(path, index=False)
    return path


def tiny_llama(folder: Path) -> Path:
    """A two-layer Llama with SmolLM2's tokenizer and chat template and random weights, saved
    in `folder` as --weights takes a model folder: small enough to train and export in seconds."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from core.models.llm import smollm2_folder

    base = smollm2_folder()
    config = AutoConfig.from_pretrained(base)
    config.update(
        {
            "num_hidden_layers": 2,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
        }
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    return folder


def train_here(*run_ids: int) -> None:
    """Train, export and close these queued runs in this process, in order, as a worker's child
    would: for tests about what a run leaves, not about the worker (a Worker starts a Python
    process per run, about 5 s each on this CPU)."""
    from core import jobs
    from core.execute import execute_run

    for run_id in run_ids:
        claimed = jobs.claim("test")
        assert claimed is not None and claimed.id == run_id, claimed
        assert execute_run(run_id) == 0, jobs.get_run(run_id).error
        assert jobs.get_run(run_id).status == "succeeded"


@pytest.fixture
def studio(home: Path) -> Iterator[str]:
    """The studio (`streamlit run`) on 127.0.0.1 for this test's home; stopped afterwards."""
    from tests.browser import run_studio

    yield from run_studio(home)


@pytest.fixture
def page(studio: str):  # type: ignore[no-untyped-def]
    """A Chromium page (1400 x 1000) on the studio; the browser is closed afterwards."""
    from tests.browser import open_browser

    yield from open_browser(studio)


@pytest.fixture(scope="session")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv whose only packages are numpy and onnxruntime (linked from this
    environment's, which is the onnxruntime-gpu wheel)."""
    import venv

    import numpy
    import onnxruntime

    root = tmp_path_factory.mktemp("bare")
    venv.create(root / "env", with_pip=False, symlinks=True)
    (site,) = (root / "env" / "lib").glob("python*/site-packages")
    only = root / "packages"
    only.mkdir()
    for package in (numpy, onnxruntime):
        folder = Path(package.__file__).parent
        for path in (folder, folder.with_name(folder.name + ".libs")):
            if path.exists():
                (only / path.name).symlink_to(path)
    (site / "packages.pth").write_text(f"{only}\n")
    python = root / "env" / "bin" / "python"
    probe = "import importlib.util as u; print([m for m in ('PIL', 'soundfile', 'scipy', 'tokenizers', 'pandas', 'torch', 'core') if u.find_spec(m)])"
    done = subprocess.run([python, "-c", probe], cwd=root, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout  # nothing else to lean on
    return python
