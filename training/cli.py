"""The training stage's commands: `edgecxr train`, `edgecxr evaluate`, `edgecxr models` (loaded when named;
TensorFlow starts only after the options and the data folder are checked)."""
from __future__ import annotations

from pathlib import Path

import click

from edgecxr.options import (CLASSES, DATA, STRICT, config_file_option, config_from, config_options,
                             overwrite_option, trust_model_option)
from edgecxr.training.train import TrainConfig


@click.command()
@config_file_option(TrainConfig, help="Settings from a TOML, JSON or YAML file whose keys are the option names "
                                      "(batch_size or batch-size), e.g. a run's config.json; options given here win.")
@config_options(TrainConfig, before={"epochs": [click.option("--out", required=True, type=click.Path(path_type=Path),
                                                             help="Run directory to create.")]})
@overwrite_option("Replace an existing run directory.")
def train(out, overwrite, **options):
    """Train a classifier; writes model, spec, split, history, curves and validation metrics.

    Example: edgecxr train --arch mobilenet_v2 --data data/kermany-cxr-224 --out runs/mnv2 --cache /tmp/cxr-cache

    With TF_CONFIG set, every worker runs the same command and only the chief writes --out (see docs/training.md)."""
    from edgecxr.training.train import train as run

    if options["distill"] is not None and options["teacher"] is None and _distill_given(options["distill"]):
        from edgecxr.utils.errors import ConfigError

        raise ConfigError("--distill sets the teacher's share of each target; add --teacher MODEL (or leave out --distill)")
    cfg = config_from(TrainConfig, options)
    run(cfg, out, overwrite=overwrite)
    click.echo(f"run written to {out}")


def _distill_given(value) -> bool:
    """--distill on the command line, or a --config file's share other than the default (a run's config.json
    records the default share with no teacher)."""
    from click.core import ParameterSource

    source = click.get_current_context().get_parameter_source("distill")
    return source is not ParameterSource.DEFAULT_MAP or value != TrainConfig.distill


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
@trust_model_option()
@click.option("--shortcuts/--no-shortcuts", default=True, show_default=True,
              help="Shortcut check: metrics with the border outside the lung box and the top band masked, and the "
                   "share of Grad-CAM mass inside the lung box.")
@click.option("--cam-images", default=100, show_default=True, type=click.IntRange(min=0),
              help="Grad-CAM on a seeded random subset of this many images (0: all).")
@overwrite_option("Replace an existing output folder.")
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
    from edgecxr.data.folders import parse_classes
    from edgecxr.parity.shards import parse_shard
    from edgecxr.training.evaluate import evaluate as run, format_metrics

    if (shard and not predictions) or (predictions and out) or not (out or predictions):
        from edgecxr.utils.errors import ConfigError

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
