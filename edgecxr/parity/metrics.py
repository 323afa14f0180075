"""Binary classification metrics in numpy (no scikit-learn at run time).

Definitions follow scikit-learn: ROC-AUC is the Mann-Whitney statistic with
ties counted half, PR-AUC is average precision.
"""
from __future__ import annotations

import math

import numpy as np

from edgecxr.utils.errors import ConfigError

METRIC_NAMES = ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc", "pr_auc")


def _div(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def confusion(y_true, y_pred) -> dict:
    y_true, y_pred = np.asarray(y_true).astype(bool), np.asarray(y_pred).astype(bool)
    return {
        "tp": int(np.sum(y_true & y_pred)),
        "fp": int(np.sum(~y_true & y_pred)),
        "tn": int(np.sum(~y_true & ~y_pred)),
        "fn": int(np.sum(y_true & ~y_pred)),
    }


def roc_auc(y_true, scores) -> float:
    y_true, scores = np.asarray(y_true).astype(bool), np.asarray(scores, np.float64)
    n_pos, n_neg = int(y_true.sum()), int((~y_true).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(scores)
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    ranks = np.empty(len(values), np.float64)
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_vals)) + 1]
    ends = np.r_[starts[1:], len(values)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return ranks


def _counts_by_threshold(y_true, scores):
    """(true positives, false positives, thresholds) at every distinct score, highest first."""
    y_true, scores = np.asarray(y_true).astype(bool), np.asarray(scores, np.float64)
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], y_true[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    return np.cumsum(y)[last], np.cumsum(~y)[last], s[last]


def roc_curve(y_true, scores):
    """(fpr, tpr, thresholds) at every distinct score, highest threshold first."""
    tps, fps, thresholds = _counts_by_threshold(y_true, scores)
    tpr = np.r_[0.0, tps / max(tps[-1], 1)]
    fpr = np.r_[0.0, fps / max(fps[-1], 1)]
    return fpr, tpr, np.r_[np.inf, thresholds]


def pr_curve(y_true, scores):
    """(recall, precision) at every distinct score, highest threshold first."""
    tps, fps, _ = _counts_by_threshold(y_true, scores)
    return tps / max(tps[-1], 1), tps / (tps + fps)


def average_precision(y_true, scores) -> float:
    if not np.any(y_true):
        return float("nan")
    recall, precision = pr_curve(y_true, scores)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def binary_metrics(y_true, scores, threshold: float = 0.5) -> dict:
    """All metrics at one threshold (positive when score >= threshold)."""
    y_true, scores = np.asarray(y_true).astype(int), np.asarray(scores, np.float64)
    cm = confusion(y_true, scores >= threshold)
    tp, fp, tn, fn = cm["tp"], cm["fp"], cm["tn"], cm["fn"]
    precision, recall = _div(tp, tp + fp), _div(tp, tp + fn)
    return {
        "accuracy": _div(tp + tn, len(y_true)),
        "precision": precision,
        "recall": recall,
        "specificity": _div(tn, tn + fp),
        "f1": _div(2 * precision * recall, precision + recall),
        "roc_auc": roc_auc(y_true, scores),
        "pr_auc": average_precision(y_true, scores),
        "threshold": float(threshold),
        "n": int(len(y_true)),
        "confusion": cm,
    }


def patient_weights(groups, n: int, n_boot: int, rng) -> np.ndarray:
    """(n_boot, n) how often each image is drawn when whole patients are resampled with replacement.

    groups: one patient id per image (None: every image its own patient, the plain image bootstrap). A
    patient's images are correlated (several X-rays of one child), so resampling images makes intervals
    too narrow; drawing patients keeps each one's images together.
    """
    codes = np.arange(n) if groups is None else np.unique(np.asarray(groups, dtype=str), return_inverse=True)[1]
    n_groups = int(codes.max()) + 1 if n else 0
    drawn = rng.multinomial(n_groups, np.full(n_groups, 1 / max(n_groups, 1)), size=n_boot)
    return drawn[:, codes]


def count_patients(groups, n: int) -> int:
    return n if groups is None else len(set(map(str, groups)))


def quantile_ci(values, level: float) -> list:
    """Percentile interval of bootstrap draws (NaN draws left out), [nan, nan] when none is left."""
    v = np.asarray(values, np.float64)
    v = v[~np.isnan(v)]
    alpha = (1 - level) / 2
    return [float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))] if len(v) else [float("nan")] * 2


def bootstrap_ci(y_true, scores, threshold: float, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                 groups=None) -> dict:
    """Percentile bootstrap intervals of every metric, resampling patients (groups) or, without groups, images."""
    y_true, scores = np.asarray(y_true).astype(int), np.asarray(scores, np.float64)
    weights = patient_weights(groups, len(y_true), n_boot, np.random.default_rng(seed))
    draws = {name: [] for name in METRIC_NAMES}
    for w in weights:
        idx = np.repeat(np.arange(len(y_true)), w)
        m = binary_metrics(y_true[idx], scores[idx], threshold)
        for name in METRIC_NAMES:
            draws[name].append(m[name])
    return {name: quantile_ci(v, level) for name, v in draws.items()}


def bootstrap_info(groups, n: int, n_boot: int, level: float) -> dict:
    """What an interval resampled: recorded beside it so a reader knows images from patients."""
    unit = "image" if groups is None else "patient"
    return {"unit": unit, "patients": count_patients(groups, n), "images": n, "n_boot": n_boot, "level": level}


def logit(p):
    p = np.clip(np.asarray(p, np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def calibration(y_true, scores, *, bins: int = 10) -> dict:
    """How far predicted probabilities are from observed frequencies.

    ece: expected calibration error over equal-width bins (|mean probability - share positive|, weighted by
    the bin's images); brier: mean squared error of the probability; slope and intercept: logistic
    recalibration of the outcome on logit(p) (slope 1, intercept 0 when calibrated; slope < 1 means
    over-confident). slope/intercept are None when the classes separate perfectly (no finite fit).
    """
    y, p = np.asarray(y_true, np.float64), np.asarray(scores, np.float64)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
    table = [{"low": float(edges[b]), "high": float(edges[b + 1]), "n": int(np.sum(idx == b)),
              "mean_prob": float(p[idx == b].mean()), "share_positive": float(y[idx == b].mean())}
             for b in range(bins) if np.any(idx == b)]
    ece = sum(r["n"] * abs(r["mean_prob"] - r["share_positive"]) for r in table) / max(len(y), 1)
    slope, intercept = _logistic_fit(logit(p), y)
    return {"ece": float(ece), "brier": float(np.mean((p - y) ** 2)) if len(y) else float("nan"),
            "slope": slope, "intercept": intercept, "bins": table, "n": int(len(y))}


def _logistic_fit(x, y, iterations: int = 50):
    """(slope, intercept) of P(y=1) = sigmoid(a + b x) by Newton's method, (None, None) when it does not converge."""
    if len(y) < 2 or y.min() == y.max():
        return None, None
    beta = np.zeros(2)
    design = np.column_stack([np.ones_like(x), x])
    for _ in range(iterations):
        mu = 1 / (1 + np.exp(-np.clip(design @ beta, -35, 35)))
        hessian = design.T @ (design * (mu * (1 - mu))[:, None])
        try:
            step = np.linalg.solve(hessian, design.T @ (y - mu))
        except np.linalg.LinAlgError:
            return None, None
        beta += step
        if np.max(np.abs(step)) < 1e-8:
            break
    else:
        return None, None
    if not np.all(np.isfinite(beta)) or abs(beta[1]) > 1e3:
        return None, None
    return float(beta[1]), float(beta[0])


def small_sample_notes(cm: dict, limit: int = 100) -> list[str]:
    """'20 normal images: the interval is wide', for each class with fewer than `limit` images."""
    notes = []
    for n, what, metric in ((cm["tn"] + cm["fp"], "normal", "specificity"), (cm["tp"] + cm["fn"], "pneumonia", "recall")):
        if 0 < n < limit:
            notes.append(f"{n} {what} images: the {metric} interval is wide (one image is {100 / n:.1f} points)")
    return notes


def threshold_rule(target_recall: float | None) -> str:
    """How a threshold is chosen on validation, as recorded with a model (read back by rule_target_recall)."""
    return f"target recall {target_recall} on validation" if target_recall else "Youden's J on validation"


def rule_target_recall(method: str) -> float | None:
    """The target recall of a recorded threshold rule, None for Youden's J (or a rule given by hand)."""
    return float(method.split()[2]) if method.startswith("target recall ") else None


def choose_threshold(y_true, scores, *, target_recall: float | None = None) -> float:
    """Threshold from validation data: Youden's J, or the highest one reaching target_recall."""
    fpr, tpr, thresholds = roc_curve(y_true, scores)
    finite = np.isfinite(thresholds)
    fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
    if target_recall is not None:
        if not 0 < target_recall <= 1:
            raise ConfigError(f"target recall {target_recall} must be between 0 and 1, e.g. 0.95")
        ok = np.flatnonzero(tpr >= target_recall)
        return _inside(_between(thresholds[ok[0]], scores))
    return _inside(_between(thresholds[int(np.argmax(tpr - fpr))], scores))


def _between(score, scores) -> float:
    """Halfway between the chosen score and the next lower one: the same decisions on these scores, but not sitting
    on a probability that rounding in another runtime (float32, a thread count) could move to the other side."""
    lower = np.asarray(scores, np.float64)
    lower = lower[lower < score]
    if not lower.size:
        return float(score)
    middle = (score + lower.max()) / 2
    return float(middle) if lower.max() < middle < score else float(score)  # adjacent floats have no middle


def _inside(threshold) -> float:
    """A chosen score as a threshold strictly inside (0, 1), the range every stored threshold must have:
    a score of exactly 1.0 (a saturated sigmoid) becomes the float just below it, deciding every float32
    probability the same way."""
    return float(np.clip(threshold, np.nextafter(0.0, 1.0), np.nextafter(1.0, 0.0)))


def mcnemar(y_true, pred_a, pred_b) -> dict:
    """Exact (binomial) McNemar test on the cases where exactly one model is right."""
    y_true = np.asarray(y_true).astype(bool)
    right_a = np.asarray(pred_a).astype(bool) == y_true
    right_b = np.asarray(pred_b).astype(bool) == y_true
    b, c = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
    n = b + c
    if n == 0:
        return {"a_only_right": b, "b_only_right": c, "p_value": 1.0}
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return {"a_only_right": b, "b_only_right": c, "p_value": float(min(1.0, 2 * tail))}
