"""The training stage's commands: `edgecxr train`, `edgecxr evaluate`, `edgecxr models` (loaded when named;
TensorFlow starts only after the options and the data folder are checked)."""
from __future__ import annotations

from pathlib import Path

import click

from edgecxr.cli import CLASSES, DATA, STRICT


@click.command()
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
@click.option("--teacher", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Distill from this edgecxr model: each training target mixes the label with the teacher's probability.")
@click.option("--distill", type=float, help="With --teacher: the teacher's share of each target (default 0.5).")
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

    if options["distill"] is None:
        del options["distill"]  # TrainConfig's default
    elif options["teacher"] is None:
        from edgecxr.errors import ConfigError

        raise ConfigError("--distill sets the teacher's share of each target; add --teacher MODEL (or leave out --distill)")
    cfg = TrainConfig(classes=parse_classes(classes), **{k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()})
    run(cfg, out, overwrite=overwrite)
    click.echo(f"run written to {out}")


@click.command()
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


@click.command()
def models():
    """List the registered architectures.

    Example: edgecxr models"""
    from edgecxr.training.models import MODELS

    for name, entry in sorted(MODELS.items()):
        click.echo(f"{name:22s} {entry.spec.size:4d}px{'  (tiny, for tests)' if entry.tiny else ''}")
