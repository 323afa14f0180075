"""The runtime layer: the only package that opens LiteRT / TFLite, ONNX Runtime and OpenVINO (one module per
family: tflite.py, onnx.py, openvino.py; what they share: base.py). The runtimes and their openers are rows of
the format table (edgecxr.formats.targets.FAMILIES); this module makes them openable.

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

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from edgecxr.formats.targets import FAMILIES, RuntimeRow, load
from edgecxr.runtimes.base import (Session, default_threads, dequantize, is_nchw, quantize_input, run_float,  # noqa: F401
                                   runtime_notes)
from edgecxr.utils.errors import ConfigError, MissingDependencyError, first_line


@dataclass(frozen=True)
class Runtime:
    """A runtime row of the format table, with the family that row belongs to."""
    row: RuntimeRow
    family: str

    name = property(lambda self: self.row.name)
    module = property(lambda self: self.row.module)
    extra = property(lambda self: self.row.extra)
    note = property(lambda self: self.row.note)

    def available(self) -> bool:
        """True when the runtime's package is installed (found, not imported)."""
        try:
            return importlib.util.find_spec(self.module.split(".")[0]) is not None
        except (ImportError, ValueError):
            return False

    def open(self, model, *, threads: int | None = None, device: str | None = None,
             precision: str | None = None, batch: int | None = None) -> Session:
        """model: a file, the bytes of one, or an openvino.Model; precision: the bundle target's precision
        (OpenVINO runs every model in f32 on CPU); batch: resize a fixed batch axis to this size."""
        if isinstance(model, (str, os.PathLike)):
            model = Path(model)
        try:
            opener = load(self.row.opener)
            return opener(model, threads=threads, device=device, precision=precision, batch=batch)
        except ImportError as exc:  # installed but broken (numpy 2 under an old wheel, a missing library)
            raise MissingDependencyError(f"runtime {self.name} is installed but does not import ({first_line(exc, 200)}); "
                                         f"reinstall it: pip install --force-reinstall 'edgecxr[{self.extra}]'") from None


def _registry() -> dict[str, Runtime]:
    return {r.name: Runtime(r, f.name) for f in FAMILIES.values() for r in f.runtimes}


RUNTIMES: dict[str, Runtime] = _registry()


def runtimes_for(family: str) -> list[Runtime]:
    return [RUNTIMES[r.name] for r in FAMILIES[family].runtimes]


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


def build_runtime(family: str) -> str:
    """The runtime the export gate and the benchmarks use on the build machine: the first installed runtime the
    table allows there (LiteRT, as a device does; TensorFlow's interpreter when LiteRT is missing; never
    tflite-runtime 2.14), else the last one allowed (its open names what to install)."""
    allowed = [r for r in runtimes_for(family) if r.row.build]
    return next((r.name for r in allowed if r.available()), allowed[-1].name)


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
