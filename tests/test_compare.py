"""Two runs of one dataset compared sample by sample: the validation predictions each run
stores, `runs diff A B` (which run is right where they disagree, fixed and broken counts, per
class, a label filter; for regression which came closer) and `runs slices` (the metric per
class or per range of a column), recounted here from the two runs' stored files, and the
refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import jobs
from core.compare import PREDICTIONS, diff, slices
from core.data.ingest import ingest_file
from tests.conftest import ROOT, train_here


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "core", *argv], cwd=ROOT, capture_output=True, text=True)


def test_two_classifiers_are_diffed_as_their_stored_predictions_say(home: Path, data_dir: Path) -> None:
    wine = ingest_file(data_dir / "wine.csv")
    common = {"epochs": 3, "batch_size": 16, "patience": 0, "seed": 1}
    a = jobs.submit(jobs.config_for(wine.id, model="linear", **common)).id
    b = jobs.submit(jobs.config_for(wine.id, model="mlp", **common)).id
    other_seed = jobs.submit(jobs.config_for(wine.id, model="mlp", **{**common, "seed": 2})).id
    train_here(a, b, other_seed)

    stored = {r: pd.read_parquet(jobs.run_dir(r) / PREDICTIONS) for r in (a, b)}
    assert "predictions" in {x.kind for x in jobs.artifacts(a)}
    frame = stored[a]
    assert list(frame.columns) == ["item", "true", "predicted", "confidence", "probabilities"]
    assert len(frame) == round(178 * jobs.get_run(a).config["val_fraction"])  # wine's validation rows
    truth = pd.read_csv(data_dir / "wine.csv")["target"].astype(str)
    assert (frame["true"] == truth.iloc[frame["item"]].to_numpy()).all()  # items are the table's rows
    assert all(abs(sum(p) - 1) < 1e-5 for p in frame["probabilities"])

    done = _cli("runs", "diff", str(a), str(b), "--json")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    # The same counts, recounted from the two files.
    both = stored[a].merge(stored[b], on="item", suffixes=("_a", "_b"))
    ra, rb = both["predicted_a"] == both["true_a"], both["predicted_b"] == both["true_b"]
    assert found["common"] == len(both) == len(stored[a]) and found["only_a"] == found["only_b"] == 0
    assert (found["fixed"], found["broken"]) == (int((~ra & rb).sum()), int((ra & ~rb).sum()))
    assert (found["both_right"], found["both_wrong"]) == (int((ra & rb).sum()), int((~ra & ~rb).sum()))
    assert (
        found["disagree"] == int((both["predicted_a"] != both["predicted_b"]).sum()) == len(found["samples"])
    )
    assert found["accuracy_a"] == pytest.approx(ra.mean()) and found["accuracy_b"] == pytest.approx(rb.mean())
    assert sum(c["fixed"] for c in found["per_class"]) == found["fixed"]
    assert sum(c["support"] for c in found["per_class"]) == found["common"]
    for s in found["samples"]:
        row = both[both["item"] == s["item"]].iloc[0]
        assert (s["a"], s["b"], s["true"]) == (row["predicted_a"], row["predicted_b"], row["true_a"])
        assert s["right"] == ("a" if s["a"] == s["true"] else "b" if s["b"] == s["true"] else "neither")
    # A label narrows the list to the disagreements that involve it, not the counts.
    label = found["per_class"][0]["label"]
    narrowed = diff(a, b, label=label)
    assert narrowed["fixed"] == found["fixed"] and all(
        label in (s["true"], s["a"], s["b"]) for s in narrowed["samples"]
    )
    text = _cli("runs", "diff", str(a), str(b))
    assert (
        text.returncode == 0 and f"run {b} fixed {found['fixed']} and broke {found['broken']}" in text.stdout
    )

    # The Runs page, two runs selected: the same counts, the disagreements with their rows.
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "pages" / "runs.py"), default_timeout=60).run()
    at.multiselect[0].set_value([a, b]).run()
    assert not at.exception
    assert any(h.value == f"Compare samples: run {a} against run {b}" for h in at.subheader)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics[f"Fixed by run {b}"] == str(found["fixed"]) and metrics["They disagree on"] == str(
        found["disagree"]
    )
    if found["disagree"]:
        shown = next(d.value for d in at.dataframe if "who is right" in d.value.columns)
        assert list(shown["item"]) == [s["item"] for s in found["samples"]][: len(shown)]
        assert "alcohol" in shown.columns  # the wine rows beside the predictions

    # Slices: per class the accuracies recounted, per range of a column four bins of about
    # equal counts covering every item, the plain text, and the Runs page's chart and table.
    by_class = slices([a, b])
    for row in by_class["slices"]:
        part = both[both["true_a"] == row["slice"]]
        assert row["items"] == len(part)
        assert row[f"run {a}"] == pytest.approx((part["predicted_a"] == part["true_a"]).mean())
        assert row[f"run {b}"] == pytest.approx((part["predicted_b"] == part["true_b"]).mean())
    by_alcohol = slices([b], by="alcohol")
    counts = [r["items"] for r in by_alcohol["slices"]]
    assert len(counts) == 4 and sum(counts) == len(stored[b]) and max(counts) - min(counts) <= 2
    lows = [float(r["slice"].split(" – ")[0]) for r in by_alcohol["slices"]]
    assert lows == sorted(lows)
    text = _cli("runs", "slices", str(a), str(b), "--by", "alcohol")
    assert text.returncode == 0 and "accuracy by alcohol on" in text.stdout and f"run {b}" in text.stdout
    assert any(
        d.value.columns.tolist()[:4] == ["slice", "items", f"run {a}", f"run {b}"] for d in at.dataframe
    )

    # The data doctor judged by run b's stored predictions: only its validation items, each
    # suspect's given label the stored true one, and the most suspect first.
    from core.doctor import examine

    judged = examine(wine.id, run_id=b)
    assert judged["judged"] == len(stored[b]) and judged["method"].startswith(f"run {b}'s validation")
    truth_b = dict(zip(stored[b]["item"], stored[b]["true"], strict=True))
    assert all(s["given"] == truth_b[s["item"]] for s in judged["label_issues"])
    qualities = [s["quality"] for s in judged["label_issues"]]
    assert qualities == sorted(qualities)
    assert judged["accuracy"] == pytest.approx((stored[b]["predicted"] == stored[b]["true"]).mean())

    # Another seed holds back other rows: only the shared ones are compared.
    partly = diff(b, other_seed)
    assert 0 < partly["common"] < len(stored[b]) and partly["common"] + partly["only_a"] == len(stored[b])

    # Refusals, in one line each.
    queued = jobs.submit(jobs.config_for(wine.id, **common)).id
    diabetes = ingest_file(data_dir / "diabetes.csv")
    elsewhere = jobs.submit(jobs.config_for(diabetes.id, epochs=2, seed=1)).id
    train_here(queued, elsewhere)
    waiting = jobs.submit(jobs.config_for(wine.id, **common)).id
    for argv, said in (
        ([str(a), str(a)], "give two different runs"),
        ([str(a), str(waiting)], f"run {waiting} has no stored validation predictions: it is queued"),
        ([str(a), str(elsewhere)], f"run {a} trained on dataset {wine.id} and run {elsewhere} on dataset"),
        ([str(a), str(b), "--label", "nope"], "'nope' is no label of these runs"),
        ([str(a), "999"], "no run with id 999"),
    ):
        refused = _cli("runs", "diff", *argv)
        assert refused.returncode != 0 and said in refused.stderr, (argv, refused.stderr)
        assert len(refused.stderr.strip().splitlines()) == 1
    for argv, said in (
        ([str(a), "--by", "nope"], "'nope' is no slice of dataset"),
        ([str(a), "--by", "length"], "'length' is no slice of dataset"),
        ([str(a), str(b), str(other_seed)], "give one run, or two different runs"),
        ([str(a), "--bins", "1"], "--bins must be between 2 and 20"),
        ([str(a), str(elsewhere)], "compare runs of one dataset"),
    ):
        refused = _cli("runs", "slices", *argv)
        assert refused.returncode != 0 and said in refused.stderr, (argv, refused.stderr)
        assert len(refused.stderr.strip().splitlines()) == 1


def test_regression_runs_say_which_came_closer(home: Path, data_dir: Path) -> None:
    diabetes = ingest_file(data_dir / "diabetes.csv")
    common = {"epochs": 3, "batch_size": 32, "patience": 0, "seed": 3}
    a = jobs.submit(jobs.config_for(diabetes.id, model="linear", **common)).id
    b = jobs.submit(jobs.config_for(diabetes.id, model="mlp", **common)).id
    train_here(a, b)
    found = diff(a, b, limit=5)
    both = pd.read_parquet(jobs.run_dir(a) / PREDICTIONS).merge(
        pd.read_parquet(jobs.run_dir(b) / PREDICTIONS), on="item", suffixes=("_a", "_b")
    )
    truth = pd.read_csv(data_dir / "diabetes.csv")["target"].to_numpy()
    assert np.allclose(both["true_a"], truth[both["item"]], rtol=1e-5)  # the values as uploaded
    err_a, err_b = (both["predicted_a"] - both["true_a"]).abs(), (both["predicted_b"] - both["true_b"]).abs()
    assert found["kind"] == "regression" and found["common"] == len(both)
    assert (found["closer_b"], found["closer_a"]) == (int((err_b < err_a).sum()), int((err_a < err_b).sum()))
    assert found["mae_a"] == pytest.approx(err_a.mean()) and len(found["samples"]) == 5
    by_target = slices([a, b], by="class")  # regression: ranges of the true value
    assert by_target["metric"] == "mae" and sum(r["items"] for r in by_target["slices"]) == len(both)
    rmse = jobs.get_run(a).metrics["val_rmse"]
    assert rmse == pytest.approx(float(((both["predicted_a"] - both["true_a"]) ** 2).mean() ** 0.5), rel=1e-4)
