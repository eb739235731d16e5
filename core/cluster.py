"""The Ray executor (ASCENT_EXECUTOR=ray) and what `python -m core cluster` prints.

The worker claims runs from the SQL queue as the local one does (the database stays the one
source of truth, and the studio does not know the difference) and places each on a Ray
cluster with the resources it asks for: a run of one process is a Ray task that supervises
`python -m core run ID` on its node, as the local worker does on this machine; a run of
several is a Ray task that starts them with Ray Train's TorchTrainer, one per GPU or
`ASCENT_RAY_CPUS_PER_PROCESS` CPUs each, every one training its share through the same loop
(core.train) as under torch's own launcher. Runs go on side by side as far as the cluster's
free resources allow; the first claimed run that does not fit waits, claimed, with a status
line that says what it waits for, and the queue behind it stays queued.

Every node reads datasets and writes run folders under the same ASCENT_HOME (a file system
they all mount), reaches the same database, and has Ascent at the same path in the same
Python environment (docs/scale.md).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import jobs
from core.config import RunConfig, database, get_settings
from core.errors import ConfigError
from core.worker import ROOT, Worker, advance_sweeps, supervise
from db.models import RunStatus
from db.session import retrying

# A placed run's `worker` column: "ray: " and the addresses of the nodes its processes run on.
PLACED = "ray: "
# The waiting run's status line starts so (the Train page and `runs show` print it).
WAITING = "waiting for resources"
# Seconds the worker gives a cancelled run's processes to stop by themselves before it has Ray
# kill them (a one-process run's supervisor kills its process after the local worker's grace).
CANCEL_GRACE_S = 30.0


@dataclass(frozen=True)
class Need:
    """What one run asks the cluster for."""

    processes: int
    cpus: float  # each process's
    gpus: float  # each process's: 1 for a GPU run, else 0

    @property
    def total(self) -> dict[str, float]:
        out = {"CPU": self.processes * self.cpus}
        if self.gpus:
            out["GPU"] = self.processes * self.gpus
        return out


def need_of(cfg: RunConfig, cluster_gpus: float) -> Need:
    """A run's resources: a GPU per process when it asks for CUDA, or asks for nothing in
    particular and the cluster has GPUs; CPUs per process as ASCENT_RAY_CPUS_PER_PROCESS says."""
    settings = get_settings()
    device = settings.device if cfg.device == "auto" else cfg.device
    gpu = device.startswith("cuda") or (device == "auto" and cluster_gpus > 0)
    return Need(cfg.processes, settings.ray_cpus_per_process, 1.0 if gpu else 0.0)


def amounts(resources: dict[str, float]) -> str:
    """ "2 CPUs and 1 GPU" (GPUs only when there are some)."""

    def one(n: float, what: str) -> str:
        return f"{n:g} {what}" + ("" if n == 1 else "s")

    said = [one(resources.get("CPU", 0.0), "CPU")]
    if resources.get("GPU"):
        said.append(one(resources["GPU"], "GPU"))
    return " and ".join(said)


def fits(need: dict[str, float], free: dict[str, float]) -> bool:
    return all(free.get(key, 0.0) >= value - 1e-9 for key, value in need.items())


def waiting_line(need: Need, free: dict[str, float], total: dict[str, float]) -> str:
    """The status line of a run that waits for the cluster."""
    if not fits(need.total, total):
        return (
            f"{WAITING}: the run needs {amounts(need.total)}, more than the whole cluster has "
            f"({amounts(total)}); add a node (`ray start --address ...`) or cancel it"
        )
    return f"{WAITING}: the run needs {amounts(need.total)}; the cluster has {amounts(free)} free"


def node_ip() -> str:
    """The address this node joined the cluster with (what `core cluster` lists)."""
    import ray
    import ray.util

    here = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == here:
            return str(node["NodeManagerAddress"])
    return str(ray.util.get_node_ip_address())


def _reachable(address: str) -> None:
    """Refuse at once an address nothing listens on (Ray itself would retry for minutes)."""
    if address.startswith("ray://") or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"no Ray cluster answers at ASCENT_RAY_ADDRESS={address} ({exc}); start one with "
            "`ray start --head` there, or leave ASCENT_RAY_ADDRESS empty for a local one"
        ) from exc


def connect(*, start: bool) -> str:
    """Join the cluster ASCENT_RAY_ADDRESS names ("auto": the one `ray start` began on this
    machine), or with `start` and no address (or "auto" and none running) start a local one
    in this process. Returns what it joined, in words."""
    import ray

    settings = get_settings()
    env = {key: value for key, value in os.environ.items() if key.startswith("ASCENT_")}
    env["ASCENT_HOME"] = str(settings.home.resolve())
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env["RAY_TRAIN_ENABLE_PRINT_PATCH"] = "0"  # a run's processes print into its log, once
    options: dict[str, Any] = {
        "runtime_env": {"env_vars": env},
        "namespace": "ascent",
        "log_to_driver": False,
        "configure_logging": False,
    }
    address = settings.ray_address.strip()
    if address or not start:
        _reachable(address)
        try:
            ray.init(address=address or "auto", **options)
            return f"the Ray cluster at {address or 'this machine'}"
        except ConnectionError as exc:
            if not start or address not in ("", "auto"):
                raise ConfigError(
                    "no Ray cluster is running here: start the worker with ASCENT_EXECUTOR=ray "
                    "(it starts a local one), or `ray start --head`, or set ASCENT_RAY_ADDRESS"
                ) from exc
    ray.init(num_cpus=settings.ray_cpus or None, include_dashboard=False, **options)
    return f"a local Ray cluster ({amounts(ray.cluster_resources())})"


@dataclass
class Placed:
    """A run this worker claimed: waiting for resources (no task yet), or placed as a task."""

    run_id: int
    need: Need
    processes: int
    task: Any = None  # the Ray task's ObjectRef once placed
    started: bool = False  # its processes said where they run
    cancel_seen: float | None = None
    killed: bool = False


class RayWorker(Worker):
    """The worker of ASCENT_EXECUTOR=ray: claims runs from the database and places them on a
    Ray cluster, many at a time."""

    def serve(self) -> None:
        import ray

        print(f"executor: ray, on {connect(start=True)}", flush=True)
        placed: dict[int, Placed] = {}
        idle_since = time.monotonic()
        try:
            while not self.stopping:
                self._beat()
                lost = retrying(jobs.recover_lost, for_s=get_settings().db_retry_s, what="lost runs")
                if lost:
                    print(f"marked lost (heartbeat stopped): {lost}", flush=True)
                self._reap(placed)
                self._watch(placed)
                advance_sweeps()
                if all(p.task is not None for p in placed.values()):
                    run = jobs.claim(self.name)
                    if run is not None:
                        cfg = RunConfig.model_validate(run.config)
                        need = need_of(cfg, ray.cluster_resources().get("GPU", 0.0))
                        placed[run.id] = Placed(run.id, need, cfg.processes)
                        print(f"run {run.id}: claimed, needs {amounts(need.total)}", flush=True)
                self._place_waiting(placed)
                if placed:
                    idle_since = time.monotonic()
                elif self.idle_exit_s is not None and time.monotonic() - idle_since > self.idle_exit_s:
                    break
                time.sleep(self.poll_s)
        finally:
            for p in placed.values():
                if p.task is not None:
                    ray.cancel(p.task, force=True)
                jobs.finish(
                    p.run_id,
                    RunStatus.LOST,
                    "the worker was stopped during the run; `runs resume` continues it",
                )
            ray.shutdown()

    def _place_waiting(self, placed: dict[int, Placed]) -> None:
        """Place the waiting run when the cluster has room for it, else say what it waits for."""
        import ray

        waiting = [p for p in placed.values() if p.task is None]
        if not waiting:
            return
        p = waiting[0]
        free = dict(ray.available_resources())
        for other in placed.values():  # placed, not yet in Ray's accounts
            if other.task is not None and not other.started:
                for key, value in other.need.total.items():
                    free[key] = free.get(key, 0.0) - value
        if not fits(p.need.total, free):
            line = waiting_line(p.need, free, ray.cluster_resources())
            if jobs.heartbeat(p.run_id, {"phase": line}):  # cancelled (or gone) while it waited
                jobs.finish(p.run_id, RunStatus.CANCELLED, "cancelled before it started")
                del placed[p.run_id]
            return
        options: dict[str, Any] = {"max_retries": 0, "name": f"ascent-run-{p.run_id}"}
        if p.processes == 1:
            p.task = _one_process.options(num_cpus=p.need.cpus, num_gpus=p.need.gpus, **options).remote(
                p.run_id
            )
        else:  # the processes ask for their resources through Ray Train; this task only waits
            p.task = _many_processes.options(num_cpus=0, **options).remote(p.run_id, p.need.cpus, p.need.gpus)
        jobs.heartbeat(p.run_id, {"phase": "starting on the Ray cluster"})
        print(f"run {p.run_id}: placed on the cluster", flush=True)

    def _watch(self, placed: dict[int, Placed]) -> None:
        """Notice placed runs starting, and have Ray stop the cancelled ones that do not."""
        import ray

        for p in placed.values():
            if p.task is None:
                continue
            run = jobs.get_run(p.run_id)
            p.started = p.started or (run.worker or "").startswith(PLACED)
            if not p.started:  # alive while Ray starts its process, which then beats itself
                jobs.heartbeat(p.run_id)
            if run.cancel_requested and p.cancel_seen is None:
                p.cancel_seen = time.monotonic()
            if (
                p.cancel_seen is not None
                and not p.killed
                and time.monotonic() - p.cancel_seen > CANCEL_GRACE_S
            ):
                p.killed = True
                ray.cancel(p.task, force=True)

    def _reap(self, placed: dict[int, Placed]) -> None:
        """Close the runs whose Ray task ended and left them running."""
        import ray
        from ray.exceptions import NodeDiedError, RayTaskError, TaskCancelledError, WorkerCrashedError

        tasks = [p.task for p in placed.values() if p.task is not None]
        if not tasks:
            return
        ended, _ = ray.wait(tasks, num_returns=len(tasks), timeout=0)
        for p in [p for p in placed.values() if p.task in ended]:
            del placed[p.run_id]
            status, why = RunStatus.FAILED, "its Ray task ended without closing the run"
            try:
                ray.get(p.task)
            except TaskCancelledError:
                status, why = RunStatus.CANCELLED, "cancelled on request (Ray stopped its processes)"
            except (WorkerCrashedError, NodeDiedError) as exc:
                status = RunStatus.LOST
                why = (
                    "the Ray worker running it died (killed, out of memory, or its node left the "
                    f"cluster: {type(exc).__name__}); `runs resume` continues it"
                )
            except RayTaskError as exc:
                why = f"its Ray task failed: {one_line(exc)}"
            if jobs.finish(p.run_id, status, why):
                print(f"run {p.run_id}: {status.value} ({why})", flush=True)
            else:
                print(f"run {p.run_id}: {jobs.get_run(p.run_id).status}", flush=True)


def one_line(exc: BaseException) -> str:
    """The last line an exception's text says (a task's error carries its whole traceback)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    from core.execute import message_of

    lines = [line for line in message_of(exc).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(exc).__name__


@contextlib.contextmanager
def _logging_to(path: Path) -> Iterator[None]:
    """Send this process's output (Python's and native libraries') into the run's log, as
    `python -m core run` does under the local worker; Ray's own logging comes back after."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with path.open("ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)


def _run_log(run_id: int) -> Path:
    out = jobs.run_dir(run_id)
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.log").touch()
    return out / "run.log"


def _one_process_task(run_id: int) -> int:
    """A Ray task: one run in one process on this node, supervised as the local worker does."""
    database()
    jobs.place(run_id, PLACED + node_ip())
    return supervise(jobs.get_run(run_id), cancel_grace_s=20.0)


def _many_processes_task(run_id: int, cpus: float, gpus: float) -> int:
    """A Ray task: a run of several processes under Ray Train (each asks for `cpus` and `gpus`),
    closed as failed with the first process's error when one fails."""
    from ray.train import FailureConfig, ScalingConfig
    from ray.train import RunConfig as TrainConfig
    from ray.train.torch import TorchTrainer

    from core.distributed import backend
    from core.execute import plan_processes, started_at

    began = time.monotonic()
    database()
    log_path = _run_log(run_id)
    jobs.record_artifact(run_id, "log", log_path, hash_file=False)
    run = jobs.get_run(run_id)
    processes = RunConfig.model_validate(run.config).processes
    with _logging_to(log_path), _beating(run_id):
        try:
            device = "cuda" if gpus else "cpu"
            cfg = plan_processes(
                run_id, began, f"{processes} × {device} (Ray Train)", backend(device), device
            )
            resources = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
            trainer = TorchTrainer(
                _rank_main,
                train_loop_config={"run_id": run_id, "started": started_at(began), "cpus": cpus},
                scaling_config=ScalingConfig(
                    num_workers=cfg.processes, use_gpu=bool(gpus), resources_per_worker=resources
                ),
                run_config=TrainConfig(
                    name=f"run-{run_id}-attempt-{run.attempts}",
                    storage_path=str(log_path.parent / "ray-train"),
                    failure_config=FailureConfig(max_failures=0),
                ),
            )
            trainer.fit()
        except Exception as exc:
            message = rank_failure(exc, processes)
            print(message, flush=True)
            if jobs.get_run(run_id).status == RunStatus.RUNNING:
                jobs.finish(run_id, RunStatus.FAILED, message)
            return 1
        finally:
            jobs.record_artifact(run_id, "log", log_path, hash_file=False)
    return 0


@contextlib.contextmanager
def _beating(run_id: int) -> Iterator[None]:
    """Keep the run's heartbeat while Ray Train starts its processes (the main one then beats
    too, with the progress) and until they end."""
    done = threading.Event()

    def beat() -> None:
        while not done.wait(get_settings().heartbeat_s):
            with contextlib.suppress(Exception):  # a database blip: the next beat tries again
                jobs.heartbeat(run_id)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def rank_failure(exc: BaseException, processes: int) -> str:
    """One line for a run whose Ray Train process failed: which one, and its error."""
    failures = getattr(exc, "worker_failures", None)
    if isinstance(failures, dict) and failures:
        rank = min(failures)
        return f"process {rank} of {processes} failed: {one_line(failures[rank])}"
    return one_line(exc)


def _rank_main(config: dict[str, Any]) -> None:
    """One process of a run under Ray Train (its process group is set up already)."""
    import ray.train
    import torch
    import torch.distributed as dist

    from core.distributed import Ranks
    from core.execute import attempt, began_at

    context = ray.train.get_context()
    ranks = Ranks(context.get_world_rank(), context.get_world_size(), context.get_local_rank())
    run_id = int(config["run_id"])
    database()
    if torch.cuda.is_available() and torch.cuda.device_count():
        import ray.train.torch

        device = str(ray.train.torch.get_device())
        torch.cuda.set_device(device)
    else:
        device = "cpu"
        torch.set_num_threads(max(1, int(config["cpus"])))
    nodes: list[Any] = [None] * ranks.world
    dist.all_gather_object(nodes, node_ip())
    began = began_at(float(config["started"]))
    if not ranks.main:
        attempt(run_id, began, ranks=ranks, device=device)
        return
    jobs.place(run_id, PLACED + ", ".join(sorted(set(map(str, nodes)))))
    with _logging_to(_run_log(run_id)):
        attempt(run_id, began, ranks=ranks, device=device)


def _remote(fn: Any) -> Any:
    import ray

    return ray.remote(fn)


_one_process = _remote(_one_process_task)
_many_processes = _remote(_many_processes_task)


@dataclass(frozen=True)
class NodeInfo:
    address: str
    alive: bool
    cpus: float
    cpus_free: float
    gpus: float
    gpus_free: float
    runs: list[int]


def describe() -> dict[str, Any]:
    """The cluster's nodes with their free CPUs and GPUs and the runs placed on each, and the
    runs waiting for resources (joins the cluster, never starts one)."""
    import ray
    from ray._private.state import state

    from core.jobs import list_runs

    joined = connect(start=False)
    database()
    try:
        free_by_node = state.available_resources_per_node()
        nodes = ray.nodes()
    finally:
        ray.shutdown()
    running = list_runs(RunStatus.RUNNING.value, limit=10_000)
    out = []
    for node in nodes:
        address = str(node.get("NodeManagerAddress", "?"))
        total = node.get("Resources", {}) if node.get("Alive") else {}
        free = free_by_node.get(node.get("NodeID"), {})
        on_it = [
            r.id
            for r in running
            if (r.worker or "").startswith(PLACED)
            and address in (r.worker or "").removeprefix(PLACED).split(", ")
        ]
        out.append(
            NodeInfo(
                address,
                bool(node.get("Alive")),
                float(total.get("CPU", 0.0)),
                float(free.get("CPU", 0.0)),
                float(total.get("GPU", 0.0)),
                float(free.get("GPU", 0.0)),
                on_it,
            )
        )
    waiting = [r.id for r in running if str((r.progress or {}).get("phase", "")).startswith(WAITING)]
    return {"cluster": joined, "nodes": out, "waiting": waiting}
