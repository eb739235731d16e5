"""Speech recognition, first part: zips of read speech with transcripts in Hugging Face's
audiofolder and LibriSpeech layouts (real clips: Debian's pocketsphinx-testdata), what is left
out and why, and the offline Whisper tiny.en read from its CTranslate2 file, which transcribes
those clips."""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from core import jobs
from core.data.ingest import guess_upload, ingest_file
from core.errors import ConfigError, DatasetError

READ = Path("/usr/share/pocketsphinx/test/data")
pytestmark = pytest.mark.skipif(
    not READ.is_dir(), reason="needs Debian's pocketsphinx-testdata (.ci/run installs it)"
)


def read_speech() -> list[tuple[Path, str]]:
    """The package's ten clips with transcripts: five LibriVox sentences, five spoken cards."""
    found = []
    for folder, listing in (("librivox", "transcription"), ("cards", "cards.transcription")):
        for line in (READ / folder / listing).read_text().splitlines():
            m = re.fullmatch(r"<s> (.*) </s> \((.*)\)", line.strip())
            assert m is not None, line
            found.append((READ / folder / f"{m[2]}.wav", " ".join(m[1].split())))
    return found


def audiofolder_zip(
    path: Path, rows: list[tuple[str, Path | None, str]], extra: dict[str, bytes] | None = None
) -> Path:
    """A zip with metadata.csv (file_name,transcription) and the clips: (name, clip or None to
    leave it out of the zip, transcript)."""
    with zipfile.ZipFile(path, "w") as zf:
        lines = [["file_name", "transcription"]] + [[name, text] for name, _, text in rows]
        out = io.StringIO()
        csv.writer(out).writerows(lines)
        zf.writestr("speech/metadata.csv", out.getvalue())
        for name, clip in {name: clip for name, clip, _ in rows if clip is not None}.items():
            zf.write(clip, f"speech/{name}")
        for name, data in (extra or {}).items():
            zf.writestr(f"speech/{name}", data)
    return path


def test_both_layouts_are_read_with_their_transcripts(home: Path, tmp_path: Path) -> None:
    speech = read_speech()
    af = audiofolder_zip(tmp_path / "af.zip", [(f"clips/{c.name}", c, t) for c, t in speech])
    assert guess_upload("af.zip", af.read_bytes()).task == "speech-recognition"
    ds = ingest_file(af)
    assert ds.task == "speech-recognition" and ds.n_items == 10
    rep = ds.report
    assert rep["layout"] == "audiofolder" and rep["left_out"] == {} and rep["untranscribed_count"] == 0
    assert rep["words"]["total"] == sum(len(t.split()) for _, t in speech)
    assert 0.5 < rep["minutes"] < 0.7 and rep["sample_rates"] == {"16000": 10}
    import pandas as pd

    index = pd.read_parquet(Path(ds.path) / "index.parquet")
    stored = dict(zip(index["path"], index["transcript"], strict=True))
    assert (
        stored["clips/sense_and_sensibility_01_austen_64kb-0880.wav"]
        == "he was not an ill disposed young man"
    )
    assert all((Path(ds.path) / "clips" / p).is_file() for p in index["path"])

    # LibriSpeech: SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt with the clips beside it.
    ls = tmp_path / "ls.zip"
    with zipfile.ZipFile(ls, "w") as zf:
        lines = []
        for i, (clip, text) in enumerate(speech):
            zf.write(clip, f"19/198/19-198-{i:04d}.wav")
            lines.append(f"19-198-{i:04d} {text.upper()}")
        zf.writestr("19/198/19-198.trans.txt", "\n".join(lines) + "\n")
    ds = ingest_file(ls)
    assert ds.task == "speech-recognition" and ds.n_items == 10 and ds.report["layout"] == "librispeech"


def _tone(path: Path, seconds: float) -> Path:
    t = np.arange(int(16_000 * seconds)) / 16_000
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16_000)
    return path


def test_what_cannot_be_learnt_is_left_out_and_counted(home: Path, tmp_path: Path) -> None:
    (a, ta), (b, _), (c, _), *_ = read_speech()
    rows = [
        ("a.wav", a, ta),
        ("b.wav", b, "   "),  # an empty transcript
        ("gone.wav", None, "a clip the zip lacks"),
        ("c.wav", c, "far too many words " * 20),  # 80 words in about 5 s: not this clip's
        ("long.wav", _tone(tmp_path / "long.wav", 31.0), "thirty one seconds"),  # over Whisper's 30 s
        ("bad.wav", None, "not audio"),
        ("a.wav", a, "the same clip again"),
    ]
    extra = {"bad.wav": b"RIFF nonsense", "loose.wav": b.read_bytes()}
    ds = ingest_file(audiofolder_zip(tmp_path / "mixed.zip", rows, extra))
    rep = ds.report
    assert ds.n_items == 2  # a.wav and c.wav
    assert rep["left_out"] == {
        "empty transcripts": 1,
        "clips listed twice (the first kept)": 1,
        "rows whose clip is not in the zip": 1,
    }
    assert rep["missing_clips"] == ["gone.wav"] and rep["untranscribed"] == ["loose.wav"]
    assert list(rep["unreadable"]) == ["bad.wav"] and rep["too_long"] == {"long.wav": 31.0}
    assert list(rep["odd_rate"]) == ["c.wav"] and rep["odd_rate"]["c.wav"] > 6

    with pytest.raises(DatasetError, match="needs a file_name column and a transcript column"):
        with zipfile.ZipFile(tmp_path / "cols.zip", "w") as zf:
            zf.writestr("metadata.csv", "path,words\na.wav,hello\n")
            zf.write(a, "a.wav")
        ingest_file(tmp_path / "cols.zip")
    with pytest.raises(DatasetError, match="no clip in empty.zip has a transcript"):
        ingest_file(
            audiofolder_zip(
                tmp_path / "empty.zip", [("x.wav", None, "nothing here")], {"y.wav": a.read_bytes()}
            )
        )
    with pytest.raises(DatasetError, match="has no transcripts: put a metadata.csv"):
        with zipfile.ZipFile(tmp_path / "bare.zip", "w") as zf:
            zf.write(a, "yes/a.wav")
        ingest_file(tmp_path / "bare.zip", task="speech-recognition")
    with pytest.raises(DatasetError, match="speech-recognition takes a zip"):
        ingest_file(a, task="speech-recognition")


def test_whisper_fine_tunes_on_read_speech_then_transcribes_from_onnx(home: Path, tmp_path: Path) -> None:
    """One epoch on eight read clips lowers the word error rate on the two held back (the base
    model's transcripts, kept as epoch 0, against the trained one's); the exported graphs
    transcribe the held-back clips exactly as PyTorch does; the CLI, the Train, Runs and
    Predict pages serve the run."""
    import json

    from streamlit.testing.v1 import AppTest

    from core.tasks.speech import error_rates
    from tests.conftest import train_here

    speech = read_speech()
    ds = ingest_file(audiofolder_zip(tmp_path / "af.zip", [(c.name, c, t) for c, t in speech]))
    cfg = jobs.config_for(ds.id, epochs=1, batch_size=4)
    assert cfg.model == "whisper-tiny-en" and cfg.finetune == "full"
    run = jobs.submit(cfg)
    train_here(run.id)
    done = jobs.get_run(run.id)
    assert done.status == "succeeded"
    assert done.metrics["export_transcript_agreement"] == 1.0 and done.metrics["export_max_abs_diff"] < 1e-3
    folder = jobs.run_dir(run.id)
    epochs = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [0, 1] and len(epochs[0]["samples"]) == 2  # the held-back clips
    base = error_rates(
        [s["expected"] for s in epochs[0]["samples"]], [s["answer"] for s in epochs[0]["samples"]]
    )
    assert done.metrics["val_wer"] < base["wer"], (done.metrics, epochs)
    # Error rates are best at their lowest: in the runs table, for sweeps and on the run page.
    from core.sweeps import direction_of

    assert direction_of("val_wer") == direction_of("val_cer") == "minimize"
    assert done.best_metrics["val_wer"] == min(
        p.value for p in jobs.metric_history(run.id) if p.key == "val_wer"
    )
    assert done.metrics["val_wer"] == pytest.approx(
        error_rates(
            [s["expected"] for s in epochs[1]["samples"]], [s["answer"] for s in epochs[1]["samples"]]
        )["wer"]
    )
    report = json.loads((folder / "report.json").read_text())
    assert report["kind"] == "speech" and report["clips"] == 2 and report["wer"] == done.metrics["val_wer"]
    assert sorted(p.name for p in folder.glob("*.onnx")) == ["decoder.onnx", "model.onnx"]
    from core import summary

    offered = [label.split(" ")[0] for label, _ in summary.downloads(run.id)]
    assert offered[:2] == ["onnx", "decoder"] and "tokenizer" in offered  # the three files it needs

    clip = next(c for c, _ in speech if c.name.endswith("0880.wav"))
    out = subprocess.run(
        [sys.executable, "-m", "core", "predict", "--run", str(run.id), str(clip), "--json"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    (heard,) = json.loads(out.stdout)["transcripts"]
    assert (
        heard["text"]
        == epochs[1]["samples"][[s["prompt"] for s in epochs[1]["samples"]].index(clip.name)]["answer"]
    )
    assert heard["seconds"] == pytest.approx(2.99, abs=0.01) and heard["encode_ms"] > 0
    out = subprocess.run(
        [sys.executable, "-m", "core", "predict", "--run", str(run.id), "--text", "hello"],
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0 and "takes clips (WAV, FLAC), not text" in out.stderr
    # (These refusals are checked here, not in the bad-input battery: a Whisper run in its home
    # cost CI about 100 s.)
    out = subprocess.run(
        [sys.executable, "-m", "core", "predict", "--run", str(run.id)], capture_output=True, text=True
    )
    assert out.returncode == 1 and out.stderr.strip() == "error: give the clips to transcribe (WAV or FLAC)"

    # Over HTTP (`python -m core serve`): the same transcript, and beams checked.
    from tests.test_serve import _call, _multipart, _serve

    server, url = _serve("--run", str(run.id))
    try:
        body, kind = _multipart([(clip.name, clip.read_bytes())])
        status, got = _call(f"{url}/runs/{run.id}/predict", body, kind)
        assert status == 200 and got["predictions"][0]["text"] == heard["text"], got
        assert (
            got["predictions"][0]["file"] == clip.name
            and got["predictions"][0]["seconds"] == heard["seconds"]
        )
        status, got = _call(f"{url}/runs/{run.id}/predict?beams=0", body, kind)
        assert status == 422 and "beams 0 is out of range" in got["detail"]
        status, got = _call(f"{url}/runs/{run.id}/predict", b'{"texts": ["a"]}', "application/json")
        assert status == 415 and "takes multipart/form-data: WAV or FLAC clips" in got["detail"]
    finally:
        server.terminate()
        server.wait(timeout=30)

    root = Path(__file__).resolve().parents[1]
    at = AppTest.from_file(str(root / "pages" / "train.py"), default_timeout=60).run()
    assert not at.exception and any(
        s.label == "Model" and "whisper-tiny-en" in str(s.value) for s in at.selectbox
    )
    at = AppTest.from_file(str(root / "pages" / "runs.py"), default_timeout=60).run()
    at.multiselect[0].set_value([run.id]).run()
    assert not at.exception and not at.error
    assert any("Transcripts of fixed validation clips" in h.value for h in at.subheader)
    at = AppTest.from_file(str(root / "pages" / "predict.py"), default_timeout=60).run()
    assert not at.exception
    assert any("resampled to 16000 Hz" in c.value for c in at.caption)

    # The base model it started from, exported as the playground does, transcribes the
    # held-back clips as the run's epoch 0 (the same Whisper before training) did.
    from core import playground
    from core.runtime import Transcriber

    source = playground.base_source(run.id)
    base = Transcriber(playground.export_base(source, "speech-recognition"))
    before = {s["prompt"]: s["answer"] for s in epochs[0]["samples"]}
    clips = {c.name: c for c, _ in speech}
    assert [t.text for t in base.transcribe([clips[n] for n in before])] == list(before.values())
    at = AppTest.from_file(str(root / "pages" / "predict.py"), default_timeout=60).run()
    at.toggle[0].set_value(True).run()
    assert not at.exception and not at.warning and not at.info  # the base is ready: no wait

    # The certificate's fp32: the validation clips transcribed through the same loop, their WER
    # the run's, each clip timed with its real-time factor.
    from core import certificate

    base_record, fp32 = certificate.certify(run.id, ("fp32",))
    assert base_record.metric_name == "wer" and base_record.metric_value == pytest.approx(
        done.metrics["val_wer"]
    )
    assert fp32.top1_agreement == 1.0 and fp32.metric_change == 0.0 and fp32.n_samples == 2
    for r in (base_record, fp32):
        (row,) = r.measurements
        assert row["items"] == 2 and 0 < row["rtf"] < 10 and row["encoder_ms"] < row["item_ms"]


def test_offline_whisper_is_read_from_its_ctranslate2_file_and_transcribes(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jiwer
    import torch
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    from core.models import speech as models

    folder = models.whisper_folder()
    assert {"model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= {
        p.name for p in folder.iterdir()
    }
    model = models.load_whisper(str(folder))
    clips = [(c, t) for c, t in read_speech() if "librivox" in str(c)]
    heard = []
    for clip, _ in clips:
        wave, rate = sf.read(clip, dtype="float32")
        features = model.processor(wave, sampling_rate=rate, return_tensors="pt").input_features
        with torch.no_grad():
            ids = model.module.generate(features, max_new_tokens=80)
        heard.append(model.processor.batch_decode(ids, skip_special_tokens=True)[0])
    norm = BasicTextNormalizer()
    wer = jiwer.wer([norm(t) for _, t in clips], [norm(h) for h in heard])
    assert wer < 0.15, (wer, heard)
    assert norm(heard[1]).split()[:3] == ["he", "was", "not"]

    # The weights are checked before they are read, and a file of another format is refused.
    monkeypatch.setattr(models, "WHISPER_SHA256", "0" * 64)
    with pytest.raises(ConfigError, match="is not the Whisper tiny.en file it should be"):
        models.whisper_package()
    bogus = tmp_path / "model.bin"
    bogus.write_bytes(b"\x05\x00\x00\x00junk")
    with pytest.raises(ConfigError, match="CTranslate2 format 5"):
        models.read_ct2(bogus)
    shutil.copy(clips[0][0], bogus)
    with pytest.raises(ConfigError, match="not a readable CTranslate2 model|CTranslate2 format"):
        models.read_ct2(bogus)


def test_whisper_exports_as_two_graphs_that_transcribe_as_pytorch_does(home: Path, tmp_path: Path) -> None:
    """model.onnx (the raw wave to cross-attention keys and values, Whisper's log-mel features
    computed inside) and decoder.onnx (one step with a cache): the numpy loop's greedy tokens in
    ONNX Runtime are transformers' generate tokens on every LibriVox clip, in one batch of
    different lengths."""
    import onnxruntime as ort
    import torch

    from core.export import export_transcriber
    from core.models.speech import load_whisper, whisper_folder
    from core.runtime import RuntimeInputError, Transcriber

    model = load_whisper(str(whisper_folder()))
    path = tmp_path / "export" / "model.onnx"
    path.parent.mkdir()
    export_transcriber(model.module, model.processor.tokenizer, path, {"ascent.task": "speech-recognition"})
    assert sorted(p.name for p in path.parent.iterdir()) == ["decoder.onnx", "model.onnx", "tokenizer.json"]
    for name in ("model.onnx", "decoder.onnx"):  # plain ONNX Runtime takes both, batch and lengths free
        session = ort.InferenceSession(str(path.parent / name), providers=["CPUExecutionProvider"])
        assert session.get_providers() == ["CPUExecutionProvider"]
        assert all(isinstance(i.shape[0], str) for i in session.get_inputs())

    transcriber = Transcriber(path, ["CPUExecutionProvider"])
    clips = [c for c, _ in read_speech() if "librivox" in str(c)]
    got = transcriber.transcribe(clips, batch=len(clips))
    end = int(model.module.config.eos_token_id)
    for clip, transcript in zip(clips, got, strict=True):
        wave, rate = sf.read(clip, dtype="float32")
        features = model.processor(wave, sampling_rate=rate, return_tensors="pt").input_features
        with torch.no_grad():
            expected = [t for t in model.module.generate(features, max_new_tokens=120)[0].tolist() if t < end]
        assert transcript.tokens == expected, clip.name
        assert transcript.text == model.processor.tokenizer.decode(expected, skip_special_tokens=True).strip()
        assert transcript.seconds == pytest.approx(len(wave) / rate) and transcript.encode_ms > 0
    assert got[1].text.startswith("He was not")

    with pytest.raises(RuntimeInputError, match="over the model's 30-s window"):
        transcriber.transcribe([_tone(tmp_path / "long.wav", 31.0)])
    (path.parent / "decoder.onnx").unlink()
    with pytest.raises(RuntimeInputError, match="decoder.onnx is missing beside model.onnx"):
        Transcriber(path)


def test_whisper_lora_trains_adapters_alone_and_folds_them_in(home: Path, tmp_path: Path) -> None:
    """--finetune lora: adapters on Whisper's attention and feed-forward layers learn at the
    LoRA rate (1e-3) while its own weights stay as they were; the checkpoint holds the adapters
    alone and resumes into a fresh model; folded in (what the export writes), the plain Whisper
    transcribes the held-back clips exactly as the adapted one did."""
    import torch
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import load_file

    from core.models.speech import load_whisper, whisper_folder
    from core.tasks import get_task
    from core.tasks.speech import SpeechLoss
    from core.train import BEST, train

    speech = read_speech()[:6]
    ds = ingest_file(audiofolder_zip(tmp_path / "af.zip", [(c.name, c, t) for c, t in speech]))
    cfg = jobs.config_for(ds.id, epochs=1, batch_size=4, finetune="lora", lora_rank=4)
    assert cfg.lr == 1e-3 and jobs.config_for(ds.id).lr == 3e-5  # LoRA's rate; the whole model's
    data = get_task(cfg.task).prepare(ds, cfg, "cpu")
    module = data.model
    assert isinstance(module, SpeechLoss) and module.adapters_only
    trained = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained)
    assert {n.split(".")[-4] for n in trained} == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}

    runs = tmp_path / "run"
    train(cfg, data, device="cpu", run_dir=runs)
    saved = load_file(str(runs / BEST))
    assert set(saved) == trained  # the adapters alone
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in saved.items())  # they learnt
    base = load_whisper(str(whisper_folder())).module.state_dict()
    for name, tensor in module.model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(tensor, base[name.replace(".base_layer", "")]), name

    again = get_task(cfg.task).prepare(ds, cfg, "cpu").model
    again.load_state_dict(saved)
    (waves, _inputs, _labels), _ = next(iter(data.val))
    module.eval()
    again.eval()
    adapted = module.transcribe(waves)
    assert torch.equal(again.transcribe(waves), adapted)
    folded = module.merged()
    assert not module.adapters_only and not any(isinstance(m, LoraLayer) for m in folded.modules())
    assert set(folded.state_dict()) == set(base)
    assert torch.equal(module.transcribe(waves), adapted)

    # The Train page: choosing LoRA shows its settings and LoRA's rate, and queues such a run.
    from streamlit.testing.v1 import AppTest

    from tests.conftest import ROOT

    at = AppTest.from_file(str(ROOT / "pages" / "train.py"), default_timeout=60).run()
    lr = next(w for w in at.number_input if w.label == "Learning rate")
    assert lr.value == pytest.approx(3e-5) and not [w for w in at.number_input if w.label == "LoRA rank"]
    next(r for r in at.radio if r.label == "Fine-tuning").set_value("LoRA adapters").run()
    assert next(w for w in at.number_input if w.label == "Learning rate").value == pytest.approx(1e-3)
    next(w for w in at.number_input if w.label == "LoRA rank").set_value(8)
    next(b for b in at.button if b.label == "Launch").click().run()
    assert not at.exception and not at.error
    (queued,) = jobs.list_runs()
    assert (queued.config["finetune"], queued.config["lora_rank"], queued.config["lr"]) == ("lora", 8, 1e-3)


def test_the_export_modules_live_where_the_model_does() -> None:
    """A run on a GPU transcribes after each epoch with a fresh WhisperEncode: its front end's
    fixed matrices must be on the model's device, not the CPU (seen on an H200; the meta device
    stands in for it here)."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from core.models.speech import WhisperEncode

    config = WhisperConfig(d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16)  # fmt: skip
    model = WhisperForConditionalGeneration(config).to("meta")
    encode = WhisperEncode(model)
    assert {b.device.type for b in encode.buffers()} == {"meta"}
