"""Parity: re-run the test images on the device and compare with the float reference in the bundle.

Decisions are taken at the bundle's threshold (the clinical operating point
chosen on validation), never re-tuned on the device.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edgecxr import metrics
from edgecxr.cpu import host_info, path_note
from edgecxr.bundle import sha256_file
from edgecxr.data import DEFAULT_CLASSES, UNLABELED, files_hash, list_site, patient_id, subgroup
from edgecxr.criteria import Tolerances, check as _check, point_checks, small_set_limits  # noqa: F401  (Tolerances, small_set_limits: re-exported)
from edgecxr.errors import ConfigError, DataError

from edgecxr.devices.classifier import Classifier, Failure
from edgecxr.runtimes import runtime_notes

COMPARED = ("accuracy", "recall", "specificity", "precision", "f1", "roc_auc")
FLIP_ORDER = {"new_false_negative": 0, "new_false_positive": 1, "fixed_false_negative": 2, "fixed_false_positive": 3}


def _metrics(y, p, threshold) -> dict:
    m = metrics.binary_metrics(y, p, threshold)
    return {k: m[k] for k in (*COMPARED, "n", "confusion")}


def paired_bootstrap(y, float_pred, device_pred, *, n_boot=2000, seed=0, level=0.95, groups=None) -> dict:
    """Percentile CIs of device-minus-float recall and accuracy, both models on the same draw; resampling
    patients (groups: one patient id per image) or, without groups, images."""
    y = np.asarray(y).astype(bool)
    fp, dp = np.asarray(float_pred).astype(bool), np.asarray(device_pred).astype(bool)
    w = metrics.patient_weights(groups, len(y), n_boot, np.random.default_rng(seed))
    pos = w @ y
    with np.errstate(invalid="ignore", divide="ignore"):
        d_recall = (w @ (dp & y) - w @ (fp & y)) / pos
        d_acc = (w @ (dp == y) - w @ (fp == y)) / w.sum(axis=1)
    return {**metrics.bootstrap_info(groups, len(y), n_boot, level),
            "recall_delta": metrics.quantile_ci(d_recall, level), "accuracy_delta": metrics.quantile_ci(d_acc, level)}


def _one_flip_bound(y, groups, what: str, *, n_boot: int, level: float) -> float:
    """The lower bound one changed decision alone would give (a positive image missed for recall, any image
    for accuracy): when it is already below -margin, the set is too small to show non-inferiority."""
    y = np.asarray(y).astype(bool)
    device = y.copy()
    device[int(np.flatnonzero(y)[0]) if what == "recall" else 0] ^= True
    return paired_bootstrap(y, y, device, n_boot=n_boot, level=level, groups=groups)[f"{what}_delta"][0]


def _noninferiority_check(what: str, boot: dict, y, groups, margin: float) -> dict:
    """Non-inferiority of the device to the float model: the lower confidence bound of device minus float
    must not fall below -margin. A set too small to show it even with one changed decision is said so,
    and then passes: the point checks (which allow one decision on small sets) decide."""
    name, level = f"{what}_noninferiority", boot["level"]
    lower = boot[f"{what}_delta"][0]
    positives = int(np.sum(y))
    if what == "recall" and positives == 0:
        return _check(name, 0.0, -margin, True, "no pneumonia images in the compared set: recall not measured") | {"status": "not_measured"}
    pct = f"{100 * level:.0f} %"
    units = {g for g, label in zip(groups, y) if label == 1 or what != "recall"} if groups is not None else None
    counted = (f"{positives} pneumonia images" if what == "recall" else f"{len(y)} images") + \
              (f" from {len(units)} patients" if units is not None else "")
    one = _one_flip_bound(y, groups, what, n_boot=boot["n_boot"], level=level)
    if one < -margin - 1e-12:
        return _check(name, lower, -margin, True,
                      f"the test set is too small: {counted}; one changed decision alone puts the {pct} "
                      f"lower bound of the {what} difference at {one:+.4f}, below the margin -{margin:g}; "
                      "the point checks decide (more test images are needed to show non-inferiority)") | {"status": "too_small", "one_flip_bound": one}
    passed = lower >= -margin - 1e-12
    message = (f"{pct} lower bound of device minus float {what} {lower:+.4f} (by {boot['unit']}, {counted}), "
               f"margin -{margin:g}: non-inferiority {'shown' if passed else 'NOT shown'}")
    return _check(name, lower, -margin, passed, message) | {"status": "shown" if passed else "not_shown", "one_flip_bound": one}


def calibration_change(y, float_probs, device_probs) -> dict:
    """Calibration of both models on the same images and its change (device minus float)."""
    f, d = metrics.calibration(y, float_probs), metrics.calibration(y, device_probs)
    change = {k: (d[k] - f[k]) if d[k] is not None and f[k] is not None else None
              for k in ("ece", "brier", "slope", "intercept")}
    return {"float": f, "device": d, "change": change}


def _flip_kind(label, float_pos, device_pos) -> str:
    if label == 1:
        return "new_false_negative" if float_pos else "fixed_false_negative"
    return "new_false_positive" if device_pos else "fixed_false_positive"


def compare(rels, y, float_probs, device_probs, threshold, tolerances=Tolerances(), *, n_boot=2000,
            reference_images: int | None = None, reference_metrics: dict | None = None, groups=None) -> dict:
    """The parity report from paired predictions (no runtime involved: testable on its own).

    reference_images: how many images the bundle's reference holds; when given, a `coverage`
    check requires len(rels) / reference_images >= tolerances.min_coverage.
    reference_metrics: the float model's metrics recorded in the bundle; when every reference image
    is compared, the device's absolute recall and specificity are held to them (not only to the
    float side recomputed here, which an edited or degenerate threshold moves together with the device).
    groups: the patient of each image (default: parsed from the file names); intervals resample patients.
    """
    y = np.asarray(y).astype(int)
    patients = [patient_id(Path(r).name) for r in rels] if groups is None else list(groups)
    fprob, dprob = np.asarray(float_probs, np.float64), np.asarray(device_probs, np.float64)
    fpred, dpred = fprob >= threshold, dprob >= threshold
    f_m, d_m = _metrics(y, fprob, threshold), _metrics(y, dprob, threshold)
    delta = {k: d_m[k] - f_m[k] for k in COMPARED}
    agreement = float(np.mean(fpred == dpred))
    diff = np.abs(dprob - fprob)
    flipped = [
        {"file": rels[i], "label": int(y[i]), "patient": patients[i], "subgroup": subgroup(Path(rels[i]).name, int(y[i])),
         "kind": _flip_kind(int(y[i]), bool(fpred[i]), bool(dpred[i])),
         "float_prob": float(fprob[i]), "device_prob": float(dprob[i])}
        for i in np.flatnonzero(fpred != dpred)
    ]
    flipped.sort(key=lambda f: (FLIP_ORDER[f["kind"]], -abs(f["device_prob"] - f["float_prob"]), f["file"]))
    groups = np.array([subgroup(Path(r).name, int(l)) for r, l in zip(rels, y)])
    subgroups = {}
    for g in sorted(set(groups)):
        m = groups == g
        subgroups[g] = {
            "n": int(m.sum()),
            # one class per subgroup: accuracy is recall for pneumonia kinds, specificity for normal
            "float_accuracy": float(np.mean(fpred[m] == y[m])),
            "device_accuracy": float(np.mean(dpred[m] == y[m])),
            "delta_accuracy": float(np.mean(dpred[m] == y[m]) - np.mean(fpred[m] == y[m])),
            "agreement": float(np.mean(fpred[m] == dpred[m])),
            "flipped": int(np.sum(fpred[m] != dpred[m])),
            "new_false_negatives": sum(1 for f in flipped if f["subgroup"] == g and f["kind"] == "new_false_negative"),
        }
    checks = point_checks(f_m, d_m, agreement, len(y), len(flipped), tolerances)
    max_acc = small_set_limits(len(y), tolerances.max_accuracy_drop, tolerances.min_agreement)[0]
    boot = paired_bootstrap(y, fpred, dpred, n_boot=n_boot, level=tolerances.level, groups=patients)
    checks += [_noninferiority_check("recall", boot, y, patients, tolerances.max_recall_drop),
               _noninferiority_check("accuracy", boot, y, patients, tolerances.max_accuracy_drop)]
    checks.append(_degenerate_check(y, d_m))
    if reference_metrics is not None:
        checks.append(_reference_check(f_m, d_m, reference_metrics, len(y) == reference_images,
                                       tolerances.max_recall_drop, max_acc))
    if reference_images is not None:
        checks.append(_coverage_check(len(y), reference_images, tolerances.min_coverage))
    return {
        "threshold": float(threshold),
        "n": int(len(y)),
        "float": f_m,
        "device": d_m,
        "delta": delta,
        "agreement": agreement,
        "prob_abs_diff": {"mean": float(diff.mean()), "p99": float(np.quantile(diff, 0.99)), "max": float(diff.max())},
        "mcnemar": metrics.mcnemar(y, fpred, dpred) | {"a": "float", "b": "device"},
        "bootstrap": boot,
        "calibration": calibration_change(y, fprob, dprob),
        "flipped": flipped,
        "cases": [{"file": r, "label": int(l), "float_prob": float(a), "device_prob": float(b)}
                  for r, l, a, b in zip(rels, y, fprob, dprob)],  # every image: compare two devices' runs
        "flipped_counts": {k: sum(1 for f in flipped if f["kind"] == k) for k in FLIP_ORDER},
        "subgroups": subgroups,
        "tolerances": asdict(tolerances),
        "checks": checks,
        "passed": all(c["passed"] for c in checks),
    }


def compare_unlabeled(rels, float_probs, device_probs, threshold, tolerances=Tolerances()) -> dict:
    """Parity without labels (a site's unlabeled X-rays): how often the device decides as the float model,
    and how many of the images the float model calls positive the device calls negative (the unlabeled
    counterpart of new false negatives, held to the recall limit)."""
    fprob, dprob = np.asarray(float_probs, np.float64), np.asarray(device_probs, np.float64)
    fpred, dpred = fprob >= threshold, dprob >= threshold
    agreement = float(np.mean(fpred == dpred))
    diff = dprob - fprob
    flipped = sorted(({"file": rels[i], "kind": "new_negative" if fpred[i] else "new_positive",
                       "float_prob": float(fprob[i]), "device_prob": float(dprob[i])}
                      for i in np.flatnonzero(fpred != dpred)),
                     key=lambda f: (f["kind"] != "new_negative", -abs(f["device_prob"] - f["float_prob"]), f["file"]))
    positives, lost = int(fpred.sum()), int(np.sum(fpred & ~dpred))
    lost_share = lost / positives if positives else 0.0
    min_agree = small_set_limits(len(rels), tolerances.max_accuracy_drop, tolerances.min_agreement)[1]
    checks = [
        _check("positives_lost", lost_share, tolerances.max_recall_drop, lost_share <= tolerances.max_recall_drop + 1e-12,
               f"{lost} of the {positives} images the float model calls positive are negative on the device "
               f"({lost_share:.4f}, allowed {tolerances.max_recall_drop})"),
        _check("agreement", agreement, min_agree, agreement >= min_agree - 1e-12,
               f"{agreement:.4f} of decisions identical (need {min_agree:.4g}); {len(flipped)} flipped"),
    ]
    return {
        "threshold": float(threshold), "n": len(rels), "labeled": False, "agreement": agreement,
        "positives": {"float": positives, "device": int(dpred.sum())},
        "prob_abs_diff": {"mean": float(np.abs(diff).mean()), "p99": float(np.quantile(np.abs(diff), 0.99)),
                          "max": float(np.abs(diff).max())},
        "prob_shift_mean": float(diff.mean()),
        "flipped": flipped,
        "flipped_counts": {k: sum(1 for f in flipped if f["kind"] == k) for k in ("new_negative", "new_positive")},
        "cases": [{"file": r, "float_prob": float(a), "device_prob": float(b)} for r, a, b in zip(rels, fprob, dprob)],
        "tolerances": asdict(tolerances), "checks": checks, "passed": all(c["passed"] for c in checks),
    }


def _degenerate_check(y, d_m) -> dict:
    """An operating point that gives every image one answer passes every relative check (recall 0 = recall 0)."""
    both = 0 < int(np.sum(y)) < len(y)
    low = min(d_m["recall"], d_m["specificity"]) if both else 1.0
    passed = bool(low > 0)
    if not both:
        return _check("not_degenerate", 1.0, 0.0, True, "one class only in the compared images: not measured")
    message = f"device recall {d_m['recall']:.4f}, specificity {d_m['specificity']:.4f}"
    if not passed:
        message += (": every image gets the same answer; the threshold or the model output is degenerate "
                    "(re-export with a threshold chosen on validation)")
    return _check("not_degenerate", low, 0.0, passed, message)


def _reference_check(f_m, d_m, ref: dict, full: bool, max_recall_drop: float, max_spec_drop: float) -> dict:
    """The device's absolute recall and specificity against the float metrics written at export."""
    if not full:
        return _check("reference_metrics", 0.0, 0.0, True,
                      "a subset of the reference images: absolute metrics not compared with the bundle's")
    # Consistent, the recorded float metrics are the float side of recall_drop and accuracy_drop, which hold the
    # device to them; a separate limit on specificity here would be a stricter gate than parity promises.
    consistent = all(abs(f_m[k] - float(ref[k])) <= 1e-9 for k in ("recall", "specificity"))
    recall_gap, spec_gap = float(ref["recall"]) - d_m["recall"], float(ref["specificity"]) - d_m["specificity"]
    passed = consistent and recall_gap <= max_recall_drop + 1e-12
    message = (f"device recall {d_m['recall']:.4f}, specificity {d_m['specificity']:.4f}; the bundle's reference "
               f"{float(ref['recall']):.4f}, {float(ref['specificity']):.4f}")
    if not consistent:
        message += (f", which its own probabilities at threshold do not give ({f_m['recall']:.4f}, "
                    f"{f_m['specificity']:.4f}): the manifest was edited; re-export the bundle")
    return _check("reference_metrics", max(recall_gap, spec_gap), max(max_recall_drop, max_spec_drop), passed, message)


def _coverage_check(compared: int, reference: int, min_coverage: float, what: str = "reference images") -> dict:
    """A subset of the reference (wrong data root, missing or unreadable files) must not pass silently; with
    the twin, `what` = the images listed, of which unreadable ones must not pass silently either."""
    coverage = compared / reference if reference else 0.0
    passed = coverage >= min_coverage - 1e-12
    message = f"compared {compared} of {reference} {what} ({100 * coverage:.1f} %)"
    if passed:
        message += f", need {min_coverage}"
    elif what == "reference images":
        message += (f", below --min-coverage {min_coverage}: pass the full data root the bundle was exported with "
                    "(and fix unreadable files), or lower --min-coverage for a deliberate subset")
    else:
        message += f", below --min-coverage {min_coverage}: fix or remove the unreadable files, or lower --min-coverage"
    return _check("coverage", coverage, min_coverage, passed, message)


REFERENCES = ("auto", "bundle", "twin")


def run_parity(clf: Classifier, data, *, split: str = "test", classes=DEFAULT_CLASSES,
               tolerances: Tolerances | dict | None = None, workers: int | None = None, strict: bool = False,
               n_boot: int = 2000, reference: str = "auto", stability: bool = False,
               max_unstable: float | None = None) -> dict:
    """Classify the images under `data` on the device and compare with the float model's decisions.

    reference: "bundle" compares with the float probabilities stored at export (the test images the bundle
    was exported with); "twin" recomputes them here with the bundle's float32 twin, for any images (a
    clinic's own, labeled or not); "auto" takes the bundle's when it holds every image, else the twin.
    stability: also measure input-path stability on the compared images (edgecxr.devices.stability), for the
    device model and the float twin when the bundle has one, gated by max_unstable when given.
    tolerances: None applies the acceptance criteria in the bundle's manifest; a dict sets some of them, a
    Tolerances all of them (tightening is applied, loosening too but recorded as a deviation: report["criteria"]).
    The report is computed from per-image predictions (parity_predictions -> parity_from_predictions), the
    same path a merge of shards takes (edgecxr.shards).
    """
    samples = parity_samples(clf, data, split, classes, reference)
    predictions = parity_predictions(clf, data, samples, split=split, reference=reference, workers=workers,
                                     strict=strict)
    report = parity_from_predictions(predictions, tolerances, n_boot=n_boot, max_unstable=max_unstable)
    max_unstable = report["criteria"]["applied"]["max_unstable"]
    if stability or max_unstable is not None:
        from edgecxr.devices.stability import measure_stability, stability_check

        paths = {s.rel: s.path for s in samples}
        rels = [c["file"] for c in report["cases"]]
        report["stability"] = measure_stability(clf, [paths[r] for r in rels], names=rels, float_clf=clf.twin(),
                                                max_unstable=max_unstable, progress=True)
        if max_unstable is not None:
            report["checks"].append(stability_check(report["stability"]))
            report["passed"] = all(c["passed"] for c in report["checks"])
    return report


def parity_samples(clf: Classifier, data, split: str = "test", classes=DEFAULT_CLASSES, reference: str = "auto") -> list:
    """The images parity compares: those under `data` (see list_site); for a bundle exported on a pooled
    re-split (`edgecxr split`), whose test images come from every official folder, those of its reference
    when `data` is a data root holding them (a site's own folder, or --reference twin, is listed as usual)."""
    from edgecxr.data import SPLITS, pooled

    ref = clf.bundle.reference
    root = Path(data)
    if not ref.get("pooled") or reference == "twin" or not any((root / s).is_dir() for s in SPLITS):
        return list_site(data, split, classes)
    return [s for s in pooled(data, classes) if s.rel in ref["probs"]] or list_site(data, split, classes)


def parity_predictions(clf: Classifier, data, samples, *, split: str = "test", reference: str = "auto",
                       workers: int | None = None, strict: bool = False, shard: tuple[int, int] = (1, 1)) -> dict:
    """The per-image predictions of parity on shard (I, N) of `samples` (all of them for (1, 1)): a
    prediction document of edgecxr.shards, the unit `edgecxr device merge` combines."""
    from edgecxr import shards

    context = parity_context(clf, samples, split, reference, data)
    mine = shards.select(samples, *shard)
    t0 = time.perf_counter()
    records = predict_records(clf, mine, context, workers=workers, strict=strict)
    return shards.document("parity", context, samples, shard, records, time.perf_counter() - t0, host_info())


def parity_context(clf: Classifier, samples, split: str, reference: str, data) -> dict:
    """What every shard of one parity run shares: the bundle, the float reference, the threshold."""
    source = _reference_source(clf, samples, split, reference, data)
    context = {"threshold": float(clf.threshold), "source": source, "reference": _reference_info(clf, source),
               "bundle": _bundle_info(clf), "runtime": clf.runtime,
               "verified_cpu": (clf.bundle.manifest.get("verified_on") or {}).get("cpu"),
               "acceptance": clf.bundle.manifest.get("acceptance"), "data": {"root": str(data), "split": split}}
    if source == "bundle":
        _in_bundle_reference(clf, samples, split, data)  # refuses a wrong split, foreign images, other labels
        ref = clf.bundle.reference
        context.update(reference_images=len(ref["probs"]), reference_metrics=ref["metrics"],
                       reference_files_sha256=ref.get("files_sha256"))
    return context


def predict_records(clf: Classifier, indexed, context: dict, *, workers: int | None = None,
                    strict: bool = False) -> list[dict]:
    """One record per (index, Sample): the device and float probabilities, the image's hash and timings; an
    image not in the bundle's reference gets {"not_in_reference": True}, an unreadable one its "error"."""
    if context["source"] == "bundle":
        ref_probs = clf.bundle.reference["probs"]
        known = [(i, s) for i, s in indexed if s.rel in ref_probs]
    else:
        known = list(indexed)
    results = clf.predict_batch([s.path for _, s in known], workers=workers, strict=strict)
    if context["source"] == "twin":
        twin = clf.twin().predict_batch([s.path for _, s in known], workers=workers, strict=strict)
        ref_probs = {s.rel: r.probability for (_, s), r in zip(known, twin) if not isinstance(r, Failure)}
    compared = {i for i, _ in known}
    records = [{"index": i, "file": s.rel, "not_in_reference": True} for i, s in indexed if i not in compared]
    for (i, s), r in zip(known, results):
        if isinstance(r, Failure):
            records.append({"index": i, "file": s.rel, "error": r.error})
        elif s.rel not in ref_probs:
            records.append({"index": i, "file": s.rel, "no_reference": True})  # the twin could not read it
        else:
            t = r.timings
            records.append({"index": i, "file": s.rel, "sha256": sha256_file(s.path), "label": s.label, "patient": s.patient,
                            "float_prob": float(ref_probs[s.rel]), "device_prob": float(r.probability),
                            "decode_ms": t.decode_ms, "preprocess_ms": t.preprocess_ms, "infer_ms": t.infer_ms})
    return sorted(records, key=lambda r: r["index"])


def parity_from_predictions(pred: dict, tolerances=None, *, n_boot: int = 2000, max_unstable=None) -> dict:
    """The parity report and verdict from a prediction document (one run, or shards merged). tolerances: as
    for run_parity: the bundle's acceptance criteria (carried in the document) apply unless given."""
    from edgecxr.criteria import resolve

    ctx, records = pred["context"], pred["records"]
    given = asdict(tolerances) if isinstance(tolerances, Tolerances) else dict(tolerances or {})
    given.setdefault("max_unstable", max_unstable)
    tolerances, _, criteria = resolve(ctx.get("acceptance"), given)
    ok = [r for r in records if "device_prob" in r]
    if not ok:
        raise DataError("no readable images left to compare")
    listed = [r for r in records if not r.get("not_in_reference")]
    unknown = [r["file"] for r in records if r.get("not_in_reference")]
    unreadable = [{"file": r["file"], "error": r["error"]} for r in records if "error" in r]
    rels, labels = [r["file"] for r in ok], [r["label"] for r in ok]
    patients = [r.get("patient") or patient_id(Path(r["file"]).name) for r in ok]  # a CSV's patient_id column
    float_probs, device_probs = [r["float_prob"] for r in ok], [r["device_prob"] for r in ok]
    threshold, source = ctx["threshold"], ctx["source"]
    if source == "bundle":
        report = compare(rels, labels, float_probs, device_probs, threshold, tolerances, n_boot=n_boot,
                         reference_images=ctx["reference_images"], reference_metrics=ctx["reference_metrics"],
                         groups=patients)
    else:
        if UNLABELED in labels:
            report = compare_unlabeled(rels, float_probs, device_probs, threshold, tolerances)
        else:
            report = compare(rels, labels, float_probs, device_probs, threshold, tolerances, n_boot=n_boot,
                             groups=patients)
        report["checks"].append(_coverage_check(len(ok), len(listed), tolerances.min_coverage, "images listed"))
        report["passed"] = all(c["passed"] for c in report["checks"])
    for case, r in zip(report["cases"], ok):
        case["sha256"] = r["sha256"]  # the exact images, so the run can be repeated
    infer = np.array([r["infer_ms"] for r in ok])
    elapsed = pred["seconds"]
    data_info = {"root": ctx["data"]["root"], "split": ctx["data"]["split"], "images": pred["list"]["size"],
                 "compared": len(ok), "labeled": UNLABELED not in labels, "not_in_reference": len(unknown),
                 "unreadable": unreadable, "files_sha256": files_hash(rels)}
    if source == "bundle":
        data_info.update(reference_images=ctx["reference_images"], reference_coverage=len(ok) / ctx["reference_images"],
                         same_files_as_reference=data_info["files_sha256"] == ctx["reference_files_sha256"])
    report.update({
        "reference": ctx["reference"],
        "bundle": ctx["bundle"],
        "runtime": ctx["runtime"],
        "data": data_info,
        "timing": {"seconds": elapsed, "images_per_s": len(listed) / elapsed if elapsed else 0.0,
                   "infer_ms_mean": float(infer.mean()), "infer_ms_p50": float(np.median(infer))},
        "host": pred["host"],
        "criteria": criteria,
    })
    report["cpu_path_note"] = path_note(ctx["verified_cpu"], report["host"]["cpu"])
    if unknown:
        report["data"]["not_in_reference_examples"] = unknown[:5]
    if pred.get("shards"):
        report["shards"] = pred["shards"]  # merged: where each shard ran
    return report


def _reference_source(clf: Classifier, samples, split: str, reference: str, data) -> str:
    if reference not in REFERENCES:
        raise ConfigError(f"--reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
    has_twin = bool(clf.bundle.manifest.get("twin"))
    if reference == "twin" and not has_twin:
        raise ConfigError(f"{clf.bundle.path}: this bundle has no float twin (exported with --no-twin, as a "
                          "float32 target, or by an older edgecxr); re-export it, or use --reference bundle")
    if reference != "auto":
        return reference
    ref = clf.bundle.reference
    # any image of the reference keeps the stored one (its coverage check then counts the rest): one stray
    # extra file must not switch a reference run over to the twin and off its checks
    in_reference = ref.get("split") in (None, split) and any(s.rel in ref["probs"] for s in samples)
    return "bundle" if in_reference or not has_twin else "twin"


def _in_bundle_reference(clf: Classifier, samples, split: str, data):
    """(images in the bundle's reference, names of the others, the reference's float probabilities)."""
    ref = clf.bundle.reference
    if ref.get("split") not in (None, split):
        raise DataError(f"the bundle's reference predictions are for split '{ref['split']}', not '{split}'; pass --split {ref['split']}")
    ref_probs, ref_labels = ref["probs"], ref["labels"]
    known = [s for s in samples if s.rel in ref_probs]
    unknown = [s.rel for s in samples if s.rel not in ref_probs]
    if not known:
        raise DataError(
            f"{data}: none of the {len(samples)} images is in the bundle's reference "
            f"({len(ref_probs)} '{split}' images, e.g. {next(iter(ref_probs), '?')}); pass the data root the bundle "
            "was exported with, or use a bundle with a float twin (the default export) to check other images")
    wrong = [s.rel for s in known if int(ref_labels.get(s.rel, s.label)) != s.label]
    if wrong:
        raise DataError(f"{len(wrong)} images have a different label in the bundle's reference (first: {wrong[0]}); "
                        "check --classes and the data root")
    return known, unknown, ref_probs


def _reference_info(clf: Classifier, source: str) -> dict:
    if source == "bundle":
        return {"source": "bundle", "what": f"float probabilities stored at export ({clf.bundle.reference.get('split')} split)"}
    twin = clf.bundle.manifest["twin"]
    return {"source": "twin", "what": f"recomputed here by the bundle's float32 twin ({twin['target']})",
            "target": twin["target"], "sha256": clf.bundle.manifest["files"][twin["model_file"]],
            "max_abs_diff_at_export": twin.get("reference_max_abs_diff")}


def _bundle_info(clf: Classifier) -> dict:
    m = clf.bundle.manifest
    return {"path": str(clf.bundle.path), "target": m["target"], "sha256": m["sha256"], "digest": m["digest"],
            "created": m.get("created"), "versions": m.get("versions", {})}


def format_report(r: dict, max_flips: int = 10) -> str:
    """The human summary printed by `edgecxr device parity`."""
    rt = r["runtime"]
    lines = [f"parity {r['bundle']['target']} on {rt['name']} {rt['version']} ({rt['provider']}), "
             f"{r['n']} images in {r['timing']['seconds']:.1f} s, threshold {r['threshold']:.4f}",
             *runtime_notes(rt)]
    if "reference" in r:
        lines.append(f"reference: {r['reference']['what']}")
    lines += _metric_lines(r) if r.get("labeled", True) else _unlabeled_lines(r)
    if r["flipped"]:
        lines.append(f"flipped cases ({len(r['flipped'])}, {'new false negatives' if r.get('labeled', True) else 'new negatives'} first):")
        for f in r["flipped"][:max_flips]:
            lines.append(f"  {f['kind']:22s} {f['file']}  float {f['float_prob']:.3f} -> device {f['device_prob']:.3f}")
        if len(r["flipped"]) > max_flips:
            lines.append(f"  ... {len(r['flipped']) - max_flips} more in --json")
    d = r["data"]
    if d["unreadable"]:
        lines.append(f"{len(d['unreadable'])} unreadable image(s) skipped, first: {d['unreadable'][0]['error']}")
    if d["not_in_reference"]:
        lines.append(f"{d['not_in_reference']} image(s) not in the bundle's reference were skipped")
    if d.get("reference_coverage", 1) < 1:
        lines.append(f"note: compared {d['compared']} of the {d['reference_images']} reference images")
    if "stability" in r:
        from edgecxr.devices.stability import format_stability

        lines.append(format_stability(r["stability"] | {"passed": None}, show=max_flips))  # its check is listed next
    if r.get("criteria"):
        from edgecxr.criteria import format_criteria

        lines += format_criteria(r["criteria"])
    for c in r["checks"]:
        state = "NOT SHOWN" if c.get("status") == "too_small" else "PASS" if c["passed"] else "FAIL"
        lines.append(f"{state} {c['name']}: {c['message']}")
    cpu = r.get("host", {}).get("cpu")
    if cpu:
        lines.append(r.get("cpu_path_note") or f"CPU path: {cpu['int8_path']} (the bundle does not record where it was verified)")
    lines.append("parity PASSED" if r["passed"] else "parity FAILED")
    return "\n".join(lines)


def _metric_lines(r: dict) -> list[str]:
    lines = [f"{'metric':12s} {'float':>8s} {'device':>8s} {'delta':>8s}"]
    lines += [f"{k:12s} {r['float'][k]:8.4f} {r['device'][k]:8.4f} {r['delta'][k]:+8.4f}" for k in COMPARED]
    b, mc = r["bootstrap"], r["mcnemar"]
    lines.append(f"agreement {r['agreement']:.4f}; McNemar p={mc['p_value']:.3g} "
                 f"(float-only right {mc['a_only_right']}, device-only right {mc['b_only_right']})")
    unit = f"by {b.get('unit', 'image')}" + (f", {b['patients']} patients" if b.get("unit") == "patient" else "")
    lines.append(f"{int(b['level'] * 100)}% CI ({unit}) recall delta [{b['recall_delta'][0]:+.4f}, {b['recall_delta'][1]:+.4f}], "
                 f"accuracy delta [{b['accuracy_delta'][0]:+.4f}, {b['accuracy_delta'][1]:+.4f}]")
    if r.get("calibration"):
        lines.append(format_calibration(r["calibration"]))
    lines.append("subgroups: " + "; ".join(
        f"{g} n={s['n']} acc {s['float_accuracy']:.3f}->{s['device_accuracy']:.3f} flipped {s['flipped']}"
        for g, s in r["subgroups"].items()))
    return lines


def _num(v, fmt="+.4f") -> str:
    return "n/a" if v is None else format(v, fmt)


def format_calibration(c: dict) -> str:
    """One line: ECE, Brier score and calibration slope, float -> device."""
    f, d = c["float"], c["device"]
    return (f"calibration float -> device: ECE {f['ece']:.4f} -> {d['ece']:.4f}, Brier {f['brier']:.4f} -> {d['brier']:.4f}, "
            f"slope {_num(f['slope'], '.3f')} -> {_num(d['slope'], '.3f')}, intercept {_num(f['intercept'], '.3f')} -> "
            f"{_num(d['intercept'], '.3f')}")


def _unlabeled_lines(r: dict) -> list[str]:
    p, d = r["positives"], r["prob_abs_diff"]
    return [f"unlabeled images: the float model calls {p['float']} of {r['n']} positive, the device {p['device']}",
            f"agreement {r['agreement']:.4f}; probability shift mean {r['prob_shift_mean']:+.4f}, "
            f"|shift| mean {d['mean']:.4f}, p99 {d['p99']:.4f}, max {d['max']:.4f}"]
