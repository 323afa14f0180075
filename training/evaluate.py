"""`edgecxr evaluate`: metrics with bootstrap intervals at the model's validation threshold."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from edgecxr import data as D
from edgecxr import metrics, plots
from edgecxr.atomic import atomic_dir, check_writable, refuse_overlap
from edgecxr.bundle import sha256_file
from edgecxr import shards
from edgecxr.cpu import host_info
from edgecxr.errors import ConfigError, ModelError
from edgecxr.modelinfo import checked_prob
from edgecxr.modelinfo import ModelInfo, check_threshold, default_model_path, info_path, load_info
from edgecxr.training import import_tf
from edgecxr.training.train import predict_probs


def load_model(path: Path, *, trust: bool = False):
    """Load a Keras model (tf_keras or Keras 3) without running code from the file unless trusted."""
    from edgecxr.kerasfile import load_keras

    import_tf()
    return load_keras(path, trust)[0]


def evaluate(model_path: Path | None, data_root: Path, split: str, out: Path, *, threshold: float | None = None,
             classes=D.DEFAULT_CLASSES, strict: bool = False, batch_size: int = 32, n_boot: int = 1000,
             overwrite: bool = False, trust_model: bool = False, shortcuts: bool = True,
             cam_images: int | None = 100, shard: tuple[int, int] | None = None, predictions: Path | None = None,
             split_file: Path | None = None) -> dict:
    """Metrics of the model on `split`, written to `out`; with `predictions`, only the per-image predictions of
    shard (I, N) (all images without `shard`) are written there, for `edgecxr device merge --out`."""
    if threshold is not None:
        check_threshold(threshold)
    model_path = Path(model_path) if model_path else default_model_path()
    if predictions is None:
        check_writable(Path(out), overwrite=overwrite, inputs=(model_path, data_root))  # before minutes of work
    else:
        refuse_overlap(Path(predictions), (model_path, data_root), "--predictions")
        if Path(predictions).is_dir():
            raise ConfigError(f"--predictions {predictions}: is a folder; pass a file path")
    info = load_info(model_path)
    if info is None:
        raise ModelError(f"{model_path}: no {model_path.with_suffix('.json').name} beside it; evaluate needs an edgecxr model "
                         "(for other models use `edgecxr export` with --input-size/--scale/--offset flags)")
    split_file = D.model_split_file(model_path, split_file)  # a model trained on a pooled re-split follows it
    samples = D.split_samples(data_root, split, classes, split_file)  # a wrong --data fails before TensorFlow starts
    tf, _ = import_tf()
    model = load_model(model_path, trust=trust_model)
    if D.is_pooled(split_file):
        print(f"note: {split} of the pooled re-split {split_file}: not comparable with the official test split",
              file=sys.stderr)
    mine = shards.select(samples, *shard) if shard else list(enumerate(samples))
    t0 = time.perf_counter()
    pixels, labels, kept, bad = D.load_pixels([s for _, s in mine], info.preprocess, strict=strict,
                                              progress=f"loading {split}")
    raw = predict_probs(tf, model, pixels, info.preprocess, batch_size).reshape(len(pixels), -1)
    probs = checked_prob(raw, info.output, info.positive_index, split, use="evaluated",
                         fix=f"set \"output\": \"logits\" in {info_path(model_path)}")
    thr = info.threshold if threshold is None else threshold
    method = info.threshold_method if threshold is None else "given on the command line"
    if predictions is not None:
        context = {"model": {"path": str(model_path), "sha256": sha256_file(model_path)}, "threshold": float(thr),
                   "threshold_method": method, "labels": list(info.labels), "n_boot": n_boot,
                   "prob_dtype": str(probs.dtype), "data": {"root": str(Path(data_root).resolve()), "split": split},
                   "split_file": str(split_file) if split_file else None}
        index = {s.rel: i for i, s in mine}
        records = [{"index": index[s.rel], "file": s.rel, "label": int(y), "prob": float(p), "patient": s.patient}
                   for s, y, p in zip(kept, labels, probs)] + [{"index": index[s.rel], "file": s.rel, "error": e}
                                                               for s, e in bad]
        doc = shards.document("evaluate", context, samples, shard or (1, 1), sorted(records, key=lambda r: r["index"]),
                              time.perf_counter() - t0, host_info())
        shards.write(Path(predictions), doc)
        return doc
    result = _result(labels, probs, thr, n_boot, [s.patient for s in kept], threshold_method=method, split=split,
                     split_file=str(split_file) if split_file else None, model=str(model_path),
                     skipped=[{"file": s.rel, "error": e} for s, e in bad], model_sha256=sha256_file(model_path),
                     data={"root": str(Path(data_root).resolve()), "split": split, "images": len(kept),
                           "files_sha256": D.files_hash(kept)})
    if shortcuts:
        from edgecxr.training.shortcuts import shortcut_check

        result["shortcuts"] = shortcut_check(model, info.preprocess, pixels, labels, probs, thr, kind=info.output,
                                             positive_index=info.positive_index, cam_images=cam_images)
    _write_out(out, overwrite, result, labels, probs, [s.rel for s in kept], info.labels)
    return result


def _result(labels, probs, thr, n_boot, patients, **info) -> dict:
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


def _write_out(out, overwrite, result, labels, probs, rels, class_labels) -> None:
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
    result = _result(labels, probs, ctx["threshold"], ctx["n_boot"], patients, threshold_method=ctx["threshold_method"],
                     split=ctx["data"]["split"], split_file=ctx.get("split_file"), model=ctx["model"]["path"],
                     model_sha256=ctx["model"]["sha256"],
                     skipped=[{"file": r["file"], "error": r["error"]} for r in records if "error" in r],
                     data={"root": ctx["data"]["root"], "split": ctx["data"]["split"], "images": len(ok),
                           "files_sha256": D.files_hash([r["file"] for r in ok])})
    _write_out(out, overwrite, result, labels, probs, [r["file"] for r in ok], ctx["labels"])
    return result


def format_metrics(m: dict) -> str:
    lines = [f"n={m['n']}  threshold={m['threshold']:.4f} ({m.get('threshold_method', '')})"]
    for name in metrics.METRIC_NAMES:
        lo, hi = m["ci"][name]
        lines.append(f"  {name:12s} {m[name]:.4f}  [{lo:.4f}, {hi:.4f}]")
    cm = m["confusion"]
    lines.append(f"  confusion    tp={cm['tp']} fp={cm['fp']} tn={cm['tn']} fn={cm['fn']}")
    half = m["at_0.5"]
    lines.append(f"  at 0.5:      accuracy {half['accuracy']:.4f} recall {half['recall']:.4f} specificity {half['specificity']:.4f}")
    if m.get("shortcuts"):
        from edgecxr.training.shortcuts import format_shortcuts

        lines.append(format_shortcuts(m["shortcuts"]))
    return "\n".join(lines)
