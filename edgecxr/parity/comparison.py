"""Parity statistics: paired predictions of a float model and a device model -> the parity report.

No runtime and no images here (testable on its own): `edgecxr device parity` feeds it what the device
computed, the export gate what the exported file computed on the reference test images, so both judge
with the same code.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from edgecxr.parity import metrics
from edgecxr.parity.criteria import Tolerances, point_checks, small_set_limits
from edgecxr.parity.verdict import at_least, at_most, check as _check, judge
from edgecxr.data.folders import patient_id, subgroup


COMPARED = ("accuracy", "recall", "specificity", "precision", "f1", "roc_auc")
FLIP_ORDER = {"new_false_negative": 0, "new_false_positive": 1, "fixed_false_negative": 2, "fixed_false_positive": 3}


# bootstrap resamples of every parity verdict (export parity, device parity, the benchmark): one count, so a
# bundle near a margin gets the same verdict from each (1000 vs 2000 draws moved a lower bound -0.0098 -> -0.0103)
PARITY_BOOTSTRAP = 2000


def _metrics(y, p, threshold) -> dict:
    m = metrics.binary_metrics(y, p, threshold)
    return {k: m[k] for k in (*COMPARED, "n", "confusion")}


def paired_bootstrap(y, float_pred, device_pred, *, n_boot=PARITY_BOOTSTRAP, seed=0, level=0.95, groups=None) -> dict:
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
    c = at_least(name, lower, -margin, lambda ok: f"{pct} lower bound of device minus float {what} {lower:+.4f} (by "
                 f"{boot['unit']}, {counted}), margin -{margin:g}: non-inferiority {'shown' if ok else 'NOT shown'}",
                 eps=1e-12)
    return c | {"status": "shown" if c["passed"] else "not_shown", "one_flip_bound": one}


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


def _flipped(rels, y, patients, fprob, dprob, fpred, dpred) -> list[dict]:
    """Every image whose decision changed, new false negatives first, then by how far it moved."""
    flipped = [
        {"file": rels[i], "label": int(y[i]), "patient": patients[i], "subgroup": subgroup(Path(rels[i]).name, int(y[i])),
         "kind": _flip_kind(int(y[i]), bool(fpred[i]), bool(dpred[i])),
         "float_prob": float(fprob[i]), "device_prob": float(dprob[i])}
        for i in np.flatnonzero(fpred != dpred)
    ]
    flipped.sort(key=lambda f: (FLIP_ORDER[f["kind"]], -abs(f["device_prob"] - f["float_prob"]), f["file"]))
    return flipped


def _subgroups(rels, y, fpred, dpred, flipped) -> dict:
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
    return subgroups


def compare(rels, y, float_probs, device_probs, threshold, tolerances=Tolerances(), *, n_boot=PARITY_BOOTSTRAP,
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
    flipped = _flipped(rels, y, patients, fprob, dprob, fpred, dpred)
    subgroups = _subgroups(rels, y, fpred, dpred, flipped)
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
    return judge({
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
    })


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
        at_most("positives_lost", lost_share, tolerances.max_recall_drop,
                f"{lost} of the {positives} images the float model calls positive are negative on the device "
                f"({lost_share:.4f}, allowed {tolerances.max_recall_drop})", eps=1e-12),
        at_least("agreement", agreement, min_agree,
                 f"{agreement:.4f} of decisions identical (need {min_agree:.4g}); {len(flipped)} flipped", eps=1e-12),
    ]
    return judge({
        "threshold": float(threshold), "n": len(rels), "labeled": False, "agreement": agreement,
        "positives": {"float": positives, "device": int(dpred.sum())},
        "prob_abs_diff": {"mean": float(np.abs(diff).mean()), "p99": float(np.quantile(np.abs(diff), 0.99)),
                          "max": float(np.abs(diff).max())},
        "prob_shift_mean": float(diff.mean()),
        "flipped": flipped,
        "flipped_counts": {k: sum(1 for f in flipped if f["kind"] == k) for k in ("new_negative", "new_positive")},
        "cases": [{"file": r, "float_prob": float(a), "device_prob": float(b)} for r, a, b in zip(rels, fprob, dprob)],
        "tolerances": asdict(tolerances), "checks": checks,
    })


def _degenerate_check(y, d_m) -> dict:
    """An operating point that gives every image one answer passes every relative check (recall 0 = recall 0)."""
    both = 0 < int(np.sum(y)) < len(y)
    low = min(d_m["recall"], d_m["specificity"]) if both else 1.0
    ok = bool(low > 0)
    if not both:
        return _check("not_degenerate", 1.0, 0.0, True, "one class only in the compared images: not measured")
    message = f"device recall {d_m['recall']:.4f}, specificity {d_m['specificity']:.4f}"
    if not ok:
        message += (": every image gets the same answer; the threshold or the model output is degenerate "
                    "(re-export with a threshold chosen on validation)")
    return _check("not_degenerate", low, 0.0, ok, message)


def _reference_check(f_m, d_m, ref: dict, full: bool, max_recall_drop: float, max_spec_drop: float) -> dict:
    """The device's absolute recall and specificity against the float metrics written at export."""
    if not full:
        return _check("reference_metrics", 0.0, 0.0, True,
                      "a subset of the reference images: absolute metrics not compared with the bundle's")
    # Consistent, the recorded float metrics are the float side of recall_drop and accuracy_drop, which hold the
    # device to them; a separate limit on specificity here would be a stricter gate than parity promises.
    consistent = all(abs(f_m[k] - float(ref[k])) <= 1e-9 for k in ("recall", "specificity"))
    recall_gap, spec_gap = float(ref["recall"]) - d_m["recall"], float(ref["specificity"]) - d_m["specificity"]
    ok = consistent and recall_gap <= max_recall_drop + 1e-12
    message = (f"device recall {d_m['recall']:.4f}, specificity {d_m['specificity']:.4f}; the bundle's reference "
               f"{float(ref['recall']):.4f}, {float(ref['specificity']):.4f}")
    if not consistent:
        message += (f", which its own probabilities at threshold do not give ({f_m['recall']:.4f}, "
                    f"{f_m['specificity']:.4f}): the manifest was edited; re-export the bundle")
    return _check("reference_metrics", max(recall_gap, spec_gap), max(max_recall_drop, max_spec_drop), ok, message)


def _coverage_check(compared: int, reference: int, min_coverage: float, what: str = "reference images") -> dict:
    """A subset of the reference (wrong data root, missing or unreadable files) must not pass silently; with
    the twin, `what` = the images listed, of which unreadable ones must not pass silently either."""
    coverage = compared / reference if reference else 0.0

    def message(ok: bool) -> str:
        said = f"compared {compared} of {reference} {what} ({100 * coverage:.1f} %)"
        if ok:
            return said + f", need {min_coverage}"
        if what == "reference images":
            return said + (f", below --min-coverage {min_coverage}: pass the full data root the bundle was exported "
                           "with (and fix unreadable files), or lower --min-coverage for a deliberate subset")
        return said + f", below --min-coverage {min_coverage}: fix or remove the unreadable files, or lower --min-coverage"

    return at_least("coverage", coverage, min_coverage, message, eps=1e-12)
