"""The export-target registry: the exporter, the benchmark and the device loader all read it."""
from __future__ import annotations

from dataclasses import dataclass

from edgecxr.errors import ConfigError


@dataclass(frozen=True)
class Target:
    name: str
    family: str  # "tflite" | "onnx" | "openvino": which device runtimes can run it
    precision: str  # "fp32" | "fp16" | "dynamic" | "int8"
    model_file: str  # file name inside the bundle
    calibrated: bool  # needs calibration images (full-integer quantization)
    description: str

    @property
    def int8(self) -> bool:
        return self.precision == "int8"


TARGETS: dict[str, Target] = {
    t.name: t
    for t in [
        Target("tflite-fp32", "tflite", "fp32", "model.tflite", False, "TFLite, float32"),
        Target("tflite-fp16", "tflite", "fp16", "model.tflite", False, "TFLite, float16 weights"),
        Target("tflite-dynamic", "tflite", "dynamic", "model.tflite", False, "TFLite, int8 weights, float activations"),
        Target("tflite-int8", "tflite", "int8", "model.tflite", True, "TFLite, full integer (int8 in and out)"),
        Target("onnx-fp32", "onnx", "fp32", "model.onnx", False, "ONNX, float32"),
        Target("onnx-int8", "onnx", "int8", "model.onnx", True, "ONNX Runtime static QDQ int8, per-channel, 7-bit weights (same on every CPU)"),
        Target("openvino-fp32", "openvino", "fp32", "model.xml", False, "OpenVINO IR, float32"),
        Target("openvino-fp16", "openvino", "fp16", "model.xml", False, "OpenVINO IR, float16 weights"),
        Target("openvino-int8", "openvino", "int8", "model.xml", True, "OpenVINO IR, NNCF post-training int8, overflow fix (same on every CPU)"),
    ]
}


def resolve_targets(names) -> list[Target]:
    """Target names (or 'all') -> Target entries, in registry order, without repeats."""
    wanted = []
    for name in names:
        if name == "all":
            wanted += list(TARGETS)
        elif name in TARGETS:
            wanted.append(name)
        else:
            raise ConfigError(f"unknown target {name!r}; valid: {', '.join(TARGETS)}, all")
    return [TARGETS[n] for n in TARGETS if n in wanted]


def get_target(name: str) -> Target:
    return resolve_targets([name])[0]
