"""`BenchConfig`: the settings of `run_benchmark`, each with its `edgecxr benchmark` option (in this order).

    from edgecxr.bench.config import BenchConfig
    from edgecxr.bench.run import run_benchmark
    run_benchmark("run/model.keras", "data/kermany", "bench", BenchConfig(targets=("tflite-int8",), limit=40))

The defaults live here (the parity limits in edgecxr.parity.criteria.Tolerances).
"""
from __future__ import annotations

from dataclasses import dataclass

import click

from edgecxr.data import DEFAULT_CLASSES
from edgecxr.data.folders import parse_classes
from edgecxr.export.calibration import DEFAULT_CALIBRATION
from edgecxr.formats.targets import TARGETS
from edgecxr.options import (classes_option, max_accuracy_drop_option, max_recall_drop_option, min_agreement_option,
                             option, setting, threads_option)
from edgecxr.parity.comparison import PARITY_BOOTSTRAP
from edgecxr.parity.criteria import Tolerances


def _archs(names) -> tuple:
    return tuple(a for a in names if a != "none")  # --scaling-arch none: no architecture scaling


@dataclass
class BenchConfig:
    targets: tuple = setting(
        ("all",), f"Repeatable: {', '.join(TARGETS)}, all (default), or one row by its name, e.g. "
                  "tflite-int8+prune0.5+qat (re-runs or reuses that row alone).",
        flag="--target", multiple=True, metavar="NAME", unset=True, to_config=tuple)
    prune: float | None = setting(
        None, "Add a row tflite-int8+prune<S>: magnitude pruning to this sparsity, then int8.", type=float)
    qat: bool = setting(False, "Add a row tflite-int8+qat (quantization-aware fine-tuning).", is_flag=True)
    distill: bool = setting(
        False, "With --qat: QAT learns the float model's probabilities (rows ...+qat-distill).", is_flag=True)
    limit: int | None = setting(
        None, "Small CI run: N test images (half per class) and a few train images, as symlinks.",
        type=click.IntRange(min=1))
    runs: int = setting(100, "Timed model calls per target.", show_default=True, type=click.IntRange(min=1))
    warmup: int = setting(10, "Untimed model calls first.", show_default=True, type=click.IntRange(min=0))
    threads: int | None = setting(None, "CPU threads of every runtime and of TensorFlow (default: cores up to 4).",
                                  shared=threads_option)
    scaling: bool = setting(
        False, "Also measure batch 1/4/16 latency+memory and export cost per architecture.", is_flag=True)
    scaling_archs: tuple | None = setting(  # None: bench.scaling.ARCHS
        None, "Architectures for --scaling (default: mobilenet, mobilenet_v2, mobilenet_v3_small/large, resnet50; "
              "'none' skips).", flag="--scaling-arch", multiple=True, metavar="ARCH", unset=True, to_config=_archs)
    scaling_targets: tuple | None = setting(  # None: bench.scaling.ARCH_TARGETS
        None, "Targets for the architecture scaling (default: tflite-fp32, tflite-int8, onnx-fp32, openvino-fp32).",
        flag="--scaling-target", multiple=True, metavar="NAME", unset=True, to_config=tuple)
    reuse: bool = setting(
        True, "Reuse a valid bundle in OUT/bundles/ exported from the same model (same sha256) and test files.",
        secondary=True, show_default=True)
    tolerances: Tolerances = setting(factory=Tolerances, nested={
        "max_recall_drop": option("Largest recall drop (export gate and device parity).", shared=max_recall_drop_option),
        "max_accuracy_drop": option("Largest accuracy drop (export gate and device parity).",
                                    shared=max_accuracy_drop_option),
        "min_agreement": option("Smallest share of identical decisions on the device.", shared=min_agreement_option),
    })
    calib_count: int | None = setting(
        None, f"Calibration images [default: {DEFAULT_CALIBRATION}, or every train image when there are fewer; capped "
              "in --limit runs].", type=click.IntRange(min=1))
    finetune_epochs: int = setting(2, "Fine-tuning epochs for --prune / --qat.", show_default=True)
    cold: bool = setting(False, "Also time a cold start (a fresh process) per target.", flag="--cold-start",
                         is_flag=True)
    n_boot: int = setting(
        PARITY_BOOTSTRAP, "Bootstrap resamples of the parity CIs (the count export and device parity use: the same "
                          "verdicts).", flag="--bootstrap", show_default=True)
    classes: tuple = setting(DEFAULT_CLASSES, shared=classes_option, to_config=parse_classes)
    stability_images: int = setting(
        64, "Test images (spread over the split) for the 'unstable' column; 0 skips it.", show_default=True,
        type=click.IntRange(min=0))
    train_images: int = 200  # train images of a --limit subset (calibration); no option
