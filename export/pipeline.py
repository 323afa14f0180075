"""`export_model`: float model -> verified bundles, one per target, each written atomically."""
from __future__ import annotations

import datetime as dt
import errno
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from edgecxr.data import folders as D
from edgecxr.export.config import ExportConfig
from edgecxr.options import configured
from edgecxr.parity import metrics
from edgecxr.utils.atomic import atomic_dir, check_writable
from edgecxr.utils.cpu import cpu_info
from edgecxr.formats.bundle import finalize, load_bundle
from edgecxr.data.domain import DOMAIN
from edgecxr.utils.errors import ConfigError, EdgecxrError, ExportIncomplete, GateFailed, ModelError, first_line
from edgecxr.formats.targets import FAMILIES, TARGETS, export_packages, load, resolve_targets

TWIN_TOLERANCE = 1e-3  # a float32 conversion of the model reproduces its probabilities to about 1e-6
# the build packages; each family's runtime package comes from the format table (versions())
VERSION_PACKAGES = ("tensorflow", "tf_keras", "keras", "tensorflow-model-optimization", "tf2onnx", "onnx", "nncf",
                    "numpy", "edgecxr")


def versions() -> dict:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    runtime_packages = tuple(f.package.replace("_", "-") for f in FAMILIES.values())
    for name in dict.fromkeys(VERSION_PACKAGES + runtime_packages):
        try:
            out[name.replace("-", "_")] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    out["tfmot"] = out.pop("tensorflow_model_optimization", None)
    return out


def _say(msg: str) -> None:
    click.echo(msg, err=True)


def _check_options(prune, max_recall_drop, max_accuracy_drop, min_agreement, finetune_epochs, overrides=None):
    from edgecxr.formats.modelinfo import check_threshold

    if getattr(overrides, "threshold", None) is not None:
        check_threshold(overrides.threshold)
    if prune is not None and not 0 < prune < 1:
        raise ConfigError(f"--prune must be a sparsity between 0 and 1 (e.g. 0.5), got {prune}")
    if not (0 <= max_recall_drop <= 1 and 0 <= max_accuracy_drop <= 1):  # written so that NaN fails too
        raise ConfigError("--max-recall-drop and --max-accuracy-drop must be shares from 0 to 1 (e.g. 0.01)")
    if not 0 <= min_agreement <= 1:
        raise ConfigError(f"--min-agreement must be between 0 and 1 (e.g. 0.98), got {min_agreement}")
    if finetune_epochs < 1:
        raise ConfigError("--finetune-epochs must be at least 1")


def _reference(source, test, test_x, test_y, pooled: bool = False):
    from edgecxr.formats.modelinfo import checked_prob

    probs = checked_prob(source.predict(test_x), source.info.output, source.info.positive_index, "test")
    return {"split": "test", **({"pooled": True} if pooled else {}), "probs": {s.rel: float(p) for s, p in zip(test, probs)},
            "labels": {s.rel: int(y) for s, y in zip(test, test_y)},
            "metrics": metrics.binary_metrics(test_y, probs, source.info.threshold),
            "files_sha256": D.files_hash(test)}


def export_model(model_path, targets, data_root, out_dir, config: ExportConfig | None = None, **settings) -> list[Path]:
    """Export a float model to bundles DIR/<target>/; returns the bundle folders (each verified).

    config: the settings (ExportConfig; its defaults without one); keyword settings replace its fields, e.g.
    export_model(m, ["tflite-int8"], d, out, calib_count=96). Among them:
    signing_key: an Ed25519 private key file (edgecxr keygen): each bundle gets signature.json.
    twin: ship the float32 model of the same format in twin/ of every other bundle, so that device parity
    can recompute the float reference on a site's own images.
    split_file: train/val/test from this split file (default: the model's own split.json; see datasets.export_splits).
    calib_count: calibration images (default: DEFAULT_CALIBRATION, or the whole train split when it is smaller).
    distill: pruning fine-tunes towards the dense model's probabilities, quantization-aware training towards the
    float (pruned) model's, instead of the labels.
    """
    start = time.time()
    c = configured(ExportConfig, config, settings)
    if c.distill and not (c.qat or c.prune):
        raise ConfigError("--distill changes how --prune and --qat fine-tune; add one (or leave out --distill)")
    chosen, signing_key, out_dir = _check_request(targets, out_dir, model_path, data_root, c.prune, c.qat, c.overwrite,
                                                  c.signing_key, (c.max_recall_drop, c.max_accuracy_drop,
                                                                  c.min_agreement, c.finetune_epochs, c.overrides))
    data = _load_data(model_path, data_root, c.classes, c.split_file, c.seed, chosen, c.prune, c.qat, c.calib_count,
                      c.overrides, c.trust_model)
    source, prune_report = data.source, None
    if c.prune:
        source, prune_report = _prune(source, data, c.prune, c.finetune_epochs, c.seed, c.distill)
    reference = _reference(source, data.test, data.test_x, data.test_y,
                           pooled=D.is_pooled(D.model_split_file(model_path, c.split_file)))
    gate, predict_s = _gate(source, data, reference, c.max_recall_drop, c.max_accuracy_drop, c.min_agreement)
    make_qat = _qat_maker(source, data, c.finetune_epochs, bool(c.prune), c.seed, predict_s, c.distill)
    qat_source = make_qat() if c.qat and any(FAMILIES[t.family].qat and t.int8 for t in chosen) else None
    base = _manifest_base(source, model_path, reference)
    calibration = ({"count": len(data.calib), "split": "train", "files_sha256": D.files_hash(data.calib)}
                   if data.calib else None)
    with tempfile.TemporaryDirectory(prefix="edgecxr-export-") as work:
        from edgecxr.export.build import Context

        ctx = Context(source, data.calib_x, gate, Path(work), qat_source=qat_source,
                      qat_fallback=make_qat if source.keras_model is not None and c.qat_fallback else None,
                      test=(data.test, data.test_x, data.test_y), twin=c.twin,
                      qat_training="distillation" if c.distill else "labels")
        written, refused, gate_only = _export_each(chosen, ctx, out_dir, c.overwrite, base, calibration, prune_report,
                                                   source.info, signing_key)
    _say(f"exported {len(written)} bundle(s) in {time.time() - start:.1f} s")
    if refused:
        _say(summary_table(written, refused))
        raise ExportIncomplete(written, refused, gate_only)
    return written


def _check_request(targets, out_dir, model_path, data_root, prune, qat, overwrite, signing_key, limits):
    """(targets, signing key, out folder), every option checked before any data or model is read."""
    chosen = resolve_targets(list(targets) if not isinstance(targets, str) else [targets])
    if not chosen:
        raise ConfigError("no target given; pass --target NAME (or --target all)")
    max_recall_drop, max_accuracy_drop, min_agreement, finetune_epochs, overrides = limits
    _check_options(prune, max_recall_drop, max_accuracy_drop, min_agreement, finetune_epochs, overrides)
    _check_extras(chosen, prune, qat)
    if signing_key:
        from edgecxr.formats.signing import load_signing_key

        signing_key = load_signing_key(signing_key)  # a bad key fails now, not after the export
    if qat and not any(FAMILIES[t.family].qat and t.int8 for t in chosen):
        _say("note: --qat applies to tflite-int8; the other int8 targets use post-training quantization")
    out_dir = Path(out_dir)
    _check_out(out_dir)
    for t in chosen:
        check_writable(out_dir / t.name, overwrite=overwrite, inputs=(model_path, data_root))
    return chosen, signing_key, out_dir


@dataclass
class _Data:
    source: object
    train: list
    val: list
    test: list
    val_source: str
    calib: list
    test_x: np.ndarray
    test_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    calib_x: np.ndarray | None
    fit: tuple | None  # (x, y) of the train split, for fine-tuning

    def fit_data(self):
        from edgecxr.export import calibration as X

        if self.fit is None:
            fit_x, fit_y, _ = X.load_inputs(self.train, self.source.spec, "loading train (fine-tuning)")
            self.fit = (fit_x, fit_y)
        return self.fit


def _load_data(model_path, data_root, classes, split_file, seed, chosen, prune, qat, calib_count, overrides, trust_model):
    """The splits first (bad folders fail in a second, before TensorFlow starts), then the model, then the images."""
    from edgecxr.export import calibration as X
    from edgecxr.export.loading import load_source

    train, val, test, val_source = X.export_splits(data_root, classes, Path(model_path), split_file=split_file, seed=seed)
    need_calib = any(t.calibrated for t in chosen) or qat
    if need_calib and calib_count is None:
        calib_count = X.default_calibration_count(train)
    calib = X.calibration_samples(train, calib_count, seed=seed) if need_calib else []
    source = load_source(model_path, overrides, trust=trust_model)
    for note in source.notes:
        _say(f"note: {note}")
    if (prune or qat) and source.keras_model is None:
        from edgecxr.export.optimize import require_keras

        require_keras(source, "--prune" if prune else "--qat")
    spec, info = source.spec, source.info
    _say(f"model {source.path} ({source.flavor}, input {spec.input_shape}, output {info.output} x{source.out_dim}); "
         f"test {len(test)}, validation {len(val)}, calibration {len(calib)} images")
    test_x, test_y, test = X.load_inputs(test, spec, "loading test")
    val_x, val_y, val = X.load_inputs(val, spec, "loading validation")
    calib_x = X.load_inputs(calib, spec, "loading calibration")[0] if calib else None
    data = _Data(source, train, val, test, val_source, calib, test_x, test_y, val_x, val_y, calib_x, None)
    if prune or qat:
        data.fit_data()
    return data


def _val_probs(src, data):
    from edgecxr.formats.modelinfo import checked_prob

    return checked_prob(src.predict(data.val_x), src.info.output, src.info.positive_index, "validation")


# What pruning fine-tunes with (issue 32.3, the rule of session 16 in CHANGELOG.md kept labels + the dense model's
# augmentation + label smoothing): the dense model's own training recipe from the config.json its `edgecxr train` run
# wrote beside it (a key it lacks: train's default), else the shipped model's recipe.
SHIPPED_REGULARIZATION = {"augment": "standard", "intensity": 0.2, "acquisition": 0.0, "label_smoothing": 0.1}


def dense_regularization(model_path) -> tuple:
    """(Augment, label smoothing, where they came from) for pruning's fine-tuning of the model at model_path."""
    from dataclasses import fields

    from edgecxr.training.augment import get_preset
    from edgecxr.training.train import TrainConfig

    config = Path(model_path).parent / "config.json"
    try:
        recorded = json.loads(config.read_text()) if config.is_file() else None
        if isinstance(recorded, dict) and "arch" in recorded:  # written by edgecxr train
            defaults = {f.name: f.default for f in fields(TrainConfig) if f.name in SHIPPED_REGULARIZATION}
            recipe = {k: recorded.get(k, defaults[k]) for k in SHIPPED_REGULARIZATION}
            smoothing = float(recipe["label_smoothing"])
            if not 0 <= smoothing < 0.5:
                raise ValueError(smoothing)
            return (get_preset(recipe["augment"], float(recipe["intensity"]), float(recipe["acquisition"] or 0)),
                    smoothing, f"its training run's {config.name}")
    except (OSError, ValueError, TypeError, ConfigError):
        pass  # an unreadable or foreign config.json: the shipped recipe
    r = SHIPPED_REGULARIZATION
    return get_preset(r["augment"], r["intensity"], r["acquisition"]), r["label_smoothing"], "the shipped model's recipe"


# how far pruning may move the clinical numbers on validation (threshold re-chosen) before export says so
PRUNE_MARGINS = {"recall": 0.01, "specificity": 0.03}


def _prune(source, data, prune, finetune_epochs, seed, distill=False):
    """(pruned source with its threshold re-chosen on validation, the manifest's prune report)."""
    from edgecxr.export.loading import keras_source
    from edgecxr.export.optimize import prune as run_prune

    val_y = data.val_y
    dense_probs = _val_probs(source, data)
    before = metrics.binary_metrics(val_y, dense_probs, source.info.threshold)
    fit_x, fit_y = data.fit_data()
    augment, smoothing, recipe_from = dense_regularization(source.path)
    towards = "the dense model's probabilities" if distill else f"the labels (label smoothing {smoothing:g})"
    _say(f"pruning to {prune:.0%} sparsity, fine-tuning {finetune_epochs} epoch(s) on {len(fit_x)} images towards {towards}, "
         f"augmented as the dense model was ({recipe_from})")
    pruned, report = run_prune(source, fit_x, fit_y, prune, finetune_epochs, seed=seed, distill=distill,
                               augment=augment, label_smoothing=smoothing)
    report["regularization_from"] = recipe_from
    source = keras_source(pruned, source, f"pruned to {prune}")
    probs = _val_probs(source, data)
    drifted = metrics.binary_metrics(val_y, probs, source.info.threshold)
    source = _rechoose_threshold(source, val_y, probs, f"pruning to {prune}")
    info = source.info
    after = metrics.binary_metrics(val_y, probs, info.threshold)
    report["threshold"] = {"before": before["threshold"], "after": info.threshold, "method": info.threshold_method}
    report["validation_agreement"] = float(np.mean((dense_probs >= before["threshold"]) == (probs >= info.threshold)))
    report["validation"] = {k: {"before": before[k], "at_old_threshold": drifted[k], "after": after[k]}
                            for k in ("recall", "specificity", "accuracy", "roc_auc")}
    _say(f"pruned model: threshold re-chosen on validation {before['threshold']:.4f} -> {info.threshold:.4f} "
         f"(recall {after['recall']:.4f}, specificity {after['specificity']:.4f}; "
         f"{report['validation_agreement']:.4f} of its validation decisions are the dense model's)")
    report["training"] = "distillation" if distill else "labels"
    report["moved"] = [f"{k} {before[k]:.4f} -> {after[k]:.4f}" for k, margin in PRUNE_MARGINS.items()
                       if before[k] - after[k] > margin + 1e-12]
    if report["moved"]:
        _say(f"warning: pruning moved the clinical numbers against the dense model on validation "
             f"({'; '.join(report['moved'])}; margins: recall {PRUNE_MARGINS['recall']}, specificity "
             f"{PRUNE_MARGINS['specificity']}): check the pruned model's own evaluation before shipping it")
    return source, report


def _gate(source, data, reference, max_recall_drop, max_accuracy_drop, min_agreement):
    """(the validation gate, seconds per validation image of the float model: the QAT cost estimate's base)."""
    from edgecxr.export.accuracy import Gate

    info = source.info
    t_val = time.time()
    gate = Gate(data.val_x, data.val_y, _val_probs(source, data), info.threshold, info.output, info.positive_index,
                max_recall_drop, max_accuracy_drop, data.val_source, min_agreement,
                reference_float_probs=np.array([reference["probs"][s.rel] for s in data.test]))
    if gate.too_small:
        _say(f"warning: {gate.too_small}")
    return gate, (time.time() - t_val) / max(1, len(data.val_x))


def _qat_maker(source, data, finetune_epochs, pruned: bool, seed, predict_s_per_image, distill: bool = False):
    """A function that runs quantization-aware fine-tuning when called, announcing its cost first."""
    def make_qat(reason="--qat"):
        from edgecxr.export.loading import keras_source
        from edgecxr.export.optimize import qat as run_qat

        # a training step costs about three forward passes; the estimate is rough on purpose
        minutes = 3 * predict_s_per_image * len(data.train) * finetune_epochs / 60
        towards = "the float model's probabilities" if distill else "the labels"
        _say(f"quantization-aware fine-tuning ({reason}) towards {towards}: {finetune_epochs} epoch(s) on {len(data.train)} images, "
             f"about {max(1, round(minutes))} min here" + ("; --no-qat-fallback skips it" if reason != "--qat" else ""))
        fit_x, fit_y = data.fit_data()
        model = run_qat(source.keras_model, source, fit_x, fit_y, finetune_epochs, pruned=pruned, seed=seed,
                        distill=distill)
        return keras_source(model, source, "quantization-aware training")

    return make_qat


def _manifest_base(source, model_path, reference) -> dict:
    info, tool_versions = source.info, versions()
    return {"preprocess": source.spec.to_dict(), "domain": DOMAIN, "labels": list(info.labels),
            "threshold": float(info.threshold),
            "source_model": {"path": str(Path(model_path).resolve()), "sha256": source.sha256,
                             "flavor": source.flavor, "threshold_method": info.threshold_method},
            "versions": tool_versions, "reference": reference, "verified_on": {"cpu": cpu_info(), "versions": tool_versions}}


def _export_each(chosen, ctx, out_dir, overwrite, base, calibration, prune_report, info, signing_key):
    """(written folders, refused {target: reason}, whether every refusal was a gate's): one target after another,
    going on past a refused one."""
    written, refused, gate_only = [], {}, True
    for i, target in enumerate(chosen, 1):
        _say(f"[{i}/{len(chosen)}] {target.name}: {target.description}")
        try:
            written.append(_write_target(target, ctx, out_dir / target.name, overwrite, base, calibration,
                                         prune_report, info, signing_key))
        except Exception as exc:  # a refused or failed target: the next one is still tried
            if len(chosen) == 1:
                raise
            reason = str(exc) if isinstance(exc, EdgecxrError) else f"{type(exc).__name__}: {exc}"
            old = out_dir / target.name / "manifest.json"
            if old.is_file():  # --overwrite did not replace it: say so, a stale bundle must not pass for new
                reason += f" (the earlier bundle at {old.parent} was kept as it was)"
            refused[target.name] = reason
            gate_only = gate_only and isinstance(exc, GateFailed)
            _say(f"    refused: {reason}")
    return written, refused, gate_only


def summary_table(written, refused: dict) -> str:
    lines = ["summary:"] + [f"  {p.name:16s} written  {p}" for p in written]
    lines += [f"  {name:16s} REFUSED  {reason[:400]}" for name, reason in refused.items()]
    return "\n".join(lines)


def _disk_full(exc: BaseException) -> bool:
    """ENOSPC anywhere in the chain, or in the text of a converter's own error (TensorFlow and ONNX wrap it)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _write_target(target, ctx, final: Path, overwrite, base, calibration, prune_report, info, signing_key=None) -> Path:
    from edgecxr.export.accuracy import other_attempts
    from edgecxr.export.build import build
    from edgecxr.export.optimize import gzip_size

    t0 = time.time()
    with atomic_dir(final, overwrite=overwrite) as tmp:
        try:
            result = build(target, ctx, tmp)
        except EdgecxrError:
            raise
        except Exception as exc:  # TFLite / tf2onnx / OpenVINO errors print pages: one line names the target
            if _disk_full(exc):
                raise ModelError(f"{target.name}: the disk is full (no space left on device under {final.parent} or "
                                 f"the temporary folder {tmp.parent}); free space and run the export again") from exc
            raise ModelError(f"{target.name}: the converter failed ({type(exc).__name__}: {first_line(exc)}); "
                             "try another target, or report it with the model") from exc
        export_parity = _export_parity(target, ctx, tmp, info, result["accuracy_control"])
        runner_specs = _specs(target, tmp)
        size = sum(p.stat().st_size for p in tmp.iterdir() if p.is_file())
        qat_requested = ctx.qat_source is not None and FAMILIES[target.family].qat and target.int8
        opt = {"prune": None, "qat": result["qat"],
               # --qat asked for it; "qat" says whether the written model is the QAT one (it may fall back)
               "qat_requested": qat_requested,
               "qat_training": ctx.qat_training if result["qat"] or qat_requested else None,
               "accuracy_control": result["accuracy_control"],
               "export_parity": export_parity,
               "tensorrt_check": result.get("tensorrt_check"),
               "size": {"bytes": size, "gzip_bytes": sum(gzip_size(p) for p in tmp.iterdir() if p.is_file())}}
        twin = _add_twin(target, ctx, tmp, info) if ctx.with_twin and target.precision != "fp32" else None
        if prune_report is not None:
            opt["prune"] = {**prune_report, "gzip_bytes": opt["size"]["gzip_bytes"]}
            sparsity = FAMILIES[target.family].int8_sparsity
            if sparsity and target.int8:  # measured, not assumed
                opt["prune"]["int8_weights"] = load(sparsity)(tmp / target.model_file)
        manifest = {"target": target.name, "runtime": FAMILIES[target.family].runtime, "model_file": target.model_file,
                    "acceptance": _acceptance(target, ctx, base),
                    "input": runner_specs[0], "output": {**runner_specs[1], "kind": info.output,
                                                          "positive_index": int(info.positive_index)},
                    **base, "calibration": calibration if target.calibrated else None, "optimization": opt,
                    "twin": twin,
                    "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        manifest.update(_conformance(target, ctx, tmp, manifest))
        manifest = finalize(tmp, manifest)
        if signing_key is not None:
            from edgecxr.formats.signing import sign_bundle

            sign_bundle(tmp, signing_key, manifest)
        load_bundle(tmp)
    acc = result["accuracy_control"]
    extra = f", validation{_validation_summary(acc)}" if acc else ""
    if acc and acc.get("small_validation"):
        extra += f" [validation of {acc['n']} images cannot measure the limits; export parity on the test images decided]"
    missed = other_attempts(acc) if acc else []
    if missed:  # e.g. --qat asked for, but the QAT model missed the gate and post-training int8 met it
        extra += "; missed the gate first: " + ", ".join(
            f"{t['method']} (recall drop {t['recall_drop']:+.4f}, agreement {t['decision_agreement']:.4f}"
            + (f"; missed: {', '.join(t['missed'])}" if t.get("missed") else "") + ")" for t in missed)
    _say(f"    {final}  {size / 1024:.1f} KiB (gzip {opt['size']['gzip_bytes'] / 1024:.1f} KiB), {time.time() - t0:.1f} s{extra}")
    return final


def _tolerances(gate):
    from edgecxr.parity.criteria import Tolerances

    return Tolerances(gate.max_recall_drop, gate.max_accuracy_drop, gate.min_agreement)


def _acceptance(target, ctx, base: dict) -> dict:
    """The release criteria written into the manifest: the gate's limits, the test set export parity ran on,
    and the runtime and CPU that passed them (see edgecxr.parity.criteria)."""
    from edgecxr.parity.criteria import export_criteria

    family = FAMILIES[target.family]
    runtime, version = family.runtime, base["versions"].get(family.package)
    reference = base["reference"]
    test = {"split": reference["split"], "images": len(reference["probs"]), "files_sha256": reference.get("files_sha256"),
            "pneumonia_images": int(sum(reference["labels"].values()))}
    return export_criteria(_tolerances(ctx.gate), test=test, runtime={"name": runtime, "version": version},
                           cpu=base["verified_on"]["cpu"])


def _export_parity(target, ctx, folder: Path, info, validation: dict | None) -> dict:
    """Device parity's own check, run at export on the test images the bundle's reference holds.

    The validation gate chooses; this only verifies, so a bundle that `edgecxr device parity` would fail
    on this CPU is never written. A failure here refuses the target (no further attempt is tuned on test).
    """
    from edgecxr.parity.comparison import compare
    from edgecxr.formats.modelinfo import to_prob
    from edgecxr.export.float_runs import Runner

    test, test_x, test_y = ctx.test
    gate = ctx.gate
    probs = to_prob(Runner(target.family, folder / target.model_file)(test_x), info.output, info.positive_index)
    rels = [s.rel for s in test]
    # the same draws as `device parity` (same seed and count): the same predictions get the same verdict
    report = compare(rels, test_y, gate.reference_float_probs, probs, info.threshold, _tolerances(gate),
                     groups=[s.patient for s in test])
    summary = {"split": "test", "n": report["n"], "agreement": report["agreement"], "passed": report["passed"],
               "bootstrap": report["bootstrap"], "calibration_change": report["calibration"]["change"],
               "flipped_counts": report["flipped_counts"], "prob_abs_diff": report["prob_abs_diff"],
               "checks": [{k: c[k] for k in ("name", "value", "limit", "passed")} for c in report["checks"]]}
    if not report["passed"]:
        failed = "; ".join(c["message"] for c in report["checks"] if not c["passed"])
        passed = ("passed a validation split too small to decide" if (validation or {}).get("small_validation")
                  else "met the validation gate")
        raise GateFailed(f"{target.name}: {passed}{_validation_summary(validation)} but fails device parity on the "
                         f"{report['n']} test reference images on this machine ({failed}); not written: it would fail "
                         f"`edgecxr device parity`. Try more --calib-count images or another target")
    return summary


def _conformance(target, ctx, folder: Path, manifest: dict) -> dict:
    """The manifest's `input_contract` and `conformance` (golden vectors of every stage, written into
    folder/conformance/ by the bundle's own model)."""
    from edgecxr.data import conformance as K, contract
    from edgecxr.data.preprocess import PreprocessSpec
    from edgecxr.runtimes import open_session

    spec = PreprocessSpec.from_dict(manifest["preprocess"])
    io_ = K.ModelIO(spec, manifest["input"], manifest["output"], manifest["threshold"],
                    lambda: open_session(folder / target.model_file, target.family, precision=target.precision))
    test = ctx.test[0]
    cases, candidates = K.cases_for(manifest["reference"], manifest["threshold"], {s.rel: s.path for s in test})
    block = K.write_golden(folder, io_, cases, runner_pixels=lambda path: spec.to_pixels(spec.read(path)),
                           candidates=candidates)
    if block.get("note"):
        _say(f"    note: {block['note']}")
    rules = contract.algorithms(spec)
    rules["stages"] = io_.stages
    rules["steps"]["quantized"]["table"] = K.quantized_table(io_)
    return {"input_contract": rules, "conformance": block}


def _validation_summary(report: dict | None) -> str:
    if not report:
        return ""
    return (f" ({report['method']}: recall drop {report['recall_drop']:+.4f}, accuracy drop {report['accuracy_drop']:+.4f}, "
            f"agreement {report['decision_agreement']:.4f} on {report['n']} validation images)")


def _add_twin(target, ctx, folder: Path, info) -> dict | None:
    """Copy the float32 model of the target's family into folder/twin/ when it reproduces the bundle's float
    reference on the test images (it is the same model, converted): `device parity` then recomputes the
    reference on images the bundle has none for. Returns the manifest's `twin` entry."""
    from edgecxr.formats.modelinfo import to_prob
    from edgecxr.export.float_runs import Runner

    fp32 = TARGETS[f"{target.family}-fp32"]
    source = ctx.twin(target.family)
    test, test_x, _ = ctx.test
    probs = to_prob(Runner(fp32.family, source / fp32.model_file)(test_x), info.output, info.positive_index)
    reference = ctx.gate.reference_float_probs
    diff = float(np.max(np.abs(probs - reference))) if len(probs) else 0.0
    if diff > TWIN_TOLERANCE:
        _say(f"    warning: the {fp32.name} twin differs from the float reference by up to {diff:.4f}; "
             "written without a twin (device parity can then check only the reference images)")
        return None
    shutil.copytree(source, folder / "twin")
    input_spec, output_spec = _specs(fp32, folder / "twin")
    return {"target": fp32.name, "model_file": f"twin/{fp32.model_file}", "input": input_spec,
            "output": output_spec, "reference_max_abs_diff": diff, "reference_images": len(probs)}


def _rechoose_threshold(source, val_y, val_probs, change: str):
    """A changed model (pruned) has its own operating point: choose it on validation by the same rule."""
    from dataclasses import replace

    target = metrics.rule_target_recall(source.info.threshold_method)
    threshold = metrics.choose_threshold(val_y, val_probs, target_recall=target)
    info = replace(source.info, threshold=threshold,
                   threshold_method=f"{metrics.threshold_rule(target)}, re-chosen after {change}")
    return replace(source, info=info)


def _check_extras(chosen, prune, qat) -> None:
    """Fail in a second, not after minutes of work, when a package of the export extra is missing."""
    import importlib.util

    from edgecxr.utils.errors import MissingDependencyError

    wanted = export_packages(chosen)
    if prune or qat:
        wanted.add("tensorflow_model_optimization")
    missing = sorted(m for m in wanted if importlib.util.find_spec(m) is None)
    if missing:
        raise MissingDependencyError(f"{', '.join(missing)} not installed; install the export extra: pip install 'edgecxr[export]'")


def _check_out(out_dir: Path) -> None:
    for p in (out_dir, *out_dir.parents):
        if p.exists():
            if not p.is_dir():
                raise EdgecxrError(f"cannot write bundles under {out_dir}: {p} is a file, not a folder; choose another --out")
            return


def _specs(target, folder: Path):
    from edgecxr.export.float_runs import Runner

    return Runner(target.family, folder / target.model_file).specs()
