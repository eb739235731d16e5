"""int8 dynamic quantisation of an exported ONNX file, for faster inference on the CPU.

Weights are stored as int8 ahead of time; activations are quantised batch by batch at run
time, so no calibration data is needed. bench/inference.py measures its speed and accuracy.
"""

from __future__ import annotations

import sys
from pathlib import Path

from core.errors import ExportError


def quantize_dynamic_int8(src: Path, dst: Path) -> Path:
    """Write `src` with QInt8 weights to `dst` (its metadata_props kept) and return `dst`.

    ONNX Runtime's pre-processing (graph optimisation, ONNX shape inference) runs first, as its
    docs advise. Its symbolic shape inference is skipped: it gives up on traced transformer
    graphs ("Incomplete symbolic shape inference"). Where the quantiser then meets a tensor of
    unknown type, it tries once more with such tensors taken as float.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dst.with_name(dst.name + ".pre.onnx")
    try:
        # The exporter's stored intermediate shapes can disagree with ONNX shape inference
        # (seen on dynamo exports of convolution nets); inference recomputes them anyway.
        plain = onnx.load(str(src))
        plain.graph.ClearField("value_info")
        onnx.save_model(plain, str(pre))
        try:
            quant_pre_process(pre, pre, skip_symbolic_shape=True)
        except Exception as exc:
            print(f"quantisation pre-processing skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
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
        # Prediction reads the ascent.* metadata; make sure no ONNX Runtime version drops it.
        model = onnx.load(str(dst))
        have = {p.key for p in model.metadata_props}
        lost = [p for p in onnx.load(str(src), load_external_data=False).metadata_props if p.key not in have]
        if lost:
            model.metadata_props.extend(lost)
            onnx.save_model(model, str(dst))
    except Exception as exc:
        dst.unlink(missing_ok=True)
        raise ExportError(f"int8 quantisation of {src.name} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        pre.unlink(missing_ok=True)
    return dst
