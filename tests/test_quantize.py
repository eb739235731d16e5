"""int8 variants: dynamic quantisation of a traced text export (smaller, int8 ops, same answers,
metadata kept); static QDQ of a convolution net (front end and head left in float, recipes tried
in order and chosen by agreement on samples kept out of the calibration)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from core.errors import ExportError
from core.export import export_onnx
from core.quantize import (
    RECIPES,
    has_convolutions,
    layers,
    quantize_dynamic_int8,
    quantize_static_int8,
    split_samples,
)
from core.tasks import Probabilities
from core.tasks.text import pad_batch


class _Pooled(nn.Module):
    """Embedding, masked mean, two linear layers: MatMuls the quantiser turns into int8."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(500, 64)
        self.body = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 4))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.body(pooled)


def _run(path: Path, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"input_ids": ids, "attention_mask": mask})[0])


def test_quantize_dynamic_int8(tmp_path: Path) -> None:
    import onnx

    torch.manual_seed(0)
    src, dst = tmp_path / "model.onnx", tmp_path / "model.int8.onnx"
    example = tuple(torch.from_numpy(x) for x in pad_batch([np.arange(5, 12), np.arange(5, 9)], 0))
    export_onnx(
        Probabilities(_Pooled()),
        example,
        src,
        input_names=["input_ids", "attention_mask"],
        output_name="probabilities",
        metadata={"ascent.task": "text-classification"},
        sequence=True,
    )
    assert quantize_dynamic_int8(src, dst) == dst
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.int8.onnx", "model.onnx"]
    model = onnx.load(str(dst))
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= {n.op_type for n in model.graph.node}
    assert {p.key: p.value for p in model.metadata_props}["ascent.task"] == "text-classification"
    assert dst.stat().st_size < src.stat().st_size / 2

    rng = np.random.default_rng(0)
    ids, mask = pad_batch([rng.integers(1, 500, n) for n in (3, 17, 40)], 0)
    fp32, int8 = _run(src, ids, mask), _run(dst, ids, mask)
    assert int8.shape == (3, 4)
    np.testing.assert_allclose(int8.sum(1), 1.0, atol=1e-5)
    assert np.abs(fp32 - int8).max() < 0.02


def test_quantize_refuses_a_file_that_is_not_onnx(tmp_path: Path) -> None:
    src = tmp_path / "broken.onnx"
    src.write_bytes(b"not a model")
    with pytest.raises(ExportError, match="int8 quantisation of broken.onnx failed"):
        quantize_dynamic_int8(src, tmp_path / "out.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.onnx"]


class _SpectrumNet(nn.Module):
    """A log front end, a first conv, a depthwise conv, a linear projection, a head: every part
    the static recipes treat apart."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, groups=16),
            nn.ReLU(),
            nn.Conv2d(16, 24, 1),  # linear: nothing after it but the pooling
        )
        self.head = nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spectrum = torch.log(x * x + 1e-6).unsqueeze(1)  # the part that must stay float
        return self.head(self.body(spectrum).mean((2, 3)))


def _conv_export(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    src = tmp_path / "model.onnx"
    export_onnx(
        Probabilities(_SpectrumNet()),
        (torch.randn(2, 8, 12),),
        src,
        input_names=["input"],
        output_name="probabilities",
        metadata={"ascent.task": "audio-classification"},
    )
    return src


def _samples(n: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    return (rng.standard_normal((n, 8, 12)) * rng.uniform(0.1, 3, (n, 1, 1))).astype(np.float32)


def test_static_int8_keeps_the_front_end_and_head_in_float(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    src, dst = _conv_export(tmp_path), tmp_path / "model.int8.onnx"
    assert has_convolutions(src)
    samples = _samples(100)
    done = quantize_static_int8(src, dst, (samples,), target=0.0)  # the first recipe will do
    assert done.path == dst and len(done.attempts) == 1 and done.attempts[0].recipe == RECIPES[0][0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.int8.onnx", "model.onnx"]
    model = onnx.load(str(dst))
    assert {p.key: p.value for p in model.metadata_props}["ascent.task"] == "audio-classification"
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    int8 = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8}
    convs = [n for n in nodes if n.op_type == "Conv"]
    assert len(convs) == 3
    for conv in convs:  # weights int8 per output channel, input from a DequantizeLinear
        deq = producer[conv.input[1]]
        assert deq.op_type == "DequantizeLinear" and deq.input[0] in int8
        assert producer[conv.input[0]].op_type == "DequantizeLinear"
    log = next(n for n in nodes if n.op_type == "Log")
    assert producer[log.input[0]].op_type != "DequantizeLinear"  # the front end stayed float
    head = next(n for n in nodes if n.op_type in ("Gemm", "MatMul"))
    assert head.input[1] not in int8 and producer.get(head.input[1]) is None

    # The agreement the method reports is the one on the samples kept out of the calibration.
    calibration, check = split_samples((samples,))
    assert len(calibration[0]) == 50 and len(check[0]) == 50
    run = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (src, dst)]
    fp32, q = (np.asarray(s.run(None, {"input": check[0]})[0]) for s in run)
    assert f"top-1 agreement {(fp32.argmax(1) == q.argmax(1)).mean():.3f}" in done.method
    assert "50 training samples" in done.method and "50 other training samples" in done.method


def test_static_int8_tries_every_recipe_and_keeps_the_best_when_none_reaches_the_target(
    tmp_path: Path,
) -> None:
    import onnx

    src, dst = _conv_export(tmp_path), tmp_path / "model.int8.onnx"
    parts = layers(onnx.load(str(src)))
    assert len(parts.first) == len(parts.last) == len(parts.depthwise) == len(parts.linear) == 1
    assert parts.first != parts.depthwise != parts.last == parts.linear and len(parts.head) == 1
    # Past the last convolution (the pooling and the head) stays float; no convolution is there.
    by_name = {n.name: n for n in onnx.load(str(src)).graph.node}
    assert set(parts.head) < set(parts.after)
    assert [by_name[n].op_type for n in parts.after] == ["ReduceMean", "Gemm", "Softmax"]
    done = quantize_static_int8(src, dst, (_samples(20),), target=1.01)  # unreachable
    assert [a.recipe for a in done.attempts] == [r for r, _ in RECIPES]
    best = max(a.agreement or 0.0 for a in done.attempts)
    assert f"top-1 agreement {best:.3f}" in done.method and "the same samples" in done.method
    model = onnx.load(str(dst))
    producer = {o: n for n in model.graph.node for o in n.output}
    kept_float = [n for n in model.graph.node if n.op_type == "Conv" and n.input[1] not in producer]
    chosen = next(i for i, a in enumerate(done.attempts) if a.agreement == best)
    assert len(kept_float) == len({n for part in RECIPES[chosen][1] for n in getattr(parts, part)})


def test_static_int8_needs_samples(tmp_path: Path) -> None:
    src = _conv_export(tmp_path)
    with pytest.raises(ExportError, match="needs training samples"):
        quantize_static_int8(src, tmp_path / "model.int8.onnx", ())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
