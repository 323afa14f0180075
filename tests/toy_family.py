"""A toy model family added through the format table alone (issue 29): "npref", a numpy reference runtime.

Its converter writes the tiny CNN's layers (Conv2D+ReLU, BatchNormalization, MaxPooling2D, Flatten, Dense) into an
.npz; its runtime runs them in numpy. Registered with `add()`, it goes through the generic export -> bundle ->
device parity path: nothing outside the table knows its name."""
from __future__ import annotations

import json

import numpy as np

from edgecxr.formats.targets import FAMILIES, TARGETS, Family, RuntimeRow, Target
from edgecxr.runtimes.base import Session

FAMILY = Family("npref", "numpy", ".npz", "", ("fp32",), "toy_family:convert", (), runtimes=(
    RuntimeRow("numpy-ref", "numpy", "", "numpy reference runtime (tests)", "toy_family:NumpySession"),))
TARGET = Target("npref-fp32", "npref", "fp32", False, "numpy reference, float32 (tests)")


def add(monkeypatch) -> None:
    """The table rows, for one test (the runtime registry is rebuilt from the table)."""
    import edgecxr.runtimes as R

    monkeypatch.setitem(FAMILIES, FAMILY.name, FAMILY)
    monkeypatch.setitem(TARGETS, TARGET.name, TARGET)
    monkeypatch.setattr(R, "RUNTIMES", R._registry())


def convert(target, ctx, path) -> dict:
    """The family's converter: the Keras layers' weights and kinds -> model.npz."""
    arrays, kinds = {}, []
    for layer in ctx.source.keras_model.layers:
        kind = type(layer).__name__
        if kind in ("InputLayer", "Dropout"):
            continue
        if kind not in ("Conv2D", "BatchNormalization", "MaxPooling2D", "Flatten", "Dense"):
            raise ValueError(f"the numpy reference runtime has no {kind}")
        for i, w in enumerate(layer.get_weights()):
            arrays[f"{len(kinds)}_{i}"] = w
        activation = getattr(layer, "activation", None)
        kinds.append({"kind": kind, "activation": getattr(activation, "__name__", None),
                      "epsilon": getattr(layer, "epsilon", None)})
    with open(path, "wb") as f:
        np.savez(f, layers=np.array(json.dumps(kinds)), **arrays)
    return {"qat": False, "accuracy_control": None}


def _layer(x, spec, w):
    if spec["kind"] == "Conv2D":
        k = w[0]
        pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        cols = np.stack([pad[:, i:i + x.shape[1], j:j + x.shape[2]] for i in range(3) for j in range(3)], axis=3)
        x = np.einsum("nhwkc,kco->nhwo", cols, k.reshape(9, k.shape[2], k.shape[3])) + w[1]
    elif spec["kind"] == "BatchNormalization":
        gamma, beta, mean, var = w
        return (x - mean) / np.sqrt(var + spec["epsilon"]) * gamma + beta
    elif spec["kind"] == "MaxPooling2D":
        n, h, wd, c = x.shape
        x = np.pad(x, ((0, 0), (0, h % 2), (0, wd % 2), (0, 0)), constant_values=-np.inf)
        return x.reshape(n, x.shape[1] // 2, 2, x.shape[2] // 2, 2, c).max(axis=(2, 4))
    elif spec["kind"] == "Flatten":
        return x.reshape(len(x), -1)
    else:
        x = x @ w[0] + w[1]
    return {"relu": lambda v: np.maximum(v, 0), "sigmoid": lambda v: 1 / (1 + np.exp(-v))}.get(
        spec["activation"], lambda v: v)(x)


class NumpySession(Session):
    """The family's runtime: the layers of model.npz in float32 numpy."""

    def __init__(self, model, *, threads=None, device=None, precision=None, batch=None):
        import io

        data = np.load(io.BytesIO(model) if isinstance(model, bytes) else model)
        self.layers = json.loads(str(data["layers"]))
        self.weights = [[data[f"{i}_{j}"] for j in range(4) if f"{i}_{j}" in data] for i in range(len(self.layers))]
        first = self.weights[0][0]  # the first convolution's kernel: (3, 3, channels, filters)
        self.runtime, self.version, self.provider, self.threads = "numpy-ref", np.__version__, "numpy", threads
        self.input_dtype, self.input_shape = np.dtype(np.float32), (None, None, None, first.shape[2])

    def run(self, x):
        x = np.asarray(x, np.float32)
        for spec, w in zip(self.layers, self.weights):
            x = _layer(x, spec, w)
        return x.astype(np.float32)

    def specs(self):
        return ({"name": "input", "shape": [-1, -1, -1, int(self.input_shape[3])], "dtype": "float32",
                 "quantization": None},
                {"name": "prob", "shape": [-1, 1], "dtype": "float32", "quantization": None})


def broken_opener(model, **kwargs):
    """A runtime that is installed but does not import (an old wheel under numpy 2)."""
    raise ImportError("numpy.core.multiarray failed to import")
