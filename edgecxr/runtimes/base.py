"""What every runtime family shares: the Session a runtime returns, timing, and float in / float out around
the runtime call (quantize the input, dequantize the output exactly as the device classifier does)."""
from __future__ import annotations

import os
import time

import numpy as np

from edgecxr.utils.errors import ConfigError

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
    from edgecxr.data.contract import quantize

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


def default_threads() -> int:
    """All cores up to 4 (a Pi 4/5 has 4): recorded in every result, so runs are comparable."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))
