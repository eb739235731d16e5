"""torch -> ONNX with metadata, then a self-check of ONNX Runtime against PyTorch on real data."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from core import atomic
from core.errors import ExportError
from core.tasks import ExportCheck

TWO_GB = 2 * 1024**3


class ExportConfig(BaseModel):
    """How a model is exported and how closely ONNX Runtime must agree with PyTorch."""

    model_config = ConfigDict(frozen=True)

    opset: int = 18
    # Allowed max |PyTorch - ORT|, relative to max(1, largest PyTorch output).
    tolerance: float = 1e-3
    # Classification exports must pick the same top-1 class this often.
    min_top1_agreement: float = 0.99
    batch_size: int = 1024


def export_onnx(
    module: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: Path,
    *,
    input_names: list[str],
    output_name: str | list[str],
    metadata: dict[str, Any],
    cfg: ExportConfig | None = None,
    sequence: bool = False,
    dynamic_image: bool = False,
) -> None:
    """Write `module` to `path` with a dynamic batch axis and `ascent.*` metadata_props.

    `output_name` names the one output, or each of several (detection's boxes, scores, labels).
    `dynamic_image=True`: axes 1 and 2 of the (NHWC image) input are dynamic too, so the file
    takes images of any size and resizes them in the graph.

    `sequence=True` (text): axis 1 of every input is dynamic too, and the module is traced
    with the TorchScript exporter, whose transformer graphs ONNX Runtime runs faster on the
    CPU than the dynamo exporter's (bench/inference.py measures both paths against PyTorch).
    """
    import onnx

    cfg = cfg or ExportConfig()
    module = module.eval().to("cpu")
    tmp = path.with_name(path.name + ".tmp")
    try:
        names = [output_name] if isinstance(output_name, str) else output_name
        if sequence:
            _export_traced(module, example_inputs, tmp, input_names, names, cfg.opset)
        else:
            _export_dynamo(module, example_inputs, tmp, input_names, names, cfg.opset, dynamic_image)
        model = onnx.load(str(tmp))
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
        for extra in path.parent.glob(tmp.name + "*.data"):
            extra.unlink()
    _save_with_metadata(model, path, metadata)


# Hugging Face model types whose encoder ONNX Runtime's transformer optimizer fuses (as "bert").
FUSED_MODEL_TYPES = ("bert",)


def fuse_transformer(path: Path, *, num_heads: int, hidden_size: int) -> dict[str, int]:
    """Fuse a BERT-style encoder in place with ONNX Runtime's transformer optimizer: attention,
    embeddings with their layer norm, skip layer norms and bias-GELU become single contrib ops
    (com.microsoft) that its CPU and CUDA providers run faster. Metadata is kept; the file is
    checked again. Returns how many of each fused operator there are."""
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimized = optimize_model(str(path), model_type="bert", num_heads=num_heads, hidden_size=hidden_size)
    fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    model = optimized.model
    atomic.write_with(path, lambda tmp: onnx.save_model(model, str(tmp)))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"the fused file fails onnx.checker: {exc}") from exc
    return fused


def _export_dynamo(
    module: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    tmp: Path,
    input_names: list[str],
    output_names: list[str],
    opset: int,
    dynamic_image: bool = False,
) -> None:
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    axes: dict[int, Any] = {0: batch}
    if dynamic_image:
        axes[1] = torch.export.Dim("height", min=8, max=16384)
        axes[2] = torch.export.Dim("width", min=8, max=16384)
    # Modules take `*inputs`, which torch.export sees as one positional tuple.
    dynamic_shapes = (tuple(axes for _ in example_inputs),)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*shares the same shape constraints.*")
        program = torch.onnx.export(
            module,
            example_inputs,
            dynamo=True,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            verbose=False,
        )
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    program.save(str(tmp))


def _export_traced(
    module: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    tmp: Path,
    input_names: list[str],
    output_names: list[str],
    opset: int,
) -> None:
    axes: dict[str, dict[int, str]] = {name: {0: "batch", 1: "sequence"} for name in input_names}
    axes.update({name: {0: "batch"} for name in output_names})
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example_inputs,
            str(tmp),
            dynamo=False,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
        )


@torch.no_grad()
def check_parity(
    path: Path,
    module: torch.nn.Module,
    inputs: tuple[np.ndarray, ...],
    *,
    classification: bool,
    cfg: ExportConfig | None = None,
) -> ExportCheck:
    """Run PyTorch and ONNX Runtime on the same real inputs; raise ExportError on disagreement."""
    from core.runtime import create_session

    cfg = cfg or ExportConfig()
    module = module.eval().to("cpu")
    session = create_session(path)
    names = [i.name for i in session.get_inputs()]
    n = len(inputs[0])
    max_diff, agree, largest = 0.0, 0, 0.0
    for start in range(0, n, cfg.batch_size):
        chunk = tuple(x[start : start + cfg.batch_size] for x in inputs)
        expected = module(*(torch.from_numpy(x) for x in chunk)).float().numpy()
        (got,) = session.run(None, dict(zip(names, chunk, strict=True)))
        max_diff = max(max_diff, float(np.max(np.abs(expected - got))) if expected.size else 0.0)
        largest = max(largest, float(np.max(np.abs(expected))) if expected.size else 0.0)
        if classification:
            agree += int((expected.argmax(1) == got.argmax(1)).sum())
    top1 = agree / n if classification and n else None
    check = ExportCheck(
        path=str(path),
        max_abs_diff=max_diff,
        top1_agreement=top1,
        n_samples=n,
        provider=str(session.get_providers()[0]),
        bytes=path.stat().st_size,
    )
    if max_diff > cfg.tolerance * max(1.0, largest):
        raise ExportError(
            f"ONNX Runtime differs from PyTorch by {max_diff:.3g} (tolerance {cfg.tolerance:g})"
        )
    if top1 is not None and top1 < cfg.min_top1_agreement:
        raise ExportError(f"ONNX Runtime agrees with PyTorch on only {top1:.1%} of top-1 classes")
    return check


def export_generator(
    step: torch.nn.Module,
    cache: tuple[int, int, int],
    path: Path,
    *,
    input_names: list[str],
    output_names: list[str],
    metadata: dict[str, Any],
    opset: int = 18,
) -> None:
    """Write a generator's step (core.tasks.generation.Step) to `path`: one graph whose batch,
    new tokens, cached tokens (from zero) and attention mask are dynamic axes, with `ascent.*`
    metadata; external data beside it only past 2 GB."""

    layers, heads, dim = cache
    step = step.eval().to("cpu")
    batch, new, total = (torch.export.Dim(n, min=1, max=1 << 16) for n in ("batch", "sequence", "total"))
    cached = torch.export.Dim("past", min=0, max=1 << 16)
    example = (
        torch.randint(0, 100, (2, 3)),
        torch.ones(2, 5, dtype=torch.long),
        *(torch.randn(2, heads, 2, dim) for _ in range(2 * layers)),
    )
    dynamic_shapes = (
        {0: batch, 1: new},
        {0: batch, 1: total},
        tuple({0: batch, 2: cached} for _ in range(2 * layers)),
    )
    _export_graph(
        step, example, input_names, output_names, dynamic_shapes, path, metadata, "generator", opset
    )


def _export_graph(
    module: torch.nn.Module,
    example: tuple[Any, ...],
    inputs: list[str],
    outputs: list[str],
    dynamic: Any,
    dest: Path,
    metadata: dict[str, Any],
    what: str,
    opset: int,
) -> None:
    """`module` exported with dynamo and these dynamic shapes to `dest` with `metadata`, checked
    by onnx.checker; external data beside it only past 2 GB."""
    import onnx

    tmp = dest.with_name(dest.name + ".tmp")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module.eval().to("cpu"),
                example,
                dynamo=True,
                input_names=inputs,
                output_names=outputs,
                dynamic_shapes=dynamic,
                opset_version=opset,
                verbose=False,
            )
        if program is None:
            raise ExportError("torch.onnx.export returned no program")
        program.save(str(tmp), external_data=True)
        graph = onnx.load(str(tmp))
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"ONNX export of the {what} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
        for extra in dest.parent.glob(tmp.name + "*.data"):
            extra.unlink()
    _save_with_metadata(graph, dest, metadata)


def _save_with_metadata(model: Any, path: Path, metadata: dict[str, Any]) -> None:
    import onnx

    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)
    save_model(model, path)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"the exported file fails onnx.checker: {exc}") from exc


def save_model(model: Any, path: Path) -> None:
    """Write an ONNX model durably; its weights go to `<name>.data` beside it only past 2 GB
    (the protobuf limit)."""
    import onnx

    large = model.ByteSize() > TWO_GB
    atomic.write_with(
        path,
        lambda tmp: onnx.save_model(
            model, str(tmp), save_as_external_data=large, location=path.name + ".data" if large else None
        ),
    )


def file_bytes(path: Path) -> int:
    """The size of an ONNX file with its external weights, if any."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def _decoder_graph(
    step: torch.nn.Module, config: Any, cross_length: int, batch: Any, masked: bool = False
) -> tuple[Any, ...]:
    """The arguments of _export_graph for an encoder-decoder's decoding step
    (core.models.seq2seq.DecoderStep): inputs, outputs and dynamic axes named as
    core.runtime.decode_tokens feeds them, and the source's mask last when `masked`."""
    from core.models.seq2seq import shape_of
    from core.runtime import cache_names

    shape = shape_of(config)
    layers, heads, dim, positions = shape["layers"], shape["heads"], shape["dim"], shape["positions"]
    names = cache_names(layers)
    past, cross = names[: 2 * layers], names[2 * layers :]
    present = [n.replace("past.", "present.") for n in past]
    source = torch.export.Dim("source", min=1, max=positions) if masked else None
    example = (
        torch.randint(0, 100, (2, 3)),
        *(torch.randn(2, heads, 2, dim) for _ in past),
        *(torch.randn(2, heads, cross_length, dim) for _ in cross),
        *((torch.ones(2, cross_length, dtype=torch.long),) if masked else ()),
    )
    dynamic = (
        {0: batch, 1: torch.export.Dim("new", min=1, max=positions)},
        (
            *({0: batch, 2: torch.export.Dim("cached", min=0, max=positions)} for _ in past),
            *(({0: batch, 2: source} if masked else {0: batch}) for _ in cross),
            *(({0: batch, 1: source},) if masked else ()),
        ),
    )
    inputs = ["input_ids", *past, *cross, *(["source_mask"] if masked else [])]
    return step, example, inputs, ["logits", *present], dynamic


def _cache_shape(config: Any) -> dict[str, int]:
    from core.models.seq2seq import shape_of

    shape = shape_of(config)
    return {"layers": shape["layers"], "heads": shape["heads"], "dim": shape["dim"]}


def transcriber_settings(model: Any) -> dict[str, Any]:
    """A Whisper export's `ascent.speech`: what core.runtime decodes it with."""
    from core.models.speech import MAX_SECONDS, SAMPLE_RATE, whisper_prompt

    positions = int(model.config.max_target_positions)
    prompt = whisper_prompt(model)
    return {
        "decoder": "decoder.onnx",
        "prompt": prompt,
        "eos_token_id": int(model.config.eos_token_id),
        "suppress_tokens": [int(t) for t in model.config.suppress_tokens or []],
        "begin_suppress_tokens": [int(t) for t in model.config.begin_suppress_tokens or []],
        "max_new_tokens": positions - len(prompt),
        "cache": _cache_shape(model.config),
        "sample_rate": SAMPLE_RATE,
        "max_seconds": MAX_SECONDS,
    }


def translator_settings(config: Any) -> dict[str, Any]:
    """A Marian or T5 export's `ascent.translation`: what core.runtime decodes it with."""
    from core.models.seq2seq import shape_of

    positions = shape_of(config)["positions"]
    return {
        "decoder": "decoder.onnx",
        "prompt": [int(config.decoder_start_token_id)],
        "eos_token_id": int(config.eos_token_id),
        "suppress_tokens": [int(config.pad_token_id)],
        "pad_token_id": int(config.pad_token_id),
        "max_new_tokens": positions - 1,
        "max_source_tokens": positions,
        "cache": _cache_shape(config),
    }


def export_transcriber(
    model: Any, tokenizer: Any, path: Path, metadata: dict[str, Any], opset: int = 18
) -> None:
    """Write a Whisper model as two graphs: `path` (model.onnx) from the raw 16 kHz wave to each
    decoder layer's cross-attention keys and values (core.models.speech.WhisperEncode), and
    decoder.onnx beside it, one decoding step with a self-attention cache
    (core.models.speech.whisper_step); `tokenizer.json` beside them and `ascent.speech` (prompt,
    end and suppressed tokens, cache shape, window) in both files' metadata. Batch, samples
    (up to 30 s), new tokens and cached tokens are dynamic axes."""
    from core.models.speech import (
        WINDOW_SAMPLES,
        WhisperEncode,
        whisper_step,
    )
    from core.runtime import cache_names

    settings = transcriber_settings(model)
    metadata = {
        **metadata,
        "ascent.speech": json.dumps(settings),
        "ascent.tokenizer": json.dumps({"file": "tokenizer.json"}),
    }
    batch = torch.export.Dim("batch", min=1, max=1 << 12)
    encoder = (
        WhisperEncode(model),
        (torch.randn(2, 16_000),),
        ["wave"],
        cache_names(int(model.config.decoder_layers))[2 * int(model.config.decoder_layers) :],
        ({0: batch, 1: torch.export.Dim("samples", min=2, max=WINDOW_SAMPLES)},),
    )
    graphs = [
        (*encoder, path),
        (*_decoder_graph(whisper_step(model), model.config, 1500, batch), path.with_name("decoder.onnx")),
    ]
    for module, example, inputs, outputs, dynamic, dest in graphs:
        _export_graph(module, example, inputs, outputs, dynamic, dest, metadata, dest.stem, opset)
    atomic.write_text(path.parent / "tokenizer.json", tokenizer.backend_tokenizer.to_str())


def export_translator(
    model: Any, tokenizer: Any, path: Path, metadata: dict[str, Any], opset: int = 18
) -> None:
    """Write a Marian or T5 model as two graphs: `path` (model.onnx) from the source's token ids
    and mask to each decoder layer's cross-attention keys and values
    (core.models.translation.encoder_of), and decoder.onnx beside it, one decoding step with
    a self-attention cache and the source's mask (core.models.translation.step_of);
    `tokenizer.json` beside them and `ascent.translation` (start, end and suppressed tokens,
    cache shape, lengths) in both files' metadata. Batch, source length, new tokens and cached
    tokens are dynamic axes."""
    from core.models.seq2seq import shape_of
    from core.models.translation import encoder_of, step_of
    from core.runtime import cache_names

    config = model.config
    positions = shape_of(config)["positions"]
    settings = translator_settings(config)
    metadata = {
        **metadata,
        "ascent.translation": json.dumps(settings),
        "ascent.tokenizer": json.dumps({"file": "tokenizer.json"}),
    }
    batch = torch.export.Dim("batch", min=1, max=1 << 12)
    source = torch.export.Dim("source", min=1, max=positions)
    layers = shape_of(config)["layers"]
    encoder = (
        encoder_of(model),
        (torch.randint(3, 50, (2, 7)), torch.ones(2, 7, dtype=torch.long)),
        ["input_ids", "attention_mask"],
        cache_names(layers)[2 * layers :],
        ({0: batch, 1: source}, {0: batch, 1: source}),
    )
    graphs = [
        (*encoder, path),
        (*_decoder_graph(step_of(model), config, 7, batch, masked=True), path.with_name("decoder.onnx")),
    ]
    for module, example, inputs, outputs, dynamic, dest in graphs:
        _export_graph(module, example, inputs, outputs, dynamic, dest, metadata, dest.stem, opset)
    atomic.write_text(path.parent / "tokenizer.json", tokenizer.backend_tokenizer.to_str())
