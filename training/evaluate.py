"""`edgecxr evaluate`: metrics with bootstrap intervals at the model's validation threshold."""
from __future__ import annotations

import sys
import time
from pathlib import Path


from edgecxr.data import folders as D
from edgecxr.parity import metrics
from edgecxr.utils.atomic import check_writable, refuse_overlap
from edgecxr.formats.bundle import sha256_file
from edgecxr.parity import shards
from edgecxr.utils.cpu import host_info
from edgecxr.parity.clinical import metrics_with_intervals, write_folder
from edgecxr.utils.errors import ConfigError, ModelError
from edgecxr.formats.modelinfo import checked_prob
from edgecxr.formats.modelinfo import check_threshold, default_model_path, info_path, load_info
from edgecxr.training import import_tf
from edgecxr.training.train import predict_probs


def load_model(path: Path, *, trust: bool = False):
    """Load a Keras model (tf_keras or Keras 3) without running code from the file unless trusted."""
    from edgecxr.formats.kerasfile import load_keras

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
    seen = D.seen_in_training(model_path, samples) if split == "test" else 0
    if seen:
        print(f"warning: {seen} of the {len(samples)} test images are training or validation images of this model "
              f"({Path(model_path).parent / 'split.json'}): its test numbers are optimistic; evaluate with the split "
              "file it was trained with", file=sys.stderr)
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
        return _write_predictions(Path(predictions), model_path, data_root, split, split_file, samples, mine, shard,
                                  (kept, labels, probs, bad), thr, method, info, n_boot, time.perf_counter() - t0)
    result = metrics_with_intervals(labels, probs, thr, n_boot, [s.patient for s in kept], threshold_method=method, split=split,
                     split_file=str(split_file) if split_file else None, model=str(model_path),
                     skipped=[{"file": s.rel, "error": e} for s, e in bad], model_sha256=sha256_file(model_path),
                     data={"root": str(Path(data_root).resolve()), "split": split, "images": len(kept),
                           "files_sha256": D.files_hash(kept)})
    if shortcuts:
        from edgecxr.training.shortcuts import shortcut_check

        result["shortcuts"] = shortcut_check(model, info.preprocess, pixels, labels, probs, thr, kind=info.output,
                                             positive_index=info.positive_index, cam_images=cam_images)
    write_folder(out, overwrite, result, labels, probs, [s.rel for s in kept], info.labels)
    return result


def _write_predictions(path: Path, model_path, data_root, split, split_file, samples, mine, shard, scored, thr, method,
                       info, n_boot, seconds) -> dict:
    """One shard's per-image predictions, for `edgecxr device merge --out`."""
    kept, labels, probs, bad = scored
    context = {"model": {"path": str(model_path), "sha256": sha256_file(model_path)}, "threshold": float(thr),
               "threshold_method": method, "labels": list(info.labels), "n_boot": n_boot,
               "prob_dtype": str(probs.dtype), "data": {"root": str(Path(data_root).resolve()), "split": split},
               "split_file": str(split_file) if split_file else None}
    index = {s.rel: i for i, s in mine}
    records = [{"index": index[s.rel], "file": s.rel, "label": int(y), "prob": float(p), "patient": s.patient}
               for s, y, p in zip(kept, labels, probs)] + [{"index": index[s.rel], "file": s.rel, "error": e}
                                                           for s, e in bad]
    doc = shards.document("evaluate", context, samples, shard or (1, 1), sorted(records, key=lambda r: r["index"]),
                          seconds, host_info())
    shards.write(path, doc)
    return doc


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
