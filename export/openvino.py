"""OpenVINO IR from the fp32 ONNX file: fp32, fp16 weights, NNCF post-training int8.

int8 uses NNCF's overflow fix on every layer (7-bit weights), not only the first (its default): on x86
CPUs without VNNI, oneDNN's int8 kernels saturate 16-bit pair sums, and the default model gave answers
up to 0.33 apart on an emulated AVX2-only CPU; with the fix, within one int8 output step (0.004).

The first convolution and the last layer (the classifier) stay float. Chosen on the shipped model's 523
validation images (benchmarks/results/int8-recipe-2026-12-02): the int8-float logit difference fell from
mean 0.125 / p99 0.72 to 0.067 / 0.21 and flipped decisions from 3 to 2; keeping only the classifier float
gave 0.072 / 0.27, leaving the depthwise convolutions float or the mixed preset did not help. Those two
layers hold about 0.1 % of MobileNetV2's multiply-adds.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecxr.utils.errors import require


def read_onnx(onnx_path: Path):
    ov = require("openvino", "export")
    return ov.convert_model(str(onnx_path))


def save(model, xml_path: Path, *, fp16: bool = False) -> Path:
    ov = require("openvino", "export")
    ov.save_model(model, str(xml_path), compress_to_fp16=fp16)
    return Path(xml_path)


def calibration_dataset(x: np.ndarray):
    nncf = require("nncf", "export")
    return nncf.Dataset([x[i:i + 1].astype(np.float32) for i in range(len(x))])


COMPUTE_OPS = ("Convolution", "GroupConvolution", "MatMul")


def float_layers(model) -> list[str]:
    """The first and the last weighted layer of an ov.Model, kept float by `quantize`."""
    ops = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() in COMPUTE_OPS]
    return list(dict.fromkeys(ops[:1] + ops[-1:]))


def ignored_scope(model):
    nncf = require("nncf", "export")
    return nncf.IgnoredScope(names=float_layers(model), validate=False)


def cpu_independent():
    """NNCF advanced parameters that make int8 decide the same on every CPU (see the module docstring)."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    return AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE)


def quantize(model, calib_x: np.ndarray):
    nncf = require("nncf", "export")
    return nncf.quantize(model, calibration_dataset(calib_x), subset_size=len(calib_x),
                         ignored_scope=ignored_scope(model), advanced_parameters=cpu_independent())
