"""What travels with a float model: its input spec, labels, output kind and decision threshold.

Saved as JSON beside the model (``model.keras`` -> ``model.json``). The shipped
default model lives in ``edgecxr/default/``.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgecxr.utils.errors import ConfigError, ModelError
from edgecxr.data.preprocess import PreprocessSpec

OUTPUT_KINDS = ("sigmoid", "softmax", "logits")
DEFAULT_DIR = Path(__file__).parents[1] / "default"


@dataclass
class ModelInfo:
    preprocess: PreprocessSpec
    labels: tuple[str, str] = ("NORMAL", "PNEUMONIA")
    threshold: float = 0.5
    threshold_method: str = "default 0.5"
    output: str = "sigmoid"  # sigmoid: one probability; softmax/logits: two or more classes
    positive_index: int = 0  # which output is the positive class (sigmoid: 0)
    arch: str = "external"
    val_metrics: dict = field(default_factory=dict)
    pooled_split: bool = False  # trained on a pooled re-split: its split.json must stay beside the model

    def __post_init__(self):
        if self.output not in OUTPUT_KINDS:
            raise ConfigError(f"unknown output kind {self.output!r}; valid: {', '.join(OUTPUT_KINDS)}")
        check_threshold(self.threshold, "threshold")
        if not is_int(self.positive_index) or self.positive_index < 0:
            raise ConfigError(f"positive_index must be an integer >= 0, got {self.positive_index!r}")
        labels = list(self.labels) if isinstance(self.labels, (list, tuple)) else []
        if len(labels) != 2 or not all(isinstance(x, str) and x.strip() for x in labels) or labels[0] == labels[1]:
            raise ConfigError(f"labels must be two different names (negative first), got {self.labels!r}")
        self.labels = tuple(labels)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["preprocess"] = self.preprocess.to_dict()
        out["labels"] = list(self.labels)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "ModelInfo":
        data = dict(data)
        data["preprocess"] = PreprocessSpec.from_dict(data["preprocess"])
        return cls(**data)


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite int or float (not a bool, not NaN or infinite)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_threshold(value, name: str = "--threshold") -> float:
    """A decision threshold: a finite probability strictly between 0 and 1 (anything else decides nothing)."""
    if not (is_number(value) and 0 < value < 1):
        raise ConfigError(f"{name} must be a probability strictly between 0 and 1, got {value!r}")
    return float(value)


def info_path(model_path: Path) -> Path:
    model_path = Path(model_path)
    return model_path.with_suffix(".json") if model_path.suffix else model_path.parent / (model_path.name + ".json")


def save_info(model_path: Path, info: ModelInfo) -> None:
    info_path(model_path).write_text(json.dumps(info.to_dict(), indent=2) + "\n")


def load_info(model_path: Path) -> ModelInfo | None:
    """The saved info of an edgecxr model, or None for a model made elsewhere."""
    path = info_path(model_path)
    if not path.exists():
        return None
    try:
        return ModelInfo.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise ModelError(f"{path}: unreadable model info ({exc}); re-save the model with edgecxr") from None


def default_model_path() -> Path:
    path = DEFAULT_DIR / "model.keras"
    if not path.exists():
        raise ModelError(f"the shipped default model is missing ({path}); reinstall edgecxr or pass --model PATH")
    return path


def to_prob(raw: np.ndarray, kind: str, positive_index: int) -> np.ndarray:
    """Raw model output (N, K) -> probability of the positive class (N,)."""
    raw = np.asarray(raw, np.float64).reshape(len(raw), -1)
    if raw.shape[1] == 1:
        v = raw[:, 0]
        return v if kind == "sigmoid" else 1.0 / (1.0 + np.exp(-v))
    if kind == "logits":
        z = raw - raw.max(axis=1, keepdims=True)
        raw = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return raw[:, positive_index]


def checked_prob(raw: np.ndarray, kind: str, positive_index: int, what: str, *, fix: str = "pass --output logits",
                 use: str = "exported") -> np.ndarray:
    """to_prob of a float model's outputs, refusing outputs its declared kind cannot produce
    (raw logits declared 'sigmoid' would be taken as "probabilities" of -57). fix: how to declare the
    kind (export's flag; evaluate's sidecar); use: what the model cannot be."""
    raw = np.asarray(raw, np.float64).reshape(len(raw), -1)
    bad = ~np.isfinite(raw).all(axis=1)
    if bad.any():
        raise ModelError(f"the model outputs NaN or infinity on {int(bad.sum())} of the {len(raw)} {what} images; "
                         f"fix the model, it cannot be {use}")
    lo, hi = float(raw.min()), float(raw.max())
    if kind in ("sigmoid", "softmax") and (lo < -1e-6 or hi > 1 + 1e-6):
        raise ModelError(f"output kind '{kind}' declares probabilities, but the model outputs {lo:.4g} to {hi:.4g} "
                         f"on the {what} images (raw logits?); {fix}")
    if kind == "softmax" and np.abs(raw.sum(axis=1) - 1).max() > 1e-3:
        raise ModelError(f"output kind 'softmax' declares probabilities that sum to 1, but the model's outputs sum to "
                         f"{float(raw.sum(axis=1).min()):.4g} to {float(raw.sum(axis=1).max()):.4g} on the {what} images; "
                         f"{fix}")
    return to_prob(raw, kind, positive_index)
