"""Registered models: ONNX Runtime against PyTorch eager on the CPU, batch 1 and 32; int8 for text.

Each figure is the median latency of a batch over 100 calls (batch 1) or 8 (batch 32) after
warm-up, measured in a fresh process; each configuration runs `--repeats` times (fresh
processes) and the median is reported. Both sides get the same threads. Models are exported
exactly as runs export them.

Images: the registered image models at their default size, random uint8 NHWC in. Detectors and
segmenters (untrained, as exported: resize, network, decoding of boxes or the mask at the input's
size) take random 640x480 photos, batch 1 and 32.
Text: each model is first trained briefly on BBC News articles cut to 300 characters and 64
tokens, so that the int8 model's accuracy change means something (transformers: 5 topics x 40
articles, 2 epochs, lr 1e-4; the CNN learns from scratch: 5 x 100, 10 epochs, lr 2e-3); then it
is exported (token ids and mask in, probabilities out) and quantised to int8 (core/quantize.py).
Inputs are real BBC News sentences tokenised as runs do: batch 1 is one sentence of the median
length, batch 32 is 32 sentences drawn at random and padded to the longest (dynamic padding).
Accuracy of fp32 and int8 is measured on 100 held-out articles (20 per topic).
Audio: the untrained model (weights do not change its speed) on 1.1 s clips at 16 kHz of words
spoken by espeak-ng in its English voices, prepared as prediction prepares them; then its log-mel
front end alone, four ways: torch.stft (the natural PyTorch front end, the reference), ours
(core.models.audio.LogMel: framing and a DFT matrix product) in PyTorch and in ONNX Runtime, and
torch.stft exported to ONNX's STFT operator in ONNX Runtime.

    python bench/inference.py [--repeats 3] [--threads 2] [--models small-cnn,minilm,audio-cnn]

Certificates (`--certificate`): each Home sample (wine, Fashion-MNIST, BBC News, spoken words)
is added, trained with its quick-start configuration (its task's default model) by a real worker
in a throwaway ASCENT_HOME, and certified by `core.certificate.certify` exactly as
`python -m core export` does; a Markdown table of the figures comes out (the README's). For the
image model, a naive static int8 (ONNX Runtime's defaults: every op, per-tensor weights, 32
calibration images) is measured beside it for comparison.

    python bench/inference.py --certificate [--samples wine,fashion,bbc,words]

Text generation (`--generation`): SmolLM2-135M-Instruct (the offline default; fine-tuned adapters
are merged into the same weights, so a run's generator runs at the same speed) exported as runs
export it, one graph with a KV cache, then timed at batch 1 on the help-desk prompt rendered with
its chat template: the time to the first token (reading the prompt and choosing the token) and
the ms per token after it, over `--new-tokens` greedy tokens (end tokens ignored, so both make
as many). PyTorch eager runs the same loop with transformers' cache (its default attention);
ONNX Runtime runs core.runtime's Decoder, on the fp32 file and on its int8 variant (the
MatMuls' weights int8, core.quantize.quantize_weights_int8, as the certificate makes it). Each
runs in fresh processes, one warm-up generation then three timed ones (median), `--repeats`
processes (median), the three taking turns.

    python bench/inference.py --generation [--repeats 3] [--threads 2] [--new-tokens 64]

Speech recognition (`--speech`): Whisper tiny.en (the offline default) exported as runs export
it (model.onnx with the log-mel features inside, decoder.onnx with a cache), then each LibriVox
clip of Debian's pocketsphinx-testdata transcribed at batch 1 by core.runtime's greedy loop, over
ONNX Runtime sessions or over the same PyTorch modules (eager): the encoder's ms per clip (every
clip is one 30-s window), ms per token, and the real-time factor (compute seconds per second of
audio). Fresh processes taking turns, `--repeats` of them (median).

    python bench/inference.py --speech [--repeats 3] [--threads 2]

Translation (`--translation`): marian-small trained on the Home sample (800 English sentences
and Apertium's Spanish, 12 epochs) and exported as runs export it, then 100 new sentences of
the same words translated at batch 1 by core.runtime's loop, over ONNX Runtime sessions or the
same PyTorch modules (eager): encoder ms, ms per token, and ms per sentence, greedy and with 4
beams. Fresh processes taking turns, `--repeats` of them (median).

    python bench/inference.py --translation [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

IMAGE, TEXT, AUDIO = "image-classification", "text-classification", "audio-classification"
DETECTION, SEGMENTATION = "object-detection", "semantic-segmentation"
DENSE_INPUT = (480, 640)  # (height, width) of the photos given to detectors and segmenters
FRONT = "front-end"  # the log-mel front ends alone, measured as models named below
BATCHES = ((1, 100), (32, 8))  # (batch size, timed calls)
TEXT_CHARS = 300
# (articles per topic, epochs, learning rate): pretrained transformers, models learning from
# scratch. Fixed here, not read from the models' defaults, so the figures stay comparable.
TEXT_TRAIN = {True: (40, 2, 1e-4), False: (100, 10, 2e-3)}
TEXT_HELD_OUT = {"per_class": 20, "offset": 100}
TEXT_MAX_LENGTH = 64  # tokens while training and for the accuracy figures
AUDIO_RATE, AUDIO_SAMPLES = 16_000, 17_600  # 1.1 s clips
# The front ends (`_front_end`): PyTorch runs the module, ONNX Runtime the file it exports to.
FRONT_ENDS = ("torch-stft", "logmel")


def _build(model: str, size: int, task: str = IMAGE):  # type: ignore[no-untyped-def]
    """What a run of `model` exports, untrained: weights do not change its speed."""
    from core.config import RunConfig
    from core.models import get_model
    from core.models.vision import ImageClassifier
    from core.tasks import Probabilities

    cfg = RunConfig(task=task, dataset_id=0, model=model, image_size=size, weights="none")
    net = get_model(model, task).build(10, cfg)
    if task == DETECTION:
        from core.tasks.detection import Detector

        return Detector(net, size).eval()
    if task == SEGMENTATION:
        from core.tasks.segmentation import Segmenter

        return Segmenter(net, size).eval()
    return Probabilities(ImageClassifier(net)).eval()


def _build_audio(model: str, samples: int):  # type: ignore[no-untyped-def]
    from core.config import RunConfig
    from core.data.samples import SPOKEN_WORDS
    from core.models import get_model
    from core.tasks import Probabilities

    cfg = RunConfig(task=AUDIO, dataset_id=0, model=model)
    return Probabilities(get_model(model, AUDIO).build(len(SPOKEN_WORDS), cfg, samples)).eval()


def _front_end(name: str, samples: int):  # type: ignore[no-untyped-def]
    """A log-mel front end alone: float32 [batch, samples] -> [batch, 64 mels, frames]."""
    import torch

    from core.models.audio import HOP, LOG_FLOOR, N_FFT, LogMel, mel_filterbank

    if name == "logmel":
        return LogMel(AUDIO_RATE, samples).eval()

    class StftLogMel(torch.nn.Module):
        """The same log-mel as torchaudio would compute it: torch.stft, |.| ** 2, mel, log."""

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("window", torch.hann_window(N_FFT, periodic=True), persistent=False)
            mel = torch.from_numpy(mel_filterbank(AUDIO_RATE, N_FFT, 64))
            self.register_buffer("mel", mel, persistent=False)

        def forward(self, wave: torch.Tensor) -> torch.Tensor:
            spectrum = torch.stft(
                wave, N_FFT, HOP, window=self.window, center=True, pad_mode="constant", return_complex=True
            )
            return torch.log(self.mel @ spectrum.abs().pow(2) + LOG_FLOOR)

    return StftLogMel().eval()


def _export_front(module: Any, path: Path, example: Any) -> str | None:
    """Export as runs export (dynamo, opset 18, dynamic batch), else with the TorchScript
    exporter; None when written, else why neither could."""
    import warnings

    import torch

    errors = []
    for dynamo in (True, False):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if dynamo:
                    batch = torch.export.Dim("batch", min=1, max=1 << 20)
                    program = torch.onnx.export(
                        module,
                        (example,),
                        dynamo=True,
                        input_names=["waveform"],
                        output_names=["logmel"],
                        dynamic_shapes=({0: batch},),
                        opset_version=18,
                        verbose=False,
                    )
                    assert program is not None
                    program.save(str(path))
                else:
                    torch.onnx.export(
                        module,
                        (example,),
                        str(path),
                        dynamo=False,
                        input_names=["waveform"],
                        output_names=["logmel"],
                        dynamic_axes={"waveform": {0: "batch"}, "logmel": {0: "batch"}},
                        opset_version=18,
                    )
            return None
        except Exception as exc:
            errors.append(f"dynamo={dynamo}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
    return "; ".join(errors)


def _spoken_clips(n: int, samples: int, seed: int = 0) -> tuple[Any, list[str]]:
    """float32 [n, samples] of espeak-ng words in random voices, speeds and pitches, prepared as
    prediction prepares a clip (core.runtime.prepare_clip), and what each one says."""
    import numpy as np

    from core.data.samples import SPOKEN_WORDS, VOICES, _espeak
    from core.runtime import prepare_clip

    rng = np.random.default_rng(seed)
    waves, names = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            word, voice = SPOKEN_WORDS[i % len(SPOKEN_WORDS)], str(rng.choice(VOICES))
            path = Path(tmp) / f"{i}.wav"
            _espeak(word, voice, int(rng.choice([130, 175])), int(rng.choice([35, 65])), path)
            waves.append(prepare_clip(path, AUDIO_RATE, samples))
            names.append(f"{word}/{voice}")
    return np.stack(waves).astype(np.float32), names


def _prepare_audio(model: str, folder: Path, threads: int) -> dict[str, Any]:
    """The model and both front ends saved and exported, and the clips they all read."""
    import numpy as np
    import torch

    from core.export import export_onnx

    samples = AUDIO_SAMPLES
    module = _build_audio(model, samples)
    info: dict[str, Any] = {"task": AUDIO, "samples": samples}
    _save(module, folder, model, info)
    waves, names = _spoken_clips(max(b for b, _ in BATCHES), samples)
    export_onnx(
        module,
        (torch.from_numpy(waves[:2]),),
        folder / f"{model}.onnx",
        input_names=["waveform"],
        output_name="probabilities",
        metadata={},
    )
    for batch, _ in BATCHES:
        np.savez(folder / f"{model}-b{batch}.npz", waveform=waves[:batch])

    # The front ends read the model's clips; `*_diff` is the largest difference from the
    # reference (torch.stft in PyTorch) in natural-log mel power, over all 32 clips.
    fronts: dict[str, dict[str, Any]] = {}
    with torch.inference_mode():
        reference = _front_end("torch-stft", samples)(torch.from_numpy(waves)).numpy()
    for name in FRONT_ENDS:
        front = _front_end(name, samples)
        entry: dict[str, Any] = {"task": FRONT, "front": name, "samples": samples, "inputs": model}
        (folder / f"{name}.json").write_text(json.dumps(entry))
        with torch.inference_mode():
            entry["torch_diff"] = float(np.abs(front(torch.from_numpy(waves)).numpy() - reference).max())
        entry["export_error"] = _export_front(front, folder / f"{name}.onnx", torch.from_numpy(waves[:2]))
        if entry["export_error"] is None:
            (got,) = _session(folder / f"{name}.onnx", threads).run(None, {"waveform": waves})
            entry["ort_diff"] = float(np.abs(got - reference).max())
        fronts[name] = entry
    return {**info, "clips": names, "frames": int(reference.shape[2]), "fronts": fronts}


def _save(module: Any, folder: Path, model: str, info: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous() for k, v in module.state_dict().items()}, str(folder / f"{model}.safetensors")
    )
    (folder / f"{model}.json").write_text(json.dumps(info))


def _prepare_image(model: str, folder: Path, task: str = IMAGE) -> dict[str, Any]:
    """Classifiers take images at their size; detectors and segmenters take DENSE_INPUT photos
    and resize them in the graph, as their exported files do."""
    import numpy as np
    import torch

    from core.export import export_onnx
    from core.models import get_model

    size = int(get_model(model, task).defaults.get("image_size", 224))
    module = _build(model, size, task)
    info = {"task": task, "size": size}
    _save(module, folder, model, info)
    dense = task != IMAGE
    shape = DENSE_INPUT if dense else (size, size)
    outputs = {DETECTION: ["boxes", "scores", "labels"], SEGMENTATION: ["mask", "confidence"]}
    export_onnx(
        module,
        (torch.zeros((2, *shape, 3), dtype=torch.uint8),),
        folder / f"{model}.onnx",
        input_names=["image"],
        output_name=outputs.get(task, "probabilities"),
        metadata={},
        dynamic_image=dense,
    )
    rng = np.random.default_rng(0)
    for batch, _ in BATCHES:
        images = rng.integers(0, 255, (batch, *shape, 3), dtype=np.uint8)
        np.savez(folder / f"{model}-b{batch}.npz", image=images)
    return info


def _train_text(net: Any, texts: list[str], labels: list[int], lr: float, epochs: int) -> None:
    """A plain fine-tuning loop: AdamW, batches of 16 padded to their longest text."""
    import torch

    from core.tasks.text import encode, pad_batch, pad_id

    ids = encode(net.tokenizer, texts, TEXT_MAX_LENGTH)
    y = torch.tensor(labels)
    pad = pad_id(net.tokenizer)
    module = net.module.train()
    optimiser = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(len(ids), generator=generator).tolist()
        for start in range(0, len(order), 16):
            rows = order[start : start + 16]
            x, mask = pad_batch([ids[i] for i in rows], pad)
            loss = torch.nn.functional.cross_entropy(
                module(torch.from_numpy(x), torch.from_numpy(mask)), y[rows]
            )
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    module.eval()


def _accuracy(folder: Path, model: str, net: Any, threads: int) -> dict[str, float]:
    """Top-1 accuracy of PyTorch and of the fp32 and int8 files on held-out articles, and how
    often the two files agree."""
    import numpy as np
    import torch

    from core.data.samples import BBC_CLASSES, bbc_news
    from core.tasks.text import encode, pad_batch, pad_id

    rows = bbc_news(chars=TEXT_CHARS, **TEXT_HELD_OUT)
    ids = encode(net.tokenizer, [t for t, _ in rows], TEXT_MAX_LENGTH)
    y = np.array([BBC_CLASSES.index(topic) for _, topic in rows])
    predictions = {}
    with torch.inference_mode():
        predictions["torch"] = np.concatenate(
            [
                net.module(*(torch.from_numpy(a) for a in pad_batch(ids[i : i + 32], pad_id(net.tokenizer))))
                .argmax(1)
                .numpy()
                for i in range(0, len(ids), 32)
            ]
        )
    for kind in ("fp32", "int8"):
        session = _session(folder / (f"{model}.onnx" if kind == "fp32" else f"{model}.int8.onnx"), threads)
        found = []
        for start in range(0, len(ids), 32):
            x, mask = pad_batch(ids[start : start + 32], pad_id(net.tokenizer))
            found.append(session.run(None, {"input_ids": x, "attention_mask": mask})[0].argmax(1))
        predictions[kind] = np.concatenate(found)
    pytorch, fp32, int8 = (float((predictions[k] == y).mean()) for k in ("torch", "fp32", "int8"))
    agree = float((predictions["fp32"] == predictions["int8"]).mean())
    return {
        "n": len(y),
        "torch": pytorch,
        "fp32": fp32,
        "int8": int8,
        "change": int8 - fp32,
        "agreement": agree,
    }


def _sentences(texts: list[str]) -> list[str]:
    """Article text cut into sentences (at . ! ? followed by a capital or a quote)."""
    out = []
    for text in texts:
        out.extend(s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'])", text) if len(s.split()) >= 3)
    return out


def _prepare_text(model: str, folder: Path, threads: int) -> dict[str, Any]:
    import numpy as np
    import torch

    from core.config import RunConfig
    from core.data.samples import BBC_CLASSES, bbc_news
    from core.export import export_onnx
    from core.models import get_model
    from core.models.text import arch_json
    from core.quantize import quantize_dynamic_int8
    from core.tasks import Probabilities
    from core.tasks.text import DEFAULT_MAX_LENGTH, encode, pad_batch, pad_id

    torch.manual_seed(0)
    spec = get_model(model, TEXT)
    cfg = RunConfig(task=TEXT, dataset_id=0, model=model, max_length=TEXT_MAX_LENGTH)
    # A tokenizer learnt from the texts (text-cnn) sees the larger set either way.
    net = spec.build(len(BBC_CLASSES), cfg, [t for t, _ in bbc_news(per_class=100, chars=TEXT_CHARS)])
    per_class, epochs, lr = TEXT_TRAIN[net.pretrained]
    train = bbc_news(per_class=per_class, chars=TEXT_CHARS)
    texts = [t for t, _ in train]
    start = time.perf_counter()
    _train_text(net, texts, [BBC_CLASSES.index(t) for _, t in train], lr, epochs)
    trained_s = time.perf_counter() - start

    module = Probabilities(net.module).eval()
    info = {"task": TEXT, "arch": arch_json(net.arch)}
    _save(module, folder, model, info)
    pad = pad_id(net.tokenizer)
    example = tuple(torch.from_numpy(x) for x in pad_batch([np.arange(5, 12), np.arange(5, 9)], pad))
    export_onnx(
        module,
        example,
        folder / f"{model}.onnx",
        input_names=["input_ids", "attention_mask"],
        output_name="probabilities",
        metadata={},
        sequence=True,
    )
    quantize_dynamic_int8(folder / f"{model}.onnx", folder / f"{model}.int8.onnx")

    # Latency inputs: real sentences from articles the model was not trained on.
    sentences = _sentences([t for t, _ in bbc_news(**TEXT_HELD_OUT)])
    ids = encode(net.tokenizer, sentences, DEFAULT_MAX_LENGTH)
    lengths = np.array([len(x) for x in ids])
    picked = {
        1: [int(np.abs(lengths - np.median(lengths)).argmin())],
        32: np.random.default_rng(0).choice(len(ids), 32, replace=False).tolist(),
    }
    tokens = {}
    for batch, _ in BATCHES:
        x, mask = pad_batch([ids[i] for i in picked[batch]], pad)
        np.savez(folder / f"{model}-b{batch}.npz", input_ids=x, attention_mask=mask)
        tokens[batch] = {"tokens": int(x.shape[1]), "mean_tokens": float(mask.sum(1).mean())}
    return {
        **info,
        "tokens": tokens,
        "sentences": len(sentences),
        "train_s": trained_s,
        "accuracy": _accuracy(folder, model, net, threads),
        "fp32_mb": (folder / f"{model}.onnx").stat().st_size / 1e6,
        "int8_mb": (folder / f"{model}.int8.onnx").stat().st_size / 1e6,
    }


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _child(mode: str, model: str, batch: int, iters: int, threads: int, folder: Path) -> float:
    import numpy as np

    info = json.loads((folder / f"{model}.json").read_text())
    with np.load(folder / f"{info.get('inputs', model)}-b{batch}.npz") as saved:
        inputs = {name: saved[name] for name in saved.files}
    call: Callable[[], object]
    if mode == "torch":
        import torch
        from safetensors.torch import load_file

        torch.set_num_threads(threads)
        if info["task"] == FRONT:  # fixed buffers only: nothing to load
            module = _front_end(info["front"], info["samples"])
        else:
            if info["task"] in (IMAGE, DETECTION, SEGMENTATION):
                module = _build(model, info["size"], info["task"])
            elif info["task"] == AUDIO:
                module = _build_audio(model, info["samples"])
            else:
                from core.models.text import rebuild
                from core.tasks import Probabilities

                module = Probabilities(rebuild(json.loads(info["arch"]))).eval()
            module.load_state_dict(load_file(str(folder / f"{model}.safetensors")))
        tensors = [torch.from_numpy(x) for x in inputs.values()]

        def call() -> None:
            with torch.inference_mode():
                module(*tensors)
    else:
        suffix = ".int8.onnx" if mode == "onnxruntime-int8" else ".onnx"
        session = _session(folder / f"{model}{suffix}", threads)

        def call() -> None:
            session.run(None, inputs)

    for _ in range(10):  # warm-up: thread pools, allocator, lazy initialisation
        call()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _measure(args: argparse.Namespace, mode: str, model: str, batch: int, iters: int, folder: str) -> float:
    """Median over `--repeats` fresh processes of the child's median latency, in ms."""
    runs = []
    for _ in range(args.repeats):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--threads",
                str(args.threads),
                "--child",
                mode,
                model,
                str(batch),
                str(iters),
                folder,
            ],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        runs.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(runs)


CERTIFIED = ("wine", "fashion", "bbc", "words")  # the Home samples, one per task


def _naive_static_agreement(run_id: int) -> float:
    """Top-1 agreement with fp32, on the validation split, of ONNX Runtime's static int8 with its
    defaults and 32 training images: the baseline core/quantize.py improves on."""
    import onnx
    from onnxruntime.quantization import QuantFormat, quantize_static

    from core import certificate, jobs
    from core.quantize import CPU, SampleFeed, input_names, preprocess
    from core.runtime import outputs

    ref = certificate.run_reference(run_id)
    src = jobs.run_dir(run_id) / "model.onnx"
    pre, naive = src.with_name("naive.pre.onnx"), src.with_name("naive.int8.onnx")
    names = input_names(onnx.load(str(src), load_external_data=False))
    preprocess(src, pre)
    quantize_static(
        pre, naive, SampleFeed(names, [x[:32] for x in ref.calibration]), quant_format=QuantFormat.QDQ
    )
    return float(
        (outputs(naive, ref.inputs, CPU).argmax(1) == outputs(src, ref.inputs, CPU).argmax(1)).mean()
    )


def _certificates(keys: list[str]) -> list[dict[str, Any]]:
    """Train each sample's quick start and certify it; one row per variant."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as home:
        os.environ["ASCENT_HOME"] = home
        from core import certificate, jobs
        from core.data.samples import SAMPLES, add_sample
        from core.worker import Worker

        for key in keys:
            sample = SAMPLES[key]
            dataset = add_sample(key)
            run = jobs.submit(jobs.config_for(dataset.id, **sample.quick_start))
            start = time.perf_counter()
            Worker(poll_s=0.1, idle_exit_s=0.3).run()
            train_s = time.perf_counter() - start
            if jobs.get_run(run.id).status != "succeeded":
                raise SystemExit(f"the {key} sample's run failed:\n{jobs.run_dir(run.id) / 'run.log'}")
            start = time.perf_counter()
            records = certificate.certify(run.id)
            certify_s = time.perf_counter() - start
            naive = _naive_static_agreement(run.id) if dataset.task == IMAGE else None
            for r in records:
                cpu = {
                    m["batch"]: m["p50_ms"]
                    for m in r.measurements
                    if m["provider"] in ("pytorch-cpu", "CPUExecutionProvider")
                }
                rows.append(
                    {
                        "sample": key,
                        "model": run.config["model"],
                        "config": sample.quick_start,
                        "n_val": r.n_samples,
                        "variant": r.variant,
                        "status": r.status,
                        "method": r.method,
                        "metric": r.metric_name,
                        "value": r.metric_value,
                        "change": r.metric_change,
                        "agreement": r.top1_agreement,
                        "max_abs_diff": r.max_abs_diff,
                        "b1_ms": cpu.get(1),
                        "b32_ms": cpu.get(32),
                        "mb": r.bytes / 1e6,
                        "train_s": train_s,
                        "certify_s": certify_s,
                        "naive_int8_agreement": naive if r.variant == "int8" else None,
                    }
                )
            print(f"{key}: trained in {train_s:.0f} s, certified in {certify_s:.0f} s", flush=True)
    return rows


def _certificate_table(rows: list[dict[str, Any]]) -> str:
    """The rows as the README's Markdown table."""
    lines = [
        "| sample (val n) | model | variant | val metric (change) | top-1 agreement | CPU p50 batch 1 | CPU p50 batch 32 | size | |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        agreement = "" if r["agreement"] is None else f"{r['agreement']:.3f}"
        change = "" if r["variant"] == "pytorch" else f" ({r['change']:+.3f})"
        lines.append(
            f"| {r['sample']} ({r['n_val']}) | {r['model']} | {r['variant']} | {r['metric']} {r['value']:.3f}{change} "
            f"| {agreement} | {r['b1_ms']:.2f} ms | {r['b32_ms']:.1f} ms | {r['mb']:.1f} MB | {'' if r['status'] == 'ok' else r['status']} |"
        )
    return "\n".join(lines)


GENERATION_PROMPT = "How many months is the warranty of the Orbly K7 kettle?"


def _generation_child(mode: str, path: Path, threads: int, new_tokens: int) -> dict[str, float]:
    """(ms to the first token, ms per token after it), medians of three timed generations."""
    import numpy as np
    import torch

    from core.runtime import Decoder, Generator, create_session

    torch.set_num_threads(threads)
    if mode == "ort-int8":
        path = path.with_name("model.int8.onnx")
    ort = mode.startswith("ort")
    generator = Generator(path, session=_session(path, threads) if ort else create_session(path))
    ids = generator.prompt_ids(GENERATION_PROMPT)
    if ort:
        decoder = Decoder(generator.session, generator.settings)
        start, advance = decoder.start, decoder.advance
    else:
        from transformers import AutoModelForCausalLM
        from transformers.cache_utils import DynamicCache

        from core.models.llm import smollm2_folder

        lm = AutoModelForCausalLM.from_pretrained(str(smollm2_folder()), dtype=torch.float32).eval()
        state: dict[str, Any] = {}

        @torch.no_grad()
        def start(prompt: list[int]) -> Any:
            state["cache"] = DynamicCache(config=lm.config)
            out = lm(input_ids=torch.tensor([prompt]), cache=state["cache"], use_cache=True)
            return out.logits[0, -1].numpy()

        @torch.no_grad()
        def advance(token: int) -> Any:
            out = lm(input_ids=torch.tensor([[token]]), cache=state["cache"], use_cache=True)
            return out.logits[0, -1].numpy()

    def once() -> tuple[float, float]:
        began = time.perf_counter()
        token = int(np.argmax(start(ids)))
        first = time.perf_counter()
        for _ in range(new_tokens - 1):
            token = int(np.argmax(advance(token)))
        end = time.perf_counter()
        return (first - began) * 1000, (end - first) * 1000 / (new_tokens - 1)

    once()
    timed = [once() for _ in range(3)]
    return {
        "ttft_ms": statistics.median(t[0] for t in timed),
        "ms_per_token": statistics.median(t[1] for t in timed),
        "prompt_tokens": len(ids),
    }


def _generation(args: argparse.Namespace) -> None:
    from core.models.llm import smollm2_folder

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["ASCENT_HOME"] = tmp
        from core.playground import export_base
        from core.quantize import quantize_weights_int8

        began = time.perf_counter()
        path = export_base(str(smollm2_folder()))
        exported = time.perf_counter() - began
        int8 = quantize_weights_int8(path, path.with_name("model.int8.onnx"))
        modes = ("torch", "ort", "ort-int8")
        runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
        for _ in range(args.repeats):
            for mode in modes:
                done = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--threads",
                        str(args.threads),
                        "--gen-child",
                        mode,
                        str(path),
                        str(args.new_tokens),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                runs[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
        rows = {
            mode: {k: statistics.median(r[k] for r in runs[mode]) for k in runs[mode][0]} for mode in modes
        }
        size, int8_size = path.stat().st_size, int8.stat().st_size
    print(
        f"SmolLM2-135M-Instruct, batch 1, {int(rows['ort']['prompt_tokens'])} prompt tokens, {args.new_tokens} new"
    )
    print("| runtime | time to first token (ms) | ms per token | per token vs PyTorch |")
    print("|---|---|---|---|")
    for mode, name in (
        ("torch", "PyTorch eager"),
        ("ort", "ONNX Runtime fp32"),
        ("ort-int8", "ONNX Runtime int8"),
    ):
        ratio = rows[mode]["ms_per_token"] / rows["torch"]["ms_per_token"]
        print(f"| {name} | {rows[mode]['ttft_ms']:.1f} | {rows[mode]['ms_per_token']:.1f} | {ratio:.2f}x |")
    print(
        f"export {exported:.0f} s, {size / 1e6:.0f} MB (int8 {int8_size / 1e6:.0f} MB); {args.threads} threads each; "
        f"{os.cpu_count()} CPUs; "
        f"1-minute load average at the end {os.getloadavg()[0]:.2f}"
    )
    print(json.dumps(rows))


READ_SPEECH = Path("/usr/share/pocketsphinx/test/data/librivox")


def _speech_child(mode: str, path: Path, threads: int) -> dict[str, float]:
    """Per clip of READ_SPEECH, batch 1: encoder ms, decoding ms per token and the real-time
    factor (compute seconds per second of audio); medians over the clips of three passes after
    a warm-up pass."""
    import numpy as np
    import torch

    from core.runtime import Transcriber, greedy_transcripts

    torch.set_num_threads(threads)
    transcriber = Transcriber(path)
    if mode == "ort":
        encoder, decoder = _session(path, threads), _session(path.with_name("decoder.onnx"), threads)
    else:
        from core.models.seq2seq import TorchGraph
        from core.models.speech import WhisperEncode, load_whisper, whisper_folder, whisper_step
        from core.runtime import cache_names

        model = load_whisper(str(whisper_folder())).module
        encoder = TorchGraph(WhisperEncode(model), ["wave"])
        decoder = TorchGraph(
            whisper_step(model), ["input_ids", *cache_names(int(model.config.decoder_layers))]
        )
    waves = [transcriber.wave(clip) for clip in sorted(READ_SPEECH.glob("*.wav"))]
    rows = []
    for attempt in range(4):
        for wave in waves:
            (tokens,), encode_ms, decode_ms = greedy_transcripts(
                encoder, decoder, transcriber.settings, [wave]
            )
            if attempt:
                seconds = len(wave) / 16_000
                rows.append(
                    (encode_ms, decode_ms / max(1, len(tokens)), (encode_ms + decode_ms) / 1000 / seconds)
                )
    return {
        "encoder_ms": float(np.median([r[0] for r in rows])),
        "ms_per_token": float(np.median([r[1] for r in rows])),
        "rtf": float(np.median([r[2] for r in rows])),
    }


def _speech(args: argparse.Namespace) -> None:
    from core.export import export_transcriber
    from core.models.speech import load_whisper, whisper_folder

    with tempfile.TemporaryDirectory() as tmp:
        model = load_whisper(str(whisper_folder()))
        path = Path(tmp) / "model.onnx"
        began = time.perf_counter()
        export_transcriber(
            model.module, model.processor.tokenizer, path, {"ascent.task": "speech-recognition"}
        )
        exported = time.perf_counter() - began
        modes = ("torch", "ort")
        runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
        for _ in range(args.repeats):
            for mode in modes:
                done = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--threads",
                        str(args.threads),
                        "--speech-child",
                        mode,
                        str(path),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                runs[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
        rows = {
            mode: {k: statistics.median(r[k] for r in runs[mode]) for k in runs[mode][0]} for mode in modes
        }
    print(
        f"Whisper tiny.en, batch 1, the {len(list(READ_SPEECH.glob('*.wav')))} LibriVox clips of pocketsphinx-testdata"
    )
    print("| runtime | encoder (ms per clip) | ms per token | real-time factor | vs PyTorch |")
    print("|---|---|---|---|---|")
    for mode, name in (("torch", "PyTorch eager"), ("ort", "ONNX Runtime")):
        r = rows[mode]
        print(
            f"| {name} | {r['encoder_ms']:.0f} | {r['ms_per_token']:.1f} | {r['rtf']:.3f} | "
            f"{r['rtf'] / rows['torch']['rtf']:.2f}x |"
        )
    print(
        f"export {exported:.0f} s; {args.threads} threads each; {os.cpu_count()} CPUs; "
        f"1-minute load average at the end {os.getloadavg()[0]:.2f}"
    )
    print(json.dumps(rows))


def _translation_child(mode: str, folder: Path, threads: int) -> dict[str, float]:
    """Per sentence, batch 1: encoder ms, ms per token and ms per sentence, greedy and with 4
    beams; medians over the sentences of two passes after a warm-up pass."""
    import numpy as np
    import torch

    from core.data.samples import english_sentences
    from core.runtime import Translator, cache_names, decode_tokens

    torch.set_num_threads(threads)
    translator = Translator(folder / "model.onnx")
    if mode == "ort":
        encoder = _session(folder / "model.onnx", threads)
        decoder = _session(folder / "decoder.onnx", threads)
    else:
        from safetensors.torch import load_file

        from core.models.seq2seq import TorchGraph
        from core.models.translation import MarianEncode, load_tokenizer, marian_step, small_marian
        from core.tasks.translation import TranslationLoss

        tokenizer = load_tokenizer(str(folder / "tokenizer.json"))
        module = TranslationLoss(small_marian(tokenizer, 0.0), tokenizer)
        module.load_state_dict(load_file(str(folder / "best.safetensors")))
        model = module.model.eval()
        names = cache_names(int(model.config.decoder_layers))
        encoder = TorchGraph(MarianEncode(model), ["input_ids", "attention_mask"])
        decoder = TorchGraph(marian_step(model), ["input_ids", *names, "source_mask"])
    sentences = english_sentences(1100, seed=1)[1000:]  # mostly combinations the sample lacks
    rows: dict[int, list[tuple[float, float, float]]] = {1: [], 4: []}
    for attempt in range(3):
        for text in sentences:
            ids = np.asarray([translator.encode(text)], dtype=np.int64)
            mask = np.ones_like(ids)
            for beams in rows:
                began = time.perf_counter()
                cross = encoder.run(None, {"input_ids": ids, "attention_mask": mask})
                encoded = time.perf_counter()
                (tokens,) = decode_tokens(
                    decoder, list(cross), translator.settings, {"source_mask": mask}, beams=beams
                )
                done = time.perf_counter()
                if attempt:
                    rows[beams].append(
                        (
                            (encoded - began) * 1000,
                            (done - encoded) * 1000 / max(1, len(tokens)),
                            (done - began) * 1000,
                        )
                    )
    found = {}
    for beams, measured in rows.items():
        found[f"encoder_ms_b{beams}"] = float(np.median([r[0] for r in measured]))
        found[f"ms_per_token_b{beams}"] = float(np.median([r[1] for r in measured]))
        found[f"ms_per_sentence_b{beams}"] = float(np.median([r[2] for r in measured]))
    return found


def _translation(args: argparse.Namespace) -> None:
    from core import jobs
    from core.data.ingest import ingest_file
    from core.data.samples import SAMPLES, apertium_pairs_csv
    from core.execute import execute_run

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["ASCENT_HOME"] = tmp
        os.environ["ASCENT_DEVICE"] = "cpu"

        ds = ingest_file(apertium_pairs_csv(Path(tmp) / "en-es.csv"), task="translation")
        run = jobs.submit(jobs.config_for(ds.id, **SAMPLES["apertium"].quick_start))
        jobs.claim("bench")
        began = time.perf_counter()
        assert execute_run(run.id) == 0, jobs.get_run(run.id).error
        trained = time.perf_counter() - began
        done = jobs.get_run(run.id)
        report = json.loads((jobs.run_dir(run.id) / "report.json").read_text())
        modes = ("torch", "ort")
        runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
        for _ in range(args.repeats):
            for mode in modes:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--threads",
                        str(args.threads),
                        "--translation-child",
                        mode,
                        str(jobs.run_dir(run.id)),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
        rows = {
            mode: {k: statistics.median(r[k] for r in runs[mode]) for k in runs[mode][0]} for mode in modes
        }
    print(
        f"marian-small on the Apertium sample: val BLEU {done.metrics['val_bleu']:.1f}, chrF "
        f"{done.metrics['val_chrf']:.1f} (the sources copied: chrF {report['copy_chrf']:.1f}); "
        f"{trained:.0f} s to train, export and check"
    )
    print("batch 1, 100 new sentences of the sample's words")
    print("| runtime | beams | encoder (ms) | ms per token | ms per sentence | vs PyTorch |")
    print("|---|---|---|---|---|---|")
    for beams in (1, 4):
        for mode, name in (("torch", "PyTorch eager"), ("ort", "ONNX Runtime")):
            r = rows[mode]
            ratio = r[f"ms_per_sentence_b{beams}"] / rows["torch"][f"ms_per_sentence_b{beams}"]
            print(
                f"| {name} | {beams} | {r[f'encoder_ms_b{beams}']:.2f} | {r[f'ms_per_token_b{beams}']:.2f} | "
                f"{r[f'ms_per_sentence_b{beams}']:.1f} | {ratio:.2f}x |"
            )
    print(
        f"{args.threads} threads each; {os.cpu_count()} CPUs; "
        f"1-minute load average at the end {os.getloadavg()[0]:.2f}"
    )
    print(json.dumps(rows))


def _default_models() -> str:
    from core.models import models_for

    return ",".join(
        m.name for task in (IMAGE, DETECTION, SEGMENTATION, TEXT, AUDIO) for m in models_for(task)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--models", default=None, help="comma-separated (default: every image, text and audio model)"
    )
    parser.add_argument(
        "--certificate", action="store_true", help="train and certify the Home samples instead"
    )
    parser.add_argument("--samples", default=",".join(CERTIFIED), help="with --certificate")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument(
        "--generation", action="store_true", help="time to first token and ms/token of the text generator"
    )
    parser.add_argument("--new-tokens", type=int, default=64, help="with --generation")
    parser.add_argument("--gen-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument(
        "--speech", action="store_true", help="real-time factor and ms/token of the speech recogniser"
    )
    parser.add_argument("--speech-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument(
        "--translation",
        action="store_true",
        help="ms/token and ms/sentence of the Apertium sample's translator",
    )
    parser.add_argument("--translation-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.translation_child:
        mode, folder = args.translation_child
        print(json.dumps(_translation_child(mode, Path(folder), args.threads)))
        return
    if args.translation:
        _translation(args)
        return
    if args.speech_child:
        mode, path = args.speech_child
        print(json.dumps(_speech_child(mode, Path(path), args.threads)))
        return
    if args.speech:
        _speech(args)
        return
    if args.gen_child:
        mode, path, new_tokens = args.gen_child
        print(json.dumps(_generation_child(mode, Path(path), args.threads, int(new_tokens))))
        return
    if args.generation:
        _generation(args)
        return
    if args.certificate:
        rows = _certificates(args.samples.split(","))
        print(_certificate_table(rows))
        for r in rows:
            if r["naive_int8_agreement"] is not None:
                print(
                    f"{r['sample']}: naive static int8 (ONNX Runtime defaults, 32 images) top-1 agreement "
                    f"{r['naive_int8_agreement']:.3f}; ours {r['agreement']:.3f} ({r['method']})"
                )
        print(f"{os.cpu_count()} CPUs; 1-minute load average at the end {os.getloadavg()[0]:.2f}")
        print(json.dumps(rows))
        return
    if args.child:
        mode, model, batch, iters, folder = args.child
        print(json.dumps(_child(mode, model, int(batch), int(iters), args.threads, Path(folder))))
        return

    from core.errors import ConfigError
    from core.models import all_models

    load = os.getloadavg()[0]
    tasks = {m.name: m.tasks for m in all_models()}
    rows: list[dict[str, Any]] = []
    accuracy: list[dict[str, Any]] = []
    fronts: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for model in (args.models or _default_models()).split(","):
            text, audio = TEXT in tasks.get(model, ()), AUDIO in tasks.get(model, ())
            try:
                if text:
                    info = _prepare_text(model, folder, args.threads)
                elif audio:
                    info = _prepare_audio(model, folder, args.threads)
                else:
                    dense = next((t for t in (DETECTION, SEGMENTATION) if t in tasks.get(model, ())), IMAGE)
                    info = _prepare_image(model, folder, dense)
            except ConfigError as exc:  # e.g. hf-transformer without --weights
                print(f"{model:<20} skipped: {exc}", flush=True)
                continue
            modes = ("torch", "onnxruntime", "onnxruntime-int8") if text else ("torch", "onnxruntime")
            for batch, iters in BATCHES:
                ms = {mode: _measure(args, mode, model, batch, iters, tmp) for mode in modes}
                row = {
                    "model": model,
                    "task": info["task"],
                    "batch": batch,
                    "torch_ms": ms["torch"],
                    "ort_ms": ms["onnxruntime"],
                    "speedup": ms["torch"] / ms["onnxruntime"],
                }
                if text:
                    row |= info["tokens"][batch]
                    row |= {
                        "int8_ms": ms["onnxruntime-int8"],
                        "int8_speedup": ms["torch"] / ms["onnxruntime-int8"],
                    }
                    shape = f"{row['tokens']:>3}tok"
                    extra = (
                        f"  int8 {row['int8_ms']:8.2f} ms  x{row['int8_speedup']:.2f}"
                        f" (x{ms['onnxruntime'] / ms['onnxruntime-int8']:.2f} over fp32 onnxruntime)"
                    )
                elif audio:
                    row["samples"] = info["samples"]
                    shape, extra = f"{row['samples'] / AUDIO_RATE:>5.1f}s", ""
                elif info["task"] != IMAGE:
                    row["size"], row["input"] = info["size"], "x".join(map(str, DENSE_INPUT[::-1]))
                    shape, extra = f"{row['input']}->{row['size']}px", ""
                else:
                    row["size"] = info["size"]
                    shape, extra = f"{row['size']:>4}px", ""
                rows.append(row)
                print(
                    f"{model:<20} {shape} batch {batch:>2}: torch {row['torch_ms']:8.2f} ms  onnxruntime {row['ort_ms']:8.2f} ms  x{row['speedup']:.2f}{extra}",
                    flush=True,
                )
            if text:
                acc = {"model": model, **info["accuracy"]} | {
                    k: info[k] for k in ("train_s", "fp32_mb", "int8_mb")
                }
                accuracy.append(acc)
                t1, t32 = info["tokens"][1], info["tokens"][32]
                print(
                    f"{model:<20} tokens: batch 1 one sentence of the median length ({t1['tokens']}), batch 32 "
                    f"padded to {t32['tokens']} (mean {t32['mean_tokens']:.1f}), from {info['sentences']} sentences",
                    flush=True,
                )
                print(
                    f"{model:<20} accuracy on {acc['n']} held-out articles: fp32 {acc['fp32']:.3f}  "
                    f"int8 {acc['int8']:.3f}  change {acc['change']:+.3f}  top-1 agreement {acc['agreement']:.3f}  "
                    f"(file {acc['fp32_mb']:.1f} MB -> {acc['int8_mb']:.1f} MB, trained {acc['train_s']:.0f} s)",
                    flush=True,
                )
            if audio:
                fronts.extend(_front_end_rows(args, model, info, tmp))
    print(
        f"threads={args.threads} repeats={args.repeats} (fresh processes, medians); "
        "target: onnxruntime >= 2x at batch 1 and not slower at batch 32; "
        f"1-minute load average {load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end"
    )
    print(json.dumps({"latency": rows, "accuracy": accuracy, "front_end": fronts}))


def _front_end_rows(
    args: argparse.Namespace, model: str, info: dict[str, Any], tmp: str
) -> list[dict[str, Any]]:
    """Time the front ends alone on the model's clips and print them as a table."""
    words = sorted({c.split("/")[0] for c in info["clips"]})
    voices = {c.split("/")[1] for c in info["clips"]}
    print(
        f"{model:<20} clips: espeak-ng words, batch 1 '{info['clips'][0]}', batch 32 {len(words)} words "
        f"({', '.join(words)}) in {len(voices)} voices",
        flush=True,
    )
    # (front end, mode, label); the first is the reference the others are compared with.
    order = (
        ("torch-stft", "torch", "torch.stft, PyTorch (reference)"),
        ("logmel", "torch", "LogMel, PyTorch"),
        ("logmel", "onnxruntime", "LogMel, onnxruntime"),
        ("torch-stft", "onnxruntime", "torch.stft -> ONNX STFT, onnxruntime"),
    )
    found = []
    for name, mode, label in order:
        front = info["fronts"][name]
        error = front["export_error"] if mode == "onnxruntime" else None
        row = {"front_end": name, "mode": mode, "label": label, "error": error}
        row["max_abs_diff"] = (
            front["ort_diff" if mode == "onnxruntime" else "torch_diff"] if not error else None
        )
        for batch, iters in BATCHES:
            row[f"b{batch}_ms"] = None if error else _measure(args, mode, name, batch, iters, tmp)
        found.append(row)
    print(
        f"log-mel front end alone ({info['samples'] / AUDIO_RATE:.1f} s at {AUDIO_RATE // 1000} kHz -> "
        f"64 mels x {info['frames']} frames): ms, and x the reference's time",
        flush=True,
    )
    print(f"  {'':<38}{'batch 1':>17}{'batch 32':>19}   max |diff| in log power", flush=True)
    reference = found[0]
    for row in found:
        if row["error"]:
            print(f"  {row['label']:<38} export failed: {row['error']}", flush=True)
            continue
        cells = "".join(
            f"{row[f'b{b}_ms']:>10.2f} x{row[f'b{b}_ms'] / reference[f'b{b}_ms']:<6.2f}" for b, _ in BATCHES
        )
        print(f"  {row['label']:<38}{cells}  {row['max_abs_diff']:.1e}", flush=True)
    return found


if __name__ == "__main__":
    main()
