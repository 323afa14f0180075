"""Matplotlib figures (imported lazily: the device stage never needs them)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecxr.parity import metrics


def _plt():
    from edgecxr.utils.errors import require

    mpl = require("matplotlib", "train")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    fig.clf()
    import matplotlib.pyplot as plt

    plt.close(fig)


def roc_png(y_true, scores, path: Path, threshold: float | None = None, title: str = "ROC") -> None:
    plt = _plt()
    fpr, tpr, thr = metrics.roc_curve(y_true, scores)
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.plot(fpr, tpr, lw=2, label=f"AUC {metrics.roc_auc(y_true, scores):.3f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    if threshold is not None:
        m = metrics.binary_metrics(y_true, scores, threshold)
        ax.scatter([1 - m["specificity"]], [m["recall"]], c="red", zorder=3, label=f"threshold {threshold:.3f}")
    ax.set(xlabel="1 - specificity", ylabel="recall (sensitivity)", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    _save(fig, path)


def pr_png(y_true, scores, path: Path, title: str = "Precision-recall") -> None:
    plt = _plt()
    recall, precision = metrics.pr_curve(y_true, scores)
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.step(np.r_[0, recall], np.r_[1, precision], where="post", lw=2,
            label=f"AP {metrics.average_precision(y_true, scores):.3f}")
    ax.set(xlabel="recall", ylabel="precision", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower left")
    _save(fig, path)


def confusion_png(cm: dict, labels, path: Path, title: str = "Confusion matrix") -> None:
    plt = _plt()
    grid = np.array([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]])
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.imshow(grid, cmap="Blues")
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=14,
                color="white" if v > grid.max() / 2 else "black")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=labels, yticklabels=labels,
           xlabel="predicted", ylabel="true", title=title)
    _save(fig, path)


def calibration_png(y_true, scores, path: Path, bins: int = 10) -> None:
    """Reliability diagram: the share of positives against the mean probability per bin (edgecxr.parity.metrics.calibration)."""
    plt = _plt()
    cal = metrics.calibration(y_true, scores, bins=bins)
    mean_pred = [b["mean_prob"] for b in cal["bins"]]
    frac_pos = [b["share_positive"] for b in cal["bins"]]
    slope = "n/a" if cal["slope"] is None else f"{cal['slope']:.2f}"
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.plot(mean_pred, frac_pos, marker="o", lw=2, label=f"ECE {cal['ece']:.3f}, Brier {cal['brier']:.3f}, slope {slope}")
    for x, y, b in zip(mean_pred, frac_pos, cal["bins"]):
        ax.annotate(str(b["n"]), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7, color="grey")
    ax.set(xlabel="mean predicted probability", ylabel="fraction positive", title="Calibration", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    _save(fig, path)


def history_png(history: dict, path: Path) -> None:
    """Training curves: one panel per metric, train and validation."""
    _save(history_figure(history), path)


def history_figure(history: dict):
    plt = _plt()
    names = [k for k in history if not k.startswith("val_") and k not in ("epoch", "lr", "learning_rate")]
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        epochs = range(1, len(history[name]) + 1)
        style = {"marker": "o"} if len(history[name]) < 3 else {}  # one epoch is a point, not an empty line
        ax.plot(epochs, history[name], label="train", **style)
        if f"val_{name}" in history:
            ax.plot(epochs, history[f"val_{name}"], label="validation", **style)
        ax.set(title=name, xlabel="epoch")
        ax.set_xticks(list(epochs) if len(epochs) <= 10 else ax.get_xticks())
        ax.legend()
    return fig
