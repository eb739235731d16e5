"""int8 variants of an exported ONNX file, for faster and smaller inference on the CPU.

Two methods, each where it works:

- dynamic (`quantize_dynamic_int8`): weights int8 ahead of time, activations quantised batch by
  batch at run time; no data needed. Right for MLPs and transformers, whose work is MatMuls.
- static QDQ (`quantize_static_int8`): weights int8 per output channel, activations int8 with
  ranges calibrated on the run's own training samples. Right for convolution nets, where dynamic
  quantisation leaves the convolutions in float and quantises what should not be (measured: a
  spoken-words CNN kept 41 % agreement). What a quantised net keeps of its float answers depends
  on which layers are quantised, so it tries recipes, fastest first, and keeps the first whose
  top-1 agreement with the float file, on training samples kept out of the calibration, reaches
  the target (or else the best one); the method string says what it chose and why.

Whatever computes before the first convolution (a log-mel front end, input normalisation) and
the classifier head after the last stay in float: quantising power spectra linearly before a log
lost most of the spoken-words model's answers.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ExportError
from core.runtime import all_outputs

CALIBRATION_SAMPLES = 128  # at most this many training samples set the activation ranges
CHECK_SAMPLES = 128  # at most this many others choose the recipe
STATIC_TARGET = 0.99  # top-1 agreement with fp32 on the check samples a recipe must reach
CPU = ["CPUExecutionProvider"]  # int8 is made for, and checked on, the CPU
AGREEMENT_WORDS = {
    "top1_agreement": "top-1 agreement",
    "box_agreement": "box agreement (same label, IoU >= 0.9)",
    "pixel_agreement": "pixel agreement",
}


def preprocess(src: Path, pre: Path) -> None:
    """ONNX Runtime's pre-processing (graph optimisation, ONNX shape inference), as its docs
    advise. Its symbolic shape inference is skipped: it gives up on traced transformer graphs
    ("Incomplete symbolic shape inference")."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # The exporter's stored intermediate shapes can disagree with ONNX shape inference (seen on
    # dynamo exports of convolution nets); inference recomputes them anyway.
    plain = onnx.load(str(src))
    plain.graph.ClearField("value_info")
    onnx.save_model(plain, str(pre))
    try:
        quant_pre_process(pre, pre, skip_symbolic_shape=True)
    except Exception as exc:
        print(f"quantisation pre-processing skipped: {type(exc).__name__}: {exc}", file=sys.stderr)


def _keep_metadata(src: Path, dst: Path) -> None:
    """Prediction reads the ascent.* metadata; make sure no ONNX Runtime version drops it."""
    import onnx

    model = onnx.load(str(dst))
    have = {p.key for p in model.metadata_props}
    lost = [p for p in onnx.load(str(src), load_external_data=False).metadata_props if p.key not in have]
    if lost:
        from core.export import save_model

        model.metadata_props.extend(lost)
        save_model(model, dst)


def quantize_dynamic_int8(src: Path, dst: Path) -> Path:
    """Write `src` with QInt8 weights to `dst` (its metadata_props kept) and return `dst`.

    Where the quantiser meets a tensor of unknown type, it tries once more with such tensors
    taken as float."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    pre = dst.with_name(dst.name + ".pre.onnx")
    try:
        preprocess(src, pre)
        try:
            quantize_dynamic(pre, dst, weight_type=QuantType.QInt8)
        except RuntimeError as exc:
            if "DefaultTensorType" not in str(exc):
                raise
            quantize_dynamic(
                pre,
                dst,
                weight_type=QuantType.QInt8,
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
        _keep_metadata(src, dst)
    except Exception as exc:
        dst.unlink(missing_ok=True)
        raise ExportError(f"int8 quantisation of {src.name} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        pre.unlink(missing_ok=True)
    return dst


WEIGHT_BLOCK = 32  # inputs per int8 weight scale of quantize_weights_int8


def quantize_weights_int8(src: Path, dst: Path, keep_float: tuple[str, ...] = ()) -> Path:
    """Write `src` with the weights of its MatMuls in int8 to `dst` (its metadata kept) and
    return `dst`: symmetric, one scale per block of WEIGHT_BLOCK inputs, as ONNX Runtime's
    MatMulNBits, which computes in int8 on the CPU (accuracy level 4). Activations stay float
    between the MatMuls. The generators' int8: on SmolLM2-135M it reproduced every greedy token
    of 12 helpdesk prompts where dynamic quantisation (activations too) kept 83 % of them.
    A MatMul whose weight is computed (a tied output layer read through a Transpose) stays
    float, and so does one whose weight's name starts with a `keep_float` prefix (Whisper's
    log-mel front end, `features.`: its STFT and mel matrices in int8 doubled the word error
    rate)."""
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from core.export import save_model

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    try:
        model = onnx.load(str(src))
        excluded = [
            node.name
            for node in model.graph.node
            if node.op_type == "MatMul" and any(i.startswith(keep_float) for i in node.input if keep_float)
        ]
        quantizer = MatMulNBitsQuantizer(
            model,
            bits=8,
            block_size=WEIGHT_BLOCK,
            is_symmetric=True,
            accuracy_level=4,
            nodes_to_exclude=excluded,
        )
        quantizer.process()
        save_model(quantizer.model.model, dst)
        _keep_metadata(src, dst)
    except Exception as exc:
        dst.unlink(missing_ok=True)
        raise ExportError(f"int8 quantisation of {src.name} failed: {type(exc).__name__}: {exc}") from exc
    return dst


def has_convolutions(path: Path) -> bool:
    """Whether the file is a convolution net (static quantisation is its int8 method)."""
    import onnx

    return any(n.op_type == "Conv" for n in onnx.load(str(path), load_external_data=False).graph.node)


@dataclass(frozen=True)
class Layers:
    """The parts of a convolution net a recipe keeps in float (node names)."""

    before: list[str]  # everything not downstream of the first convolution
    head: list[str]  # Gemm/MatMul after the convolutions (the classifier)
    after: list[str]  # everything past the last convolution of every path (pooling, decoding)
    first: list[str]  # the first convolution
    last: list[str]  # the last convolution
    depthwise: list[str]  # convolutions with one filter per channel
    linear: list[str]  # convolutions with no activation after them (projections into a sum)


def layers(model: Any) -> Layers:
    """Find the first, last and depthwise convolutions and what lies outside them in `model`."""
    nodes = list(model.graph.node)
    convs = [n for n in nodes if n.op_type == "Conv"]
    consumers: dict[str, list[Any]] = {}
    for n in nodes:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    downstream: set[str] = set()
    stack = [convs[0]]
    while stack:
        node = stack.pop()
        if node.name in downstream:
            continue
        downstream.add(node.name)
        for out in node.output:
            stack.extend(consumers.get(out, []))

    producer = {out: n for n in nodes for out in n.output}
    feeds_conv: set[str] = set()
    stack = list(convs)
    while stack:
        node = stack.pop()
        for name in node.input:
            if (source := producer.get(name)) is not None and source.name not in feeds_conv:
                feeds_conv.add(source.name)
                stack.append(source)

    def group(n: Any) -> int:
        return next((a.i for a in n.attribute if a.name == "group"), 1)

    return Layers(
        before=[n.name for n in nodes if n.name not in downstream],
        head=[n.name for n in nodes if n.op_type in ("Gemm", "MatMul") and n.name in downstream],
        after=[
            n.name for n in nodes if n.name in downstream and n.name not in feeds_conv and n.op_type != "Conv"
        ],
        first=[convs[0].name],
        last=[convs[-1].name] if len(convs) > 1 else [],
        depthwise=[n.name for n in convs if group(n) > 1],
        linear=[
            n.name
            for n in convs
            if not any(c.op_type in ACTIVATIONS for out in n.output for c in consumers.get(out, []))
        ],
    )


ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "HardSwish", "Sigmoid", "HardSigmoid")

# (what it keeps in float besides the input side and the head, the parts of Layers it excludes),
# fastest first. On EfficientNet-Lite0 the last one is as slow as fp32, but it is what an
# undertrained model (flat probabilities) needed to keep most of its answers.
RECIPES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("every convolution int8", ()),
    ("first and depthwise convolutions kept fp32", ("first", "depthwise")),
    ("first, last and depthwise convolutions kept fp32", ("first", "last", "depthwise")),
    (
        "first, depthwise and linear (no activation) convolutions kept fp32",
        ("first", "depthwise", "linear"),
    ),
)


@dataclass(frozen=True)
class Attempt:
    recipe: str
    agreement: float | None  # None: the quantiser failed on this recipe
    error: str = ""


@dataclass(frozen=True)
class StaticResult:
    path: Path
    method: str  # one line for the certificate: what was done, on what, and how it checked
    attempts: list[Attempt]


class SampleFeed:
    """A CalibrationDataReader over the calibration samples, in batches."""

    def __init__(self, names: list[str], samples: Sequence[np.ndarray], batch: int = 16) -> None:
        n = len(samples[0])
        self.batches = iter(
            [{k: x[i : i + batch] for k, x in zip(names, samples, strict=True)} for i in range(0, n, batch)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def input_names(model: Any) -> list[str]:
    """The graph inputs a caller feeds (initializers listed as inputs left out)."""
    weights = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in weights]


def split_samples(
    samples: Sequence[np.ndarray],
) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """Calibration and check samples: the first half (at most CALIBRATION_SAMPLES) calibrates,
    the rest (at most CHECK_SAMPLES) checks; under 32 samples, all do both."""
    n = len(samples[0])
    if n < 32:
        return tuple(samples), tuple(samples)
    cut = min(n // 2, CALIBRATION_SAMPLES)
    end = min(n, cut + CHECK_SAMPLES)
    return tuple(x[:cut] for x in samples), tuple(x[cut:end] for x in samples)


def top1(expected: list[np.ndarray], got: list[np.ndarray]) -> float:
    """Share of samples whose top class (first output) is the same."""
    return float((got[0].argmax(1) == expected[0].argmax(1)).mean())


def quantize_static_int8(
    src: Path,
    dst: Path,
    samples: Sequence[np.ndarray],
    *,
    target: float = STATIC_TARGET,
    agree: Callable[[list[np.ndarray], list[np.ndarray]], float] = top1,
    agreement: str = "top1_agreement",
) -> StaticResult:
    """Static QDQ int8 of the convolution net `src`, calibrated on `samples` (training inputs in
    the file's input format, in its input order, shuffled), written to `dst` with its metadata.

    Recipes are tried in the order of RECIPES; the first whose agreement with the float file on
    the check samples (`agree(float outputs, int8 outputs)`, named `agreement`: top-1 classes by
    default, boxes or pixels for detection and segmentation) reaches `target` is kept, else the
    one that agreed best."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not samples or len(samples[0]) == 0:
        raise ExportError("static int8 quantisation needs training samples to calibrate on")
    pre = dst.with_name(dst.name + ".pre.onnx")
    tries = [dst.with_name(f"{dst.name}.try{i}.onnx") for i in range(len(RECIPES))]
    try:
        preprocess(src, pre)
        model = onnx.load(str(pre))
        parts, names = layers(model), input_names(model)
        calibration, check = split_samples(samples)
        expected = all_outputs(src, check, CPU)
        attempts: list[Attempt] = []
        for (recipe, kept), path in zip(RECIPES, tries, strict=True):
            exclude = parts.before + parts.head + parts.after
            exclude += [n for part in kept for n in getattr(parts, part)]
            try:
                quantize_static(
                    pre,
                    path,
                    SampleFeed(names, calibration),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    nodes_to_exclude=exclude,
                )  # MinMax keeps only per-batch minima and maxima: little memory
                share = agree(expected, all_outputs(path, check, CPU))
            except Exception as exc:  # a recipe the quantiser cannot do; the next may work
                attempts.append(Attempt(recipe, None, f"{type(exc).__name__}: {exc}"))
                continue
            attempts.append(Attempt(recipe, share))
            if share >= target:
                break
        done = [(a, p) for a, p in zip(attempts, tries, strict=False) if a.agreement is not None]
        if not done:
            raise ExportError("; ".join(f"{a.recipe}: {a.error}" for a in attempts))
        # The loop stops at the first recipe that reaches the target, so the best is that one.
        best, path = max(done, key=lambda ap: ap[0].agreement or 0.0)
        path.replace(dst)
        _keep_metadata(src, dst)
    except Exception as exc:
        dst.unlink(missing_ok=True)
        raise ExportError(f"int8 quantisation of {src.name} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        for p in [pre, *tries]:
            p.unlink(missing_ok=True)
    same = len(check[0]) if check[0] is not calibration[0] else 0
    on = f"{same} other training samples" if same else "the same samples (too few to set some aside)"
    method = (
        f"static int8 (QDQ, per-channel weights, activations calibrated on {len(calibration[0])} "
        f"training samples); {best.recipe}, layers before the first convolution and after the last fp32; "
        f"chosen with {AGREEMENT_WORDS.get(agreement, agreement)} {best.agreement:.3f} against fp32 on {on} "
        "(recipes tried: "
        + ", ".join("failed" if a.agreement is None else f"{a.agreement:.3f}" for a in attempts)
        + ")"
    )
    return StaticResult(dst, method, attempts)
