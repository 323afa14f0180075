"""Quiet start-up of the heavy frameworks on a CPU machine: TensorFlow's absl and CUDA lines
("failed call to cuInit ..."), NNCF's INFO lines, ONNX Runtime's quantization hints.

`edgecxr --verbose` (it sets EDGECXR_VERBOSE=1) keeps all of them. When the TensorFlow import itself
fails, what it printed is shown with the error, so nothing needed for a diagnosis is lost.
"""
from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def native_output_captured():
    """What C++ code writes to stdout/stderr inside the block (TensorFlow's absl start-up lines, the TFLite
    converter's "fully_quantize: ..." lines) goes to a temporary file; it is replayed on stderr when the block
    fails, or passed through with --verbose."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = {} if verbose() else {fd: os.dup(fd) for fd in (1, 2)}
    except (OSError, ValueError, AttributeError):  # a closed stdout/stderr (a daemon): nothing to capture
        saved = {}
    if not saved:
        yield
        return
    with tempfile.TemporaryFile() as capture:
        for fd in (1, 2):
            os.dup2(capture.fileno(), fd)
        try:
            yield
        except BaseException:
            for fd, copy in saved.items():
                os.dup2(copy, fd)
            capture.seek(0)
            sys.stderr.write(capture.read().decode(errors="replace"))
            raise
        finally:
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)


def import_tensorflow():
    """`import tensorflow` with what its C++ start-up writes captured (absl's "log messages before
    InitializeLog", the CUDA probe); the capture is replayed when the import fails or with --verbose."""
    if "tensorflow" in sys.modules or verbose():
        return importlib.import_module("tensorflow")
    quiet_frameworks()
    with native_output_captured():
        return importlib.import_module("tensorflow")
