"""`ExportConfig`: the settings of `export_model`, each with its `edgecxr export` option (in this order).

    from edgecxr.export import ExportConfig, export_model
    export_model("run/model.keras", ["tflite-int8"], "data/kermany", "bundles", ExportConfig(calib_count=96))

The defaults live here (the parity limits in edgecxr.parity.criteria.Tolerances); `edgecxr export --config FILE`
reads the same names from a TOML, JSON or YAML file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from edgecxr.data import DEFAULT_CLASSES
from edgecxr.data.folders import parse_classes
from edgecxr.export.calibration import DEFAULT_CALIBRATION
from edgecxr.export.loading import ModelOverrides
from edgecxr.options import (classes_option, max_accuracy_drop_option, max_recall_drop_option, min_agreement_option,
                             option, overwrite_option, setting, trust_model_option)
from edgecxr.parity.criteria import Tolerances

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_AFFINE = "External model: input = pixel * scale + offset."


@dataclass
class ExportConfig:
    split_file: Path | None = setting(
        None, "Calibration, validation and test images from this split file (a pooled re-split from `edgecxr split`); "
              "default: the model's own split.json beside it.", type=_FILE)
    calib_count: int | None = setting(
        None, f"Calibration images from the train split [default: {DEFAULT_CALIBRATION}, or every train image when "
              "there are fewer].", type=int)
    prune: float | None = setting(
        None, "Target sparsity (e.g. 0.5): magnitude pruning + fine-tuning with the dense model's own augmentation and "
              "label smoothing (its run's config.json, else the shipped model's recipe).", type=float)
    qat: bool = setting(False, "Quantization-aware fine-tuning for tflite-int8.", is_flag=True)
    distill: bool = setting(
        False, "With --prune: the pruned model fine-tunes towards the dense model's probabilities; with --qat: "
               "towards the float model's (the pruned model's with --prune); instead of the labels.", is_flag=True)
    qat_fallback: bool = setting(
        True, "When post-training tflite-int8 misses the gate, try quantization-aware fine-tuning (minutes).",
        secondary=True, show_default=True)
    finetune_epochs: int = setting(2, "Fine-tuning epochs for --prune / --qat.", show_default=True)
    max_recall_drop: float = setting(Tolerances.max_recall_drop, "Largest int8 recall drop on validation.",
                                     shared=max_recall_drop_option)
    max_accuracy_drop: float = setting(Tolerances.max_accuracy_drop, "Largest int8 accuracy drop on validation.",
                                       shared=max_accuracy_drop_option)
    min_agreement: float = setting(
        Tolerances.min_agreement, "Smallest share of int8 decisions identical to the float model's on validation.",
        shared=min_agreement_option)
    overrides: ModelOverrides = setting(factory=ModelOverrides, nested={  # a model not made by edgecxr
        "input_size": option("External model: input size in pixels.", type=int),
        "scale": option(_AFFINE, type=float),
        "offset": option(_AFFINE, type=float),
        "channels": option("External model: input channels.", type=click.Choice(["1", "3"]), to_config=int),
        "output": option("External model: output kind.", type=click.Choice(["sigmoid", "softmax", "logits"])),
        "positive_index": option("External model: which output is pneumonia.", type=int),
        "threshold": option("Decision threshold (default: the model's, 0.5 for external models).", type=float),
    })
    trust_model: bool = setting(False, "Allow Lambda layers and unsafe deserialization (trusted files only).",
                                shared=trust_model_option)
    signing_key: Path | None = setting(
        None, "Ed25519 private key (edgecxr keygen): sign every bundle; devices check it with --trusted-key.",
        type=click.Path(dir_okay=False, path_type=Path))
    twin: bool = setting(
        True, "Ship the float32 model of the same format in twin/ of each other bundle: device parity then recomputes "
              "the float reference on a site's own images (no TensorFlow needed).", secondary=True, show_default=True)
    seed: int = setting(0, show_default=True)
    classes: tuple = setting(DEFAULT_CLASSES, shared=classes_option, to_config=parse_classes)
    overwrite: bool = setting(False, "Replace existing bundles.", shared=overwrite_option)
