"""The runtime layer: the only module that opens LiteRT / TFLite, ONNX Runtime and OpenVINO.

The device classifier, the export gate, the benchmark and the scaling study all open models here, so
the export gate runs the code the device runs. Each runtime opens a model (a file, the bytes of one, or
an in-memory OpenVINO model) and returns a ``Session``: ``run(x)`` feeds one input tensor (already in the
model's dtype and layout) and returns the raw output; ``run_float(session, x)`` takes float inputs,
quantizes them exactly as the device does, and returns float outputs. Runtimes are imported only when a
session is opened, and TensorFlow only for the ``tf-lite`` runtime, never to probe. No TensorFlow needed.

=============  ========  ============================================================
name           family    notes
=============  ========  ============================================================
litert         tflite    ai-edge-litert, XNNPACK CPU delegate (fast int8). Preferred.
tflite-runtime tflite    the last release is 2.14 (2023): needs numpy<2, no fast int8 path
tf-lite        tflite    tf.lite.Interpreter, only when TensorFlow is already installed
onnxruntime    onnx      TensorRT / CUDA execution providers when present, else CPU
openvino       openvino  device CPU (default), GPU or NPU
=============  ========  ============================================================
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgecxr.atomic import sha256_file
from edgecxr.errors import ConfigError, MissingDependencyError, ModelError


@dataclass(frozen=True)
class Runtime:
    name: str
    family: str  # which bundle family it runs: "tflite" | "onnx" | "openvino"
    module: str  # the import that must succeed
    extra: str  # pip extra that installs it
    note: str
    opener: Callable[..., "Session"]

    def available(self) -> bool:
        """True when the runtime's package is installed (found, not imported)."""
        try:
            return importlib.util.find_spec(self.module.split(".")[0]) is not None
        except (ImportError, ValueError):
            return False

    def open(self, model, *, threads: int | None = None, device: str | None = None,
             precision: str | None = None, batch: int | None = None) -> "Session":
        """model: a file, the bytes of one, or an openvino.Model; precision: the bundle target's precision
        (OpenVINO runs every model in f32 on CPU); batch: resize a fixed batch axis to this size."""
        if isinstance(model, (str, os.PathLike)):
            model = Path(model)
        return self.opener(model, threads=threads, device=device, precision=precision, batch=batch)


class Session:
    """One loaded model. Not thread-safe: the Classifier serializes calls to `run`."""

    runtime: str  # registry name
    version: str  # runtime package version
    provider: str  # delegate / execution provider / device that runs the model
    threads: int | None
    input_dtype: np.dtype
    input_shape: tuple  # with the batch dimension; None for dynamic dims
    note: str = ""
    # (scale, zero_point) of the input and the output tensor as the model file holds them; None when float
    quantization: tuple = (None, None)

    def specs(self) -> tuple[dict, dict]:
        """The manifest's input and output dicts: name, shape (-1 for dynamic), dtype, quantization."""
        raise NotImplementedError

    def run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def bare_loop(self, x: np.ndarray, runs: int) -> np.ndarray:
        """Latency (ms) of `runs` bare invocations with the input set once: the runtime's own floor."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.runtime, "version": self.version, "provider": self.provider,
                "threads": self.threads, "note": self.note}


def runtime_notes(runtime: dict) -> list[str]:
    """The one-line note a report prints under its runtime line (e.g. a delegate that was not applied)."""
    return [f"note: {runtime['note']}"] if runtime.get("note") else []


def _timed_loop(fn, runs: int) -> np.ndarray:
    out = np.empty(runs, np.float64)
    clock = time.perf_counter_ns
    for i in range(runs):
        t0 = clock()
        fn()
        out[i] = clock() - t0
    return out / 1e6


def _check_threads(threads):
    most = 4 * (os.cpu_count() or 1)  # runtimes crash on absurd counts (100000 segfaulted LiteRT)
    if threads is not None and not 1 <= threads <= most:
        raise ConfigError(f"--threads must be 1..{most} (4 per CPU), got {threads}")


# -- TFLite family ------------------------------------------------------------
def _tflite_quant(detail) -> tuple | None:
    scale, zero = detail.get("quantization", (0.0, 0))
    return (float(scale), int(zero)) if scale else None


class TFLiteSession(Session):
    def __init__(self, interpreter_cls, model, *, runtime: str, version: str, provider: str,
                 threads: int | None, note: str = "", batch: int | None = None):
        _check_threads(threads)
        source = "<model bytes>" if isinstance(model, bytes) else model
        kw = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
        from edgecxr.quiet import native_output_captured

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


# -- ONNX Runtime -------------------------------------------------------------
ORT_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
ORT_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "gpu": "CUDAExecutionProvider",
               "tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider",
               "tensorrt-fp16": "TensorrtExecutionProvider"}


def tensorrt_options(model: bytes | Path, precision: str | None, fp16: bool) -> dict:
    """ONNX Runtime's TensorRT provider options: int8 for a quantized (QDQ) bundle, fp16 when asked for, and the
    built engine cached per model (one folder per SHA-256 of the model bytes: the provider's own cache key is
    the graph's structure, so two exports of one architecture would share an engine)."""
    digest = hashlib.sha256(model).hexdigest() if isinstance(model, bytes) else sha256_file(model)
    cache = Path(os.environ.get("EDGECXR_TRT_CACHE") or Path.home() / ".cache" / "edgecxr-trt") / digest[:16]
    return {"trt_int8_enable": precision == "int8", "trt_fp16_enable": fp16 or precision == "fp16",
            "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache)}


ORT_TYPES = {"tensor(float)": np.float32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
             "tensor(float16)": np.float16}


class OrtSession(Session):
    def __init__(self, model_path, *, threads=None, device=None, precision=None, batch=None):
        import onnxruntime as ort

        source, model_path = model_path, "<model bytes>" if isinstance(model_path, bytes) else model_path
        _check_threads(threads)
        available = ort.get_available_providers()
        if device:
            wanted = ORT_ALIASES.get(device.lower(), device)
            if wanted not in available:
                raise ConfigError(f"onnxruntime provider {device!r} is not available here; available: {', '.join(available)}")
            providers = [wanted] + (["CPUExecutionProvider"] if wanted != "CPUExecutionProvider" else [])
        else:
            providers = [p for p in ORT_PREFERENCE if p in available] or available
        fp16 = (device or "").lower() == "tensorrt-fp16"
        chosen = [(p, tensorrt_options(source, precision, fp16)) if p == "TensorrtExecutionProvider" else p
                  for p in providers]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(source if isinstance(source, bytes) else str(source), options,
                                                providers=chosen)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelError(f"{model_path}: onnxruntime cannot load this model ({exc})") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise ModelError(f"{model_path}: expected one input, found {len(inputs)}")
        self._in, self._out = inputs[0].name, outputs[0].name
        self._ports = (inputs[0], outputs[0])
        self.input_dtype = np.dtype(ORT_TYPES.get(inputs[0].type, np.float32))
        self.input_shape = tuple(d if isinstance(d, int) and d > 0 else None for d in inputs[0].shape)
        self.runtime, self.version, self.threads = "onnxruntime", ort.__version__, threads
        self.provider = self.session.get_providers()[0]
        if self.provider != providers[0]:  # ORT falls back to CPU when a GPU provider's libraries fail to load
            self.note = f"{providers[0]} was not applied (libraries missing?); running on {self.provider}"

    def run(self, x):
        return self.session.run([self._out], {self._in: x})[0]

    def specs(self):
        return tuple({"name": t.name, "shape": [d if isinstance(d, int) and d > 0 else -1 for d in t.shape],
                      "dtype": np.dtype(ORT_TYPES[t.type]).name if t.type in ORT_TYPES else t.type, "quantization": None}
                     for t in self._ports)

    def bare_loop(self, x, runs):
        feed, names, run = {self._in: x}, [self._out], self.session.run
        return _timed_loop(lambda: run(names, feed), runs)


# -- OpenVINO -----------------------------------------------------------------
def _openvino_provider(core, compiled, device: str) -> str:
    """The device(s) and float precision the compiled model really uses, e.g. 'CPU (Intel Xeon ...), f32'."""
    def prop(get, name, default):
        try:
            return get(name)
        except Exception:  # a plugin without the property
            return default
    ran = prop(compiled.get_property, "EXECUTION_DEVICES", [device])
    ran = ", ".join(ran) if isinstance(ran, (list, tuple)) else str(ran)
    full = prop(lambda n: core.get_property(ran.split(",")[0].split(".")[0], n), "FULL_DEVICE_NAME", ran)
    precision = prop(compiled.get_property, "INFERENCE_PRECISION_HINT", "")
    precision = precision.to_string() if hasattr(precision, "to_string") else str(precision)
    return f"{ran} ({full})" + (f", {precision}" if precision else "")


class OpenVinoSession(Session):
    def __init__(self, model_path, *, threads=None, device=None, precision=None, batch=None):
        import openvino as ov

        _check_threads(threads)
        device = (device or "CPU").upper()
        core = ov.Core()
        if device.split(".")[0] not in {d.split(".")[0] for d in core.available_devices} and device != "AUTO":
            raise ConfigError(f"OpenVINO device {device!r} is not available here; available: {', '.join(core.available_devices)}")
        config = {"INFERENCE_NUM_THREADS": int(threads)} if threads and device == "CPU" else {}
        if device == "CPU":
            # The export gate ran f32. CPUs with bf16/AMX would otherwise run bf16, ARM f16 (int8 bundles too,
            # in their float parts): answers that drift from the verified ones and differ between CPUs.
            config["INFERENCE_PRECISION_HINT"] = "f32"
        source = model_path
        if isinstance(source, ov.Model):  # error messages name it
            model_path = f"<OpenVINO model {source.get_friendly_name()}>"
        try:
            model = source if isinstance(source, ov.Model) else core.read_model(str(source))
            if batch:
                shape = model.inputs[0].get_partial_shape()
                model.reshape({model.inputs[0]: ov.PartialShape([batch, *list(shape)[1:]])})
            self._model = model
            compiled = core.compile_model(model, device, config)
        except Exception as exc:
            raise ModelError(f"{model_path}: OpenVINO cannot compile this model for {device} ({exc})") from None
        if len(compiled.inputs) != 1:
            raise ModelError(f"{model_path}: expected one input, found {len(compiled.inputs)}")
        self.request = compiled.create_infer_request()
        self._port = compiled.inputs[0]
        self._out = compiled.outputs[0]
        self.input_dtype = np.dtype(self._port.get_element_type().to_dtype())
        shape = self._port.get_partial_shape()
        self.input_shape = tuple(d.get_length() if d.is_static else None for d in shape)
        self.runtime, self.version, self.threads = "openvino", ov.__version__.split("-")[0], threads
        self.provider = _openvino_provider(core, compiled, device)
        self._first_call(model_path)

    def _first_call(self, model_path):
        """Run once at load: some kernels fail only when first executed (OpenVINO's ARM int8 convolutions on
        CPUs without dot-product instructions), and that must be one error at load, not one per image."""
        if any(d is None for d in self.input_shape[1:]):
            return
        try:
            self.request.infer({0: np.zeros((self.input_shape[0] or 1, *self.input_shape[1:]), self.input_dtype)})
        except RuntimeError as exc:
            from edgecxr.cpu import cpu_info

            if cpu_info()["int8_path"] == "ARM NEON without dot product":
                raise ModelError(
                    f"{model_path}: OpenVINO {self.version} cannot run this int8 model on this CPU: its ARM int8 "
                    "convolutions need the dot-product instructions (ARMv8.2+; a Raspberry Pi 4 has none); "
                    "use the tflite-int8 or onnx-int8 bundle, or openvino-fp32") from None
            raise ModelError(f"{model_path}: OpenVINO cannot run this model on {self.provider} "
                             f"({str(exc).strip().splitlines()[-1]})") from None

    def run(self, x):
        return self.request.infer({0: x})[self._out]

    def specs(self):
        return tuple({"name": port.get_any_name(),
                      "shape": [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()],
                      "dtype": np.dtype(port.get_element_type().to_dtype()).name, "quantization": None}
                     for port in (self._model.inputs[0], self._model.outputs[0]))

    def bare_loop(self, x, runs):
        import openvino as ov

        self.request.set_input_tensor(ov.Tensor(np.ascontiguousarray(x)))
        return _timed_loop(self.request.infer, runs)


# -- float in, float out: what the device does around the runtime call ----------------
def is_nchw(shape, channels: int) -> bool:
    """Channels-first input (some ONNX exports): the channel count sits in front and not at the end."""
    return len(shape) == 4 and shape[1] == channels and shape[-1] != channels


def quantize_input(x: np.ndarray, quantization, dtype) -> np.ndarray:
    """float -> the model's input dtype. Integer inputs: round(x / scale) + zero_point in float32, then
    clipped, exactly as the device classifier's 256-entry table does it."""
    dtype = np.dtype(dtype)
    if quantization is None or dtype.kind not in "iu":
        return np.asarray(x).astype(dtype, copy=False)
    from edgecxr.contract import quantize

    return quantize(x, *quantization, dtype)


def dequantize(y: np.ndarray, quantization) -> np.ndarray:
    """The model's raw output -> float64 (integer outputs through their scale and zero point)."""
    y = np.asarray(y)
    if quantization is not None and y.dtype.kind in "iu":
        scale, zero = quantization
        return (y.astype(np.float64) - zero) * scale
    return y.astype(np.float64)


def run_float(session: Session, x: np.ndarray, channels: int | None = None) -> np.ndarray:
    """Float NHWC inputs (N, H, W, C) -> float outputs (N, K), one image per call as the device runs them."""
    channels = channels or x.shape[-1]
    nchw = is_nchw(session.input_shape, channels)
    q_in, q_out = session.quantization
    outs = []
    for i in range(len(x)):
        xi = quantize_input(x[i:i + 1], q_in, session.input_dtype)
        outs.append(dequantize(session.run(np.ascontiguousarray(xi.transpose(0, 3, 1, 2) if nchw else xi)), q_out).reshape(-1))
    return np.stack(outs) if outs else np.zeros((0, 1))


RUNTIMES: dict[str, Runtime] = {
    r.name: r
    for r in [
        Runtime("litert", "tflite", "ai_edge_litert", "litert", "Google LiteRT (ex TFLite), XNNPACK", _open_litert),
        Runtime("tflite-runtime", "tflite", "tflite_runtime", "tflite",
                "legacy tflite-runtime 2.14: needs numpy<2, slow int8; for old Pi OS images", _open_tflite_runtime),
        Runtime("tf-lite", "tflite", "tensorflow", "train", "tf.lite from an installed TensorFlow", _open_tf_lite),
        Runtime("onnxruntime", "onnx", "onnxruntime", "onnx", "TensorRT/CUDA providers when present, else CPU", OrtSession),
        Runtime("openvino", "openvino", "openvino", "openvino", "device CPU, GPU or NPU", OpenVinoSession),
    ]
}


def runtimes_for(family: str) -> list[Runtime]:
    return [r for r in RUNTIMES.values() if r.family == family]


def pick_runtime(family: str, name: str | None = None) -> Runtime:
    """The runtime to use for a bundle family: `name` if given (checked), else the first installed one."""
    candidates = runtimes_for(family)
    if name:
        if name not in RUNTIMES:
            raise ConfigError(f"unknown runtime {name!r}; valid: {', '.join(RUNTIMES)}")
        runtime = RUNTIMES[name]
        if runtime.family != family:
            raise ConfigError(f"runtime {name} runs {runtime.family} models, but this bundle is {family}; "
                              f"use one of: {', '.join(r.name for r in candidates)}")
        if not runtime.available():
            raise MissingDependencyError(f"runtime {name} is not installed; pip install 'edgecxr[{runtime.extra}]'")
        return runtime
    for runtime in candidates:
        if runtime.available():
            return runtime
    extras = " or ".join(f"pip install 'edgecxr[{r.extra}]'" for r in candidates if r.extra != "train")
    raise MissingDependencyError(f"no runtime for {family} bundles is installed; {extras}")


def build_runtime(family: str) -> str | None:
    """The runtime the export gate and the benchmarks use on the build machine: LiteRT, as a device does
    (TensorFlow's interpreter when LiteRT is missing), never tflite-runtime 2.14; None: the first installed."""
    if family != "tflite":
        return None
    return "litert" if RUNTIMES["litert"].available() else "tf-lite"


def default_threads() -> int:
    """All cores up to 4 (a Pi 4/5 has 4): recorded in every result, so runs are comparable."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def open_session(model_path, family: str, *, runtime: str | None = None, threads: int | None = None,
                 device: str | None = None, precision: str | None = None, batch: int | None = None) -> Session:
    """Open `model_path` with the chosen (or first installed) runtime of `family`.

    threads defaults to default_threads().
    Without an explicit runtime, a tflite-runtime that fails to import (numpy 2)
    falls through to the next candidate instead of failing.
    """
    threads = threads or default_threads()
    if runtime:
        return pick_runtime(family, runtime).open(model_path, threads=threads, device=device, precision=precision,
                                                  batch=batch)
    errors = []
    for candidate in runtimes_for(family):
        if not candidate.available():
            continue
        try:
            return candidate.open(model_path, threads=threads, device=device, precision=precision, batch=batch)
        except MissingDependencyError as exc:
            errors.append(str(exc))
    if errors:
        raise MissingDependencyError("; ".join(errors))
    pick_runtime(family)  # raises the "install one of" error
    raise AssertionError("unreachable")


def list_runtimes() -> list[dict]:
    return [{"name": r.name, "family": r.family, "installed": r.available(), "extra": r.extra, "note": r.note}
            for r in RUNTIMES.values()]
