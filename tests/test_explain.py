"""Explanations of table predictions: Shapley values over the features, each switched between
the row's value and the dataset's median or commonest value. On tables where one feature alone
decides the target, that feature carries the attributions; the scores add up to the prediction
minus the baseline row's; `python -m core explain` prints them and refuses what it cannot do."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from core import jobs, summary
from core.data.ingest import ingest_file
from core.explain import TableExplainer
from tests.conftest import ROOT, train_here


def _table(path: Path, regression: bool) -> Path:
    """400 rows: `key` decides the target, four numeric and one categorical column are noise."""
    rng = np.random.default_rng(7)
    frame = pd.DataFrame({f"noise{i}": rng.normal(size=400) for i in range(4)})
    frame.insert(2, "key", rng.normal(size=400))
    frame["colour"] = rng.choice(["red", "green", "blue"], size=400)
    frame["target"] = (
        3.0 * frame["key"] + 0.05 * rng.normal(size=400)
        if regression
        else np.where(frame["key"] > 0, "up", "down")
    )
    frame.to_csv(path, index=False)
    return path


def _explained(run_id: int, rows: pd.DataFrame) -> list:  # type: ignore[type-arg]
    explainer = TableExplainer(run_id)
    return [explainer.explain(r) for r in rows.drop(columns="target").to_dict("records")]


def test_the_deciding_feature_carries_a_classifier_s_attributions(home: Path, tmp_path: Path) -> None:
    path = _table(tmp_path / "decided.csv", regression=False)
    ds = ingest_file(path)
    run = jobs.submit(jobs.config_for(ds.id, epochs=20, batch_size=32, seed=0)).id
    train_here(run)
    # Rows on the other side of the rule from the baseline row (whose `key`, the median, is just
    # under 0: "down"): there is a prediction's change for the features to account for.
    table = pd.read_csv(path)
    assert float(table["key"].median()) < 0
    rows = table[table["key"] > 0.3].iloc[:12]
    found = _explained(run, rows)
    for row, e in zip(rows.itertuples(), found, strict=True):
        assert e.features[0].feature == "key", [(f.feature, round(f.score, 3)) for f in e.features]
        assert e.label == row.target  # the model learnt the rule: it explains its right answer
        assert sum(f.score for f in e.features) == pytest_approx(e.output - e.baseline_output)
        key = e.features[0]
        assert key.score > 0 and key.baseline == pytest_approx(float(pd.read_csv(path)["key"].median()))
    strength = {
        f.feature: np.mean([abs(s.score) for x in found for s in x.features if s.feature == f.feature])
        for f in found[0].features
    }
    assert strength["key"] > 5 * max(v for k, v in strength.items() if k != "key"), strength
    assert found[0].evaluations > 0 and "Shapley" in found[0].method
    assert _explained(run, rows.iloc[:1])[0].features == found[0].features  # the same each time
    colour = next(f for f in found[0].features if f.feature == "colour")
    assert colour.baseline in ("red", "green", "blue")  # the commonest value

    # The Predict page: a row predicted (the form is prefilled with a validation row) is
    # explained beside its prediction.
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "pages" / "predict.py"), default_timeout=120).run()
    next(b for b in at.button if b.label == "Predict").click().run()
    assert not at.exception and not at.warning, [w.value for w in at.warning]
    assert any(m.value.startswith("**Why ") for m in at.markdown)
    assert any("the bars add up to the difference" in c.value for c in at.caption)

    # The command line: rows from a file, a class asked for, the refusals.
    rows.drop(columns="target").to_csv(tmp_path / "rows.csv", index=False)
    done = subprocess.run(
        [sys.executable, "-m", "core", "explain", "--run", str(run), str(tmp_path / "rows.csv"), "--label", "up", "--json"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert len(doc["explanations"]) == 12 and all(e["label"] == "up" for e in doc["explanations"])
    assert doc["baseline"]["key"] == pytest_approx(float(pd.read_csv(path)["key"].median()))
    for e in doc["explanations"]:
        assert e["features"][0]["feature"] == "key"
    plain = subprocess.run(
        [sys.executable, "-m", "core", "explain", "--run", str(run), str(tmp_path / "rows.csv")],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert plain.returncode == 0 and plain.stdout.splitlines()[1].startswith("row 1: ")
    rows.drop(columns=["target", "key"]).to_csv(tmp_path / "short.csv", index=False)
    # (The battery holds the other refusals: --label, --text, a run not trained yet.)
    _refused(run, [str(tmp_path / "short.csv")], "the row lacks the column 'key'")

    # Over the whole validation split: shuffling `key` ruins the F1, shuffling noise does not.
    importance = subprocess.run(
        [sys.executable, "-m", "core", "explain", "--run", str(run), "--importance", "--json"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert importance.returncode == 0, importance.stderr
    doc = json.loads(importance.stdout)
    assert doc["metric"] == "val_f1_macro" and doc["rows"] == 80 and doc["evaluations"] == 1 + 5 * 6
    assert doc["value"] == pytest_approx(summary.main_metric(jobs.get_run(run))[1])  # the best epoch
    drops = {f["feature"]: f["drop"] for f in doc["features"]}
    assert doc["features"][0]["feature"] == "key" and drops["key"] > 0.3, drops
    assert all(abs(v) < 0.05 for k, v in drops.items() if k != "key"), drops


def test_the_run_page_measures_feature_importance(home: Path, data_dir: Path) -> None:
    from streamlit.testing.v1 import AppTest

    ds = ingest_file(data_dir / "wine.csv")
    run = jobs.submit(jobs.config_for(ds.id, epochs=6, seed=0)).id
    train_here(run)
    at = AppTest.from_file(str(ROOT / "pages" / "runs.py"), default_timeout=120).run()
    at.multiselect[0].set_value([run]).run()
    assert not at.exception
    assert any(s.value == "Feature importance (validation split)" for s in at.subheader)
    next(b for b in at.button if b.label == "Measure feature importance").click().run()
    assert not at.exception and not at.warning, [w.value for w in at.warning]
    said = next(c.value for c in at.caption if "on the validation split as it is:" in c.value)
    assert "Permutation importance: each feature's values shuffled among the 36 validation rows" in said
    assert "66 evaluations" in said  # 13 features, 5 shuffles each, and once as it is
    (chart,) = [c for c in at.get("vega_lite_chart") if "when shuffled" in str(c.proto.spec)]
    assert '"feature"' in str(chart.proto.spec)


def test_the_deciding_feature_carries_a_regressor_s_attributions(home: Path, tmp_path: Path) -> None:
    path = _table(tmp_path / "line.csv", regression=True)
    ds = ingest_file(path)
    run = jobs.submit(jobs.config_for(ds.id, epochs=30, batch_size=32, seed=0)).id
    assert jobs.get_run(run).status == "queued"
    train_here(run)
    table = pd.read_csv(path)
    rows = table[(table["key"] - table["key"].median()).abs() > 0.3].iloc[:8]
    for row, e in zip(rows.itertuples(), _explained(run, rows), strict=True):
        assert abs(e.output - 3.0 * row.key) < 0.6  # the model learnt the line: it explains it
        assert e.label is None and e.features[0].feature == "key"
        assert sum(f.score for f in e.features) == pytest_approx(e.output - e.baseline_output)


def _refused(run: int, argv: list[str], said: str) -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "core", "explain", "--run", str(run), *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0 and said in refused.stderr, (argv, refused.stderr)
    assert len(refused.stderr.strip().splitlines()) == 1


def pytest_approx(value: float):  # type: ignore[no-untyped-def]
    import pytest

    return pytest.approx(value, rel=1e-4, abs=1e-5)


def test_explain_gives_a_text_run_s_token_attributions(home: Path, tmp_path: Path) -> None:
    from core.data.samples import bbc_news_csv

    ds = ingest_file(bbc_news_csv(tmp_path / "bbc.csv", per_class=20, chars=200), task="text-classification")
    run = jobs.submit(jobs.config_for(ds.id, model="text-cnn", epochs=2, seed=0)).id
    train_here(run)
    texts = ["Shares in the bank fell after profits slumped", "The striker scored twice in the final"]
    done = subprocess.run(
        [sys.executable, "-m", "core", "explain", "--run", str(run), "--text", texts[0], "--text", texts[1], "--json"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert "integrated gradients" in doc["method"] and [e["text"] for e in doc["explanations"]] == texts
    for e in doc["explanations"]:
        assert e["label"] in ds.schema["classes"] and 0 < e["probability"] <= 1
        assert max(abs(t["score"]) for t in e["tokens"]) == pytest_approx(1.0)
    _refused(run, ["--text", " "], "not empty")
