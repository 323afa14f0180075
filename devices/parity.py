"""Parity: re-run the test images on the device and compare with the float reference in the bundle.

Decisions are taken at the bundle's threshold (the clinical operating point
chosen on validation), never re-tuned on the device.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edgecxr.utils.cpu import host_info, path_note
from edgecxr.formats.bundle import sha256_file
from edgecxr.data.folders import DEFAULT_CLASSES, UNLABELED, files_hash, list_site, patient_id
from edgecxr.parity.comparison import PARITY_BOOTSTRAP, COMPARED, _coverage_check, compare, compare_unlabeled  # noqa: F401  (compare: re-exported)
from edgecxr.parity.criteria import Tolerances
from edgecxr.parity.verdict import judge
from edgecxr.utils.errors import ConfigError, DataError

from edgecxr.devices.classifier import Classifier, Failure
from edgecxr.runtimes import runtime_notes

REFERENCES = ("auto", "bundle", "twin")


def run_parity(clf: Classifier, data, *, split: str = "test", classes=DEFAULT_CLASSES,
               tolerances: Tolerances | dict | None = None, workers: int | None = None, strict: bool = False,
               n_boot: int = PARITY_BOOTSTRAP, reference: str = "auto", stability: bool = False,
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
    same path a merge of shards takes (edgecxr.parity.shards).
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
            judge(report, [*report["checks"], stability_check(report["stability"])])
    return report


def parity_samples(clf: Classifier, data, split: str = "test", classes=DEFAULT_CLASSES, reference: str = "auto") -> list:
    """The images parity compares: those under `data` (see list_site); for a bundle exported on a pooled
    re-split (`edgecxr split`), whose test images come from every official folder, those of its reference
    when `data` is a data root holding them (a site's own folder, or --reference twin, is listed as usual)."""
    from edgecxr.data.folders import SPLITS, pooled

    ref = clf.bundle.reference
    root = Path(data)
    if not ref.get("pooled") or reference == "twin" or not any((root / s).is_dir() for s in SPLITS):
        return list_site(data, split, classes)
    return [s for s in pooled(data, classes) if s.rel in ref["probs"]] or list_site(data, split, classes)


def parity_predictions(clf: Classifier, data, samples, *, split: str = "test", reference: str = "auto",
                       workers: int | None = None, strict: bool = False, shard: tuple[int, int] = (1, 1)) -> dict:
    """The per-image predictions of parity on shard (I, N) of `samples` (all of them for (1, 1)): a
    prediction document of edgecxr.parity.shards, the unit `edgecxr device merge` combines."""
    from edgecxr.parity import shards

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


def parity_from_predictions(pred: dict, tolerances=None, *, n_boot: int = PARITY_BOOTSTRAP, max_unstable=None) -> dict:
    """The parity report and verdict from a prediction document (one run, or shards merged). tolerances: as
    for run_parity: the bundle's acceptance criteria (carried in the document) apply unless given."""
    from edgecxr.parity.criteria import resolve

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
        coverage = _coverage_check(len(ok), len(listed), tolerances.min_coverage, "images listed")
        judge(report, [*report["checks"], coverage])
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
    from edgecxr.utils.errors import printable

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
            lines.append(f"  {f['kind']:22s} {printable(f['file'])}  float {f['float_prob']:.3f} -> device {f['device_prob']:.3f}")
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
        from edgecxr.parity.criteria import format_criteria

        lines += format_criteria(r["criteria"])
    for c in r["checks"]:
        state = {"too_small": "NOT SHOWN", "not_measured": "NOT MEASURED"}.get(c.get("status"), "PASS" if c["passed"] else "FAIL")
        lines.append(f"{state} {c['name']}: {c['message']}")
    cpu = r.get("host", {}).get("cpu")
    if cpu:
        lines.append(r.get("cpu_path_note") or f"CPU path: {cpu['int8_path']} (the bundle does not record where it was verified)")
    sbom = r.get("sbom")
    if sbom:
        lines.append(f"SBOM: {sbom['format']}, {sbom['components']} components, sha256 {sbom['sha256'][:16]}..., "
                     f"written {sbom['file']}")
        lines += [f"warning: {w}" for w in sbom["warnings"]]
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
