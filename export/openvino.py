"""OpenVINO IR from the fp32 ONNX file: fp32, fp16 weights, NNCF post-training int8."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecxr.errors import require


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


def quantize(model, calib_x: np.ndarray):
    nncf = require("nncf", "export")
    return nncf.quantize(model, calibration_dataset(calib_x), subset_size=len(calib_x))
