"""The TFLite family's runtimes: LiteRT (preferred), the legacy tflite-runtime 2.14, and TensorFlow's tf.lite."""
from __future__ import annotations

import importlib
import os
import warnings

import numpy as np

from edgecxr.runtimes.base import Session, _check_threads, _timed_loop
from edgecxr.utils.errors import MissingDependencyError, ModelError

def _tflite_quant(detail) -> tuple | None:
    scale, zero = detail.get("quantization", (0.0, 0))
    return (float(scale), int(zero)) if scale else None


class TFLiteSession(Session):
    def __init__(self, interpreter_cls, model, *, runtime: str, version: str, provider: str,
                 threads: int | None, note: str = "", batch: int | None = None):
        _check_threads(threads)
        source = "<model bytes>" if isinstance(model, bytes) else model
        kw = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
        from edgecxr.utils.quiet import native_output_captured

        try:
            with native_output_captured():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
                self.interpreter = interpreter_cls(num_threads=threads, **kw)
                inp = self.interpreter.get_input_details()
                if batch and len(inp) == 1 and int(inp[0]["shape"][0]) != batch:
                    self.interpreter.resize_tensor_input(inp[0]["index"], [batch, *inp[0]["shape"][1:]], strict=False)
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{source}: {runtime} cannot load this model ({exc})") from None
        inp = self.interpreter.get_input_details()
        out = self.interpreter.get_output_details()
        if len(inp) != 1 or len(out) != 1:
            raise ModelError(f"{source}: expected one input and one output, found {len(inp)} and {len(out)}")
        self._details = (inp[0], out[0])
        self._in, self._out = inp[0]["index"], out[0]["index"]
        self.input_dtype = np.dtype(inp[0]["dtype"])
        self.quantization = (_tflite_quant(inp[0]), _tflite_quant(out[0]))
        self.input_shape = tuple(int(v) for v in inp[0]["shape"])
        self.runtime, self.version, self.threads, self.note = runtime, version, threads, note
        self.provider, missing = _tflite_delegation(self.interpreter, provider)
        if missing:
            self.note = "; ".join(filter(None, [missing, note]))

    def run(self, x):
        self.interpreter.set_tensor(self._in, x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._out)

    def specs(self):
        return tuple({"name": d["name"], "shape": [int(v) for v in d["shape_signature"]],
                      "dtype": np.dtype(d["dtype"]).name,
                      "quantization": dict(zip(("scale", "zero_point"), q)) if (q := _tflite_quant(d)) else None}
                     for d in self._details)

    def bare_loop(self, x, runs):
        self.interpreter.set_tensor(self._in, x)
        return _timed_loop(self.interpreter.invoke, runs)


def _tflite_delegation(interpreter, expected: str) -> tuple[str, str]:
    """The delegate that really took the graph, read from the interpreter's nodes (a DELEGATE node per
    partition), and a one-line note when the expected one did not (e.g. a CPU LiteRT cannot identify)."""
    try:
        partitions = sum(op["op_name"] == "DELEGATE" for op in interpreter._get_ops_details())
    except Exception:  # a private API: an interpreter without it reports what was asked for
        return expected, ""
    if partitions:
        return f"XNNPACK (CPU){f', {partitions} partitions' if partitions > 1 else ''}", ""
    if "XNNPACK" not in expected:
        return expected, ""
    return "builtin CPU kernels", ("XNNPACK was not applied: the model runs on the interpreter's builtin kernels "
                                   "(slower, and int8 results may differ from XNNPACK's)")


def _open_litert(model_path, *, threads=None, device=None, precision=None, batch=None):
    from ai_edge_litert import interpreter as litert
    import ai_edge_litert

    version = getattr(ai_edge_litert, "__version__", "unknown")
    return TFLiteSession(litert.Interpreter, model_path, runtime="litert", version=version,
                         provider="XNNPACK (CPU)", threads=threads, batch=batch)


def _open_tflite_runtime(model_path, *, threads=None, device=None, precision=None, batch=None):
    try:
        from tflite_runtime import interpreter as tflite
        import tflite_runtime
    except (ImportError, AttributeError) as exc:  # numpy 2 breaks its compiled module
        raise MissingDependencyError(
            f"tflite-runtime does not import here ({exc}); it needs numpy<2: "
            "pip install 'edgecxr[tflite]' (or use LiteRT: pip install 'edgecxr[litert]')") from None
    note = "tflite-runtime 2.14 has no fast int8 path (about 40x slower than LiteRT here); prefer litert"
    warnings.warn(note, stacklevel=3)
    return TFLiteSession(tflite.Interpreter, model_path, runtime="tflite-runtime",
                         version=getattr(tflite_runtime, "__version__", "unknown"),
                         provider="builtin CPU kernels", threads=threads, note=note, batch=batch)


def _open_tf_lite(model_path, *, threads=None, device=None, precision=None, batch=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tf = importlib.import_module("tensorflow")
    return TFLiteSession(tf.lite.Interpreter, model_path, runtime="tf-lite", version=tf.__version__,
                         provider="XNNPACK (CPU)", threads=threads,
                         note="TensorFlow's bundled interpreter; a device needs only ai-edge-litert", batch=batch)
