"""An evaluation from probabilities: metrics with patient-level intervals and calibration, metrics.json,
predictions.npz and the figures. No TensorFlow: `edgecxr evaluate` computes the probabilities, and
`edgecxr device merge` writes the same folder from the predictions of sharded evaluate runs.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgecxr.data import folders as D
from edgecxr import plots
from edgecxr.parity import metrics
from edgecxr.utils.atomic import atomic_dir, check_writable


def metrics_with_intervals(labels, probs, thr, n_boot, patients, **info) -> dict:
    """Metrics with intervals that resample patients (a patient's X-rays are not independent) and calibration."""
    result = metrics.binary_metrics(labels, probs, thr)
    result["ci"] = metrics.bootstrap_ci(labels, probs, thr, n_boot=n_boot, groups=patients)
    result["ci_info"] = metrics.bootstrap_info(patients, len(labels), n_boot, 0.95)
    result["calibration"] = metrics.calibration(labels, probs)
    result["at_0.5"] = metrics.binary_metrics(labels, probs, 0.5)
    result.update(info)
    if isinstance(result.get("data"), dict):
        result["data"]["patients"] = len(set(patients))
    return result


def write_folder(out, overwrite, result, labels, probs, rels, class_labels) -> None:
    thr, split = result["threshold"], result["split"]
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        np.savez_compressed(tmp / "predictions.npz", y=labels, prob=probs, rel=rels)
        plots.roc_png(labels, probs, tmp / "roc.png", thr, title=f"ROC ({split})")
        plots.pr_png(labels, probs, tmp / "pr.png", title=f"Precision-recall ({split})")
        plots.confusion_png(result["confusion"], class_labels, tmp / "confusion.png")
        plots.calibration_png(labels, probs, tmp / "calibration.png")


def write_merged(doc: dict, out: Path, *, overwrite: bool = False, inputs=()) -> dict:
    """metrics.json and figures from merged evaluate shards: what `evaluate --no-shortcuts` writes unsharded
    (the shortcut check needs the model and the pixels)."""
    check_writable(Path(out), overwrite=overwrite, inputs=inputs)  # never over the shard files themselves
    ctx, records = doc["context"], doc["records"]
    ok = [r for r in records if "prob" in r]
    labels = np.array([r["label"] for r in ok])
    probs = np.array([r["prob"] for r in ok], dtype=ctx["prob_dtype"])
    patients = [r.get("patient") or D.patient_id(Path(r["file"]).name) for r in ok]
    result = metrics_with_intervals(labels, probs, ctx["threshold"], ctx["n_boot"], patients, threshold_method=ctx["threshold_method"],
                     split=ctx["data"]["split"], split_file=ctx.get("split_file"), model=ctx["model"]["path"],
                     model_sha256=ctx["model"]["sha256"],
                     skipped=[{"file": r["file"], "error": r["error"]} for r in records if "error" in r],
                     data={"root": ctx["data"]["root"], "split": ctx["data"]["split"], "images": len(ok),
                           "files_sha256": D.files_hash([r["file"] for r in ok])})
    write_folder(out, overwrite, result, labels, probs, [r["file"] for r in ok], ctx["labels"])
    return result
