"""Hyperparameter sweeps with Optuna: a study in Ascent's own database, each trial an ordinary
run in the queue (so trials spread over a Ray cluster like any run).

`create` makes the study (Optuna's RDB storage on the same database URL: its tables sit beside
Ascent's, whose migrations keep their own version table) and queues the first trials.
`advance`, which every worker calls as it polls, tells the study how ended trials did and
queues new ones while fewer than `parallel` are queued or running, until `trials` have run.
Each trial's run reports its validation metric every epoch and stops when the study's median
pruner finds it worse than the earlier trials at the same epoch; it then ends as `pruned`.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy.exc

from core import jobs
from core.access import LOCAL, Action, Actor, require
from core.config import RunConfig, database, get_settings
from core.errors import ConfigError
from core.summary import MAIN_METRIC
from db.models import RunStatus

if TYPE_CHECKING:
    import optuna
    import pandas as pd
    from optuna.distributions import BaseDistribution

# What a sweep may vary, and the kind of value each takes.
TUNABLE: dict[str, type] = {
    "lr": float,
    "weight_decay": float,
    "dropout": float,
    "warmup_fraction": float,
    "batch_size": int,
    "epochs": int,
    "grad_accum": int,
    "image_size": int,
    "freeze_layers": int,
    "max_length": int,
    "model": str,
}
DEFAULT_SPACE = "lr=1e-4..1e-2 log; weight_decay=1e-6..1e-2 log"
# The median pruner: the first trials run whole, and a trial is judged from its second epoch
# on (an epoch is a step of the study's trials).
PRUNER_STARTUP_TRIALS = 2
PRUNER_FIRST_EPOCH = 2
MAX_TRIALS = 1000
TAG = "sweep:{}"


@dataclass(frozen=True)
class Param:
    """One line of a search space: a range (`lo..hi`, optionally `log` or `int`) or choices."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def distribution(self) -> BaseDistribution:
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.choices:
            return CategoricalDistribution(self.choices)
        assert self.low is not None and self.high is not None
        if TUNABLE[self.name] is int:
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        return FloatDistribution(self.low, self.high, log=self.log)

    def extremes(self) -> list[Any]:
        if self.choices:
            return list(self.choices)
        kind = TUNABLE[self.name]
        return [kind(self.low), kind(self.high)]


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"space: {where}: '{text}' is not a number") from None
    if not math.isfinite(value):
        raise ConfigError(f"space: {where}: '{text}' is not a finite number")
    return value


def _choice(text: str, kind: type, where: str) -> Any:
    if kind is str:
        if not text:
            raise ConfigError(f"space: {where}: an empty choice")
        return text
    value = _number(text, where)
    if kind is int and value != int(value):
        raise ConfigError(f"space: {where}: '{text}' is not a whole number")
    return kind(value)


def parse_space(text: str) -> list[Param]:
    """ "lr=1e-4..1e-2 log; batch_size=32,64,128; epochs=5..20" as parameters (one line per
    mistake: the part at fault and what to write instead)."""
    params: list[Param] = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        name, eq, rest = (s.strip() for s in part.partition("="))
        if not eq or not rest:
            raise ConfigError(f"space: '{part}' needs a name=values form, e.g. lr=1e-4..1e-2 log")
        if name not in TUNABLE:
            raise ConfigError(f"space: '{name}' is not a setting a sweep varies; use {', '.join(TUNABLE)}")
        if any(p.name == name for p in params):
            raise ConfigError(f"space: '{name}' is given twice")
        kind = TUNABLE[name]
        words = rest.split()
        if ".." in words[0]:
            low_text, _, high_text = words[0].partition("..")
            flags = set(words[1:])
            if flags - {"log", "int"}:
                raise ConfigError(f"space: {part}: after a range only 'log' may follow")
            if kind is str:
                raise ConfigError(f"space: {name} takes choices (a,b,c), not a range")
            low, high = _number(low_text, part), _number(high_text, part)
            if not low < high:
                raise ConfigError(f"space: {part}: the low end must be below the high end")
            if "log" in flags and low <= 0:
                raise ConfigError(f"space: {part}: a log range must start above 0")
            if kind is int and (low != int(low) or high != int(high)):
                raise ConfigError(f"space: {part}: {name} takes whole numbers")
            params.append(Param(name, low, high, log="log" in flags))
        else:
            if len(words) != 1:
                raise ConfigError(f"space: {part}: choices are written a,b,c without spaces")
            choices = tuple(_choice(c.strip(), kind, part) for c in rest.split(","))
            if len(set(choices)) != len(choices):
                raise ConfigError(f"space: {part}: a choice is given twice")
            params.append(Param(name, choices=choices))
    if not params:
        raise ConfigError(f"space: nothing to vary; e.g. {DEFAULT_SPACE}")
    return params


def direction_of(metric: str) -> Literal["minimize", "maximize"]:
    from db.queries import lower_is_better

    return "minimize" if lower_is_better(metric) else "maximize"


@functools.cache
def _storage_for(url: str) -> optuna.storages.RDBStorage:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kwargs: dict[str, Any] = (
        {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    )
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError):
            # Processes that meet a database without Optuna's tables at once (the studio making
            # the first sweep while a worker polls) race to create and stamp them; the losers
            # look again once the winner has finished.
            if attempt == 4:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def _storage() -> optuna.storages.RDBStorage:
    return _storage_for(database())


def _has_studies() -> bool:
    """Whether this database has Optuna's tables yet (workers poll; they create nothing)."""
    from sqlalchemy import inspect

    from db.session import engine

    return bool(inspect(engine(database())).has_table("studies"))


@contextlib.contextmanager
def _one_at_a_time() -> Iterator[None]:
    """One process advances sweeps at a time: a PostgreSQL advisory lock (workers on many
    machines), or a file lock beside a SQLite database (one machine)."""
    url = database()
    if url.startswith("postgresql"):
        from sqlalchemy import text

        from db.session import engine

        with engine().connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(7232017)"))
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(7232017)"))
                conn.commit()
        return
    from filelock import FileLock

    home = get_settings().home
    home.mkdir(parents=True, exist_ok=True)
    with FileLock(str(home / "sweeps.lock"), timeout=60):
        yield


def _study(sweep_id: int, *, seed_offset: int = 0) -> optuna.Study:
    import optuna

    if not _has_studies():  # no sweep was ever made here (and reading makes no tables)
        raise ConfigError(f"sweep {sweep_id} does not exist; `python -m core sweeps list` shows them")
    storage = _storage()
    try:
        name = storage.get_study_name_from_id(sweep_id)
    except KeyError:
        raise ConfigError(
            f"sweep {sweep_id} does not exist; `python -m core sweeps list` shows them"
        ) from None
    attrs = storage.get_study_user_attrs(sweep_id)
    return optuna.load_study(
        study_name=name,
        storage=storage,
        sampler=optuna.samplers.TPESampler(seed=int(attrs.get("seed", 0)) + seed_offset),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=PRUNER_FIRST_EPOCH
        ),
    )


def create(
    dataset_id: int,
    *,
    trials: int,
    parallel: int = 1,
    space: str = "",
    metric: str = "",
    seed: int = 0,
    actor: Actor = LOCAL,
    **overrides: Any,
) -> SweepInfo:
    """Check a sweep, make its study and queue its first trials. `overrides` are run settings
    every trial shares (epochs, model, budget_s, ...)."""
    import optuna

    require(actor, Action.TRAIN)
    if not 1 <= trials <= MAX_TRIALS:
        raise ConfigError(f"trials: give 1 to {MAX_TRIALS}")
    if not 1 <= parallel <= trials:
        raise ConfigError(f"parallel: give 1 to the number of trials ({trials})")
    params = parse_space(space or DEFAULT_SPACE)
    base = jobs.config_for(dataset_id, **overrides)
    for p in params:  # every end of every range, with the shared settings, must make a run
        if p.name in overrides and overrides[p.name] is not None:
            raise ConfigError(f"space: {p.name} is also given as a setting of every trial; give it once")
        for value in p.extremes():
            try:
                jobs.config_for(dataset_id, **{**overrides, p.name: value})
            except ConfigError as exc:
                raise ConfigError(f"space: {p.name}={value}: {exc}") from None
            except ValueError as exc:
                from core.errors import settings_error

                raise ConfigError(f"space: {p.name}={value}: {settings_error(exc)}") from None
    metric = metric or MAIN_METRIC.get(base.task, "val_loss")
    if not metric.startswith("val_"):
        raise ConfigError(f"metric: '{metric}' is not a validation metric; give one such as val_loss")
    study = optuna.create_study(
        storage=_storage(), study_name=f"ascent-{uuid.uuid4().hex[:12]}", direction=direction_of(metric)
    )
    shared = {k: v for k, v in overrides.items() if v is not None}
    for key, value in {
        "dataset_id": dataset_id,
        "trials": trials,
        "parallel": parallel,
        "space": "; ".join(_said(p) for p in params),
        "metric": metric,
        "seed": seed,
        "shared": shared,
        "created_by": actor.name,
        "open": True,
    }.items():
        study.set_user_attr(key, value)
    sweep_id = _storage().get_study_id_from_name(study.study_name)
    advance(sweep_id)
    return get(sweep_id)


def _said(p: Param) -> str:
    if p.choices:
        return f"{p.name}={','.join(map(str, p.choices))}"
    kind = TUNABLE[p.name]
    return f"{p.name}={kind(p.low):g}..{kind(p.high):g}" + (" log" if p.log else "")


def advance_all() -> list[int]:
    """Advance every open sweep; returns the runs it queued (cheap when there is none)."""
    if not _has_studies():
        return []
    import optuna

    queued: list[int] = []
    for summary in optuna.get_all_study_summaries(_storage(), include_best_trial=False):
        if summary.user_attrs.get("open"):
            queued += advance(_storage().get_study_id_from_name(summary.study_name))
    return queued


def advance(sweep_id: int) -> list[int]:
    """Tell the study how ended trials did; queue new trials up to `parallel` at a time.
    Returns the runs it queued."""
    from optuna.trial import TrialState

    with _one_at_a_time():
        storage = _storage()
        attrs = storage.get_study_user_attrs(sweep_id)
        if not attrs.get("open"):
            return []
        study = _study(sweep_id)
        metric = str(attrs["metric"])
        trials = study.get_trials(deepcopy=False)
        active = 0
        for trial in trials:
            if trial.state != TrialState.RUNNING:
                continue
            state, value = _outcome(trial.user_attrs.get("run_id"), metric)
            if state is None:
                active += 1
            elif state == TrialState.COMPLETE:
                study.tell(trial.number, value)
            else:
                study.tell(trial.number, state=state)
        queued: list[int] = []
        space = {p.name: p.distribution() for p in parse_space(str(attrs["space"]))}
        asked = len(trials)
        while active < int(attrs["parallel"]) and asked < int(attrs["trials"]):
            new = _study(sweep_id, seed_offset=asked).ask(space)
            try:
                cfg = jobs.config_for(
                    int(attrs["dataset_id"]),
                    **{**attrs["shared"], **new.params},
                    name=f"sweep {sweep_id} · trial {new.number}",
                    sweep_id=sweep_id,
                    trial_number=new.number,
                )
                # checked when the sweep was made: its trials are queued on its maker's behalf
                run = jobs.submit(cfg, actor=Actor(attrs.get("created_by"), LOCAL.role))
                jobs.set_tags(run.id, [TAG.format(sweep_id)])
            except Exception:
                study.tell(new.number, state=TrialState.FAIL)  # the dataset went, say
                raise
            new.set_user_attr("run_id", run.id)
            queued.append(run.id)
            active += 1
            asked += 1
        if asked >= int(attrs["trials"]) and active == 0:
            study.set_user_attr("open", False)
        return queued


def _outcome(run_id: int | None, metric: str) -> tuple[Any, float | None]:
    """How a trial's run ended: (None, None) while it goes on."""
    from optuna.trial import TrialState

    if run_id is None:
        return TrialState.FAIL, None
    try:
        run = jobs.get_run(int(run_id))
    except ConfigError:  # deleted
        return TrialState.FAIL, None
    if run.status == RunStatus.SUCCEEDED:
        value = run.best_metrics.get(metric)
        return (TrialState.COMPLETE, value) if value is not None else (TrialState.FAIL, None)
    if run.status == RunStatus.PRUNED:
        return TrialState.PRUNED, None
    if run.status in (RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.LOST):
        return TrialState.FAIL, None
    return None, None


class Pruning:
    """In a trial's run: report each epoch's validation metric, and ask the pruner."""

    def __init__(self, cfg: RunConfig) -> None:
        assert cfg.sweep_id is not None and cfg.trial_number is not None
        storage = _storage()
        self.study = _study(cfg.sweep_id)
        self.metric = str(storage.get_study_user_attrs(cfg.sweep_id)["metric"])
        self.trial_id = storage.get_trial_id_from_study_id_trial_number(cfg.sweep_id, cfg.trial_number)
        self.storage = storage

    def should_stop(self, epoch: int, metrics: dict[str, float]) -> str | None:
        """Why the run should stop at this epoch, or None to go on."""
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return None
        self.storage.set_trial_intermediate_value(self.trial_id, epoch, value)
        if not self.study.pruner.prune(self.study, self.storage.get_trial(self.trial_id)):
            return None
        return (
            f"pruned at epoch {epoch}: {self.metric} = {value:.4g} was worse than the median of "
            "the sweep's earlier trials at that epoch"
        )


@dataclass(frozen=True)
class TrialInfo:
    number: int
    run_id: int | None
    state: str  # running, complete, pruned, fail
    value: float | None
    params: dict[str, Any]
    epochs_reported: int


@dataclass(frozen=True)
class SweepInfo:
    id: int
    dataset_id: int
    trials_asked: int
    trials: int
    parallel: int
    space: str
    metric: str
    direction: str
    open: bool
    created_by: str | None
    best_run: int | None
    best_value: float | None
    trial_list: list[TrialInfo] = field(default_factory=list)


def get(sweep_id: int) -> SweepInfo:
    from optuna.trial import TrialState

    study = _study(sweep_id)
    attrs = study.user_attrs
    trials = study.get_trials(deepcopy=False)
    rows = [
        TrialInfo(
            t.number,
            t.user_attrs.get("run_id"),
            t.state.name.lower(),
            t.value if t.state == TrialState.COMPLETE else None,
            dict(t.params),
            len(t.intermediate_values),
        )
        for t in trials
    ]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = study.best_trial if complete else None
    return SweepInfo(
        id=sweep_id,
        dataset_id=int(attrs["dataset_id"]),
        trials_asked=len(trials),
        trials=int(attrs["trials"]),
        parallel=int(attrs["parallel"]),
        space=str(attrs["space"]),
        metric=str(attrs["metric"]),
        direction=study.direction.name.lower(),
        open=bool(attrs.get("open")),
        created_by=attrs.get("created_by"),
        best_run=None if best is None else best.user_attrs.get("run_id"),
        best_value=None if best is None else best.value,
        trial_list=rows,
    )


def list_sweeps() -> list[SweepInfo]:
    if not _has_studies():
        return []
    import optuna

    storage = _storage()
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    ids = [storage.get_study_id_from_name(s.study_name) for s in summaries]
    return [get(i) for i in sorted(ids, reverse=True)]


def importance(sweep_id: int) -> dict[str, float]:
    """How much each parameter mattered to the metric (Optuna's default evaluator); empty
    until two trials completed with different values."""
    import optuna
    from optuna.trial import TrialState

    study = _study(sweep_id)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2 or len({t.value for t in complete}) < 2:
        return {}
    try:
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (RuntimeError, ValueError):  # a space Optuna cannot weigh yet (one value each)
        return {}


def param_names(sweep_id: int) -> list[str]:
    return [p.name for p in parse_space(str(_storage().get_study_user_attrs(sweep_id)["space"]))]


def trials_table(sweep: SweepInfo) -> pd.DataFrame:
    """One row per trial: its number, run, state, metric and parameters (the Runs page)."""
    import pandas as pd

    names = param_names(sweep.id)
    rows = [
        {
            "trial": t.number,
            "run": t.run_id,
            "state": t.state,
            sweep.metric: t.value,
            "epochs": t.epochs_reported,
            **{name: t.params.get(name) for name in names},
        }
        for t in sweep.trial_list
    ]
    return pd.DataFrame(rows, columns=["trial", "run", "state", sweep.metric, "epochs", *names])
