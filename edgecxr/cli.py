"""The `edgecxr` command. Stage modules are imported inside each command, so
`edgecxr device ...` never imports TensorFlow."""
from __future__ import annotations

import errno
import os
import re
import signal
import sys
import threading
from pathlib import Path

import click

from edgecxr import __version__
from edgecxr.utils.errors import EXIT_INTERNAL, EXIT_USAGE, EdgecxrError, first_line
from edgecxr.options import CLASSES, DATA, STRICT, data_option, overwrite_option  # noqa: F401 (re-exported)


# Commands that live in a stage package, loaded only when named (no TensorFlow on start-up).
LAZY_COMMANDS = {
    "train": "edgecxr.training.cli:train",
    "evaluate": "edgecxr.training.cli:evaluate",
    "models": "edgecxr.training.cli:models",
    "export": "edgecxr.export.cli:export",
    "device": "edgecxr.devices.cli:device",
    "benchmark": "edgecxr.bench.run:benchmark",
    "explain": "edgecxr.reports.explain:explain",
    "report": "edgecxr.reports.report:report",
    "baseline": "edgecxr.training.baseline:baseline_command",
    "serve": "edgecxr.devices.serve:serve",
    "demo": "edgecxr.demo:demo",
}


class Group(click.Group):
    """Loads stage commands lazily; turns every error into one line on stderr and its exit code (edgecxr.utils.errors)."""

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx, name):
        return super().get_command(ctx, name) or self._lazy(name)

    @staticmethod
    def _lazy(name):
        if name not in LAZY_COMMANDS:
            return None
        import importlib

        module, attr = LAZY_COMMANDS[name].split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:  # a stage not installed, or broken: say which and why
            return _unavailable(name, module, exc)

    def invoke(self, ctx):
        previous = _exit_on_sigterm()
        try:
            return super().invoke(ctx)
        except EdgecxrError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except OSError as exc:  # an unwritable output, a folder given as a file...: one line, never a traceback
            click.echo(f"error: {os_error_message(exc)}", err=True)
            sys.exit(EXIT_USAGE)  # 2, never 1: parity uses 1 for "failed"
        except KeyboardInterrupt:
            click.echo("interrupted; nothing half-written was kept", err=True)
            sys.exit(130)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # click's own usage errors (exit 2) and exits
        except Exception as exc:  # a bug: one line and exit 3, never 1 ("a gate failed")
            if os.environ.get("EDGECXR_TRACEBACK"):
                import traceback

                traceback.print_exc()
            click.echo(f"internal error: {type(exc).__name__}: {first_line(exc)}; this is a bug in edgecxr, please "
                       "report it with the command (EDGECXR_TRACEBACK=1 prints the traceback)", err=True)
            sys.exit(EXIT_INTERNAL)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def _unavailable(name: str, module: str, exc: Exception) -> click.Command:
    """A placeholder for a stage command that does not import: its help line and its run say why."""
    reason = f"{name} is unavailable: {module} does not import ({type(exc).__name__}: {first_line(exc, 120)})"
    hint = ("; install the stage's extra (pip install 'edgecxr[all]')" if isinstance(exc, ModuleNotFoundError)
            else "; this is a bug in edgecxr, please report it")

    def run(args):
        click.echo(f"error: {reason}{hint}", err=True)
        sys.exit(EXIT_USAGE)

    return click.Command(name, callback=run, help=f"(unavailable) {reason}.", short_help=f"(unavailable: {type(exc).__name__})",
                         params=[click.Argument(["args"], nargs=-1)], context_settings={"ignore_unknown_options": True})


def _exit_on_sigterm():
    """SIGTERM (systemd, docker stop, kill) exits through the normal path: temporary folders and extracted
    bundles are removed as on Ctrl-C. Returns the previous handler (None when not installed)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        return None

    def stop(signum, frame):
        sys.exit(128 + signum)

    return signal.signal(signal.SIGTERM, stop)


# errno -> (what was attempted, what to do)
_OS_HINTS = {
    errno.EISDIR: ("write/read", "it is a folder; pass a file path"),
    errno.ENOTDIR: ("write/read", "a part of the path is a file, not a folder; fix the path"),
    errno.ENOENT: ("read", "check the path"),
    errno.EACCES: ("write/read", "check its permissions or choose another path"),
    errno.EPERM: ("write/read", "check its permissions or choose another path"),
    errno.EROFS: ("write", "the file system is read-only; choose another path"),
    errno.ENOSPC: ("write", "the disk is full; free some space or choose another path"),
    errno.EDQUOT: ("write", "the disk quota is exceeded; free some space or choose another path"),
    errno.ENAMETOOLONG: ("write/read", "the name is too long; choose a shorter path"),
    errno.EADDRINUSE: ("use", "another program holds that port; choose another --port"),
}


def os_error_message(exc: OSError) -> str:
    """`cannot write/read FILE: REASON; WHAT TO DO` for an OSError (the user's file, not an atomic writer's temporary)."""
    name = exc.filename2 if exc.filename2 is not None else exc.filename  # a rename names its destination second
    verb, hint = _OS_HINTS.get(exc.errno, ("write/read", "check the path and try again"))
    reason = exc.strerror or str(exc)
    if name is None:
        return f"{reason}; {hint}"
    name = Path(os.fsdecode(name)) if isinstance(name, (str, bytes, os.PathLike)) else Path(str(name))
    temp = re.fullmatch(r"\.(.+)\.tmp-\d+-.*", name.name)  # edgecxr.utils.atomic's temporary beside the real file
    if temp:
        name = name.with_name(temp[1])
    return f"cannot {verb} {name}: {reason}; {hint}"


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgecxr")
@click.option("--verbose", is_flag=True, help="Keep TensorFlow's, NNCF's and the converters' own log lines.")
def main(verbose):
    """Train, export and verify chest X-ray pneumonia classifiers for edge devices.

    \b
    edgecxr demo --out demo                      # the shipped model, the shipped sample
    edgecxr export --target tflite-int8 --data ../shared/data/kermany-cxr-224 --out bundles
    edgecxr device parity bundles/tflite-int8 --data ../shared/data/kermany-cxr-224
    """
    if verbose:
        os.environ["EDGECXR_VERBOSE"] = "1"
    from edgecxr.utils.quiet import quiet_frameworks

    quiet_frameworks()


def _split_file_of_ours(path) -> bool:
    """True for a pooled split file that `edgecxr split` wrote (what its --overwrite may replace)."""
    from edgecxr.data.folders import is_pooled
    from edgecxr.utils.errors import DataError

    try:
        return path.is_file() and is_pooled(path)
    except DataError:
        return False


@main.command()
@data_option("Kermany-layout folder ROOT/{train,val,test}/{NORMAL,PNEUMONIA} (a CSV manifest is not re-split).")
@click.option("--ratios", default="0.79,0.05,0.16", show_default=True, help="Shares of train,val,test.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Split file to write.")
@click.option("--seed", default=0, show_default=True)
@CLASSES
@overwrite_option("Replace a split file that edgecxr split wrote.")
def split(data, ratios, out, seed, classes, overwrite):
    """Pool a Kermany-layout folder's train, val and test images and re-split them by patient (stratified, seeded).

    \b
    Example:
      edgecxr split --data ../shared/data/kermany-cxr-224 --ratios 0.79,0.05,0.16 --out split.json
      edgecxr train --data ../shared/data/kermany-cxr-224 --split-file split.json --out runs/pooled
      edgecxr evaluate --model runs/pooled/model.keras --data ../shared/data/kermany-cxr-224 --split-file split.json --out eval
    """
    import json

    from edgecxr.utils.atomic import refuse_overlap, write_text_atomic
    from edgecxr.data.folders import parse_classes, resplit
    from edgecxr.utils.errors import DataError

    try:
        shares = tuple(float(r) for r in ratios.split(","))
    except ValueError:
        raise DataError(f"--ratios {ratios!r}: need three numbers train,val,test, e.g. 0.79,0.05,0.16") from None
    refuse_overlap(out, (data,))
    if out.exists() and not overwrite:
        raise DataError(f"{out} already exists; choose another --out or pass --overwrite")
    if out.exists() and not _split_file_of_ours(out):
        raise DataError(f"{out} is not a split file of `edgecxr split`; --overwrite replaces only those, choose another --out")
    result = resplit(data, shares, seed=seed, classes=parse_classes(classes))
    write_text_atomic(out, json.dumps(result, indent=1) + "\n")
    for name, part in result["summary"].items():
        origin = ", ".join(f"{n} from {k}/" for k, n in part["from_official"].items() if n)
        click.echo(f"{name:5s} {part['images']:5d} images ({part['image_share']:.1%}), {part['patients']:5d} patients "
                   f"({part['patient_share']:.1%}), {part['positive']} positive / {part['negative']} negative; {origin}")
    click.echo(f"warning: results on this split are not comparable with the official {data}/test split or with "
               "papers that report on it; no patient is in two parts", err=True)
    click.echo(f"written to {out}")


@main.command()
@click.argument("key", type=click.Path(dir_okay=False, path_type=Path))
def keygen(key):
    """Create an Ed25519 key pair for signing bundles: KEY (private, mode 0600) and KEY.pub (for devices).

    Example: edgecxr keygen keys/release (then edgecxr export ... --signing-key keys/release)"""
    from edgecxr.formats.signing import keygen as make

    private, public = make(key)
    click.echo(f"private key {private} (keep it secret; edgecxr export --signing-key {private})")
    click.echo(f"public key  {public} (give it to devices; edgecxr device run --trusted-key {public} ...)")


if __name__ == "__main__":
    main()
