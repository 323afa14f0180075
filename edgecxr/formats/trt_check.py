"""What TensorRT (10 and later) would refuse in a quantized ONNX model, found without a GPU.

TensorRT builds int8 only from explicit quantization: QuantizeLinear/DequantizeLinear pairs in ONNX's own
domain, signed int8, zero point 0 (symmetric), constant positive scales, one scale per tensor for
activations, per-channel weights along the output channels, weights in [-127, 127], and no quantized
bias (an int32 DequantizeLinear is refused: "only activation types allowed as input"). A Q/DQ on a shape
input (Reshape's shape, Resize's scales, ...) cannot be built. Each rule below is one of these; a layer
with an int8 input and float weights builds but runs in float, so it is a warning, not an error.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecxr.utils.errors import ModelError, first_line, require

QDQ = ("QuantizeLinear", "DequantizeLinear")
# op type -> the weight input's output-channel axis (Gemm: by transB)
WEIGHTED = {"Conv": 0, "ConvTranspose": 1, "MatMul": 1, "Gemm": None}
# inputs that TensorRT needs as shape tensors (int32/int64, never a dequantized float)
SHAPE_INPUTS = {"Reshape": (1,), "Expand": (1,), "Tile": (1,), "Resize": (1, 2, 3), "Upsample": (1,),
                "Slice": (1, 2, 3, 4), "Pad": (1, 2, 3), "Gather": (1,), "GatherElements": (1,), "GatherND": (1,),
                "ConstantOfShape": (0,), "TopK": (1,), "Squeeze": (1,), "Unsqueeze": (1,), "Split": (1,),
                "ReduceMean": (1,), "ReduceSum": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "Range": (0, 1, 2)}
# ONNX element types by number (onnx.TensorProto)
INT8, UINT8, INT32 = 3, 2, 6
TYPE_NAMES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 10: "float16",
              17: "float8e4m3fn", 19: "float8e5m2", 21: "uint4", 22: "int4"}
# TensorRT 10 builds these too, but not on a Jetson Orin (FP8 needs Ada or Hopper; INT4 is weight-only): a warning
FP8 = "FP8 Q/DQ builds on Ada or Hopper GPUs only, not on a Jetson Orin"
OTHER_GPU_TYPES = {17: FP8, 19: FP8, 22: "INT4 is weight-only in TensorRT (activations stay float)"}


@dataclass(frozen=True)
class Problem:
    node: str
    rule: str
    message: str
    error: bool = True  # False: TensorRT builds it, in float

    def line(self) -> str:
        return f"{'error' if self.error else 'warning'} [{self.rule}] {self.node}: {self.message}"


class _Graph:
    def __init__(self, model):
        from onnx import numpy_helper

        graph = model.graph
        self.nodes = list(all_nodes(graph))  # subgraphs (If, Loop, Scan) too: TensorRT builds them all
        initializers = [i for g in _all_graphs(graph) for i in g.initializer]
        self.consts = {i.name: numpy_helper.to_array(i) for i in initializers}
        self.const_types = {i.name: i.data_type for i in initializers}
        for n in self.nodes:  # Constant nodes hold constants too
            self._constant(n)
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in self.nodes:
            for k, name in enumerate(n.input):
                self.consumers.setdefault(name, []).append((n, k))
        self.outputs = {o.name for o in graph.output}

    def _constant(self, node) -> None:
        from onnx import numpy_helper

        if node.op_type != "Constant" or not node.attribute:
            return
        a = node.attribute[0]
        if a.name == "value" and a.HasField("t"):
            self.consts[node.output[0]], self.const_types[node.output[0]] = numpy_helper.to_array(a.t), a.t.data_type
        elif a.name in ("value_float", "value_floats"):
            self.consts[node.output[0]] = np.array(a.f if a.name == "value_float" else list(a.floats), np.float32)
            self.const_types[node.output[0]] = 1
        elif a.name in ("value_int", "value_ints"):
            self.consts[node.output[0]] = np.array(a.i if a.name == "value_int" else list(a.ints), np.int64)
            self.const_types[node.output[0]] = 7

    def is_weight(self, node) -> bool:
        """A Q/DQ on a constant: pre-quantized weights (constant -> DQ) or QAT's float weights (constant -> Q -> DQ)."""
        if node.input[0] in self.consts:
            return True
        source = self.producer.get(node.input[0])
        return node.op_type == "DequantizeLinear" and source is not None and source.op_type == "QuantizeLinear" \
            and source.input[0] in self.consts

    def quantized_type(self, node) -> int | None:
        """The integer type a Q produces or a DQ reads."""
        if node.op_type == "QuantizeLinear":
            if len(node.input) > 2 and node.input[2]:
                return self.const_types.get(node.input[2])
            dtype = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
            return dtype or UINT8  # ONNX: no zero point and no output_dtype means uint8
        x = node.input[0]
        if x in self.const_types:
            return self.const_types[x]
        source = self.producer.get(x)
        return self.quantized_type(source) if source is not None and source.op_type == "QuantizeLinear" else None


def _all_graphs(graph):
    yield graph
    for node in graph.node:
        for a in node.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _all_graphs(sub)


def all_nodes(graph):
    for g in _all_graphs(graph):
        yield from g.node


def _name(node) -> str:
    return node.name or f"{node.op_type}({node.output[0]})"


def _axis(node) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 1)


def _output_channel_axis(consumer, rank: int) -> int:
    if consumer.op_type == "Gemm":
        trans_b = next((a.i for a in consumer.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    axis = WEIGHTED[consumer.op_type]
    return rank - 1 if consumer.op_type == "MatMul" else axis


def _check_qdq(g: _Graph, node) -> list[Problem]:
    name, found = _name(node), []
    qtype = g.quantized_type(node)
    if qtype == INT32:
        found.append(Problem(name, "int32-bias", "int32 DequantizeLinear (a quantized bias); TensorRT refuses it: "
                                                 "keep biases float (onnxruntime: extra_options QuantizeBias=False)"))
    elif qtype in OTHER_GPU_TYPES:
        found.append(Problem(name, "not-int8", f"{TYPE_NAMES[qtype]}: {OTHER_GPU_TYPES[qtype]}", error=False))
    elif qtype != INT8:
        found.append(Problem(name, "not-int8", f"{TYPE_NAMES.get(qtype, qtype or 'unknown')} quantization; TensorRT "
                                               f"takes int8 (signed) only"))
    if any(a.name == "block_size" and a.i for a in node.attribute):
        found.append(Problem(name, "blockwise", "blockwise quantization (block_size); TensorRT takes it for INT4 weights "
                                                "only, int8 must be per tensor or per channel"))
    zero_point = g.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if len(node.input) > 2 and node.input[2] and zero_point is None:
        found.append(Problem(name, "scale-not-constant", "the zero point is computed, not a constant"))
    elif zero_point is not None and np.any(zero_point != 0):
        found.append(Problem(name, "zero-point", f"zero point {np.unique(zero_point)[:4].tolist()} is not 0; "
                                                 f"TensorRT quantizes symmetrically only"))
    scale = g.consts.get(node.input[1])
    if scale is None:
        found.append(Problem(name, "scale-not-constant", "the scale is computed, not a constant initializer"))
    elif not np.all(np.isfinite(scale) & (scale > 0)):
        found.append(Problem(name, "scale", "a scale is zero, negative or not finite"))
    elif scale.size > 1 and not g.is_weight(node):
        found.append(Problem(name, "per-channel-activation", f"{scale.size} scales on an activation; TensorRT "
                                                             f"quantizes activations per tensor"))
    if node.op_type == "QuantizeLinear":
        found += _check_q_consumers(g, node, name)
    else:
        found += _check_dq(g, node, name, scale)
    return found


def _check_q_consumers(g: _Graph, node, name) -> list[Problem]:
    others = [c for c, _ in g.consumers.get(node.output[0], []) if c.op_type != "DequantizeLinear"]
    if others or node.output[0] in g.outputs:
        where = ", ".join(_name(c) for c in others) or "a graph output"
        return [Problem(name, "q-without-dq", f"its int8 output goes to {where}; TensorRT needs every "
                                              f"QuantizeLinear followed by a DequantizeLinear")]
    return []


def _check_dq(g: _Graph, node, name, scale) -> list[Problem]:
    x, found = node.input[0], []
    source = g.producer.get(x)
    if x not in g.consts and (source is None or source.op_type != "QuantizeLinear"):
        found.append(Problem(name, "dq-without-q", "reads an integer tensor that no QuantizeLinear wrote "
                                                   "(a quantized graph input?)"))
    for consumer, k in g.consumers.get(node.output[0], []):
        if k in SHAPE_INPUTS.get(consumer.op_type, ()):
            found.append(Problem(name, "shape-input", f"feeds input {k} of {consumer.op_type} "
                                                      f"{_name(consumer)}, a shape input TensorRT needs as integers"))
        if g.is_weight(node) and consumer.op_type in WEIGHTED and k == 1:
            # int8 when pre-quantized; QAT's float weights (constant -> Q -> DQ) are rounded by TensorRT itself
            weight = g.consts[x] if x in g.consts else g.consts[g.producer[x].input[0]]
            found += _check_weight(weight, node, consumer, name, scale)
    return found


def _check_weight(weight, node, consumer, name, scale) -> list[Problem]:
    found = []
    if weight.dtype == np.int8 and np.any(weight == -128):
        found.append(Problem(name, "weight-range", "a weight is -128; TensorRT's int8 weights are in [-127, 127]"))
    if scale is not None and scale.size > 1:
        axis, want = _axis(node) % weight.ndim, _output_channel_axis(consumer, weight.ndim)
        if axis != want:
            found.append(Problem(name, "weight-axis", f"per-channel axis {axis}; TensorRT needs the output-channel "
                                                      f"axis {want} for {consumer.op_type}"))
    return found


def _check_placement(g: _Graph, node) -> list[Problem]:
    """A weighted layer with one side quantized and the other float runs in float in TensorRT."""
    sides = [(i < len(node.input) and node.input[i] in g.producer
              and g.producer[node.input[i]].op_type == "DequantizeLinear") for i in (0, 1)]
    if sides[0] != sides[1]:
        which = "input" if sides[0] else "weights"
        return [Problem(_name(node), "half-quantized", f"only its {which} are quantized: TensorRT runs it in float",
                        error=False)]
    return []


def check_model(model) -> list[Problem]:
    g = _Graph(model)
    found = []
    for node in g.nodes:
        if node.domain not in ("", "ai.onnx", "ai.onnx.ml"):
            found.append(Problem(_name(node), "foreign-domain", f"{node.op_type} of domain {node.domain}: not an ONNX "
                                                                f"operator; TensorRT imports it only with a plugin"))
        elif node.op_type.startswith("QLinear") or node.op_type in ("ConvInteger", "MatMulInteger", "QGemm",
                                                                     "DynamicQuantizeLinear"):
            found.append(Problem(_name(node), "qoperator", f"{node.op_type}: an operator-format quantized op; "
                                                           f"TensorRT imports the QDQ format only"))
        elif node.op_type in QDQ:
            found += _check_qdq(g, node)
        elif node.op_type in WEIGHTED:
            found += _check_placement(g, node)
    return found


def quantized(model) -> bool:
    return any(n.op_type in QDQ or n.op_type.startswith("QLinear") or n.op_type in ("ConvInteger", "MatMulInteger")
               or n.domain not in ("", "ai.onnx", "ai.onnx.ml") for n in all_nodes(model.graph))


def load(path: Path):
    """An .onnx file, or a bundle folder holding model.onnx."""
    onnx = require("onnx", "onnx")
    path = Path(path)
    file = path / "model.onnx" if path.is_dir() else path
    if not file.is_file():
        raise ModelError(f"{path}: no ONNX model here (an onnx-* bundle folder or an .onnx file); "
                         f"TensorRT builds from ONNX, so export --target onnx-int8-trt")
    try:
        model = onnx.load(str(file))  # external data is read from beside the file, not from the current folder
    except Exception as exc:  # noqa: BLE001 - protobuf raises its own DecodeError, onnx its ValidationError
        raise ModelError(f"{file}: not a readable ONNX model ({type(exc).__name__}: {first_line(exc, 160)}); "
                         f"re-export it") from None
    if not model.ir_version or not model.graph.node:
        raise ModelError(f"{file}: not an ONNX model (no graph); pass the model.onnx of an onnx-* bundle")
    return model
