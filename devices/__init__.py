"""Device stage: run a bundle on a Pi, a Jetson or a PC with numpy, Pillow and one runtime.

Never imports TensorFlow (only the optional ``tf-lite`` runtime does, when chosen).
Public names are loaded lazily so ``import edgecxr.devices`` stays light.

    from edgecxr.devices import Classifier
    Classifier.load("bundle/").predict("chest.jpeg")
"""
from __future__ import annotations

__all__ = ["Classifier", "Prediction", "Failure", "Timings", "RUNTIMES", "run_parity", "run_bench"]

_LAZY = {
    "Classifier": "edgecxr.devices.classifier",
    "Prediction": "edgecxr.devices.classifier",
    "Failure": "edgecxr.devices.classifier",
    "Timings": "edgecxr.devices.classifier",
    "RUNTIMES": "edgecxr.runtimes",
    "run_parity": "edgecxr.devices.parity",
    "run_bench": "edgecxr.devices.bench",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgecxr.devices' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
