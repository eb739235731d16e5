"""Sweeps with Optuna: the search space as written, its refusals, and a real sweep of four
trials on the wine table where the pruner stops the one with a hopeless learning rate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core import jobs, sweeps
from core.data.ingest import ingest_file
from core.errors import ConfigError
from tests.conftest import ROOT, wait_for


def test_a_space_reads_ranges_logs_and_choices() -> None:
    lr, batch, epochs, model = sweeps.parse_space(
        "lr=1e-4..1e-2 log; batch_size=32,64; epochs=2..5; model=mlp,linear"
    )
    assert (lr.low, lr.high, lr.log) == (1e-4, 1e-2, True)
    assert batch.choices == (32, 64) and epochs.extremes() == [2, 5] and model.choices == ("mlp", "linear")
    assert sweeps.direction_of("val_rmse") == "minimize" and sweeps.direction_of("val_f1_macro") == "maximize"


@pytest.mark.parametrize(
    ("space", "said"),
    [
        ("colour=1..2", "'colour' is not a setting a sweep varies"),
        ("lr=0.1..0.001", "the low end must be below the high end"),
        ("lr=0..0.1 log", "a log range must start above 0"),
        ("epochs=1.5..3", "epochs takes whole numbers"),
        ("lr", "needs a name=values form"),
        ("lr=1e-3..1e-2; lr=0.1,0.2", "'lr' is given twice"),
        ("batch_size=16,abc", "'abc' is not a number"),
        ("model=1..2", "model takes choices"),
        (" ; ", "nothing to vary"),
    ],
)
def test_a_space_with_a_mistake_is_refused_in_words(space: str, said: str) -> None:
    with pytest.raises(ConfigError, match=said):
        sweeps.parse_space(space)


@pytest.fixture
def wine(home: Path, data_dir: Path):  # type: ignore[no-untyped-def]
    return ingest_file(data_dir / "wine.csv")


def test_a_sweep_refuses_settings_a_run_would_refuse(wine) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="space: batch_size=0: batch_size: Input should be greater"):
        sweeps.create(wine.id, trials=2, space="batch_size=0,16")
    with pytest.raises(ConfigError, match=r"parallel: give 1 to the number of trials \(2\)"):
        sweeps.create(wine.id, trials=2, parallel=3)
    assert sweeps.list_sweeps() == [] and jobs.list_runs() == []


def test_four_trials_one_pruned_and_the_best_run_named(wine, worker) -> None:  # type: ignore[no-untyped-def]
    # Two learning rates, one hopeless: with seed 0 the sampler tries it third, after two good
    # trials have run whole, and the median pruner stops it at its second epoch.
    made = sweeps.create(wine.id, trials=4, space="lr=0.00001,0.03", epochs=4, patience=0, seed=0)
    assert made.trials_asked == 1 and made.open  # one at a time: the worker queues the rest
    done = wait_for(lambda: next((s for s in [sweeps.get(made.id)] if not s.open), None), timeout=300)
    states = [t.state for t in done.trial_list]
    assert len(states) == 4 and states.count("pruned") == 1 and states.count("complete") == 3, states
    pruned = next(t for t in done.trial_list if t.state == "pruned")
    assert pruned.params == {"lr": 0.00001} and pruned.epochs_reported == 2
    run = jobs.get_run(pruned.run_id)
    assert run.status == "pruned" and (run.error or "").startswith("pruned at epoch 2: val_f1_macro =")
    assert f"sweep:{made.id}" in run.tags and run.config["trial_number"] == pruned.number
    assert {p.epoch for p in jobs.metric_history(run.id) if p.key == "val_loss"} == {1, 2}
    best = jobs.get_run(done.best_run)
    assert best.status == "succeeded" and best.config["lr"] == 0.03
    assert done.best_value == max(t.value for t in done.trial_list if t.value is not None)

    shown = subprocess.run(
        [sys.executable, "-m", "core", "sweeps", "show", str(made.id), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    doc = json.loads(shown.stdout)
    assert doc["best_run"] == done.best_run and len(doc["trials_run"]) == 4
    refused = subprocess.run(
        [sys.executable, "-m", "core", "runs", "resume", str(run.id)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 1 and "only lost, failed or cancelled runs resume" in refused.stderr


def test_processes_meeting_a_database_without_optunas_tables_all_get_a_storage(tmp_path: Path) -> None:
    # The studio making the first sweep while a worker polls: each races to create Optuna's
    # tables and stamp their version. Four at once, from a fresh database, five times over.
    import threading

    for round_ in range(5):
        url = f"sqlite:///{tmp_path / f'race{round_}.db'}"
        failures: list[BaseException] = []

        def open_storage(url: str = url, failures: list[BaseException] = failures) -> None:
            try:
                sweeps._storage_for.__wrapped__(url)
            except BaseException as exc:  # every failure is counted
                failures.append(exc)

        threads = [threading.Thread(target=open_storage) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == []
        assert sweeps._storage_for.__wrapped__(url).get_all_studies() == []
