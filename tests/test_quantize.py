"""int8 dynamic quantisation of a traced text export: smaller, int8 ops, same answers, metadata kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from core.errors import ExportError
from core.export import export_onnx
from core.quantize import quantize_dynamic_int8
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
