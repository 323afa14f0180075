"""Quiet start-up of the heavy frameworks on a CPU machine: TensorFlow's absl and CUDA lines
("failed call to cuInit ..."), NNCF's INFO lines, ONNX Runtime's quantization hints.

`edgecxr --verbose` (it sets EDGECXR_VERBOSE=1) keeps all of them. When the TensorFlow import itself
fails, what it printed is shown with the error, so nothing needed for a diagnosis is lost.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys
import tempfile

_HINTS = ("pre-processing before quantization", "run pre-processing before quantization")


def verbose() -> bool:
    return os.environ.get("EDGECXR_VERBOSE") == "1"


class _DropHints(logging.Filter):
    def filter(self, record):
        return not any(h in record.getMessage() for h in _HINTS)


def quiet_frameworks() -> None:
    """Before TensorFlow is imported: hide its C++ log below errors-of-its-own; NNCF to warnings."""
    if verbose():
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("nncf").setLevel(logging.WARNING)
    root = logging.getLogger()
    if not any(isinstance(f, _DropHints) for f in root.filters):
        root.addFilter(_DropHints())


def import_tensorflow():
    """`import tensorflow` with what its C++ start-up writes to stderr captured (absl's "log messages before
    InitializeLog", the CUDA probe); the capture is replayed when the import fails or with --verbose."""
    if "tensorflow" in sys.modules or verbose():
        return importlib.import_module("tensorflow")
    quiet_frameworks()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            return importlib.import_module("tensorflow")
        except BaseException:
            os.dup2(saved, 2)
            capture.seek(0)
            sys.stderr.write(capture.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
