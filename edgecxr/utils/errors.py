"""Typed errors and exit codes. Every error a user can cause is an EdgecxrError with one clear line."""

# The exit codes of every edgecxr command (docs/reliability.md). A crash never exits 1.
EXIT_OK = 0  # done; a gate (parity, export) passed
EXIT_GATE_FAILED = 1  # a gate said no: device parity failed, export refused a target on its accuracy gate, choose found none
EXIT_USAGE = 2  # a usage or input error: bad option, unreadable file, unsafe model, tampered bundle, missing extra
EXIT_INTERNAL = 3  # an internal error (a bug): one line; EDGECXR_TRACEBACK=1 prints the traceback


class EdgecxrError(Exception):
    """Base class: the CLI prints `error: <message>` and exits with `exit_code`."""

    exit_code = EXIT_USAGE


class ImageError(EdgecxrError):
    """An image file that cannot be read (corrupt, empty, too large, unsupported)."""


class DataError(EdgecxrError):
    """A data folder or manifest without the expected layout."""


class ModelError(EdgecxrError):
    """A model that cannot be loaded or has the wrong inputs/outputs."""


class GateFailed(ModelError):
    """An export target missed its accuracy gate (validation or export parity): exit 1, like failed parity."""

    exit_code = EXIT_GATE_FAILED


class ExportIncomplete(ModelError):
    """Some export targets were refused; the others were written. Exit 1 when only gates refused them."""

    def __init__(self, written, refused: dict, gate_only: bool = False):
        self.written, self.refused = list(written), dict(refused)
        self.exit_code = EXIT_GATE_FAILED if gate_only else EXIT_USAGE
        super().__init__(f"{len(refused)} of {len(self.written) + len(refused)} target(s) refused "
                         f"({', '.join(refused)}); {len(self.written)} written; see the summary above")


class BundleError(EdgecxrError):
    """A bundle that is incomplete, tampered with or of an unknown version."""


class ConfigError(EdgecxrError):
    """An unknown name or a bad option value."""


class MissingDependencyError(EdgecxrError):
    """An optional dependency (an extra) is not installed."""


def require(module: str, extra: str):
    """Import an optional module or raise an error naming the extra to install."""
    import importlib

    try:
        if module == "tensorflow":
            from edgecxr.utils.quiet import import_tensorflow

            return import_tensorflow()
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module} is not installed ({exc}); install it with: pip install 'edgecxr[{extra}]'"
        ) from None


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (converters print pages), or its type."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0][:limit] if lines else type(exc).__name__


def printable(text: str) -> str:
    """Text safe to print on one console line: control characters shown as '?'."""
    return "".join(ch if ch.isprintable() else "?" for ch in str(text))
