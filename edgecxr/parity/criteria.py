"""Acceptance criteria: fixed at export in the bundle's manifest, applied by `edgecxr device parity`.

A release is tested against criteria decided before the test (a predetermined change control plan):
export writes them into the manifest ('acceptance'); parity applies them by default. The command line
may tighten a criterion; loosening one is applied too but recorded as a deviation in the report, never
silent. Bundles exported before the field get the defaults, and the report says so.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from edgecxr.utils.errors import ConfigError
from edgecxr.parity.verdict import at_least, at_most, check  # noqa: F401  (check: re-exported)


@dataclass(frozen=True)
class Tolerances:
    max_recall_drop: float = 0.01
    max_accuracy_drop: float = 0.01
    min_agreement: float = 0.98
    min_coverage: float = 1.0  # share of the bundle's reference images that must be compared
    level: float = 0.95  # confidence level of the intervals; non-inferiority is judged on their lower bound


def small_set_limits(n: int, max_accuracy_drop: float, min_agreement: float) -> tuple[float, float]:
    """On a small set one flipped decision is more than the 1-2 % limits: a limit finer than one decision
    (but not a demand for none) then allows one; a new false negative still fails the recall check."""
    one = 1 / max(n, 1)
    max_acc = one if 0 < max_accuracy_drop < one else max_accuracy_drop
    min_agree = 1 - one if 1 - one < min_agreement < 1 else min_agreement
    return max_acc, min_agree


def point_checks(float_m: dict, device_m: dict, agreement: float, n: int, n_flipped: int, tol: Tolerances) -> list[dict]:
    """Recall drop, accuracy drop and decision agreement of a quantized model against its float model: the
    export gate applies them on validation, device parity on the test images (one function, so the two
    cannot drift apart). float_m/device_m: metrics.binary_metrics of each on the same images."""
    recall_drop = float_m["recall"] - device_m["recall"]
    acc_drop = float_m["accuracy"] - device_m["accuracy"]
    max_acc, min_agree = small_set_limits(n, tol.max_accuracy_drop, tol.min_agreement)
    small = f" = one decision of {n}"
    return [
        at_most("recall_drop", recall_drop, tol.max_recall_drop,
                f"recall {float_m['recall']:.4f} -> {device_m['recall']:.4f} (drop {recall_drop:+.4f}, allowed "
                f"{tol.max_recall_drop})", eps=1e-9),
        at_most("accuracy_drop", acc_drop, max_acc,
                f"accuracy {float_m['accuracy']:.4f} -> {device_m['accuracy']:.4f} (drop {acc_drop:+.4f}, allowed "
                f"{max_acc:.4g}{small if max_acc != tol.max_accuracy_drop else ''})", eps=1e-9),
        at_least("agreement", agreement, min_agree,
                 f"{agreement:.4f} of decisions identical (need {min_agree:.4g}"
                 f"{small if min_agree != tol.min_agreement else ''}); {n_flipped} flipped", eps=1e-9),
    ]


# criterion -> True when a larger value is stricter
STRICTER_WHEN_LARGER = {"max_recall_drop": False, "max_accuracy_drop": False, "min_agreement": True,
                        "min_coverage": True, "level": True, "max_unstable": False}
WHAT = {"max_recall_drop": "recall non-inferiority margin", "max_accuracy_drop": "accuracy non-inferiority margin",
        "min_agreement": "decision agreement", "min_coverage": "coverage of the reference images",
        "level": "confidence level", "max_unstable": "share of unstable images"}


def export_criteria(tolerances: Tolerances, *, test: dict, runtime: dict, cpu: dict | None,
                    max_unstable: float | None = None) -> dict:
    """The manifest's 'acceptance' entry: the limits, the test set they were verified on (split, image count,
    hash of its files), and the runtime and CPU that verified them at export."""
    return {**asdict(tolerances), "max_unstable": max_unstable, "test_set": test,
            "verified_on": {"runtime": runtime, "cpu": cpu},
            "rule": "device minus float recall and accuracy: point drops within the margins and the lower "
                    "confidence bound (patient bootstrap) above -margin; decision agreement and coverage at least "
                    "their minimum"}


def check_criteria(name: str, acceptance) -> str | None:
    """A sentence saying what is wrong with a manifest's 'acceptance' entry, or None."""
    if not isinstance(acceptance, dict):
        return f"{name}: manifest 'acceptance' must be an object"
    for key in STRICTER_WHEN_LARGER:
        v = acceptance.get(key)
        if key == "max_unstable" and v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            return f"{name}: manifest 'acceptance.{key}' must be a share from 0 to 1, got {v!r}"
    if not 0.5 <= acceptance["level"] < 1:
        return f"{name}: manifest 'acceptance.level' must be a confidence level from 0.5 to 1, got {acceptance['level']!r}"
    return None


def resolve(acceptance: dict | None, given: dict | None = None) -> tuple[Tolerances, float | None, dict]:
    """(tolerances, max_unstable, record) for a parity run.

    acceptance: the manifest's criteria (None: a bundle exported before edgecxr recorded them, the defaults
    apply). given: criteria set on the command line (None values are not given). The record lists each
    criterion's bundle and applied value, what was tightened, and every loosening as a deviation.
    """
    defaults = {**asdict(Tolerances()), "max_unstable": None}
    unknown = set(given or {}) - set(defaults)
    if unknown:
        raise ConfigError(f"unknown acceptance criteria {sorted(unknown)}; known: {', '.join(defaults)}")
    base = {k: (acceptance or {}).get(k, v) for k, v in defaults.items()}
    applied, tightened, deviations = dict(base), [], []
    for key, value in (given or {}).items():
        if value is None or value == base[key]:
            continue
        applied[key] = value
        larger = STRICTER_WHEN_LARGER[key]
        looser = base[key] is None or (value < base[key] if larger else value > base[key])
        if key == "max_unstable" and base[key] is None:
            looser = False  # a stability gate the bundle did not ask for only adds a check
        entry = {"criterion": key, "bundle": base[key], "applied": value}
        if looser:
            deviations.append(entry | {"message": f"{WHAT[key]} loosened from {base[key]} (the bundle's) to {value}"})
        else:
            tightened.append(entry)
    source = "bundle" if acceptance is not None else "defaults"
    record = {"source": source, "bundle": base if acceptance is not None else None, "applied": applied,
              "tightened": tightened, "deviations": deviations,
              "note": None if acceptance is not None else
              "the bundle records no acceptance criteria (exported before edgecxr wrote them): edgecxr's defaults "
              "were applied; re-export it to fix its criteria in advance"}
    if acceptance is not None:
        record.update(test_set=acceptance.get("test_set"), verified_on=acceptance.get("verified_on"))
    tolerances = Tolerances(**{f.name: applied[f.name] for f in fields(Tolerances)})
    return tolerances, applied["max_unstable"], record


def format_criteria(record: dict) -> list[str]:
    """Console lines: where the criteria come from, what was tightened, every deviation."""
    a = record["applied"]
    lines = [f"acceptance criteria ({'from the bundle' if record['source'] == 'bundle' else 'defaults'}): recall margin "
             f"{a['max_recall_drop']:g}, accuracy margin {a['max_accuracy_drop']:g}, agreement >= {a['min_agreement']:g}, "
             f"coverage >= {a['min_coverage']:g}, {100 * a['level']:.0f} % intervals by patient"
             + (f", unstable <= {a['max_unstable']:g}" if a.get("max_unstable") is not None else "")]
    if record.get("note"):
        lines.append(f"note: {record['note']}")
    for t in record["tightened"]:
        lines.append(f"tightened on the command line: {WHAT[t['criterion']]} {t['bundle']} -> {t['applied']}")
    for d in record["deviations"]:
        lines.append(f"DEVIATION from the bundle's criteria: {d['message']}")
    return lines
