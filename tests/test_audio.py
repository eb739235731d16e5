"""Audio: the log-mel front end against librosa, clip reading and resampling, zip ingest with its
report and refusals, and on spoken words synthesised by espeak-ng, a CNN that recognises voices
it never heard, exports with parity, predicts from files and fine-tunes on new words."""

from __future__ import annotations

import io
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from core import checkpoint, jobs
from core.config import get_settings
from core.data.ingest import ingest_file, list_datasets
from core.data.samples import spoken_words_zip
from core.errors import ConfigError, DatasetError
from core.models.audio import LogMel, mel_filterbank
from core.quantize import quantize_static_int8
from core.runtime import Predictor, RuntimeInputError, fit_length, load_audio, prepare_clip, to_mono
from core.tasks import get_task
from core.train import BEST, train

TASK = "audio-classification"
pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="needs Debian's espeak-ng (.ci/run installs it)"
)
TRAIN_VOICES = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-029",
    "en-gb-x-rp",
    "en-us+f3",
    "en-gb+m3",
    "en-us+f5",
)
HELD_OUT_VOICES = ("en-gb-x-gbclan", "en-gb-scotland+f2", "en-029+m5", "en-gb+f4")


def _wav(samples: np.ndarray, rate: int = 16000, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt)
    return buf.getvalue()


def _tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_front_end_matches_librosa() -> None:
    import librosa

    rate = 16000
    assert (
        np.abs(mel_filterbank(rate, 400, 64) - librosa.filters.mel(sr=rate, n_fft=400, n_mels=64)).max()
        < 1e-6
    )
    rng = np.random.default_rng(0)
    y = (librosa.chirp(fmin=100, fmax=7000, sr=rate, duration=1.0) * 0.5 + rng.normal(0, 0.01, rate)).astype(
        np.float32
    )
    reference = librosa.feature.melspectrogram(
        y=y,
        sr=rate,
        n_fft=400,
        hop_length=160,
        window="hann",
        center=True,
        pad_mode="constant",
        power=2.0,
        n_mels=64,
    )
    ours = LogMel(rate, len(y), 64)(torch.from_numpy(y)[None])[0].numpy()
    assert ours.shape == reference.shape == (64, 101)
    # Stated tolerance: 1e-3 in natural-log mel power (0.004 dB).
    assert np.abs(ours - np.log(reference + 1e-6)).max() < 1e-3


def test_clips_are_mixed_resampled_and_centred() -> None:
    stereo = np.stack([_tone(440, 1.0, 44100), _tone(440, 1.0, 44100)], axis=1)
    data, rate = load_audio(_wav(stereo, 44100, "FLAC"))
    assert rate == 44100 and data.shape == (44100, 2)
    mono = to_mono(data, rate, 16000)
    assert len(mono) == 16000
    spectrum = np.abs(np.fft.rfft(mono))
    assert abs(np.argmax(spectrum) * 16000 / len(mono) - 440) <= 1  # the tone survives resampling
    assert list(fit_length(np.ones(4, np.float32), 8)) == [0, 0, 1, 1, 1, 1, 0, 0]
    assert list(fit_length(np.arange(10, dtype=np.float32), 4)) == [3, 4, 5, 6]
    assert prepare_clip(_wav(_tone(300, 0.5, 8000), 8000), 16000, 16000).shape == (16000,)


BAD_CLIPS = {
    "empty": (b"", "empty (0 bytes)"),
    "not audio": (b"this is a text file, not a recording\n" * 20, "not a readable WAV or FLAC"),
    "corrupt header": (
        b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + b"\xff" * 40,
        "not a readable WAV or FLAC",
    ),
    "0 samples": (_wav(np.zeros(0, np.float32)), "0 samples"),
}


@pytest.mark.parametrize("case", list(BAD_CLIPS))
def test_bad_clips_get_clear_errors(case: str) -> None:
    data, message = BAD_CLIPS[case]
    with pytest.raises(RuntimeInputError, match=re.escape(message)):
        load_audio(data)


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def test_zip_ingest_reports_rates_silence_clipping_and_unreadable_clips(home: Path, tmp_path: Path) -> None:
    words = spoken_words_zip(
        tmp_path / "w.zip", words=("yes", "no"), voices=("en-us", "en-gb"), speeds=(150,), pitches=(50,)
    )
    with zipfile.ZipFile(words) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    entries["words/no/silent.wav"] = _wav(np.zeros(8000, np.float32))
    entries["words/yes/loud.wav"] = _wav(np.clip(_tone(200, 0.5, 16000, amplitude=3.0), -1, 1))
    for case, (data, _) in BAD_CLIPS.items():
        entries[f"words/yes/{case.replace(' ', '-')}.wav"] = data
    entries["words/README.md"] = b"notes"
    ds = ingest_file(_zip(tmp_path / "mixed.zip", entries))  # the task is detected from the files
    assert ds.task == TASK and ds.schema["classes"] == ["no", "yes"]
    rep = ds.report
    assert rep["class_counts"] == {"no": 3, "yes": 3}
    assert rep["sample_rates"] == {"16000": 2, "22050": 2, "44100": 2} and rep["channels"] == {"1": 4, "2": 2}
    assert rep["silent"] == ["no/silent.wav"] and rep["clipped"] == ["yes/loud.wav"]
    assert sorted(rep["unreadable"]) == sorted(f"yes/{c.replace(' ', '-')}.wav" for c in BAD_CLIPS)
    assert rep["skipped_files"] == ["README.md"]
    assert 0.3 < rep["seconds"]["median"] < 1.5 and 0.5 <= ds.schema["clip_seconds"] <= 2.0
    stored = sorted(p.name for p in (Path(ds.path) / "clips").rglob("*.*"))
    assert len(stored) == 6 and "silent.wav" in stored and "empty.wav" not in stored


BAD_ZIPS = {
    "no clips": ({"yes/a.txt": b"hello"}, "no .wav or .flac clip"),
    "top level": ({"a.wav": b"x", "yes/b.wav": b"y"}, "folder named after its class"),
    "one class": ({"yes/a.wav": _wav(_tone(300, 0.3, 16000))}, "only one class"),
    "nothing readable": ({"yes/a.wav": b"", "no/b.wav": b"junk" * 10}, "no readable clip"),
    "escape": ({"../yes/a.wav": b"x"}, "outside its folder"),
}


@pytest.mark.parametrize("case", list(BAD_ZIPS))
def test_bad_audio_zips_are_refused_and_leave_nothing(home: Path, tmp_path: Path, case: str) -> None:
    entries, message = BAD_ZIPS[case]
    with pytest.raises(DatasetError, match=message):
        ingest_file(_zip(tmp_path / "bad.zip", entries), task=TASK)
    datasets = home / "datasets"
    assert (not datasets.exists() or list(datasets.iterdir()) == []) and list_datasets() == []


def test_spoken_words_are_recognised_in_voices_never_heard(home: Path, tmp_path: Path) -> None:
    four = ("yes", "no", "up", "down")
    ds = ingest_file(spoken_words_zip(tmp_path / "train.zip", words=four, voices=TRAIN_VOICES), task=TASK)
    cfg = jobs.config_for(ds.id, epochs=12)
    data = get_task(TASK).prepare(ds, cfg, "cpu")
    outcome = train(cfg, data, device="cpu", run_dir=tmp_path / "run")
    assert outcome.best_value is not None and outcome.best_value >= 0.8
    checkpoint.load_weights(tmp_path / "run" / BEST, data.model)
    check = get_task(TASK).export(data, cfg, ds, tmp_path / "run" / "model.onnx", run_id=3)
    assert check.top1_agreement == 1.0 and check.max_abs_diff < 1e-4 and check.n_samples == data.n_val

    held_out = spoken_words_zip(
        tmp_path / "held.zip", words=four, voices=HELD_OUT_VOICES, speeds=(150,), pitches=(50,)
    )
    unzipped = tmp_path / "held"
    with zipfile.ZipFile(held_out) as zf:
        zf.extractall(unzipped)
    files = sorted(unzipped.rglob("*.*"))
    predictor = Predictor(tmp_path / "run" / "model.onnx")
    preds = predictor.predict_audio(files)
    accuracy = np.mean([p.label == f.parent.name for p, f in zip(preds, files, strict=True)])
    assert accuracy >= 0.7, f"only {accuracy:.2f} on {len(files)} clips of unheard voices"
    assert predictor.audio == (16000, data.extra["samples"])

    # int8 for this convolution net: static, calibrated on its training clips; the log-mel front
    # end stays float, and the answers on the unheard voices stay the same.
    calibration = get_task(TASK).reference(data, cfg, ds).calibration
    int8 = quantize_static_int8(tmp_path / "run" / "model.onnx", tmp_path / "run" / "int8.onnx", calibration)
    assert "static int8" in int8.method
    same = np.mean(
        [a.label == b.label for a, b in zip(preds, Predictor(int8.path).predict_audio(files), strict=True)]
    )
    assert same >= 0.95, f"int8 kept {same:.2f} of the answers ({int8.method})"

    # Fine-tuning this run on new words: the front end and CNN carry over, the head is new.
    earlier = get_settings().runs_dir / "3"
    earlier.mkdir(parents=True)
    shutil.copy(tmp_path / "run" / BEST, earlier / BEST)
    new = ingest_file(
        spoken_words_zip(tmp_path / "new.zip", words=("left", "right"), voices=TRAIN_VOICES[:4]), task=TASK
    )
    tuned = jobs.config_for(new.id, epochs=3, init_from_run=3)
    tuned_data = get_task(TASK).prepare(new, tuned, "cpu")
    body = dict(tuned_data.model.named_parameters())
    for name, value in data.model.named_parameters():
        assert torch.equal(body[name], value) != name.startswith("head."), name
    assert train(tuned, tuned_data, device="cpu", run_dir=tmp_path / "tuned").best_value is not None
    with pytest.raises(ConfigError, match="no checkpoint"):
        get_task(TASK).prepare(new, jobs.config_for(new.id, init_from_run=99), "cpu")


def test_command_line_adds_trains_and_predicts_clips(home: Path, tmp_path: Path) -> None:
    from test_cli import cli, cli_json

    z = spoken_words_zip(tmp_path / "w.zip", words=("yes", "no"), voices=TRAIN_VOICES[:4], speeds=(150,))
    ds = cli_json("datasets", "add", str(z))
    assert ds["task"] == TASK and ds["report"]["clips"] == 16
    run = cli_json("train", "--dataset", str(ds["id"]), "--epochs", "3", "--clip-seconds", "1.2", "--wait")
    assert run["status"] == "succeeded" and run["config"]["clip_seconds"] == 1.2
    clip = tmp_path / "yes.wav"
    from core.data.samples import _espeak

    _espeak("yes", "en-gb-x-rp", 150, 50, clip)
    out = cli_json("predict", "--run", str(run["id"]), "--top-k", "2", str(clip))
    (pred,) = out["predictions"]
    assert pred["file"] == str(clip) and len(pred["top"]) == 2 and out["provider"] == "CPUExecutionProvider"
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....WAVE")
    failed = cli("predict", "--run", str(run["id"]), str(bad), ok=False)
    assert failed.returncode == 1 and "not a readable WAV or FLAC" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1
