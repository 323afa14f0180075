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
from edgecxr.errors import EXIT_INTERNAL, EXIT_USAGE, EdgecxrError, first_line


# Commands that live in a stage package, loaded only when named (no TensorFlow on start-up).
LAZY_COMMANDS = {
    "export": "edgecxr.export.cli:export",
    "device": "edgecxr.devices.cli:device",
    "benchmark": "edgecxr.export.benchmark:benchmark",
    "explain": "edgecxr.reports.explain:explain",
    "report": "edgecxr.reports.report:report",
    "baseline": "edgecxr.training.baseline:baseline_command",
    "serve": "edgecxr.devices.serve:serve",
    "demo": "edgecxr.demo:demo",
}


class Group(click.Group):
    """Loads stage commands lazily; turns every error into one line on stderr and its exit code (edgecxr.errors)."""

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
    temp = re.fullmatch(r"\.(.+)\.tmp-\d+-.*", name.name)  # edgecxr.atomic's temporary beside the real file
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
    from edgecxr.quiet import quiet_frameworks

    quiet_frameworks()


DATA = click.option("--data", "data", required=True, type=click.Path(path_type=Path),
                    help="Kermany-layout folder ROOT/{train,val,test}/{NORMAL,PNEUMONIA} or a CSV manifest.")
CLASSES = click.option("--classes", default="NORMAL,PNEUMONIA", show_default=True,
                       help="The two class folder names, negative first.")
STRICT = click.option("--strict", is_flag=True, help="Stop at the first unreadable image instead of skipping it.")


@main.command()
@click.option("--arch", default="mobilenet_v2", show_default=True, help="Architecture (see `edgecxr models`).")
@DATA
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Run directory to create.")
@click.option("--epochs", default=15, show_default=True)
@click.option("--size", type=int, help="Input size in pixels (default: the architecture's).")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--lr", default=1e-3, show_default=True, help="Learning rate (Adam).")
@click.option("--augment", default="standard", show_default=True, help="standard | no-flip | strong | none")
@click.option("--intensity", default=0.0, show_default=True, help="Brightness/contrast/gamma jitter strength.")
@click.option("--acquisition", default=0.0, show_default=True,
              help="Share of training images sent through another acquisition path (resampling, blur/sharpening, "
                   "JPEG re-encoding), e.g. 0.5: makes decisions stable across scanners and exports.")
@click.option("--loss", type=click.Choice(["bce", "focal"]), default="bce", show_default=True)
@click.option("--mixup", default=0.0, show_default=True, help="mixup Beta parameter (e.g. 0.2); 0 = off.")
@click.option("--label-smoothing", default=0.0, show_default=True, help="Label smoothing of the loss (e.g. 0.1).")
@click.option("--class-weights/--no-class-weights", default=True, show_default=True)
@click.option("--weights", default="none", show_default=True, help="none | imagenet | PATH to a weights file.")
@click.option("--alpha", type=float, help="Width multiplier of MobileNet models.")
@click.option("--lung-crop/--no-lung-crop", default=False, show_default=True, help="Fixed lung-region crop.")
@click.option("--equalize/--no-equalize", default=False, show_default=True, help="Histogram equalization.")
@click.option("--val-fraction", default=0.1, show_default=True, help="Share of train/ held out, grouped by patient.")
@click.option("--split-file", type=click.Path(exists=True),
              help="Reuse the split of an earlier run, or a pooled re-split from `edgecxr split`.")
@click.option("--folds", default=0, help="K-fold patient-grouped cross-validation instead of one model.")
@click.option("--patience", default=8, show_default=True, help="Early-stopping patience (epochs).")
@click.option("--head-epochs", default=3, show_default=True, help="Frozen-base epochs when weights are pretrained.")
@click.option("--finetune-layers", default=30, show_default=True, help="Base layers unfrozen in phase 2.")
@click.option("--bn-momentum", default=0.9, show_default=True, help="BatchNorm momentum when training from scratch.")
@click.option("--mixed-precision", is_flag=True, help="float16 compute on a GPU.")
@click.option("--swa", default=0, show_default=True,
              help="Average the weights of the last N epochs, then re-estimate BatchNorm statistics on plain training images.")
@click.option("--target-recall", type=float, help="Pick the threshold reaching this validation recall (default: Youden's J).")
@click.option("--seed", default=0, show_default=True)
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path),
              help="Folder to cache the decoded training images in (later epochs and runs read them back).")
@click.option("--in-memory", is_flag=True,
              help="Decode all images into memory before training (small sets; memory grows with the data). "
                   "Default: streamed from disk.")
@click.option("--backup/--no-backup", default=True, show_default=True,
              help="Back up each epoch; a killed run started again with the same command resumes there.")
@click.option("--backup-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the backup goes (default: OUT.backup beside the run folder; shared by all workers).")
@CLASSES
@STRICT
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
def train(out, overwrite, classes, **options):
    """Train a classifier; writes model, spec, split, history, curves and validation metrics.

    Example: edgecxr train --arch mobilenet_v2 --data data/kermany-cxr-224 --out runs/mnv2 --cache /tmp/cxr-cache

    With TF_CONFIG set, every worker runs the same command and only the chief writes --out (see README)."""
    from edgecxr.data import parse_classes
    from edgecxr.training.train import TrainConfig, train as run

    cfg = TrainConfig(classes=parse_classes(classes), **{k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()})
    run(cfg, out, overwrite=overwrite)
    click.echo(f"run written to {out}")


@main.command()
@click.option("--model", "model_path", type=click.Path(path_type=Path), help="Model (.keras); default: the shipped model.")
@DATA
@click.option("--split", default="test", show_default=True, help="train | val | test")
@click.option("--split-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Take --split from this split file (a pooled re-split from `edgecxr split`, or a run's split.json).")
@click.option("--out", type=click.Path(path_type=Path), help="Folder for metrics.json and plots (required unless --predictions).")
@click.option("--threshold", type=float, help="Override the model's validation threshold.")
@click.option("--bootstrap", default=1000, show_default=True, help="Bootstrap resamples for the intervals.")
@CLASSES
@STRICT
@click.option("--trust-model", is_flag=True, help="Allow models that contain code (Lambda layers): trusted files only.")
@click.option("--shortcuts/--no-shortcuts", default=True, show_default=True,
              help="Shortcut check: metrics with the border outside the lung box and the top band masked, and the "
                   "share of Grad-CAM mass inside the lung box.")
@click.option("--cam-images", default=100, show_default=True, type=click.IntRange(min=0),
              help="Grad-CAM on a seeded random subset of this many images (0: all).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--shard", help="I/N: evaluate shard I of N only and write its --predictions (merge the N files with "
                              "`edgecxr device merge FILES --out DIR`).")
@click.option("--predictions", type=click.Path(path_type=Path),
              help="Write the per-image predictions (a shard file) instead of metrics and plots.")
def evaluate(model_path, data, split, split_file, out, threshold, bootstrap, classes, strict, trust_model, shortcuts,
             cam_images, overwrite, shard, predictions):
    """Evaluate at the validation-chosen threshold; writes metrics.json (with 95% CIs) and ROC/PR/confusion PNGs.

    Example: edgecxr evaluate --data data/kermany-cxr-224 --out eval/
    Sharded: edgecxr evaluate --data D --shard 2/3 --predictions eval-2.json (on each machine), then
    edgecxr device merge eval-*.json --out eval/ (the metrics.json of `evaluate --no-shortcuts`).
    """
    from edgecxr.data import parse_classes
    from edgecxr.shards import parse_shard
    from edgecxr.training.evaluate import evaluate as run, format_metrics

    if (shard and not predictions) or (predictions and out) or not (out or predictions):
        from edgecxr.errors import ConfigError

        raise ConfigError("pass --out DIR, or --predictions FILE (with --shard I/N for one shard)")
    result = run(model_path, data, split, out, threshold=threshold, classes=parse_classes(classes), strict=strict,
                 n_boot=bootstrap, overwrite=overwrite, trust_model=trust_model, shortcuts=shortcuts,
                 cam_images=cam_images, split_file=split_file, shard=parse_shard(shard) if shard else None,
                 predictions=predictions)
    if predictions:
        click.echo(f"shard {shard or '1/1'}: {sum('prob' in r for r in result['records'])} images; written {predictions}")
        return
    click.echo(format_metrics(result))
    click.echo(f"written to {out}/metrics.json")


@main.command()
@DATA
@click.option("--ratios", default="0.79,0.05,0.16", show_default=True, help="Shares of train,val,test.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Split file to write.")
@click.option("--seed", default=0, show_default=True)
@CLASSES
@click.option("--overwrite", is_flag=True, help="Replace an existing split file.")
def split(data, ratios, out, seed, classes, overwrite):
    """Pool a Kermany-layout folder's train, val and test images and re-split them by patient (stratified, seeded).

    \b
    Example:
      edgecxr split --data ../shared/data/kermany-cxr-224 --ratios 0.79,0.05,0.16 --out split.json
      edgecxr train --data ../shared/data/kermany-cxr-224 --split-file split.json --out runs/pooled
      edgecxr evaluate --model runs/pooled/model.keras --data ../shared/data/kermany-cxr-224 --split-file split.json --out eval
    """
    import json

    from edgecxr.atomic import refuse_overlap, write_text_atomic
    from edgecxr.data import parse_classes, resplit
    from edgecxr.errors import DataError

    try:
        shares = tuple(float(r) for r in ratios.split(","))
    except ValueError:
        raise DataError(f"--ratios {ratios!r}: need three numbers train,val,test, e.g. 0.79,0.05,0.16") from None
    refuse_overlap(out, (data,))
    if out.exists() and not overwrite:
        raise DataError(f"{out} already exists; choose another --out or pass --overwrite")
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
    """Create an Ed25519 key pair for signing bundles: KEY (private, mode 0600) and KEY.pub (for devices)."""
    from edgecxr.signing import keygen as make

    private, public = make(key)
    click.echo(f"private key {private} (keep it secret; edgecxr export --signing-key {private})")
    click.echo(f"public key  {public} (give it to devices; edgecxr device run --trusted-key {public} ...)")


@main.command()
def models():
    """List the registered architectures."""
    from edgecxr.training.models import MODELS

    for name, entry in sorted(MODELS.items()):
        click.echo(f"{name:22s} {entry.spec.size:4d}px{'  (tiny, for tests)' if entry.tiny else ''}")


if __name__ == "__main__":
    main()
