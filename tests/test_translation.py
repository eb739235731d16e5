"""Translation: pairs read from tables by column name or language, what is left out and flagged,
the beam search of the shared encoder-decoder loop, and a small Marian trained from scratch on
Apertium's English-Spanish pairs (Debian's apertium-eng-spa), exported and served."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import jobs
from core.data.ingest import guess_upload, ingest_file, list_datasets
from core.errors import ConfigError, DatasetError

PAIRS = [
    ("The cat sleeps.", "El gato duerme."),
    ("The dog eats bread.", "El perro come pan."),
    ("My sister reads a book.", "Mi hermana lee un libro."),
    ("We walk to the station every morning.", "Caminamos a la estación cada mañana."),
    ("The house is red.", "La casa es roja."),
]


def test_pairs_are_found_by_name_or_by_language_and_checked(home: Path, tmp_path: Path) -> None:
    # source/target columns, an extra column, a row with an empty side, a duplicate, an
    # untranslated pair and one whose sides cannot be a translation of each other.
    rows = [{"id": i, "source": s, "target": t} for i, (s, t) in enumerate(PAIRS)]
    rows += [
        {"id": 9, "source": "Hello.", "target": ""},
        {"id": 10, "source": PAIRS[0][0], "target": PAIRS[0][1]},
        {"id": 11, "source": "Radio", "target": "radio"},
        {
            "id": 12,
            "source": "Yes.",
            "target": "Sí, claro, y además te lo digo con todo detalle ahora mismo.",
        },
    ]
    csv = tmp_path / "pairs.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    assert guess_upload("pairs.csv", csv.read_bytes()).task == "translation"
    ds = ingest_file(csv)
    assert ds.task == "translation" and ds.n_items == 8
    rep = ds.report
    assert rep["left_out"] == {"an empty source or target": 1}
    assert (rep["duplicate_pairs"], rep["untranslated"], rep["misaligned"]) == (1, 1, 1)
    assert rep["misaligned_shown"][0]["source"] == "Yes."
    assert rep["languages"] == {"source": None, "target": None}
    assert sum(rep["length_bins"]["source"]) == sum(rep["length_bins"]["target"]) == 8
    stored = pd.read_parquet(Path(ds.path) / "data.parquet")
    assert list(stored.columns) == ["source", "target"] and stored["target"][1] == "El perro come pan."

    # JSON Lines with columns named by language: the first is the source.
    jsonl = tmp_path / "en-es.jsonl"
    jsonl.write_text("".join(json.dumps({"es": t, "en": s}) + "\n" for s, t in PAIRS))
    ds = ingest_file(jsonl)
    assert ds.task == "translation" and ds.report["languages"] == {"source": "Spanish", "target": "English"}
    assert pd.read_parquet(Path(ds.path) / "data.parquet")["source"][0] == "El gato duerme."

    # Other names: given on the command line, which also reverses the direction.
    tsv = tmp_path / "pairs.tsv"
    pd.DataFrame({"text_a": [s for s, _ in PAIRS], "text_b": [t for _, t in PAIRS]}).to_csv(
        tsv, sep="\t", index=False
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "core",
            "datasets",
            "add",
            str(tsv),
            "--source-column",
            "text_b",
            "--target-column",
            "text_a",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "translation, 5 pairs (source 'text_b', target 'text_a')" in out.stdout
    parquet = tmp_path / "pairs.parquet"
    pd.DataFrame({"de": ["Hallo Welt"] * 4, "fr": ["Bonjour le monde"] * 4}).to_parquet(parquet)
    assert ingest_file(parquet).report["languages"] == {"source": "German", "target": "French"}


def test_tables_that_are_not_pairs_are_refused_and_nothing_is_written(home: Path, tmp_path: Path) -> None:
    def refused(frame: pd.DataFrame, match: str, **options: str) -> None:
        path = tmp_path / "bad.csv"
        frame.to_csv(path, index=False)
        with pytest.raises(DatasetError, match=match):
            ingest_file(path, task="translation", **options)

    pairs = pd.DataFrame({"source": [s for s, _ in PAIRS], "target": [t for _, t in PAIRS]})
    refused(pairs.rename(columns={"source": "a", "target": "b"}), "has no source and target columns")
    refused(pairs, "has no column 'text'", source_column="text", target_column="target")
    refused(pairs, "name the same column", source_column="source", target_column="source")
    refused(pairs.head(3), "holds 3 usable pairs; translation needs at least 4")
    refused(
        pairs.assign(target=["", "", "x", "y", ""]),
        r"holds 2 usable pairs \(3 with an empty source or target\)",
    )
    assert list_datasets() == []
    stored = home / "datasets"
    assert not stored.exists() or not [p for p in stored.iterdir() if not p.name.startswith(".")]


class ScriptedDecoder:
    """A decoder step in the shape core.runtime.decode_tokens feeds, whose next-token
    probabilities depend on the tokens written so far (its cache keeps every token fed): greedy
    takes token 1 (0.6), then at best 0.34 before the end (0.204 in all); token 2 (0.4) ends
    for certain, the likelier translation, per token too."""

    TABLE = {(): {1: 0.6, 2: 0.4}, (1,): {3: 0.34, 4: 0.33, 5: 0.33}, (2,): {0: 1.0}}

    def run(self, _: object, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        fed = np.concatenate([feeds["past.0.key"][:, 0, :, 0], feeds["input_ids"].astype(np.float32)], axis=1)
        logits = np.full((len(fed), feeds["input_ids"].shape[1], 6), -30.0, dtype=np.float32)
        for row in range(len(fed)):
            written = tuple(int(t) for t in fed[row, 1:])  # after the one-token prompt
            for token, p in self.TABLE.get(written, {0: 1.0}).items():
                logits[row, -1, token] = np.log(p)
        grown = fed[:, None, :, None]
        return [logits, grown, grown]


def test_beam_search_finds_the_likelier_sequence_greedy_misses() -> None:
    from core.runtime import decode_tokens

    settings = {
        "cache": {"layers": 1, "heads": 1, "dim": 1},
        "prompt": [7],
        "eos_token_id": 0,
        "max_new_tokens": 6,
    }
    cross = [np.zeros((2, 1, 3, 1), np.float32)] * 2
    assert decode_tokens(ScriptedDecoder(), cross, settings) == [[1, 3], [1, 3]]
    assert decode_tokens(ScriptedDecoder(), cross, settings, beams=3) == [[2], [2]]
    assert decode_tokens(ScriptedDecoder(), cross, settings, beams=1) == [[1, 3], [1, 3]]
    assert decode_tokens(ScriptedDecoder(), cross, settings, max_tokens=1) == [[1], [1]]


def test_marian_graphs_compute_what_transformers_computes() -> None:
    """MarianEncode and the decoding step (what the export writes) against MarianMTModel's own
    forward pass, over a padded batch and a cache filled in two steps."""
    import torch

    from core.models.translation import MarianEncode, marian_step, small_marian, train_tokenizer

    tok = train_tokenizer([s for pair in PAIRS for s in pair] * 3)
    model = small_marian(tok, 0.0).eval()
    src = tok([PAIRS[3][0], PAIRS[0][0]], padding=True, return_tensors="pt")
    assert int(src.attention_mask.sum()) < src.attention_mask.numel()  # padded
    dec = torch.tensor([[0, 5, 6, 7], [0, 8, 9, 10]])
    with torch.no_grad():
        expected = model(
            input_ids=src.input_ids, attention_mask=src.attention_mask, decoder_input_ids=dec
        ).logits
        cross = MarianEncode(model)(src.input_ids, src.attention_mask)
        step = marian_step(model)
        heads = model.config.decoder_attention_heads
        past = [torch.zeros(2, heads, 0, model.config.d_model // heads)] * (2 * model.config.decoder_layers)
        first = step(dec[:, :2], *past, *cross, src.attention_mask)
        second = step(dec[:, 2:], *first[1:], *cross, src.attention_mask)
    got = torch.cat([first[0], second[0]], dim=1)
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


def pairs_csv(path: Path) -> Path:
    pd.DataFrame({"source": [s for s, _ in PAIRS], "target": [t for _, t in PAIRS]}).to_csv(path, index=False)
    return path


def tiny_t5(tok, gated: bool):  # type: ignore[no-untyped-def]
    """A small T5 with the given tokenizer (pad 0, end 1, unk 2: T5's own ids); its inner
    width (heads × d_kv) differs from its model width, as flan-t5's does."""
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=len(tok),
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=3,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        feed_forward_proj="gated-gelu" if gated else "relu",
        tie_word_embeddings=not gated,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        dropout_rate=0.0,
    )
    return T5ForConditionalGeneration(config).eval()


@pytest.mark.parametrize("gated", [False, True], ids=["t5", "flan-t5"])
def test_t5_graphs_compute_what_transformers_computes(gated: bool) -> None:
    """T5Encode and T5Step (relative position biases from the cache's length) against
    T5ForConditionalGeneration's forward pass, over a padded batch and a cache filled in two
    steps, past the exact buckets into the logarithmic ones."""
    import torch

    from core.models.translation import T5Encode, T5Step, train_tokenizer

    tok = train_tokenizer([s for pair in PAIRS for s in pair] * 3)
    model = tiny_t5(tok, gated)
    src = tok([PAIRS[3][0], PAIRS[0][0]], padding=True, return_tensors="pt")
    assert int(src.attention_mask.sum()) < src.attention_mask.numel()  # padded
    dec = torch.tensor([[0, *range(5, 16)], [0, *range(20, 31)]])
    with torch.no_grad():
        expected = model(
            input_ids=src.input_ids, attention_mask=src.attention_mask, decoder_input_ids=dec
        ).logits
        cross = T5Encode(model)(src.input_ids, src.attention_mask)
        step = T5Step(model)
        past = [torch.zeros(2, 3, 0, 16)] * 4
        first = step(dec[:, :5], *past, *cross, src.attention_mask)
        second = step(dec[:, 5:6], *first[1:], *cross, src.attention_mask)
        third = step(dec[:, 6:], *second[1:], *cross, src.attention_mask)
    got = torch.cat([first[0], second[0], third[0]], dim=1)
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


def test_a_pretrained_t5_fine_tunes_exports_and_translates_as_pytorch_does(
    home: Path, tmp_path: Path
) -> None:
    """hf-t5 from a local folder (saved as t5-small is): trained, exported as two graphs whose
    ONNX Runtime translations are PyTorch's, predicted from the command line; a Marian folder
    given to hf-t5 and hf-t5 without weights are refused in one line."""
    from core.models.translation import small_marian, train_tokenizer
    from tests.conftest import train_here

    ds = ingest_file(pairs_csv(tmp_path / "p.csv"))
    tok = train_tokenizer([s for pair in PAIRS for s in pair] * 3)
    folder = tmp_path / "t5-tiny"
    tiny_t5(tok, gated=True).save_pretrained(folder)
    tok.save_pretrained(folder)
    marian = tmp_path / "marian"
    small_marian(tok, 0.0).save_pretrained(marian)
    tok.save_pretrained(marian)
    with pytest.raises(ConfigError, match="hf-t5 needs the T5 model"):
        jobs.submit(jobs.config_for(ds.id, model="hf-t5"))

    cfg = jobs.config_for(ds.id, model="hf-t5", weights=str(folder), epochs=1)
    assert cfg.lr == 3e-4 and cfg.finetune == "full"
    run = jobs.submit(cfg)
    train_here(run.id)
    done = jobs.get_run(run.id)
    assert done.status == "succeeded", done.error
    assert done.metrics["export_translation_agreement"] == 1.0 and done.metrics["export_max_abs_diff"] < 1e-4
    out = subprocess.run(
        [sys.executable, "-m", "core", "predict", "--run", str(run.id), "--text", PAIRS[0][0], "--json"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    (found,) = json.loads(out.stdout)["translations"]
    assert found["source"] == PAIRS[0][0] and found["tokens"]

    runs = len(jobs.list_runs())
    with pytest.raises(ConfigError, match="is a marian model; train it with --model hf-marian"):
        jobs.submit(jobs.config_for(ds.id, model="hf-t5", weights=str(marian), epochs=1))
    assert len(jobs.list_runs()) == runs


needs_apertium = pytest.mark.skipif(
    shutil.which("apertium") is None, reason="needs Debian's apertium-eng-spa (.ci/run installs it)"
)


@needs_apertium
def test_marian_learns_apertium_spanish_and_translates_from_onnx(home: Path, tmp_path: Path) -> None:
    """A small Marian from scratch beats copying the source by far on chrF within a few epochs;
    ONNX Runtime translates the validation sentences token for token as PyTorch does; the CLI
    and the pages serve the run."""
    from streamlit.testing.v1 import AppTest

    from core.data.samples import apertium_pairs_csv
    from tests.conftest import train_here

    ds = ingest_file(apertium_pairs_csv(tmp_path / "en-es.csv", n=400))
    assert ds.task == "translation" and ds.report["languages"] == {"source": "English", "target": "Spanish"}
    cfg = jobs.config_for(ds.id, epochs=6, batch_size=16)
    assert cfg.model == "marian-small" and cfg.finetune == "full" and cfg.lr == 1e-3
    run = jobs.submit(cfg)
    train_here(run.id)
    done = jobs.get_run(run.id)
    assert done.metrics["export_translation_agreement"] == 1.0 and done.metrics["export_max_abs_diff"] < 1e-3
    folder = jobs.run_dir(run.id)
    report = json.loads((folder / "report.json").read_text())
    assert report["kind"] == "translation" and report["pairs"] == 80
    assert report["chrf"] == done.metrics["val_chrf"]
    assert done.metrics["val_chrf"] > report["copy_chrf"] + 30, report
    assert done.best_metrics["val_bleu"] == max(
        p.value for p in jobs.metric_history(run.id) if p.key == "val_bleu"
    )
    epochs = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == list(range(7)) and len(epochs[-1]["samples"]) == 3
    assert sorted(p.name for p in folder.glob("*.onnx")) == ["decoder.onnx", "model.onnx"]
    assert (folder / "tokenizer.json").is_file()

    sample = epochs[-1]["samples"][0]  # the same sentence every epoch
    out = subprocess.run(
        [sys.executable, "-m", "core", "predict", "--run", str(run.id), "--text", sample["prompt"], "--json"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    (found,) = json.loads(out.stdout)["translations"]
    # The exported model is the best epoch's (the last of the highest BLEU): its translation of
    # the sample sentence is the one that epoch wrote.
    bleu = [p.value for p in jobs.metric_history(run.id) if p.key == "val_bleu"]
    best = max(i + 1 for i, v in enumerate(bleu) if v == max(bleu))
    assert found["source"] == sample["prompt"] and found["text"] == epochs[best]["samples"][0]["answer"]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "core",
            "predict",
            "--run",
            str(run.id),
            "--text",
            sample["prompt"],
            "--beams",
            "4",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and "->" in out.stdout, out.stderr
    for bad, said in (
        (["--temperature", "0.5", "--text", "x"], "--temperature and --top-p are for text generation"),
        ([str(tmp_path / "en-es.csv")], "a text model takes --text or --text-file, not files"),
        (["--text", " "], "the text is empty"),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "core", "predict", "--run", str(run.id), *bad],
            capture_output=True,
            text=True,
        )
        assert out.returncode != 0 and said in out.stderr and "Traceback" not in out.stderr, out.stderr

    root = Path(__file__).resolve().parents[1]
    at = AppTest.from_file(str(root / "pages" / "datasets.py"), default_timeout=60).run()
    assert not at.exception and any("Words per sentence" in m.value for m in at.markdown)
    at = AppTest.from_file(str(root / "pages" / "runs.py"), default_timeout=60).run()
    at.multiselect[0].set_value([run.id]).run()
    assert not at.exception and not at.error
    assert any("Translations of fixed validation sentences" in h.value for h in at.subheader)
    assert any(m.label == "chrF of the source copied" for m in at.metric)
    at = AppTest.from_file(str(root / "pages" / "predict.py"), default_timeout=60).run()
    assert not at.exception and not at.toggle  # trained from scratch: no base model to put beside
    at.text_area[0].input(sample["prompt"])
    at.button[0].click().run()
    assert not at.exception and not at.error
    assert at.dataframe[0].value["translation"][0] == found["text"]  # greedy, as the CLI's

    # The certificate: both graphs of each variant decode every validation sentence.
    out = subprocess.run(
        [sys.executable, "-m", "core", "export", "--run", str(run.id), "--variants", "fp32,int8"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "ms/sentence" in out.stdout and "RTF" not in out.stdout
    from core import certificate

    records = {r.variant: r for r in certificate.certificate(run.id)}
    assert list(records) == ["pytorch", "fp32", "int8"]
    base, fp32, int8 = records["pytorch"], records["fp32"], records["int8"]
    assert base.metric_name == "bleu" and base.metric_value == pytest.approx(done.best_metrics["val_bleu"])
    assert fp32.top1_agreement == 1.0 and fp32.metric_change == 0.0 and fp32.max_abs_diff < 1e-4
    assert fp32.bytes == sum((folder / f).stat().st_size for f in ("model.onnx", "decoder.onnx"))
    assert int8.bytes < fp32.bytes / 2 and 0.0 <= int8.top1_agreement <= 1.0 and int8.n_samples == 80
    for r in records.values():
        (row,) = r.measurements
        assert row["batch"] == 1 and 0 < row["encoder_ms"] < row["item_ms"] and row["p50_ms"] > 0
        assert row["items"] == 8 and "rtf" not in row
    assert (folder / "decoder.int8.onnx").is_file()
    at = AppTest.from_file(str(root / "pages" / "runs.py"), default_timeout=60).run()
    at.multiselect[0].set_value([run.id]).run()
    assert not at.exception and "translations alike" in at.dataframe[-1].value.columns


def test_a_pretrained_marian_fine_tunes_with_lora_and_exports_folded(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """hf-marian from a local folder (a small Marian saved as opus-mt models are) with LoRA:
    the adapters alone train and are checkpointed, the export folds them in and translates as
    PyTorch does. LoRA on marian-small (from scratch) and hf-marian without weights are refused."""
    from safetensors.torch import load_file

    from core.models.translation import small_marian, train_tokenizer
    from core.train import BEST
    from tests.conftest import train_here

    ds = ingest_file(pairs_csv(tmp_path / "p.csv"))
    with pytest.raises(ConfigError, match="marian-small starts from scratch"):
        jobs.submit(jobs.config_for(ds.id, finetune="lora"))
    with pytest.raises(ConfigError, match="hf-marian needs the Marian model"):
        jobs.submit(jobs.config_for(ds.id, model="hf-marian"))

    folder = tmp_path / "opus-mt-tiny"
    tok = train_tokenizer([s for pair in PAIRS for s in pair] * 3)
    small_marian(tok, 0.0).save_pretrained(folder)
    tok.save_pretrained(folder)
    cfg = jobs.config_for(
        ds.id, model="hf-marian", weights=str(folder), finetune="lora", epochs=2, lora_rank=4
    )
    assert cfg.lr == 5e-4 and cfg.lora_targets == "all-linear"
    run = jobs.submit(cfg)
    train_here(run.id)
    done = jobs.get_run(run.id)
    assert done.status == "succeeded", done.error
    assert done.metrics["export_translation_agreement"] == 1.0, done.metrics
    saved = load_file(str(jobs.run_dir(run.id) / BEST))
    assert saved and all("lora_" in k for k in saved)  # the adapters alone
    assert "LoRA of rank 4 on q_proj, k_proj, v_proj, out_proj, fc1, fc2" in capsys.readouterr().out


def test_word_differences_mark_what_was_added_and_strike_what_was_dropped() -> None:
    from core.summary import word_diff_html

    html = word_diff_html("the <red> car is here", "the blue car is here now")
    assert 'line-through">&lt;red&gt;</span>' in html  # the reference's word the text dropped, escaped
    assert ">blue</span>" in html and ">now</span>" in html  # words the reference lacks
    assert "the" in html and "car is here" in html
    assert "<span" not in word_diff_html("same words", "same words").removeprefix(
        '<span class="ascent-diff">'
    )
