"""ONNX: tf2onnx conversion (opset 17) and ONNX Runtime static QDQ int8, per-channel, 7-bit weights.

Why 7-bit weights (reduce_range): on x86 CPUs without VNNI (AVX2, AVX-512 before Cascade Lake), ONNX
Runtime's u8 x s8 kernels add pairs of products in 16 bits with saturation, so the same model decides
differently there than on VNNI, AMX or ARM CPUs (measured: 18 of 40 sample decisions differed, a
probability moved 0.88). With weights in [-64, 63] no pair can saturate and every kernel computes the
same integers: probabilities were bit-identical on an emulated AVX2-only CPU and on this one.
Calibration stays min-max: percentile calibration had a smaller int8-float difference on the shipped
model's validation images (p99 0.059 against 0.082, the same 3 flipped decisions), but ONNX Runtime keeps
every activation of every calibration image for its histograms: 300 images at 224 px took 24 GB and the
export was killed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecxr.utils.errors import ModelError, require

OPSET = 17


def to_onnx(source, path: Path) -> Path:
    tf = require("tensorflow", "export")
    tf2onnx = require("tf2onnx", "export")
    spec = [tf.TensorSpec([None, *source.spec.input_shape], tf.float32, name="input")]
    proto, _ = tf2onnx.convert.from_function(source.fn, input_signature=spec, opset=OPSET)
    Path(path).write_bytes(proto.SerializeToString())
    return Path(path)


class _Reader:
    def __init__(self, name, x):
        self.name, self.x, self.i = name, x, 0

    def get_next(self):
        if self.i >= len(self.x):
            return None
        self.i += 1
        return {self.name: self.x[self.i - 1:self.i].astype(np.float32)}

    def rewind(self):
        self.i = 0


def quantize(fp32_path: Path, out_path: Path, calib_x: np.ndarray, scheme: str = "", exclude=()) -> Path:
    """scheme "tensorrt": what TensorRT 10 takes as an explicitly quantized network (devices/trt_check.py checks it):
    int8 activations with zero point 0 (symmetric), biases left float (TensorRT refuses an int32 DequantizeLinear).
    Weights stay 7-bit (reduce_range): ONNX Runtime's CPU kernels then compute the same integers on every CPU."""
    require("onnxruntime", "export")
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    name = onnx.load(str(fp32_path)).graph.input[0].name
    reader = type("Reader", (_Reader, CalibrationDataReader), {})(name, calib_x)
    tensorrt = scheme == "tensorrt"
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False} if tensorrt else {}
    quantize_static(str(fp32_path), str(out_path), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8 if tensorrt else QuantType.QUInt8, weight_type=QuantType.QInt8,
                    reduce_range=True, nodes_to_exclude=list(exclude), extra_options=extra)
    return Path(out_path)


def end_layers(fp32_path: Path) -> list[list[str]]:
    """The node sets to keep in float, smallest first: the classifier (the last Gemm/MatMul/Conv), then it and the
    first convolution."""
    import onnx

    weighted = [n.name for n in onnx.load(str(fp32_path)).graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    return [weighted[-1:], [weighted[0], weighted[-1]]] if len(weighted) > 1 else [weighted] if weighted else []


def tensorrt_check(path: Path, target: str) -> dict:
    """The static TensorRT check of a written model (edgecxr.formats.trt_check); an export that fails it is a bug here."""
    from edgecxr.formats import trt_check

    model = trt_check.load(path)
    found = trt_check.check_model(model)
    errors = [p.line() for p in found if p.error]
    if errors:
        raise ModelError(f"{target}: the quantized model is not what TensorRT takes ({len(errors)} findings, first: "
                          f"{errors[0]}); please report this")
    return {"passed": True, "qdq_nodes": sum(n.op_type in trt_check.QDQ for n in trt_check.all_nodes(model.graph)),
            "warnings": [p.line() for p in found]}
