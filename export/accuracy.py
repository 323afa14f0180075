"""Accuracy-aware int8: check recall and accuracy drops and decision agreement on the validation split,
recover when they miss. The criteria are the ones `edgecxr device parity` applies on the device, so a
bundle that would fail parity on validation is caught here.

Recovery: NNCF `quantize_with_accuracy_control` for OpenVINO and ONNX; for TFLite the
layers with the largest quantization error (quantization debugger) stay float,
then quantization-aware training when the model is a tf_keras model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgecxr.parity import metrics
from edgecxr.parity.criteria import Tolerances, point_checks, small_set_limits
from edgecxr.parity.verdict import at_least, judge
from edgecxr.utils.errors import GateFailed
from edgecxr.formats.modelinfo import to_prob


def _agreement(probs, float_probs, threshold) -> float:
    return float(np.mean((probs >= threshold) == (float_probs >= threshold)))


def predicted_agreement(val_probs, val_float_probs, reference_float_probs, threshold, *, z: float = 1.645) -> dict:
    """The decision agreement to expect on the reference (test) images, from the int8 noise seen on validation.

    Noise is measured in logit space (where it is about the same at every probability) on the validation
    images the float model is not saturated on; each reference image then flips with the empirical chance
    that such noise carries it across the threshold. Uses the float model's reference probabilities only
    (no labels, no int8 run on test): the test split's many images near the threshold (its shift) are
    what made agreement 0.98 on validation become 0.97 on test. `lower` is a one-sided 95 % bound: the
    flips are a sum of independent chances, so their spread is sqrt(sum p (1 - p)).
    """
    vf, vq = np.asarray(val_float_probs, np.float64), np.asarray(val_probs, np.float64)
    # saturated pairs say nothing about the noise (the int8 output grid tops out near 1/256 and 255/256)
    keep = (vf > 0.01) & (vf < 0.99) & (vq > 0.005) & (vq < 0.995)
    if keep.sum() < 20:
        return None
    noise = np.sort(metrics.logit(vq)[keep] - metrics.logit(vf)[keep])
    margin = metrics.logit(threshold) - metrics.logit(reference_float_probs)  # the noise that moves each image onto the threshold
    below = np.searchsorted(noise, margin, side="left") / len(noise)  # P(noise < margin)
    positive = np.asarray(reference_float_probs) >= threshold
    flip = np.where(positive, below, 1 - below)
    n = len(flip)
    expected, spread = float(flip.sum()), float(np.sqrt(np.sum(flip * (1 - flip))))
    return {"expected": 1 - expected / n, "lower": max(0.0, 1 - (expected + z * spread) / n),
            "expected_flips": expected, "n": n}


def other_attempts(report: dict) -> list[dict]:
    """The `tried` entries other than the attempt `report` describes (its method may carry a suffix)."""
    keys = ("recall_drop", "accuracy_drop", "decision_agreement")
    return [t for t in report.get("tried", [])
            if not (report["method"].startswith(t["method"]) and all(t[k] == report[k] for k in keys))]


@dataclass
class Gate:
    x: np.ndarray  # validation inputs
    y: np.ndarray  # validation labels
    float_probs: np.ndarray
    threshold: float
    kind: str
    positive_index: int
    max_recall_drop: float
    max_accuracy_drop: float
    source: str  # where the validation split came from
    min_agreement: float = Tolerances.min_agreement
    reference_float_probs: np.ndarray | None = None  # the float model on the test images device parity will use

    def __post_init__(self):
        self.float_metrics = metrics.binary_metrics(self.y, self.float_probs, self.threshold)

    def check(self, raw: np.ndarray, method: str) -> dict:
        probs = to_prob(raw, self.kind, self.positive_index)
        m = metrics.binary_metrics(self.y, probs, self.threshold)
        f = self.float_metrics
        report = {
            "method": method, "split": "validation", "source": self.source, "n": int(len(self.y)),
            "float": {"recall": f["recall"], "accuracy": f["accuracy"]},
            "quantized": {"recall": m["recall"], "accuracy": m["accuracy"]},
            "recall_drop": round(f["recall"] - m["recall"], 6),
            "accuracy_drop": round(f["accuracy"] - m["accuracy"], 6),
            "max_recall_drop": self.max_recall_drop, "max_accuracy_drop": self.max_accuracy_drop,
            "decision_agreement": _agreement(probs, self.float_probs, self.threshold), "min_agreement": self.min_agreement,
        }
        flipped = int(np.sum((probs >= self.threshold) != (self.float_probs >= self.threshold)))
        report["checks"] = point_checks(f, m, report["decision_agreement"], len(self.y), flipped,
                                        Tolerances(self.max_recall_drop, self.max_accuracy_drop, self.min_agreement))
        predicts = []  # decides with the checks, not listed among them
        if self.reference_float_probs is not None:
            need = small_set_limits(len(self.reference_float_probs), self.max_accuracy_drop, self.min_agreement)[1]
            predicted = predicted_agreement(probs, self.float_probs, self.reference_float_probs, self.threshold)
            if predicted is not None:  # None: too few unsaturated validation images to measure the noise
                report["predicted_reference_agreement"] = predicted["lower"]
                report["predicted_reference"] = predicted | {"need": need}  # need: parity's limit on that many images
                if not self.too_small:  # a handful of validation images cannot measure the noise: export parity decides
                    predicts.append(at_least("predicted_reference_agreement", predicted["lower"], need,
                                             f"predicted test agreement (95 % lower bound) {predicted['lower']:.4f} "
                                             f"(need {need:.4g})", eps=1e-9))
        if self.too_small:
            report["small_validation"] = self.too_small
        return judge(report, also=predicts)

    @property
    def too_small(self) -> str | None:
        """A sentence when one validation decision is coarser than the agreement limit, else None."""
        n = len(self.y)
        if self.min_agreement >= 1 or (n and 1 / n <= 1 - self.min_agreement):
            return None
        return (f"the validation split has only {n} images: one decision is {100 / max(n, 1):.0f} %, too coarse to "
                f"measure a {100 * (1 - self.min_agreement):.0f} % agreement limit; device parity on the test images "
                "is the check that counts")

    def fail(self, target: str, report: dict):
        tried = "; ".join(f"{t['method']}: recall drop {t['recall_drop']:.4f}, accuracy drop {t['accuracy_drop']:.4f}, "
                          f"agreement {t['decision_agreement']:.4f}" for t in other_attempts(report))
        predicted = report.get("predicted_reference_agreement")
        raise GateFailed(
            f"{target}: int8 misses the tolerance on validation after {report['method']}: recall drop "
            f"{report['recall_drop']:.4f} (max {self.max_recall_drop}), accuracy drop {report['accuracy_drop']:.4f} "
            f"(max {self.max_accuracy_drop}), agreement {report['decision_agreement']:.4f} (min {self.min_agreement})"
            f"{f', predicted test agreement (95 % lower bound) {predicted:.4f}' if predicted is not None else ''}"
            f"{f' (also tried {tried})' if tried else ''}; "
            f"loosen --max-recall-drop/--max-accuracy-drop/--min-agreement or export a float target")

    # -- NNCF accuracy control (OpenVINO and ONNX) --------------------------------
    def nncf_metric(self, raw_fn):
        """validation_fn for NNCF: min of the remaining recall/accuracy/agreement margins on the given items.

        Each item carries the float probability, so the metric is self-contained on any subset: the float
        model scores 1 + nncf_max_drop (the 1 keeps NNCF's relative drop finite), and a drop within
        nncf_max_drop means every margin >= 0.
        """

        def validate(model, items):
            items = list(items)
            x = np.concatenate([it[0] for it in items])
            y = np.array([it[1] for it in items])
            pf = np.array([it[2] for it in items])
            probs = to_prob(raw_fn(model, x), self.kind, self.positive_index)
            fm = metrics.binary_metrics(y, pf, self.threshold)
            qm = metrics.binary_metrics(y, probs, self.threshold)
            return 1.0 + float(min(self.max_recall_drop - (fm["recall"] - qm["recall"]),
                                   self.max_accuracy_drop - (fm["accuracy"] - qm["accuracy"]),
                                   _agreement(probs, pf, self.threshold) - self.min_agreement))

        return validate

    def nncf_max_drop(self) -> float:
        return min(self.max_recall_drop, self.max_accuracy_drop, 1.0 - self.min_agreement)

    def nncf_items(self):
        return [(self.x[i:i + 1].astype(np.float32), int(self.y[i]), float(self.float_probs[i])) for i in range(len(self.y))]


def nncf_accuracy_control(model, gate: Gate, calib_x: np.ndarray, raw_fn, input_name: str | None = None):
    """Quantize an ov.Model or onnx.ModelProto with NNCF, reverting layers until the gate's drops hold.

    ONNX models take {input_name: array} items, OpenVINO models plain arrays.
    """
    import nncf

    from edgecxr.export.openvino import cpu_independent, ignored_scope

    wrap = (lambda x: {input_name: x}) if input_name else (lambda x: x)  # noqa: E731
    calib = nncf.Dataset([wrap(calib_x[i:i + 1].astype(np.float32)) for i in range(len(calib_x))])
    val = nncf.Dataset(gate.nncf_items(), lambda item: wrap(item[0]))
    return nncf.quantize_with_accuracy_control(
        model, calibration_dataset=calib, validation_dataset=val, validation_fn=gate.nncf_metric(raw_fn),
        max_drop=gate.nncf_max_drop(), drop_type=nncf.DropType.ABSOLUTE,
        subset_size=len(calib_x), advanced_quantization_parameters=cpu_independent(),
        **({} if input_name else {"ignored_scope": ignored_scope(model)}))


def tflite_recover(source, gate: Gate, calib_x: np.ndarray, run_fn, *, max_float_layers: int = 16):
    """(model bytes, report) with the worst layers kept float, or (None, last report) when nothing met the gate."""
    from edgecxr.export import tflite

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ranked = [name for name, _ in tflite.layer_errors(source, calib_x)]
        limit = min(max_float_layers, max(1, len(ranked) - 1))  # at least one layer stays int8
        tries = sorted({min(2 ** i, limit) for i in range(8)})
        report = None
        for k in tries:
            try:
                model = tflite.selective_int8(source, calib_x, ranked[:k])
            except ValueError:  # nothing quantized is left for the debugger
                break
            report = gate.check(run_fn(model), f"tflite int8 with {k} worst layer(s) kept float (quantization debugger)")
            report["float_layers"] = ranked[:k]
            if report["passed"]:
                return model, report
    return None, report
