"""The ONNX family's runtime: ONNX Runtime (TensorRT / CUDA execution providers when present, else CPU)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from edgecxr.runtimes.base import Session, _check_threads, _timed_loop
from edgecxr.utils.atomic import sha256_file
from edgecxr.utils.errors import ConfigError, ModelError

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
