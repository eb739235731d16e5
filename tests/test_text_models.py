"""Text models on real BBC News articles: MiniLM fine-tunes to a sensible accuracy, the text CNN
learns from scratch, exports agree with PyTorch under padding, prediction works from raw text
with the tokenizer beside the file, attributions point at the words, and the text options
(gradient accumulation, frozen layers, model sources) do what they say."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from core import checkpoint, jobs
from core.data.ingest import ingest_file
from core.data.samples import bbc_news, bbc_news_csv
from core.errors import ConfigError
from core.explain import TextExplainer
from core.models import models_for
from core.runtime import Predictor
from core.tasks import get_task
from core.tasks.text import pad_batch
from core.train import BEST, Progress, train

TASK = "text-classification"


@pytest.fixture
def bbc(home: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    """BBC News openings (300 characters), 5 topics x 40 articles, as a user uploads them."""
    return ingest_file(bbc_news_csv(tmp_path / "bbc.csv", per_class=40, chars=300), task=TASK)


def _data(ds, **cfg: object):  # type: ignore[no-untyped-def]
    c = jobs.config_for(ds.id, **{"max_length": 64, "epochs": 2, **cfg})
    return c, get_task(TASK).prepare(ds, c, "cpu")


def _held_out(per_class: int = 12, chars: int = 300) -> tuple[list[str], list[str]]:
    """Articles the runs never saw (after the first 100 of each topic)."""
    rows = bbc_news(per_class=per_class, offset=100, chars=chars)
    return [t for t, _ in rows], [label for _, label in rows]


def test_registry_offers_minilm_first_then_any_hf_model_and_the_cnn() -> None:
    assert [m.name for m in models_for(TASK)] == ["minilm", "hf-transformer", "text-cnn"]


def test_minilm_fine_tunes_exports_with_its_tokenizer_and_predicts_raw_text(bbc, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, data = _data(bbc, model="minilm")
    assert cfg.lr == 1e-3 and cfg.batch_size == 16  # the model's defaults (the body learns at 0.1 of it)
    train(cfg, data, device="cpu", run_dir=tmp_path)
    checkpoint.load_weights(tmp_path / BEST, data.model)
    check = get_task(TASK).export(data, cfg, bbc, tmp_path / "model.onnx", run_id=7)
    # Parity over the validation split with every text padded to the longest one.
    assert check.top1_agreement == 1.0 and check.max_abs_diff < 1e-4 and check.n_samples == data.n_val

    model = onnx.load(str(tmp_path / "model.onnx"))
    # Fused for ONNX Runtime (attention, skip layer norms in its contrib ops), parity kept above.
    assert {"Attention", "SkipLayerNormalization"} <= {n.op_type for n in model.graph.node}
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["ascent.tokenizer"]) == {"file": "tokenizer.json", "max_length": 64, "pad_id": 0}
    assert (tmp_path / "tokenizer.json").exists()
    for inp in model.graph.input:  # dynamic batch and sequence
        assert [d.dim_param for d in inp.type.tensor_type.shape.dim] == ["batch", "sequence"]

    predictor = Predictor(tmp_path / "model.onnx")
    texts, labels = _held_out()
    preds = predictor.predict_texts(texts)
    accuracy = np.mean([p.label == y for p, y in zip(preds, labels, strict=True)])
    assert accuracy >= 0.75, f"MiniLM reached only {accuracy:.2f} on held-out articles"

    # Raw text through tokenizer.json + ONNX Runtime equals PyTorch on the same text.
    enc = data.extra["tokenizer"]
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(enc)
    tok.enable_truncation(64)
    ids, mask = pad_batch([np.array(tok.encode(texts[0]).ids)], 0)
    with torch.no_grad():
        expected = torch.softmax(data.model.eval()(torch.from_numpy(ids), torch.from_numpy(mask)), 1)[0]
    got = np.array([preds[0].probabilities[c] for c in predictor.labels])
    assert np.abs(got - expected.numpy()).max() < 1e-4

    # A later run can start from this one's weights.
    import shutil

    from core.config import get_settings

    earlier = get_settings().runs_dir / "7"
    earlier.mkdir(parents=True)
    shutil.copy(tmp_path / BEST, earlier / BEST)
    _, again = _data(bbc, model="minilm", init_from_run=7)
    for (name, a), b in zip(again.model.state_dict().items(), data.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(ConfigError, match="cannot seed this run"):
        _data(bbc, model="text-cnn", init_from_run=7)

    # The words behind a prediction: integrated gradients add up, and a business text's
    # strongest token for "business" is a business word.
    explainer = TextExplainer(tmp_path)
    found = explainer.explain("Shares in the bank fell after profits slumped and the economy slowed")
    assert found.label == predictor.predict_texts([found.text])[0].label
    assert found.convergence_delta < 0.05
    words = [t for t in found.tokens if t.end > t.start]
    assert max(abs(t.score) for t in found.tokens) == pytest.approx(1.0)
    top = max(words, key=lambda t: t.score)
    assert found.text[top.start : top.end].lower() == top.token.removeprefix("##")
    assert found.label == "business"
    assert top.token in {"shares", "bank", "profits", "economy", "slowed", "fell", "slumped"}


def test_the_text_cnn_learns_from_scratch_with_its_own_tokenizer(home: Path, tmp_path: Path) -> None:
    ds = ingest_file(bbc_news_csv(tmp_path / "bbc.csv", per_class=60, chars=400), task=TASK)
    cfg, data = _data(ds, model="text-cnn", epochs=10, max_length=None)
    assert data.extra["max_length"] % 8 == 0 and 16 <= data.extra["max_length"] <= 256  # from the data
    vocab = json.loads(data.extra["tokenizer"])["model"]["vocab"]
    assert "[PAD]" in vocab and len(vocab) > 1000  # learnt from the training texts
    outcome = train(cfg, data, device="cpu", run_dir=tmp_path)
    # 5 topics, chance 0.2; usually 0.6-0.77, moving with the (non-deterministic) learnt vocabulary
    assert outcome.best_value is not None and outcome.best_value >= 0.45
    checkpoint.load_weights(tmp_path / BEST, data.model)
    check = get_task(TASK).export(data, cfg, ds, tmp_path / "model.onnx", run_id=1)
    assert check.top1_agreement == 1.0 and check.max_abs_diff < 1e-4
    texts, labels = _held_out(12, chars=400)
    preds = Predictor(tmp_path / "model.onnx").predict_texts(texts)
    # Above chance (0.2) on unseen articles; the figure moves with the learnt vocabulary
    # (WordPiece training is not deterministic), so the bar sits well under the usual 0.45-0.6.
    assert np.mean([p.label == y for p, y in zip(preds, labels, strict=True)]) >= 0.35
    # A text longer than the maximum is cut, not refused.
    (long_pred,) = Predictor(tmp_path / "model.onnx").predict_texts([" ".join(texts) * 3])
    assert sum(long_pred.probabilities.values()) == pytest.approx(1.0, abs=1e-4)


def test_gradient_accumulation_takes_one_step_per_group_of_batches(bbc, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, data = _data(bbc, model="text-cnn", epochs=1, batch_size=16, grad_accum=3)
    batches = len(data.train)
    progress = Progress()
    train(cfg, data, device="cpu", run_dir=tmp_path, progress=progress)
    assert progress.step == progress.total_steps == -(-batches // 3)


def test_frozen_layers_stay_as_loaded_and_the_rest_trains(bbc, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg, data = _data(bbc, model="minilm", epochs=1, freeze_layers=4)
    named = dict(data.model.named_parameters())
    before = {k: v.detach().clone() for k, v in named.items()}
    train(cfg, data, device="cpu", run_dir=tmp_path)
    changed = {k for k, v in named.items() if not torch.equal(before[k], v)}
    assert not any(k for k in changed if ".embeddings." in k or any(f".layer.{i}." in k for i in range(4)))
    assert any(".layer.5." in k for k in changed) and any("classifier" in k for k in changed)
    with pytest.raises(ConfigError, match="has 6 layers above its embeddings"):
        _data(bbc, model="minilm", freeze_layers=7)


def test_model_sources_fail_clearly(bbc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from core.models.text import minilm_path

    # Any local Hugging Face folder works (here MiniLM's own, given by path).
    _, local = _data(bbc, model="hf-transformer", weights=minilm_path())
    assert local.model.hf.config.num_labels == 5 and local.extra["pretrained"]
    with pytest.raises(ConfigError, match="needs --weights"):
        _data(bbc, model="hf-transformer")
    with pytest.raises(ConfigError, match="folder has no model files"):
        _data(bbc, model="hf-transformer", weights=str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as without a network, minus the retries
    with pytest.raises(ConfigError, match="hub could not be reached"):
        _data(bbc, model="hf-transformer", weights="distilbert/distilbert-base-uncased")
    with pytest.raises(ConfigError, match="over this model's"):
        _data(bbc, model="minilm", max_length=1024)


def test_a_run_prepared_again_keeps_its_learnt_tokenizer(bbc, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """WordPiece training is not deterministic; a resumed run (or its certificate) must see
    the ids its weights learnt, so the run folder keeps the tokenizer from the first attempt."""
    cfg, _ = _data(bbc, model="text-cnn", epochs=1)
    first = get_task(TASK).prepare(bbc, cfg, "cpu", tmp_path)
    assert (tmp_path / "tokenizer.json").exists()
    train(cfg, first, device="cpu", run_dir=tmp_path)
    again = get_task(TASK).prepare(bbc, cfg, "cpu", tmp_path)
    assert again.extra["tokenizer"] == first.extra["tokenizer"]
    checkpoint.load_weights(tmp_path / BEST, again.model)  # the same shapes, so it loads
