"""The format table: the model families and the export targets. One row per family names everything the rest of
edgecxr needs to know of it: its converter (export), its runtimes and their openers (devices), its pip extra and
packages, the precisions it implements and the options it takes. The exporter, the runtime layer, the benchmark,
the help texts and the extras read it; adding a family is one row plus its converter and runtime modules."""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from edgecxr.utils.errors import ConfigError


@dataclass(frozen=True)
class RuntimeRow:
    name: str
    module: str  # the import that must succeed (the benchmark imports it before timing a load)
    extra: str  # pip extra that installs it
    note: str
    opener: str  # "module:callable"(model, threads=, device=, precision=, batch=) -> Session
    build: bool = True  # the export gate and the benchmark may run it on the build machine (as a device would)


@dataclass(frozen=True)
class Family:
    name: str
    package: str  # the import whose version a manifest records for the family's runtime
    suffix: str  # of the model file inside a bundle
    extra: str  # pip extra that installs the preferred runtime on a device
    precisions: tuple[str, ...]  # what its converter implements; a target asking for another is refused
    converter: str  # "module:callable"(target, ctx, path) -> dict: writes a target's model file
    export_packages: tuple[str, ...]  # imports the converter needs on the build machine
    runtimes: tuple[RuntimeRow, ...]  # in preference order: the first is the one a manifest names
    int8_packages: tuple[str, ...] = ()  # more imports for its int8 targets
    qat: bool = False  # int8 can come from quantization-aware training (--qat)
    devices: tuple[str, ...] = ()  # values of --device its runtimes take
    device_help: str = ""  # what --device means for it
    from_bytes: str = ""  # "module:callable"(bundle, verified bytes) -> what its runtimes open; "": the bytes
    int8_sparsity: str = ""  # "module:callable"(int8 model file) -> {"sparsity", "weights"}: pruning measured there
    web: str = ""  # the browser runtime that runs it (edgecxr device web; devices/web.py RUNTIMES); "": none

    @property
    def runtime(self) -> str:
        return self.runtimes[0].name


TF = ("tensorflow", "tf_keras")
ONNX_BUILD = TF + ("tf2onnx", "onnx", "onnxruntime")

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family("tflite", "ai_edge_litert", ".tflite", "litert", ("fp32", "fp16", "dynamic", "int8"),
               "edgecxr.export.build:build_tflite", TF, qat=True, web="litert.js",
               int8_sparsity="edgecxr.export.float_runs:int8_weight_sparsity", runtimes=(
                   RuntimeRow("litert", "ai_edge_litert.interpreter", "litert", "Google LiteRT (ex TFLite), XNNPACK",
                              "edgecxr.runtimes.tflite:_open_litert"),
                   RuntimeRow("tflite-runtime", "tflite_runtime", "tflite",
                              "legacy tflite-runtime 2.14: needs numpy<2, slow int8; for old Pi OS images",
                              "edgecxr.runtimes.tflite:_open_tflite_runtime", build=False),
                   RuntimeRow("tf-lite", "tensorflow", "train", "tf.lite from an installed TensorFlow",
                              "edgecxr.runtimes.tflite:_open_tf_lite"))),
        Family("onnx", "onnxruntime", ".onnx", "onnx", ("fp32", "int8"), "edgecxr.export.build:build_onnx",
               ONNX_BUILD, int8_packages=("nncf",), devices=("cpu", "cuda", "tensorrt", "tensorrt-fp16"),
               web="onnxruntime-web",
               device_help="ONNX Runtime provider", runtimes=(
                   RuntimeRow("onnxruntime", "onnxruntime", "onnx", "TensorRT/CUDA providers when present, else CPU",
                              "edgecxr.runtimes.onnx:OrtSession"),)),
        Family("openvino", "openvino", ".xml", "openvino", ("fp32", "fp16", "int8"),
               "edgecxr.export.build:build_openvino", ONNX_BUILD + ("openvino",), int8_packages=("nncf",),
               devices=("CPU", "GPU", "NPU"), device_help="OpenVINO device",
               from_bytes="edgecxr.runtimes.openvino:model_from_bytes", runtimes=(
                   RuntimeRow("openvino", "openvino", "openvino", "device CPU, GPU or NPU",
                              "edgecxr.runtimes.openvino:OpenVinoSession"),)),
    ]
}


@dataclass(frozen=True)
class Target:
    name: str
    family: str  # a FAMILIES key: which converter writes it and which device runtimes can run it
    precision: str  # one of the family's precisions: "fp32" | "fp16" | "dynamic" | "int8"
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


def load(path: str):
    """A "module:attribute" of the table, imported when first used (the heavy packages stay unimported)."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def check_precision(target: Target) -> None:
    """A target whose family's converter does not implement its precision is refused (it would ship another)."""
    family = FAMILIES[target.family]
    if target.precision not in family.precisions:
        raise ConfigError(f"target {target.name}: the {family.name} converter writes {', '.join(family.precisions)}, "
                          f"not {target.precision}")


def check_table() -> None:
    """The rows hold together: every target's family exists and implements its precision (a wrong row would ship
    the wrong model), every family has runtimes, a float32 target (the twin) and well-formed references, and no
    two runtimes share a name (the later would take the earlier's place)."""
    import re

    def fail(message):
        raise ConfigError(f"the format table: {message}")

    for t in TARGETS.values():
        if t.family not in FAMILIES:
            fail(f"target {t.name}: unknown family {t.family!r}; families: {', '.join(FAMILIES)}")
        check_precision(t)
    names = [r.name for f in FAMILIES.values() for r in f.runtimes]
    for f in FAMILIES.values():
        if not f.runtimes:
            fail(f"family {f.name} has no runtime")
        if f"{f.name}-fp32" not in TARGETS:
            fail(f"family {f.name} has no {f.name}-fp32 target (the float twin of its other targets)")
        for ref in (f.converter, f.from_bytes, f.int8_sparsity, *(r.opener for r in f.runtimes)):
            if ref and not re.fullmatch(r"[\w.]+:\w+", ref):
                fail(f"family {f.name}: {ref!r} is not 'module:name'")
    if len(names) != len(set(names)):
        fail(f"runtime names repeat: {sorted({n for n in names if names.count(n) > 1})}")


def resolve_targets(names) -> list[Target]:
    """Target names (or 'all') -> Target entries, in registry order, without repeats."""
    check_table()
    wanted = []
    for name in names:
        if name == "all":
            wanted += list(TARGETS)
        elif name in TARGETS:
            wanted.append(name)
        else:
            raise ConfigError(f"unknown target {name!r}; valid: {', '.join(TARGETS)}, all")
    return [TARGETS[n] for n in TARGETS if n in wanted]


def export_packages(chosen) -> set[str]:
    """The imports exporting these targets needs (checked before minutes of work)."""
    wanted = set()
    for t in chosen:
        family = FAMILIES[t.family]
        wanted |= set(family.export_packages) | (set(family.int8_packages) if t.int8 else set())
    return wanted


def runtime_help() -> str:
    names = " | ".join(r.name for f in FAMILIES.values() for r in f.runtimes)
    return f"{names} (default: the first installed one for the bundle; see `edgecxr device runtimes`)."


def device_help() -> str:
    return " or ".join(f"{f.device_help} ({', '.join(f.devices)})" for f in FAMILIES.values() if f.devices) + "."


check_table()
