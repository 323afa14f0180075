"""The format table: the model families and the export targets. The exporter, the benchmark, the device loader
and the help texts all read it (the device runtimes of each family: edgecxr.runtimes.RUNTIMES)."""
from __future__ import annotations

from dataclasses import dataclass

from edgecxr.errors import ConfigError


@dataclass(frozen=True)
class Family:
    name: str
    runtime: str  # the runtime a bundle's manifest names (the preferred device runtime of the family)
    package: str  # the import whose version the manifest records for it
    suffix: str  # of the model file inside a bundle
    extra: str  # pip extra that installs the runtime on a device


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family("tflite", "litert", "ai_edge_litert", ".tflite", "litert"),
        Family("onnx", "onnxruntime", "onnxruntime", ".onnx", "onnx"),
        Family("openvino", "openvino", "openvino", ".xml", "openvino"),
    ]
}


@dataclass(frozen=True)
class Target:
    name: str
    family: str  # "tflite" | "onnx" | "openvino": which device runtimes can run it
    precision: str  # "fp32" | "fp16" | "dynamic" | "int8"
    calibrated: bool  # needs calibration images (full-integer quantization)
    description: str
    scheme: str = ""  # int8 only: "tensorrt" = what TensorRT takes (int8 activations, every zero point 0, float biases)

    @property
    def int8(self) -> bool:
        return self.precision == "int8"

    @property
    def model_file(self) -> str:
        """The model file's name inside the bundle."""
        return "model" + FAMILIES[self.family].suffix


TARGETS: dict[str, Target] = {
    t.name: t
    for t in [
        Target("tflite-fp32", "tflite", "fp32", False, "TFLite, float32"),
        Target("tflite-fp16", "tflite", "fp16", False, "TFLite, float16 weights"),
        Target("tflite-dynamic", "tflite", "dynamic", False, "TFLite, int8 weights, float activations"),
        Target("tflite-int8", "tflite", "int8", True, "TFLite, full integer (int8 in and out)"),
        Target("onnx-fp32", "onnx", "fp32", False, "ONNX, float32"),
        Target("onnx-int8", "onnx", "int8", True, "ONNX Runtime static QDQ int8, per-channel, 7-bit weights (same on every CPU)"),
        Target("onnx-int8-trt", "onnx", "int8", True, "ONNX QDQ int8 for TensorRT (Jetson): symmetric int8 activations, "
               "per-channel 7-bit weights, zero points 0, float biases (same on every CPU)", scheme="tensorrt"),
        Target("openvino-fp32", "openvino", "fp32", False, "OpenVINO IR, float32"),
        Target("openvino-fp16", "openvino", "fp16", False, "OpenVINO IR, float16 weights"),
        Target("openvino-int8", "openvino", "int8", True, "OpenVINO IR, NNCF post-training int8, overflow fix (same on every CPU)"),
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
