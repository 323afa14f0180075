"""Run an exported model file on float inputs (for accuracy checks and tests), and read its tensor specs."""
from __future__ import annotations


import numpy as np

from edgecxr.errors import require


def _quant(detail) -> dict | None:
    scale, zero = detail.get("quantization", (0.0, 0))
    return {"scale": float(scale), "zero_point": int(zero)} if scale else None


def _tflite_interpreter(path_or_bytes):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    kw = {"model_content": path_or_bytes} if isinstance(path_or_bytes, bytes) else {"model_path": str(path_or_bytes)}
    return Interpreter(num_threads=2, **kw)


def int8_weight_sparsity(model) -> dict:
    """Share of exact zeros in a TFLite model's int8 convolution and dense weights (the kernels pruning
    thins out; depthwise kernels, shaped [1, h, w, c], are never pruned and are left out)."""
    it = _tflite_interpreter(model)
    zeros = total = 0
    for d in it.get_tensor_details():
        shape = tuple(d["shape"])
        if np.dtype(d["dtype"]) != np.int8 or len(shape) not in (2, 4) or (len(shape) == 4 and shape[0] == 1):
            continue
        try:
            w = it.get_tensor(d["index"])
        except ValueError:  # an activation tensor, not a constant
            continue
        zeros, total = zeros + int(np.count_nonzero(w == 0)), total + int(w.size)
    return {"sparsity": round(zeros / total, 4) if total else 0.0, "weights": total}


class Runner:
    """Batch-at-a-time runner for one model file; .specs() gives the manifest's input/output dicts."""

    def __init__(self, family: str, model):
        self.family = family
        if family == "tflite":
            self.it = _tflite_interpreter(model)
            self.it.allocate_tensors()
            self.inp, self.out = self.it.get_input_details()[0], self.it.get_output_details()[0]
            self.batch = None
        elif family == "onnx":
            ort = require("onnxruntime", "export")
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 2
            data = model if isinstance(model, bytes) else str(model)
            self.sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        elif family == "openvino":
            ov = require("openvino", "export")
            core = ov.Core()
            m = core.read_model(str(model)) if not isinstance(model, ov.Model) else model
            self.ov_model = m
            self.compiled = core.compile_model(m, "CPU", {"INFERENCE_NUM_THREADS": 2, "INFERENCE_PRECISION_HINT": "f32"})
        else:
            raise ValueError(family)

    def specs(self) -> tuple[dict, dict]:
        if self.family == "tflite":
            return tuple({"name": d["name"], "shape": [int(v) for v in d["shape_signature"]],
                          "dtype": np.dtype(d["dtype"]).name, "quantization": _quant(d)} for d in (self.inp, self.out))
        if self.family == "onnx":
            dtypes = {"tensor(float)": "float32", "tensor(int8)": "int8", "tensor(uint8)": "uint8"}
            return tuple({"name": t.name, "shape": [d if isinstance(d, int) else -1 for d in t.shape],
                          "dtype": dtypes.get(t.type, t.type), "quantization": None}
                         for t in (self.sess.get_inputs()[0], self.sess.get_outputs()[0]))
        out = []
        for port in (self.ov_model.inputs[0], self.ov_model.outputs[0]):
            shape = [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]
            out.append({"name": port.get_any_name(), "shape": shape,
                        "dtype": np.dtype(port.get_element_type().to_dtype()).name, "quantization": None})
        return tuple(out)

    def _tflite(self, x):
        it, inp, out = self.it, self.inp, self.out
        if list(inp["shape"]) != list(x.shape):
            it.resize_tensor_input(inp["index"], list(x.shape))
            it.allocate_tensors()
            self.inp, self.out = inp, out = it.get_input_details()[0], it.get_output_details()[0]
        q = _quant(inp)
        if q:
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / q["scale"]) + q["zero_point"], info.min, info.max).astype(inp["dtype"])
        it.set_tensor(inp["index"], x.astype(inp["dtype"]))
        it.invoke()
        y = it.get_tensor(out["index"])
        q = _quant(out)
        return (y.astype(np.float32) - q["zero_point"]) * q["scale"] if q else y

    def __call__(self, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
        x = np.asarray(x, np.float32)
        outs = []
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            if self.family == "tflite":
                y = self._tflite(xb)
            elif self.family == "onnx":
                y = self.sess.run(None, {self.sess.get_inputs()[0].name: xb})[0]
            else:
                y = self.compiled(xb)[self.compiled.outputs[0]]
            outs.append(np.asarray(y, np.float64).reshape(len(xb), -1))
        return np.concatenate(outs)


def run_bundle(bundle_dir, x: np.ndarray) -> np.ndarray:
    """Raw outputs (N, K) of a bundle's model on float inputs (used by tests)."""
    from edgecxr.bundle import load_bundle

    b = load_bundle(bundle_dir)
    return Runner(b.target.family, b.model_path)(x)
