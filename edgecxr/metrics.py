"""Binary classification metrics in numpy (no scikit-learn at run time).

Definitions follow scikit-learn: ROC-AUC is the Mann-Whitney statistic with
ties counted half, PR-AUC is average precision.
"""
from __future__ import annotations

import math

import numpy as np

from edgecxr.errors import ConfigError

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


def bootstrap_ci(y_true, scores, threshold: float, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap intervals of every metric (resampling images)."""
    y_true, scores = np.asarray(y_true).astype(int), np.asarray(scores, np.float64)
    rng = np.random.default_rng(seed)
    draws = {name: [] for name in METRIC_NAMES}
    for _ in range(n_boot):
        idx = rng.integers(0, len(y_true), len(y_true))
        m = binary_metrics(y_true[idx], scores[idx], threshold)
        for name in METRIC_NAMES:
            if not math.isnan(m[name]):
                draws[name].append(m[name])
    alpha = (1 - level) / 2
    return {
        name: [float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))] if v else [float("nan")] * 2
        for name, v in draws.items()
    }


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
        return _inside(thresholds[ok[0]])
    return _inside(thresholds[int(np.argmax(tpr - fpr))])


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
