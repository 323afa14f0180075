"""`edgecxr export`: float model -> bundles (TFLite, ONNX, OpenVINO), int8 gated on validation recall."""
from __future__ import annotations

from pathlib import Path

import click

from edgecxr.export.config import ExportConfig
from edgecxr.options import DATA, config_file_option, config_from, config_options
from edgecxr.formats.targets import TARGETS


@click.command()
@config_file_option(ExportConfig, help="Settings from a TOML, JSON or YAML file whose keys are the option names "
                                       "(calib_count or calib-count); options given on the command line win.")
@click.option("--model", "model", type=click.Path(path_type=Path),
              help="Float model: .keras (tf_keras or Keras 3), .h5 or a SavedModel folder (default: the shipped model).")
@click.option("--target", "targets", multiple=True, required=True, metavar="NAME",
              help=f"Repeatable: {', '.join(TARGETS)} or all.")
@DATA
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for the bundles (OUT/<target>/).")
@config_options(ExportConfig)
def export(model, targets, data, out, **options):
    """Export a float model to deployable bundles, each verified after writing.

    Example: edgecxr export --target tflite-int8 --data data/kermany-cxr-224 --out bundles
    (--target all writes every target it can and ends with a per-target summary)."""
    from edgecxr.export import export_model
    from edgecxr.formats.modelinfo import default_model_path
    from edgecxr.utils.errors import ExportIncomplete

    config = config_from(ExportConfig, options)
    try:
        written = export_model(model or default_model_path(), targets, data, out, config)
    except ExportIncomplete as exc:
        for path in exc.written:
            click.echo(str(path))
        raise
    for path in written:
        click.echo(str(path))
