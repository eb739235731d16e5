"""The worker: claims queued runs one at a time and runs each in a child process.

It marks runs whose heartbeat stopped as lost (at start and as it polls), kills a child that
ignores a cancel request, and closes a run its child left `running` (crash, kill) as failed
with the reason and the log's last lines. The child runs in its own process group, which the
worker kills as a whole, and dies with the worker: on Linux the kernel sends it SIGKILL when
the worker dies (even by kill -9), elsewhere its heartbeat thread notices the orphaning.
Database outages of up to ASCENT_DB_RETRY_S seconds are waited out.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from core import jobs
from core.config import database, get_settings
from db import queries
from db.models import RunStatus
from db.queries import RunInfo
from db.session import retrying, session_scope

ROOT = Path(__file__).resolve().parents[1]
LOG_TAIL_LINES = 20


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    if not path.exists():
        return ""
    with path.open(errors="replace") as f:
        return "".join(deque(f, maxlen=lines)).rstrip()


def die_with_parent() -> None:
    """In a child between fork and exec: ask Linux to SIGKILL it when its parent dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def kill_group(child: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    """Signal the child and everything it started (data loaders, ranks)."""
    try:
        os.killpg(child.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(sig)


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"the training process was killed by {name}{hint}"
    return f"the training process exited with code {code}"


class Worker:
    def __init__(
        self, *, poll_s: float = 1.0, idle_exit_s: float | None = None, cancel_grace_s: float = 20.0
    ) -> None:
        self.poll_s = poll_s
        self.idle_exit_s = idle_exit_s
        self.cancel_grace_s = cancel_grace_s
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.stopping = False
        self.worker_id = 0

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True

    def _beat(self) -> None:
        def work() -> None:
            with session_scope() as session:
                queries.worker_heartbeat(session=session, worker_id=self.worker_id)

        retrying(work, for_s=get_settings().db_retry_s, what="worker heartbeat")

    def run(self) -> None:
        """Serve the queue until stopped (SIGTERM/SIGINT) or idle for idle_exit_s."""
        database()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

        def register() -> int:
            with session_scope() as session:
                return queries.register_worker(
                    session=session, hostname=socket.gethostname(), pid=os.getpid()
                )

        self.worker_id = retrying(register, for_s=get_settings().db_retry_s, what="worker start")
        try:
            self.serve()
        finally:
            with contextlib.suppress(Exception), session_scope() as session:
                queries.stop_worker(session=session, worker_id=self.worker_id)

    def serve(self) -> None:
        """Claim runs one at a time and run each here, until stopped or idle."""
        idle_since = time.monotonic()
        while not self.stopping:
            self._beat()
            lost = retrying(jobs.recover_lost, for_s=get_settings().db_retry_s, what="lost runs")
            if lost:
                print(f"marked lost (heartbeat stopped): {lost}", flush=True)
            advance_sweeps()
            run = jobs.claim(self.name)
            if run is None:
                if self.idle_exit_s is not None and time.monotonic() - idle_since > self.idle_exit_s:
                    break
                time.sleep(self.poll_s)
                continue
            print(f"run {run.id}: started", flush=True)
            self.supervise(run)
            print(f"run {run.id}: {jobs.get_run(run.id).status}", flush=True)
            idle_since = time.monotonic()

    def supervise(self, run: RunInfo) -> None:
        supervise(run, beat=self._beat, stopping=lambda: self.stopping, cancel_grace_s=self.cancel_grace_s)


def advance_sweeps() -> None:
    """Queue the open sweeps' next trials (core.sweeps); a failure is said, not fatal."""
    from core import sweeps

    try:
        queued = sweeps.advance_all()
    except Exception as exc:
        print(f"sweeps: {type(exc).__name__}: {exc}", flush=True)
        return
    if queued:
        print(f"sweeps: queued runs {queued}", flush=True)


def supervise(
    run: RunInfo,
    *,
    cancel_grace_s: float,
    beat: Callable[[], None] = lambda: None,
    stopping: Callable[[], bool] = lambda: False,
) -> int:
    """Run one claimed run in a child process (`python -m core run ID`, logging to the run's
    folder) and make sure it ends in a final state: the child is killed when a cancel goes
    unanswered for `cancel_grace_s` or when `stopping()` turns true, and a run it left running
    is closed with the reason. `beat` is called each heartbeat. Returns the child's exit code."""
    out = jobs.run_dir(run.id)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "run.log"
    heartbeat_s = get_settings().heartbeat_s
    with log_path.open("ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "core", "run", str(run.id)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env=child_env(),
            process_group=0,
            preexec_fn=die_with_parent,
        )
    jobs.set_process(run.id, child.pid)
    jobs.record_artifact(run.id, "log", log_path, hash_file=False)
    cancel_seen: float | None = None
    stopped = False
    last_beat = 0.0
    try:
        while child.poll() is None:
            time.sleep(min(0.2, heartbeat_s))
            now = time.monotonic()
            if now - last_beat >= heartbeat_s:
                last_beat = now
                beat()
                # The run is alive while its supervisor and its process are, even before the
                # child's own heartbeat starts (imports, data loading).
                if jobs.heartbeat(run.id) and cancel_seen is None:
                    cancel_seen = now
            if cancel_seen is not None and now - cancel_seen > cancel_grace_s:
                kill_group(child)
            if stopping() and not stopped:
                stopped = True
                kill_group(child, signal.SIGTERM)
                try:
                    child.wait(10)
                except subprocess.TimeoutExpired:
                    kill_group(child)
    except BaseException:
        kill_group(child)  # a supervisor that fails takes its run down with it
        raise
    code = child.wait()
    kill_group(child)  # whatever the run left behind (data loader processes)
    jobs.record_artifact(run.id, "log", log_path, hash_file=False)
    if jobs.get_run(run.id).status != RunStatus.RUNNING:
        return code
    tail = log_tail(log_path)
    if cancel_seen is not None:
        jobs.finish(run.id, RunStatus.CANCELLED, "cancelled on request (the process was stopped)")
    elif stopped:
        jobs.finish(
            run.id, RunStatus.LOST, "the worker was stopped during the run; `runs resume` continues it"
        )
    else:
        reason = _exit_reason(code) if code else "the training process exited without closing the run"
        jobs.finish(run.id, RunStatus.FAILED, f"{reason}\n--- last lines of the log ---\n{tail}")
    return code


def start_background_worker(idle_exit_s: float | None = None) -> subprocess.Popen[bytes]:
    """Start `python -m core worker` detached, logging to ASCENT_HOME/worker.log."""
    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    idle = settings.worker_idle_exit_s if idle_exit_s is None else idle_exit_s
    with (settings.home / "worker.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "core", "worker", "--idle-exit", str(idle)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env=child_env(),
            start_new_session=True,
        )
