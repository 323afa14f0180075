"""Run an exported model file on float inputs (for accuracy checks and tests), and read its tensor specs."""
from __future__ import annotations

import numpy as np


def _tflite_interpreter(model):
    """A LiteRT (else TensorFlow's) interpreter: read the weights of a model (no inference here)."""
    from edgecxr.runtimes import RUNTIMES, build_runtime

    return RUNTIMES[build_runtime("tflite")].open(model, threads=1).interpreter


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
    """A model file, its bytes or an openvino.Model, opened by the device's runtime layer
    (edgecxr.runtimes): float inputs in, float outputs out, quantized exactly as on the device.
    .specs() gives the manifest's input/output dicts."""

    def __init__(self, family: str, model):
        from edgecxr.formats.targets import FAMILIES
        from edgecxr.runtimes import build_runtime, open_session

        if family not in FAMILIES:
            raise ValueError(family)
        self.family = family
        self.session = open_session(model, family, runtime=build_runtime(family))

    def specs(self) -> tuple[dict, dict]:
        return self.session.specs()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        from edgecxr.runtimes import run_float

        return run_float(self.session, np.asarray(x, np.float32))


def run_bundle(bundle_dir, x: np.ndarray) -> np.ndarray:
    """Raw outputs (N, K) of a bundle's model on float inputs (used by tests)."""
    from edgecxr.formats.bundle import load_bundle

    b = load_bundle(bundle_dir)
    return Runner(b.target.family, b.model_path)(x)
