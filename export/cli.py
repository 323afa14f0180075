"""`edgecxr export`: float model -> bundles (TFLite, ONNX, OpenVINO), int8 gated on validation recall."""
from __future__ import annotations

from pathlib import Path

import click

from edgecxr.cli import CLASSES, DATA
from edgecxr.targets import TARGETS


@click.command()
@click.option("--model", "model", type=click.Path(path_type=Path),
              help="Float model: .keras (tf_keras or Keras 3), .h5 or a SavedModel folder (default: the shipped model).")
@click.option("--target", "targets", multiple=True, required=True, metavar="NAME",
              help=f"Repeatable: {', '.join(TARGETS)} or all.")
@DATA
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for the bundles (OUT/<target>/).")
@click.option("--split-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Calibration, validation and test images from this split file (a pooled re-split from "
                   "`edgecxr split`); default: the model's own split.json beside it.")
@click.option("--calib-count", type=int, default=None,
              help="Calibration images from the train split [default: 300, or every train image when there are fewer].")
@click.option("--prune", type=float, help="Target sparsity (e.g. 0.5): magnitude pruning + fine-tuning.")
@click.option("--qat", is_flag=True, help="Quantization-aware fine-tuning for tflite-int8.")
@click.option("--distill", is_flag=True,
              help="With --prune: the pruned model fine-tunes towards the dense model's probabilities; with --qat: "
                   "towards the float model's (the pruned model's with --prune); instead of the labels.")
@click.option("--qat-fallback/--no-qat-fallback", default=True, show_default=True,
              help="When post-training tflite-int8 misses the gate, try quantization-aware fine-tuning (minutes).")
@click.option("--finetune-epochs", default=2, show_default=True, help="Fine-tuning epochs for --prune / --qat.")
@click.option("--max-recall-drop", default=0.01, show_default=True, help="Largest int8 recall drop on validation.")
@click.option("--max-accuracy-drop", default=0.01, show_default=True, help="Largest int8 accuracy drop on validation.")
@click.option("--min-agreement", default=0.98, show_default=True,
              help="Smallest share of int8 decisions identical to the float model's on validation.")
@click.option("--input-size", type=int, help="External model: input size in pixels.")
@click.option("--scale", type=float, help="External model: input = pixel * scale + offset.")
@click.option("--offset", type=float, help="External model: input = pixel * scale + offset.")
@click.option("--channels", type=click.Choice(["1", "3"]), help="External model: input channels.")
@click.option("--output", "output_kind", type=click.Choice(["sigmoid", "softmax", "logits"]), help="External model: output kind.")
@click.option("--positive-index", type=int, help="External model: which output is pneumonia.")
@click.option("--threshold", type=float, help="Decision threshold (default: the model's, 0.5 for external models).")
@click.option("--trust-model", is_flag=True, help="Allow Lambda layers and unsafe deserialization (trusted files only).")
@click.option("--signing-key", type=click.Path(dir_okay=False, path_type=Path),
              help="Ed25519 private key (edgecxr keygen): sign every bundle; devices check it with --trusted-key.")
@click.option("--twin/--no-twin", default=True, show_default=True,
              help="Ship the float32 model of the same format in twin/ of each other bundle: device parity then "
                   "recomputes the float reference on a site's own images (no TensorFlow needed).")
@click.option("--seed", default=0, show_default=True)
@CLASSES
@click.option("--overwrite", is_flag=True, help="Replace existing bundles.")
def export(model, targets, data, out, classes, input_size, scale, offset, channels, output_kind, positive_index,
           threshold, trust_model, **options):
    """Export a float model to deployable bundles, each verified after writing.

    Example: edgecxr export --target tflite-int8 --data data/kermany-cxr-224 --out bundles
    (--target all writes every target it can and ends with a per-target summary)."""
    from edgecxr.data import parse_classes
    from edgecxr.export import ModelOverrides, export_model
    from edgecxr.modelinfo import default_model_path

    overrides = ModelOverrides(input_size=input_size, scale=scale, offset=offset,
                               channels=int(channels) if channels else None, output=output_kind,
                               positive_index=positive_index, threshold=threshold)
    from edgecxr.errors import ExportIncomplete

    try:
        written = export_model(model or default_model_path(), targets, data, out, classes=parse_classes(classes),
                               overrides=overrides, trust_model=trust_model, **options)
    except ExportIncomplete as exc:
        for path in exc.written:
            click.echo(str(path))
        raise
    for path in written:
        click.echo(str(path))
