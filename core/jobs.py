"""The run queue on the database: submit, claim, heartbeat, cancel, recover, resume, wait."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from core.access import LOCAL, Action, Actor, can, check_name, require
from core.config import WEIGHT_WORDS, RunConfig, database, get_settings
from core.data.ingest import get_dataset, sha256_file
from core.errors import AccessError, ConfigError, NotFoundError
from core.models import default_model, get_model
from core.plan import Choice, detect_hardware, fitted_defaults
from db import queries
from db.models import FINISHED, NAME_MAX, RunStatus
from db.queries import ArtifactInfo, DatasetInfo, MetricPoint, RunFilter, RunInfo
from db.session import retrying, session_scope

T = TypeVar("T")
MAX_TAGS = 20
MAX_TAG_CHARS = 64


def run_dir(run_id: int) -> Path:
    return get_settings().runs_dir / str(run_id)


def submit(cfg: RunConfig, *, actor: Actor = LOCAL) -> RunInfo:
    """Check a configuration and queue it as a run. The worker does the training."""
    require(actor, Action.TRAIN)
    dataset = get_dataset(cfg.dataset_id)
    if cfg.task != dataset.task:
        raise ConfigError(f"dataset {dataset.id} is {dataset.task}; the run asks for {cfg.task}")
    get_model(cfg.model, cfg.task)
    if cfg.model == "hf-transformer" and cfg.weights in WEIGHT_WORDS:
        raise ConfigError(
            "hf-transformer needs the Hugging Face model to fine-tune: a hub id such as "
            "distilbert-base-uncased (--weights on the command line)"
        )
    if cfg.model == "hf-causal-lm" and cfg.weights in WEIGHT_WORDS:
        raise ConfigError(
            "hf-causal-lm needs the chat model to fine-tune: a folder or a hub id such as "
            "HuggingFaceTB/SmolLM2-360M-Instruct (--weights on the command line)"
        )
    if cfg.model == "hf-whisper" and cfg.weights in WEIGHT_WORDS:
        raise ConfigError(
            "hf-whisper needs the Whisper model to fine-tune: a folder or a hub id such as "
            "openai/whisper-base.en (--weights on the command line)"
        )
    if cfg.model == "hf-marian" and cfg.weights in WEIGHT_WORDS:
        raise ConfigError(
            "hf-marian needs the Marian model to fine-tune: a folder or a hub id such as "
            "Helsinki-NLP/opus-mt-en-es (--weights on the command line)"
        )
    if cfg.model == "hf-t5" and cfg.weights in WEIGHT_WORDS:
        raise ConfigError(
            "hf-t5 needs the T5 model to fine-tune: a folder or a hub id such as t5-small "
            "(--weights on the command line)"
        )
    if cfg.model == "marian-small" and cfg.weights not in WEIGHT_WORDS:
        raise ConfigError(
            "marian-small trains from scratch; for pretrained weights use --model hf-marian or hf-t5"
        )
    if cfg.model == "marian-small" and cfg.finetune == "lora":
        raise ConfigError(
            "LoRA adapts pretrained weights and marian-small starts from scratch; use --finetune full"
        )
    if cfg.init_from_run is not None:
        _check_seed_run(cfg.init_from_run)
    cfg = _checked_weights(cfg, actor)
    if cfg.model in ("hf-marian", "hf-t5"):
        from core.models.translation import check_family

        check_family(cfg.weights, cfg.model.removeprefix("hf-"))
    if cfg.weights.startswith("hub:") and not _hub_id(cfg.weights.removeprefix("hub:")):
        raise ConfigError(f"'{cfg.weights}' names no Hugging Face repo; give hub:ORG/NAME")
    if cfg.task in DENSE and cfg.weights not in WEIGHT_WORDS and not cfg.weights.startswith("hub:"):
        from core.models.dense import weights_file

        weights_file(cfg.weights)  # a missing file or a folder without weights: refused now
    name = check_name(cfg.name, "run") if cfg.name.strip() else f"{cfg.model}-{dataset.name}"[:NAME_MAX]
    cfg = cfg.model_copy(update={"name": name, "resume": False})
    with session_scope() as session:
        return queries.create_run(
            session=session,
            name=name,
            dataset_id=dataset.id,
            task=cfg.task,
            model=cfg.model,
            config=cfg.model_dump(mode="json"),
            params=cfg.params(),
            created_by=actor.name,
            dataset_sha256=dataset.sha256,
        )


DENSE = ("object-detection", "semantic-segmentation")  # their models take --weights hub:ID too
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?")


def _hub_id(text: str) -> bool:
    """Whether `text` is a Hugging Face repo id (NAME or ORG/NAME)."""
    return bool(_HUB_ID.fullmatch(text)) and ".." not in text


def _checked_weights(cfg: RunConfig, actor: Actor) -> RunConfig:
    """cfg, with weights that `actor` may name: anything for admins and the command line; for
    others a keyword, or a Hugging Face hub id that is fetched from the hub ("hub:ID") and never
    read from a server folder of the same name."""
    if cfg.weights in WEIGHT_WORDS or can(actor, Action.SERVER_FILES):
        return cfg
    if cfg.task in ("text-classification", "text-generation", "speech-recognition", "translation", *DENSE):
        # these load from the hub
        hub = cfg.weights.removeprefix("hub:")
        if _hub_id(hub):
            return cfg.model_copy(update={"weights": f"hub:{hub}"})
        raise AccessError(
            f"'{cfg.weights}' is no Hugging Face hub id (such as distilbert-base-uncased); "
            "only an admin may name a folder on the server"
        )
    raise AccessError("only an admin may name a weights file on the server; use default, none or imagenet")


def run_dataset(run: RunInfo) -> DatasetInfo:
    """The dataset a run was submitted on, or ConfigError when it is gone or is another one
    now (its id reused by a database from before ids were retired, or its content changed)."""
    if run.dataset_id is None:
        raise ConfigError(
            f"run {run.id}'s dataset was deleted, so it cannot be trained or measured again; "
            "its exported model still predicts"
        )
    try:
        dataset = get_dataset(run.dataset_id)
    except NotFoundError:
        raise ConfigError(f"run {run.id}'s dataset {run.dataset_id} no longer exists") from None
    if run.dataset_sha256 != dataset.sha256:
        raise ConfigError(
            f"dataset {dataset.id} is not the data run {run.id} was trained on "
            f"({'its content differs' if run.dataset_sha256 else 'it was added after the run'}); "
            "train a new run on it instead"
        )
    return dataset


def _check_seed_run(run_id: int) -> None:
    """An earlier run whose checkpoint seeds a new one must still be the run it was."""
    seed = get_run(run_id)
    if seed.dataset_id is not None:
        run_dataset(seed)


def fitted(
    dataset: DatasetInfo, model: str, *, weights: str = "default", device: str = "auto"
) -> list[Choice]:
    """The settings fitted to `dataset` and this machine's device, with their reasons."""
    return fitted_defaults(
        dataset,
        model,
        get_model(model, dataset.task).defaults,
        detect_hardware(device),
        weights=weights,
    )


def config_for(dataset_id: int, **overrides: object) -> RunConfig:
    """A RunConfig for a dataset: the overrides given (None: not given), then the settings fitted
    to the data and the device (`core.plan`), then the model's registered defaults."""
    dataset = get_dataset(dataset_id)
    values = {k: v for k, v in overrides.items() if v is not None}
    no_budget = values.get("budget_s") == 0  # "0": no time limit, not "not given"
    model = str(values.setdefault("model", default_model(dataset.task)))
    get_model(model, dataset.task)  # an unknown model is refused before the device is probed
    RunConfig(task=dataset.task, dataset_id=dataset_id, **values)  # type: ignore[arg-type]
    weights, device = str(values.get("weights", "default")), str(values.get("device", "auto"))
    for choice in fitted(dataset, model, weights=weights, device=device):
        if choice.key == "image_size" and "image_size" not in values:
            values["fit_image_size"] = True
        values.setdefault(choice.key, choice.value)
    defaults = dict(get_model(model, dataset.task).defaults)
    lora_lr = defaults.pop("lora_lr", None)  # adapters learn at a higher rate than whole models
    if lora_lr is not None and values.get("finetune", defaults.get("finetune")) == "lora":
        values.setdefault("lr", lora_lr)
    for key, value in defaults.items():
        values.setdefault(key, value)
    if no_budget:
        values["budget_s"] = None
    return RunConfig(task=dataset.task, dataset_id=dataset_id, **values)  # type: ignore[arg-type]


def get_run(run_id: int) -> RunInfo:
    sweep_lost()
    with session_scope() as session:
        run = queries.get_run(session=session, run_id=run_id)
    if run is None:
        raise NotFoundError(f"no run with id {run_id}; see `python -m core runs list`")
    return run


def list_runs(
    status: str | None = None,
    limit: int = 100,
    offset: int = 0,
    *,
    where: RunFilter | None = None,
    sort: str = "created",
    descending: bool = True,
    metric: str | None = None,
) -> list[RunInfo]:
    sweep_lost()
    with session_scope() as session:
        return queries.list_runs(
            session=session,
            status=status,
            limit=limit,
            offset=offset,
            where=where,
            sort=sort,
            descending=descending,
            metric=metric,
        )


def count_runs(where: RunFilter | None = None) -> int:
    sweep_lost()
    with session_scope() as session:
        return queries.count_runs(session=session, where=where)


def params(run_id: int) -> dict[str, str]:
    database()
    with session_scope() as session:
        return queries.get_params(session=session, run_id=run_id)


def rename(run_id: int, name: str, *, actor: Actor = LOCAL) -> None:
    name = check_name(name, "run")
    run = get_run(run_id)
    require(actor, Action.EDIT, run.created_by, what=f"run {run_id}")
    with session_scope() as session:
        queries.rename_run(session=session, run_id=run_id, name=name)


def set_tags(run_id: int, tags: list[str], *, actor: Actor = LOCAL) -> None:
    run = get_run(run_id)
    require(actor, Action.EDIT, run.created_by, what=f"run {run_id}")
    clean = sorted({t.strip() for t in tags if t.strip()})
    if len(clean) > MAX_TAGS:
        raise ConfigError(f"a run has at most {MAX_TAGS} tags; this asks for {len(clean)}")
    for tag in clean:
        if len(tag) > MAX_TAG_CHARS or any(ord(c) < 32 for c in tag):
            raise ConfigError(
                f"a tag is one line of at most {MAX_TAG_CHARS} characters ('{tag[:40]}…' is not)"
            )
    with session_scope() as session:
        queries.set_tags(session=session, run_id=run_id, tags=clean)


def delete_run(run_id: int, *, actor: Actor = LOCAL) -> None:
    """Delete a finished or queued run, its rows and its files."""
    run = get_run(run_id)
    require(actor, Action.EDIT, run.created_by, what=f"run {run_id}")
    if run.status == RunStatus.RUNNING:
        raise ConfigError(f"run {run_id} is running; cancel it before deleting it")
    with session_scope() as session:
        queries.delete_run(session=session, run_id=run_id)
    shutil.rmtree(run_dir(run_id), ignore_errors=True)


def artifacts(run_id: int) -> list[ArtifactInfo]:
    database()
    with session_scope() as session:
        return queries.list_artifacts(session=session, run_id=run_id)


def metric_history(run_id: int) -> list[MetricPoint]:
    database()
    with session_scope() as session:
        return queries.metric_history(session=session, run_id=run_id)


def cancel(run_id: int, *, actor: Actor = LOCAL) -> str:
    """Cancel a queued or lost run now; ask a running one to stop (it does within seconds)."""
    require(actor, Action.CANCEL)
    run = get_run(run_id)
    if run.status in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.PRUNED):
        raise ConfigError(f"run {run_id} is {run.status} already; only queued, running or lost runs cancel")
    with session_scope() as session:
        status = queries.request_cancel(session=session, run_id=run_id)
    return str(status)


def resume(run_id: int, *, actor: Actor = LOCAL) -> RunInfo:
    """Queue a lost, failed or cancelled run again; it continues from its last checkpoint."""
    require(actor, Action.TRAIN)
    run = get_run(run_id)
    if run.status not in (RunStatus.LOST, RunStatus.FAILED, RunStatus.CANCELLED):
        raise ConfigError(f"run {run_id} is {run.status}; only lost, failed or cancelled runs resume")
    run_dataset(run)
    has_checkpoint = (run_dir(run_id) / "last.safetensors").exists()
    with session_scope() as session:
        queries.update_run_config(
            session=session, run_id=run_id, config={**run.config, "resume": has_checkpoint}
        )
        queries.requeue_run(session=session, run_id=run_id)
    return get_run(run_id)


def update_config(run_id: int, cfg: RunConfig) -> None:
    """Store what a running run decided about its own settings (e.g. an image size planned for
    its time budget), so that a resume continues with them."""

    def work() -> None:
        with session_scope() as session:
            queries.update_run_config(session=session, run_id=run_id, config=cfg.model_dump(mode="json"))

    _retried("update config", work)


# The run and worker processes outlive short database outages: their writes are retried.


def _retried(what: str, work: Callable[[], T]) -> T:
    return retrying(work, for_s=get_settings().db_retry_s, what=what)


def claim(worker: str) -> RunInfo | None:
    database()

    def work() -> RunInfo | None:
        with session_scope() as session:
            return queries.claim_next_run(session=session, worker=worker)

    return _retried("claim", work)


def heartbeat(run_id: int, progress: dict[str, Any] | None = None) -> bool:
    """Beat a running run's heartbeat (with its progress). True when it should stop: a cancel
    was requested, or the run is no longer running (marked lost while unreachable, deleted)."""

    def work() -> bool:
        with session_scope() as session:
            return queries.heartbeat(session=session, run_id=run_id, progress=progress)

    return _retried("heartbeat", work)


def set_process(run_id: int, pid: int, device: str | None = None) -> None:
    def work() -> None:
        with session_scope() as session:
            queries.set_run_process(session=session, run_id=run_id, pid=pid, device=device)

    _retried("set process", work)


def place(run_id: int, where: str) -> None:
    """Say where a claimed run runs (its `worker`): the Ray executor names the nodes."""

    def work() -> None:
        with session_scope() as session:
            queries.set_run_worker(session=session, run_id=run_id, worker=where)

    _retried("place run", work)


def record_metrics(run_id: int, *, step: int, epoch: int, values: dict[str, float]) -> None:
    def work() -> None:
        with session_scope() as session:
            queries.log_metrics(session=session, run_id=run_id, step=step, epoch=epoch, values=values)

    _retried("metrics", work)


def discard_metrics_after(run_id: int, epoch: int) -> int:
    """Forget what an earlier attempt recorded for epochs after its last checkpoint."""

    def work() -> int:
        with session_scope() as session:
            return queries.discard_metrics_after(session=session, run_id=run_id, epoch=epoch)

    return _retried("metrics", work)


def record_artifact(run_id: int, kind: str, path: Path, *, hash_file: bool = True) -> ArtifactInfo:
    digest = sha256_file(path) if hash_file else None
    size = path.stat().st_size

    def work() -> ArtifactInfo:
        with session_scope() as session:
            return queries.add_artifact(
                session=session, run_id=run_id, kind=kind, path=str(path), sha256=digest, bytes=size
            )

    return _retried("artifact", work)


def finish(run_id: int, status: RunStatus, error: str | None = None) -> bool:
    def work() -> bool:
        with session_scope() as session:
            return queries.finish_run(session=session, run_id=run_id, status=status, error=error)

    return _retried("finish", work)


def recover_lost(lost_after_s: float | None = None) -> list[int]:
    """Mark running runs whose heartbeat is older than lost_after_s (by the database's clock)
    as lost; returns their ids."""
    database()
    limit = lost_after_s if lost_after_s is not None else get_settings().lost_after_s
    with session_scope() as session:
        return queries.mark_stale_lost(session=session, lost_after_s=limit)


_last_sweep: dict[str, float] = {}
SWEEP_EVERY_S = 1.0


def sweep_lost() -> None:
    """Every process that reads runs (pages, `runs list/show`, workers) marks stale ones lost,
    at most once a second, so a run whose worker and process died together is not left
    `running` until some worker happens to start."""
    url = database()
    now = time.monotonic()
    if now - _last_sweep.get(url, -SWEEP_EVERY_S) < SWEEP_EVERY_S:
        return
    _last_sweep[url] = now
    recover_lost()


def worker_alive() -> bool:
    """Whether some worker has beaten its heartbeat recently (on any host)."""
    database()
    with session_scope() as session:
        return bool(queries.alive_workers(session=session, within_s=get_settings().lost_after_s))


_last_start: dict[str, tuple[float, subprocess.Popen[bytes]]] = {}  # database: (when, process)


def ensure_worker(grace_s: float = 60.0) -> bool:
    """Start a background worker when none is alive; True when one was started.

    A worker takes a few seconds to register, so while the one this process started last is
    still running and younger than `grace_s`, no other is started (the studio calls this on
    every page view, and its Train page every few seconds while runs wait).
    """
    from core.worker import start_background_worker

    url = database()
    if worker_alive():
        return False
    last = _last_start.get(url)
    if last is not None and last[1].poll() is None and time.monotonic() - last[0] < grace_s:
        return False
    _last_start[url] = (time.monotonic(), start_background_worker())
    return True


def wait(
    run_id: int,
    *,
    timeout_s: float | None = None,
    poll_s: float = 0.5,
    on_poll: Callable[[RunInfo], None] | None = None,
) -> RunInfo:
    """Block until the run has finished (or the timeout passes); returns it. `on_poll` sees the
    run at every poll (the CLI draws its progress bar from it)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        run = get_run(run_id)
        if on_poll is not None:
            on_poll(run)
        if run.status in FINISHED:
            return run
        if deadline is not None and time.monotonic() > deadline:
            return run
        time.sleep(poll_s)
