"""Typed errors. Every error a user can cause is an EdgecxrError with one clear line."""


class EdgecxrError(Exception):
    """Base class: the CLI prints `error: <message>` and exits non-zero."""

    exit_code = 2


class ImageError(EdgecxrError):
    """An image file that cannot be read (corrupt, empty, too large, unsupported)."""


class DataError(EdgecxrError):
    """A data folder or manifest without the expected layout."""


class ModelError(EdgecxrError):
    """A model that cannot be loaded or has the wrong inputs/outputs."""


class ExportIncomplete(ModelError):
    """Some export targets were refused (their gate failed); the others were written."""

    def __init__(self, written, refused: dict):
        self.written, self.refused = list(written), dict(refused)
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
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module} is not installed ({exc}); install it with: pip install 'edgecxr[{extra}]'"
        ) from None
