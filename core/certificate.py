"""The export certificate: each variant of a run's model measured on the run's own data.

For a finished run: the PyTorch model as the baseline, then ONNX variants (fp32, the run's
`model.onnx`; int8: static QDQ calibrated on the run's training samples for convolution nets,
dynamic for MLPs and transformers, see core/quantize.py; fp16 by default on CUDA machines,
elsewhere when asked for), each checked
on the whole validation split against PyTorch (max |difference|, top-1 agreement, the task
metric and its change) and timed in a fresh process per provider at batch 1 and 32 (p50 and p95
over repeated calls after warm-up, the process's peak memory), with its file size. A variant
whose agreement falls under its threshold is stored as `flagged`, never dropped.

A text generator's certificate (task text-generation) measures what generation needs instead:
greedy continuations of validation prompts against PyTorch's (token agreement), the perplexity
of validation examples, time to the first token and ms per token at batch 1; its int8 variant
holds the MatMuls' weights in int8 (core.quantize.quantize_weights_int8).

A speech recogniser's or translator's (two graphs, model.onnx and decoder.onnx, each made into
every variant) decodes the validation split greedily through core.runtime's loop: its
transcripts or translations against PyTorch's (exact-output agreement), their word error rate or
BLEU, and at batch 1 the encoder's ms, ms per token and per item (the real-time factor of
speech: seconds of compute per second of audio).

    python -m core export --run ID [--variants fp32,int8]
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core import jobs
from core.access import LOCAL, Action, Actor, require
from core.config import RunConfig, database
from core.errors import ConfigError, ExportError
from core.quantize import top1
from core.runtime import all_outputs
from db import queries
from db.queries import ExportInfo
from db.session import session_scope

if TYPE_CHECKING:
    from core.tasks import GenerationCheck, Reference, Seq2SeqCheck

# torch, the tasks and ONNX Runtime are imported where used: the Runs page imports this module
# to read stored certificates, and importing torch took its render from 0.8 to 3.2 s.

VARIANTS = ("fp32", "int8", "fp16")
LOG = "certificate.log"  # in the run folder: what a background measurement says
# Agreement with PyTorch (top-1 classes, or boxes or pixels as the task measures it) under which
# a variant is flagged.
MIN_AGREEMENT = {"fp32": 0.99, "int8": 0.95, "fp16": 0.99}
# Generators: greedy tokens alike, each continuation counted up to its first difference, so one
# near-tie early in an answer counts every later token as different.
MIN_TOKEN_AGREEMENT = {"fp32": 0.99, "int8": 0.9, "fp16": 0.9}
NEW_TOKENS = 32  # tokens each timed generation makes (end tokens ignored): ms per token over them
BATCHES = (1, 32)
INPUTS_FILE = "certificate-inputs.npz"


def _chunks(inputs: tuple[np.ndarray, ...], size: int = 64) -> list[tuple[np.ndarray, ...]]:
    n = len(inputs[0])
    return [tuple(x[i : i + size] for x in inputs) for i in range(0, n, size)]


def _torch_outputs(ref: Reference) -> list[np.ndarray]:
    """Each of the module's outputs over the whole validation split."""
    import torch

    parts = []
    with torch.no_grad():
        for chunk in _chunks(ref.inputs):
            out = ref.module(*(torch.from_numpy(x) for x in chunk))
            parts.append([t.numpy() for t in (out if isinstance(out, tuple | list) else (out.float(),))])
    return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]


def _metric(out: list[np.ndarray], ref: Reference) -> tuple[str, float]:
    if ref.score is not None:
        return ref.score(out)
    if ref.classification:
        return "accuracy", float((out[0].argmax(1) == ref.targets).mean())
    return "rmse", float(np.sqrt(np.mean((out[0].reshape(-1) - ref.targets) ** 2)))


def _agreement(ref: Reference, expected: list[np.ndarray], got: list[np.ndarray]) -> float | None:
    """How much of PyTorch's answers a variant reproduces, as the task measures it (None for
    regression, judged by its metric alone)."""
    if ref.agree is not None:
        return ref.agree(expected, got)
    return top1(expected, got) if ref.classification else None


def _latency_inputs(ref: Reference, folder: Path) -> Path:
    """The first validation samples, repeated up to the largest batch, saved for the children."""
    n = len(ref.inputs[0])
    take = np.resize(np.arange(n), max(BATCHES))
    path = folder / INPUTS_FILE
    np.savez(path, *[x[take] for x in ref.inputs])
    return path


def peak_memory_mb() -> float:
    """This process's peak resident memory in MB since it started its program. Linux's
    ru_maxrss is not that: it keeps the parent's resident size from before exec (a timing
    child of a certificate that had loaded a 538 MB model reported 2.4 GB); VmHWM is the
    program's own."""
    import resource

    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(target: str, inputs: Path, provider: str, *, calls: int = 30) -> list[dict[str, Any]]:
    """Time `target` (an .onnx file, or `run:ID` for the PyTorch model) in this process."""
    loaded = np.load(inputs)
    arrays = [loaded[k] for k in sorted(loaded.files, key=lambda k: int(k.split("_")[1]))]
    if target.startswith("run:"):
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1)))
        module = run_reference(int(target[4:])).module

        def call(batch: list[np.ndarray]) -> None:
            with torch.inference_mode():
                module(*(torch.from_numpy(x) for x in batch))

    else:
        from core.runtime import create_session

        session = create_session(target, [provider])
        if session.get_providers()[0] != provider:
            raise ExportError(f"{provider} is not available here")
        names = [i.name for i in session.get_inputs()]

        def call(batch: list[np.ndarray]) -> None:
            session.run(None, dict(zip(names, batch, strict=True)))

    rows = []
    for size in BATCHES:
        batch = [np.ascontiguousarray(x[:size]) for x in arrays]
        for _ in range(5):
            call(batch)
        times = []
        for _ in range(calls if size == 1 else max(5, calls // 3)):
            start = time.perf_counter()
            call(batch)
            times.append((time.perf_counter() - start) * 1000)
        rows.append(
            {
                "provider": provider,
                "batch": size,
                "p50_ms": float(np.percentile(times, 50)),
                "p95_ms": float(np.percentile(times, 95)),
                "calls": len(times),
            }
        )
    peak_mb = peak_memory_mb()
    return [{**r, "peak_mb": peak_mb} for r in rows]


def measure_generation(target: str, inputs: Path, provider: str, *, calls: int = 5) -> list[dict[str, Any]]:
    """Time a generator (an .onnx file, or `run:ID` for the PyTorch model) in this process at
    batch 1: the first token after the prompt in `inputs`, then NEW_TOKENS - 1 more, greedy."""
    import statistics

    from core.runtime import Decoder

    prompt = [int(t) for t in np.load(inputs)["prompt"]]
    if target.startswith("run:"):
        import torch

        from core.tasks.generation import TorchSteps

        torch.set_num_threads(max(1, (os.cpu_count() or 1)))
        ref = run_reference(int(target[4:]))
        assert ref.generation is not None
        settings = ref.generation.settings
        decoder = Decoder(TorchSteps(ref.module, int(settings["cache"]["layers"])), settings)
    else:
        from core.runtime import create_session

        session = create_session(target, [provider])
        if session.get_providers()[0] != provider:
            raise ExportError(f"{provider} is not available here")
        settings = json.loads(session.get_modelmeta().custom_metadata_map["ascent.generation"])
        decoder = Decoder(session, settings)

    def once() -> tuple[float, float]:
        began = time.perf_counter()
        token = int(np.argmax(decoder.start(prompt)))
        first = time.perf_counter()
        for _ in range(NEW_TOKENS - 1):
            token = int(np.argmax(decoder.advance(token)))
        return (first - began) * 1000, (time.perf_counter() - first) * 1000 / (NEW_TOKENS - 1)

    once()
    timed = [once() for _ in range(calls)]
    first_ms, per_token = [t[0] for t in timed], [t[1] for t in timed]
    return [
        {
            "provider": provider,
            "batch": 1,
            "first_token_ms": statistics.median(first_ms),
            "first_token_p95_ms": float(np.percentile(first_ms, 95)),
            # p50/p95 are per token, the latency generators are compared by
            "p50_ms": statistics.median(per_token),
            "p95_ms": float(np.percentile(per_token, 95)),
            "prompt_tokens": len(prompt),
            "new_tokens": NEW_TOKENS,
            "calls": calls,
            "peak_mb": peak_memory_mb(),
        }
    ]


def _measure_fresh(target: str, inputs: Path, provider: str, kind: str = "batches") -> list[dict[str, Any]]:
    """`measure` (or `measure_generation`, kind "generation") in a fresh Python process
    (nothing warm from this one)."""
    proc = subprocess.run(
        [sys.executable, "-m", "core.certificate", target, str(inputs), provider, kind],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    if proc.returncode != 0:
        raise ExportError(f"timing {target} on {provider} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return list(json.loads(proc.stdout.strip().splitlines()[-1]))  # prepare() may print before it


def run_reference(run_id: int) -> Reference:
    """The run's exported computation in PyTorch (best checkpoint), its validation split and
    training samples for calibration, as its task prepares them."""
    from core import checkpoint
    from core.tasks import get_task
    from core.train import BEST

    database()
    run = jobs.get_run(run_id)
    best = jobs.run_dir(run_id) / BEST
    if run.status != "succeeded" or not best.exists():
        raise ConfigError(
            f"run {run_id} is {run.status}; only a finished run with a checkpoint has a certificate"
        )
    cfg = RunConfig.model_validate(run.config)
    dataset = jobs.run_dataset(run)
    task = get_task(cfg.task)
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries results (JSON)
        data = task.prepare(dataset, cfg, "cpu", jobs.run_dir(run_id))
    checkpoint.load_weights(best, data.model)
    return task.reference(data, cfg, dataset)


def _providers() -> list[str]:
    import onnxruntime as ort

    from core.runtime import _cuda_driver_present

    available = ort.get_available_providers()
    chosen = ["CPUExecutionProvider"]
    if _cuda_driver_present():
        chosen += [p for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") if p in available]
    return chosen


def _variant_file(variant: str, run_dir: Path, ref: Reference) -> tuple[Path, str]:
    fp32 = run_dir / "model.onnx"
    if variant == "fp32":
        return fp32, "the run's export (fp32)"
    if variant == "int8":
        from core.quantize import (
            WEIGHT_BLOCK,
            has_convolutions,
            quantize_dynamic_int8,
            quantize_static_int8,
            quantize_weights_int8,
        )

        dst = run_dir / "model.int8.onnx"
        if ref.generation is not None:
            return quantize_weights_int8(fp32, dst), (
                f"MatMul weights int8 (symmetric, a scale per {WEIGHT_BLOCK} inputs; ONNX Runtime's "
                "MatMulNBits), activations and the embedding float; a MatMul whose weight is computed "
                "(a tied output layer) stays float"
            )
        if ref.calibration and has_convolutions(fp32):
            done = quantize_static_int8(
                fp32, dst, ref.calibration, agree=ref.agree or top1, agreement=ref.agreement
            )
            return done.path, done.method
        return quantize_dynamic_int8(fp32, dst), "dynamic int8 (weights int8, activations per batch)"
    if variant == "fp16":
        out = _fp16(fp32, run_dir / "model.fp16.onnx")
        return out, _fp16_said("fp16 weights and activations, fp32 inputs and outputs")
    raise ConfigError(f"unknown variant '{variant}'; choose from {', '.join(VARIANTS)}")


def certify(
    run_id: int, variants: tuple[str, ...] | None = None, say: Callable[[str], None] | None = None
) -> list[ExportInfo]:
    """Measure the PyTorch baseline and each variant of run `run_id`; store and return them.

    `say` hears a line per step, "[k/n] what", as the work goes (the page's progress bar).
    One measurement of a run at a time: a second one is refused while the first goes on."""
    variants = _check(run_id, variants)
    if _inherited_locks():
        return _certify(run_id, variants, say)
    run_lock = _lock(jobs.run_dir(run_id) / RUN_LOCK)
    if run_lock is None:
        raise ConfigError(f"run {run_id}'s certificate is being measured already; wait for it to finish")
    try:
        return _certify(run_id, variants, say)
    finally:
        os.close(run_lock)


def _check(run_id: int, variants: tuple[str, ...] | None) -> tuple[str, ...]:
    """The variants to measure, once the run can have a certificate (nothing written yet)."""
    from core.train import BEST

    for v in variants or ():
        if v not in VARIANTS:
            raise ConfigError(f"unknown variant '{v}'; choose from {', '.join(VARIANTS)}")
    run = jobs.get_run(run_id)
    if run.status != "succeeded" or not (jobs.run_dir(run_id) / BEST).exists():
        raise ConfigError(
            f"run {run_id} is {run.status}; only a finished run with a checkpoint has a certificate"
        )
    jobs.run_dataset(run)
    return variants or tuple(v for v in VARIANTS if v != "fp16" or "CUDAExecutionProvider" in _providers())


def _fp16(src: Path, dst: Path) -> Path:
    """`src` in fp16, its inputs and outputs kept fp32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from core.export import save_model

    save_model(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), dst)
    return dst


def _fp16_said(method: str) -> str:
    if "CUDAExecutionProvider" not in _providers():
        method += " (asked for without a GPU: timed on the CPU, which has no fast fp16 kernels)"
    return method


def _certify(run_id: int, variants: tuple[str, ...], say: Callable[[str], None] | None) -> list[ExportInfo]:
    from core.train import BEST

    steps = 2 + 3 * len(variants)
    done = 0

    def step(what: str) -> None:
        nonlocal done
        done += 1
        if say:
            say(f"[{done}/{steps}] {what}")

    step("loading the run's model and data")
    ref = run_reference(run_id)
    run_dir = jobs.run_dir(run_id)
    if ref.generation is not None:
        return _certify_generator(run_id, ref, variants, step)
    if ref.seq2seq is not None:
        return _certify_seq2seq(run_id, ref, variants, step)
    expected = _torch_outputs(ref)
    metric_name, baseline = _metric(expected, ref)
    inputs = _latency_inputs(ref, run_dir)
    n = len(ref.inputs[0])
    step("PyTorch (the baseline): timing it at batch 1 and 32")
    torch_rows = _measure_fresh(f"run:{run_id}", inputs, "pytorch-cpu")
    records = [
        _save(
            run_id,
            "pytorch",
            path=run_dir / BEST,
            method="PyTorch eager, the best checkpoint (baseline)",
            max_abs_diff=0.0,
            top1_agreement=1.0 if ref.classification or ref.agree else None,
            metric=(metric_name, baseline, 0.0),
            n=n,
            rows=torch_rows,
            status="ok",
        )
    ]
    for variant in variants:
        step(f"{variant}: making the file")
        path, method = _variant_file(variant, run_dir, ref)
        step(f"{variant}: checking it on the {n} validation samples")
        got = all_outputs(path, ref.inputs)
        agreement = _agreement(ref, expected, got)
        _, value = _metric(got, ref)
        k = ref.compared_output
        step(f"{variant}: timing it at batch 1 and 32")
        rows = [r for provider in _providers() for r in _measure_fresh(str(path), inputs, provider)]
        flagged = agreement is not None and agreement < MIN_AGREEMENT[variant]
        records.append(
            _save(
                run_id,
                variant,
                path=path,
                method=method,
                max_abs_diff=float(np.abs(got[k].astype(np.float64) - expected[k]).max()),
                top1_agreement=agreement,
                metric=(metric_name, value, value - baseline),
                n=n,
                rows=rows,
                status="flagged" if flagged else "ok",
            )
        )
    inputs.unlink(missing_ok=True)
    return records


def _certify_generator(
    run_id: int, ref: Reference, variants: tuple[str, ...], step: Callable[[str], None]
) -> list[ExportInfo]:
    """The certificate of a text generator: each variant's greedy continuations of the
    validation prompts against PyTorch's, its perplexity on the validation examples, its time
    to the first token and per token at batch 1, its file size."""
    from core.runtime import create_session
    from core.tasks.generation import CERTIFICATE_TOKENS, TorchSteps, continuations, token_agreement
    from core.train import BEST

    check = ref.generation
    assert check is not None
    run_dir = jobs.run_dir(run_id)
    pytorch = TorchSteps(ref.module, int(check.settings["cache"]["layers"]))
    expected = continuations(pytorch, check.settings, check.prompts, CERTIFICATE_TOKENS)
    baseline = _perplexity(pytorch, check)
    n = len(check.prompts)
    inputs = run_dir / INPUTS_FILE
    np.savez(inputs, prompt=np.asarray(check.prompts[0], dtype=np.int64))
    weights = sum(p.numel() * p.element_size() for p in ref.module.parameters())
    step("PyTorch (the baseline): timing it at batch 1")
    records = [
        _save(
            run_id,
            "pytorch",
            path=run_dir / BEST,
            bytes=weights,
            method=(
                "PyTorch eager, the best checkpoint merged into the base model (baseline); size: its "
                f"weights in memory (the checkpoint file holds {_file_mb(run_dir / BEST)})"
            ),
            max_abs_diff=0.0,
            top1_agreement=1.0,
            metric=("perplexity", baseline, 0.0),
            n=n,
            rows=_measure_fresh(f"run:{run_id}", inputs, "pytorch-cpu", "generation"),
            status="ok",
        )
    ]
    for variant in variants:
        step(f"{variant}: making the file")
        path, method = _variant_file(variant, run_dir, ref)
        step(f"{variant}: continuing the {n} validation prompts")
        session = create_session(path)
        agreement, largest = token_agreement(
            expected, continuations(session, check.settings, check.prompts, CERTIFICATE_TOKENS)
        )
        value = _perplexity(session, check)
        del session
        step(f"{variant}: timing it at batch 1")
        rows = [r for p in _providers() for r in _measure_fresh(str(path), inputs, p, "generation")]
        records.append(
            _save(
                run_id,
                variant,
                path=path,
                method=method,
                max_abs_diff=largest,
                top1_agreement=agreement,
                metric=("perplexity", value, value - baseline),
                n=n,
                rows=rows,
                status="flagged" if agreement < MIN_TOKEN_AGREEMENT[variant] else "ok",
            )
        )
    inputs.unlink(missing_ok=True)
    return records


SEQ2SEQ_ITEMS = 8  # validation items the timing decodes one at a time (medians over them)


def decoder_file(model: Path) -> Path:
    """The decoding step's file beside an encoder-decoder variant's model file."""
    return model.with_name(model.name.replace("model", "decoder", 1))


def _seq2seq_variant(variant: str, run_dir: Path) -> tuple[Path, str]:
    """An encoder-decoder's variant: both of its graphs made the same way."""
    model = run_dir / "model.onnx"
    if variant == "fp32":
        return model, "the run's export (fp32): model.onnx and decoder.onnx"
    dst = run_dir / f"model.{variant}.onnx"
    if variant == "int8":
        from core.quantize import WEIGHT_BLOCK, quantize_weights_int8

        for src, out in ((model, dst), (decoder_file(model), decoder_file(dst))):
            quantize_weights_int8(src, out, keep_float=("features.",))  # a front end's STFT and mel
        return dst, (
            f"both graphs' MatMul weights int8 (symmetric, a scale per {WEIGHT_BLOCK} inputs; ONNX "
            "Runtime's MatMulNBits); activations, convolutions, embeddings and a log-mel front end's "
            "matrices float"
        )
    if variant == "fp16":
        for src, out in ((model, dst), (decoder_file(model), decoder_file(dst))):
            _fp16(src, out)
        return dst, _fp16_said(
            "both graphs in fp16 (weights and activations), fp32 inputs, outputs and cache"
        )
    raise ConfigError(f"unknown variant '{variant}'; choose from {', '.join(VARIANTS)}")


def _decode_all(encoder: Any, decoder: Any, check: Seq2SeqCheck) -> tuple[list[list[int]], list[np.ndarray]]:
    """Greedy token ids of every validation item, and the encoder's outputs on the first batch."""
    from core.runtime import decode_tokens

    tokens: list[list[int]] = []
    first: list[np.ndarray] = []
    for feeds, extra in check.batches:
        cross = [np.asarray(c, dtype=np.float32) for c in encoder.run(None, feeds)]
        first = first or cross
        tokens += decode_tokens(decoder, cross, check.settings, extra, max_tokens=check.max_tokens)
    return tokens, first


def _certify_seq2seq(
    run_id: int, ref: Reference, variants: tuple[str, ...], step: Callable[[str], None]
) -> list[ExportInfo]:
    """The certificate of a speech recogniser or translator: each variant's greedy outputs on
    the validation split against PyTorch's (exactly the same tokens), their word error rate or
    BLEU, the encoder's, each token's and each item's time at batch 1, the files' size."""
    from core.export import file_bytes
    from core.runtime import create_session
    from core.train import BEST

    check = ref.seq2seq
    assert check is not None
    run_dir = jobs.run_dir(run_id)
    expected, expected_cross = _decode_all(check.encoder, check.decoder, check)
    metric_name, baseline = check.score(check.texts(expected))
    n = len(expected)
    inputs = _seq2seq_inputs(check, run_dir)
    step("PyTorch (the baseline): timing it at batch 1")
    records = [
        _save(
            run_id,
            "pytorch",
            path=run_dir / BEST,
            method="PyTorch eager, the best checkpoint, decoded by the same loop (baseline)",
            max_abs_diff=0.0,
            top1_agreement=1.0,
            metric=(metric_name, baseline, 0.0),
            n=n,
            rows=_measure_fresh(f"run:{run_id}", inputs, "pytorch-cpu", "seq2seq"),
            status="ok",
        )
    ]
    for variant in variants:
        step(f"{variant}: making the files")
        path, method = _seq2seq_variant(variant, run_dir)
        step(f"{variant}: decoding the {n} validation {check.unit}s")
        encoder, decoder = create_session(path), create_session(decoder_file(path))
        got, cross = _decode_all(encoder, decoder, check)
        del encoder, decoder
        same = sum(a == b for a, b in zip(expected, got, strict=True)) / max(1, n)
        _, value = check.score(check.texts(got))
        largest = max(float(np.abs(a - b).max()) for a, b in zip(cross, expected_cross, strict=True))
        step(f"{variant}: timing it at batch 1")
        rows = [r for p in _providers() for r in _measure_fresh(str(path), inputs, p, "seq2seq")]
        records.append(
            _save(
                run_id,
                variant,
                path=path,
                bytes=file_bytes(path) + file_bytes(decoder_file(path)),
                method=method,
                max_abs_diff=largest,
                top1_agreement=same,
                metric=(metric_name, value, value - baseline),
                n=n,
                rows=rows,
                status="flagged" if same < MIN_TOKEN_AGREEMENT[variant] else "ok",
            )
        )
    inputs.unlink(missing_ok=True)
    return records


def _seq2seq_inputs(check: Seq2SeqCheck, folder: Path) -> Path:
    """The first SEQ2SEQ_ITEMS validation items one by one (each without the padding its batch
    gave it), with their seconds of audio, for the timing children."""
    arrays: dict[str, np.ndarray] = {}
    k = 0
    for feeds, extra in check.batches:
        rows = len(next(iter(feeds.values())))
        for row in range(rows):
            if k == SEQ2SEQ_ITEMS:
                break
            item = {name: value[row : row + 1] for name, value in {**feeds, **extra}.items()}
            if "attention_mask" in item:  # a sentence: its own tokens, not the batch's padding
                width = int(item["attention_mask"].sum())
                item = {name: value[:, :width] for name, value in item.items()}
            if check.seconds is not None and "wave" in item:
                item["wave"] = item["wave"][:, : round(check.seconds[k] * int(check.settings["sample_rate"]))]
            for name, value in item.items():
                arrays[f"{k}.{name}"] = value
            k += 1
    path = folder / INPUTS_FILE
    np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub reads ** as allow_pickle
    return path


def measure_seq2seq(target: str, inputs: Path, provider: str, *, calls: int = 3) -> list[dict[str, Any]]:
    """Time an encoder-decoder (a model file with its decoder file beside, or `run:ID` for
    PyTorch's graphs) in this process at batch 1 on each item of `inputs`: the encoder's ms, ms
    per token and per item (medians over the items of `calls` passes after a warm-up), and the
    real-time factor when the items are clips."""
    import statistics

    from core.runtime import decode_tokens

    loaded = np.load(inputs)
    items: dict[int, dict[str, np.ndarray]] = {}
    for key in loaded.files:
        k, name = key.split(".", 1)
        items.setdefault(int(k), {})[name] = loaded[key]
    if target.startswith("run:"):
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1)))
        check = run_reference(int(target[4:])).seq2seq
        assert check is not None
        encoder, decoder, settings = check.encoder, check.decoder, check.settings
    else:
        from core.runtime import create_session

        encoder = create_session(target, [provider])
        if encoder.get_providers()[0] != provider:
            raise ExportError(f"{provider} is not available here")
        decoder = create_session(decoder_file(Path(target)), [provider])
        meta = encoder.get_modelmeta().custom_metadata_map
        settings = json.loads(meta.get("ascent.speech") or meta["ascent.translation"])
    encoder_names = {"wave", "input_ids", "attention_mask"}

    def once(item: dict[str, np.ndarray]) -> tuple[float, float, int]:
        began = time.perf_counter()
        cross = encoder.run(None, {k: v for k, v in item.items() if k in encoder_names})
        encoded = time.perf_counter()
        extra = {k: v for k, v in item.items() if k not in encoder_names}
        (tokens,) = decode_tokens(decoder, list(cross), settings, extra)
        return (encoded - began) * 1000, (time.perf_counter() - encoded) * 1000, len(tokens)

    once(items[0])
    timed = [(k, once(items[k])) for _ in range(calls) for k in sorted(items)]
    per_token = [dec / max(1, n) for _, (_, dec, n) in timed]
    row: dict[str, Any] = {
        "provider": provider,
        "batch": 1,
        "p50_ms": statistics.median(per_token),
        "p95_ms": float(np.percentile(per_token, 95)),
        "encoder_ms": statistics.median(enc for _, (enc, _, _) in timed),
        "item_ms": statistics.median(enc + dec for _, (enc, dec, _) in timed),
        "items": len(items),
        "calls": calls,
        "peak_mb": peak_memory_mb(),
    }
    if "wave" in items[0]:
        row["rtf"] = statistics.median(
            (enc + dec) / 1000 / (items[k]["wave"].shape[1] / int(settings["sample_rate"]))
            for k, (enc, dec, _) in timed
        )
    return [row]


def _perplexity(session: Any, check: GenerationCheck) -> float:
    """The perplexity of the validation examples' learnt tokens, read through `session`."""
    import math

    from core.tasks.generation import sequence_nll

    nll, count = sequence_nll(session, check.settings, check.examples)
    return math.exp(nll / count) if count else math.nan


def _file_mb(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB" if path.exists() else "nothing"


def _save(
    run_id: int,
    variant: str,
    *,
    path: Path,
    method: str,
    max_abs_diff: float,
    top1_agreement: float | None,
    metric: tuple[str, float, float],
    n: int,
    rows: list[dict[str, Any]],
    status: str,
    bytes: int | None = None,
) -> ExportInfo:
    from core.export import file_bytes

    # The latency variants are compared by: a call at batch 1; a generator's token; an
    # encoder-decoder's whole clip or sentence.
    batch1 = [r.get("item_ms", r["p50_ms"]) for r in rows if r["batch"] == 1]
    with session_scope() as session:
        return queries.save_export(
            session=session,
            run_id=run_id,
            variant=variant,
            path=str(path),
            bytes=file_bytes(path) if bytes is None else bytes,
            status=status,
            method=method,
            max_abs_diff=max_abs_diff,
            top1_agreement=top1_agreement,
            metric_name=metric[0],
            metric_value=metric[1],
            metric_change=metric[2],
            n_samples=n,
            latency_ms=min(batch1) if batch1 else None,
            measurements=rows,
        )


# Measurements are bounded: one per run (a lock in its folder) and ASCENT_MAX_MEASUREMENTS
# across the installation (lock slots in ASCENT_HOME). start() takes the locks and hands them
# to the measuring process, which holds them until it exits.
RUN_LOCK = "certificate.lock"
_HELD_ENV = "ASCENT_CERTIFICATE_LOCKS"


def _lock(path: Path) -> int | None:
    """An open file descriptor holding an exclusive flock on `path`, or None when taken."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _inherited_locks() -> bool:
    """Whether this process was started by start() with its locks (file descriptors) in hand."""
    fds = [f for f in os.environ.pop(_HELD_ENV, "").split(",") if f.isdigit()]
    return bool(fds) and all(_is_open(int(f)) for f in fds)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def measuring(run_id: int) -> bool:
    """Whether a certificate of this run is being measured now (by any process)."""
    fd = _lock(jobs.run_dir(run_id) / RUN_LOCK)
    if fd is None:
        return True
    os.close(fd)
    return False


def start(run_id: int, *, actor: Actor = LOCAL) -> subprocess.Popen[bytes]:
    """Measure a run's certificate in a background process (pages must not block); it logs to
    the run folder's certificate.log. Refused while this run is being measured, or while
    ASCENT_MAX_MEASUREMENTS measurements go on."""
    from core.config import get_settings

    require(actor, Action.MEASURE)
    _check(run_id, None)
    settings = get_settings()
    run_lock = _lock(jobs.run_dir(run_id) / RUN_LOCK)
    if run_lock is None:
        raise ConfigError(f"run {run_id}'s certificate is being measured already; wait for it to finish")
    slot = next(
        (
            fd
            for i in range(settings.max_measurements)
            if (fd := _lock(settings.home / "locks" / f"measurement-{i}.lock")) is not None
        ),
        None,
    )
    if slot is None:
        os.close(run_lock)
        raise ConfigError(
            f"{settings.max_measurements} certificates are being measured already "
            "(ASCENT_MAX_MEASUREMENTS); wait for one to finish"
        )
    log = jobs.run_dir(run_id) / LOG
    try:
        with log.open("w") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "core", "export", "--run", str(run_id)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=(run_lock, slot),
                env={
                    **os.environ,
                    "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
                    _HELD_ENV: f"{run_lock},{slot}",
                },
            )
    finally:  # the child holds the locks through its copies of the descriptors
        os.close(run_lock)
        os.close(slot)


def log_lines(run_id: int) -> list[str]:
    """What the background measurement (`start`) has written so far."""
    log = jobs.run_dir(run_id) / LOG
    return log.read_text(errors="replace").splitlines() if log.exists() else []


def progress(lines: list[str]) -> tuple[int, int, str]:
    """(steps done, steps, the step going on) from `certify`'s lines in its log."""
    for line in reversed(lines):
        if m := re.fullmatch(r"\[(\d+)/(\d+)\] (.*)", line):
            return int(m[1]) - 1, int(m[2]), m[3]
    return 0, 1, "starting"


def certificate(run_id: int) -> list[ExportInfo]:
    """The stored certificate of a run (empty until `certify` ran)."""
    database()
    with session_scope() as session:
        return queries.list_exports(session=session, run_ids=[run_id])


if __name__ == "__main__":  # a fresh process timing one target: TARGET INPUTS PROVIDER KIND
    timer = {"generation": measure_generation, "seq2seq": measure_seq2seq}.get(sys.argv[4], measure)
    print(json.dumps(timer(sys.argv[1], Path(sys.argv[2]), sys.argv[3])))
