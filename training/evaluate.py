"""`edgecxr evaluate`: metrics with bootstrap intervals at the model's validation threshold."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from edgecxr import data as D
from edgecxr import metrics, plots
from edgecxr.atomic import atomic_dir, check_writable
from edgecxr.bundle import sha256_file
from edgecxr.errors import ModelError
from edgecxr.export.datasets import checked_prob
from edgecxr.modelinfo import ModelInfo, check_threshold, default_model_path, info_path, load_info
from edgecxr.training import import_tf
from edgecxr.training.train import predict_probs


def load_model(path: Path, *, trust: bool = False):
    """Load a Keras model (tf_keras or Keras 3) without running code from the file unless trusted."""
    from edgecxr.export.loading import load_keras

    import_tf()
    return load_keras(path, trust)[0]


def evaluate(model_path: Path | None, data_root: Path, split: str, out: Path, *, threshold: float | None = None,
             classes=D.DEFAULT_CLASSES, strict: bool = False, batch_size: int = 32, n_boot: int = 1000,
             overwrite: bool = False, trust_model: bool = False, shortcuts: bool = True,
             cam_images: int | None = 100, split_file: Path | None = None) -> dict:
    if threshold is not None:
        check_threshold(threshold)
    model_path = Path(model_path) if model_path else default_model_path()
    check_writable(Path(out), overwrite=overwrite, inputs=(model_path, data_root))  # before minutes of work, not after
    tf, _ = import_tf()
    info = load_info(model_path)
    if info is None:
        raise ModelError(f"{model_path}: no {model_path.with_suffix('.json').name} beside it; evaluate needs an edgecxr model "
                         "(for other models use `edgecxr export` with --input-size/--scale/--offset flags)")
    model = load_model(model_path, trust=trust_model)
    samples = D.split_samples(data_root, split, classes, split_file)
    if D.is_pooled(split_file):
        print(f"note: {split} of the pooled re-split {split_file}: not comparable with the official test split",
              file=sys.stderr)
    pixels, labels, kept, bad = D.load_pixels(samples, info.preprocess, strict=strict, progress=f"loading {split}")
    raw = predict_probs(tf, model, pixels, info.preprocess, batch_size).reshape(len(pixels), -1)
    probs = checked_prob(raw, info.output, info.positive_index, split, use="evaluated",
                         fix=f"set \"output\": \"logits\" in {info_path(model_path)}")
    thr = info.threshold if threshold is None else threshold
    result = metrics.binary_metrics(labels, probs, thr)
    patients = [s.patient for s in kept]
    result["ci"] = metrics.bootstrap_ci(labels, probs, thr, n_boot=n_boot, groups=patients)
    result["ci_info"] = metrics.bootstrap_info(patients, len(labels), n_boot, 0.95)
    result["calibration"] = metrics.calibration(labels, probs)
    result["at_0.5"] = metrics.binary_metrics(labels, probs, 0.5)
    result.update(threshold_method=info.threshold_method if threshold is None else "given on the command line",
                  split=split, split_file=str(split_file) if split_file else None, model=str(model_path),
                  skipped=[{"file": s.rel, "error": e} for s, e in bad],
                  data={"root": str(Path(data_root).resolve()), "split": split, "images": len(kept),
                        "patients": len(set(patients)), "files_sha256": D.files_hash(kept)},
                  model_sha256=sha256_file(model_path))
    if shortcuts:
        from edgecxr.training.shortcuts import shortcut_check

        result["shortcuts"] = shortcut_check(model, info.preprocess, pixels, labels, probs, thr, kind=info.output,
                                             positive_index=info.positive_index, cam_images=cam_images)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        np.savez_compressed(tmp / "predictions.npz", y=labels, prob=probs, rel=[s.rel for s in kept])
        plots.roc_png(labels, probs, tmp / "roc.png", thr, title=f"ROC ({split})")
        plots.pr_png(labels, probs, tmp / "pr.png", title=f"Precision-recall ({split})")
        plots.confusion_png(result["confusion"], info.labels, tmp / "confusion.png")
        plots.calibration_png(labels, probs, tmp / "calibration.png")
    return result


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def format_metrics(m: dict) -> str:
    lines = [f"n={m['n']}  threshold={m['threshold']:.4f} ({m.get('threshold_method', '')})"]
    for name in metrics.METRIC_NAMES:
        lo, hi = m["ci"][name]
        lines.append(f"  {name:12s} {m[name]:.4f}  [{lo:.4f}, {hi:.4f}]")
    cm = m["confusion"]
    lines.append(f"  confusion    tp={cm['tp']} fp={cm['fp']} tn={cm['tn']} fn={cm['fn']}")
    half = m["at_0.5"]
    lines.append(f"  at 0.5:      accuracy {half['accuracy']:.4f} recall {half['recall']:.4f} specificity {half['specificity']:.4f}")
    info = m.get("ci_info")
    if info:
        lines.append(f"  intervals:   {100 * info['level']:.0f} % bootstrap by {info['unit']} ({info['patients']} patients, "
                     f"{info['images']} images)")
    cal = m.get("calibration")
    if cal:
        lines.append(f"  calibration: ECE {cal['ece']:.4f}, Brier {cal['brier']:.4f}, slope {_num(cal['slope'])}, "
                     f"intercept {_num(cal['intercept'])}")
    lines += [f"  note: {n}" for n in metrics.small_sample_notes(m["confusion"])]
    if m.get("shortcuts"):
        from edgecxr.training.shortcuts import format_shortcuts

        lines.append(format_shortcuts(m["shortcuts"]))
    return "\n".join(lines)
