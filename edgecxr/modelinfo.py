"""What travels with a float model: its input spec, labels, output kind and decision threshold.

Saved as JSON beside the model (``model.keras`` -> ``model.json``). The shipped
default model lives in ``edgecxr/default/``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgecxr.errors import ConfigError, ModelError
from edgecxr.preprocess import PreprocessSpec

OUTPUT_KINDS = ("sigmoid", "softmax", "logits")
DEFAULT_DIR = Path(__file__).parent / "default"


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

    def __post_init__(self):
        if self.output not in OUTPUT_KINDS:
            raise ConfigError(f"unknown output kind {self.output!r}; valid: {', '.join(OUTPUT_KINDS)}")
        self.labels = tuple(self.labels)

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
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path}: unreadable model info ({exc}); re-save the model with edgecxr") from None


def default_model_path() -> Path:
    path = DEFAULT_DIR / "model.keras"
    if not path.exists():
        raise ModelError(f"the shipped default model is missing ({path}); reinstall edgecxr or pass --model PATH")
    return path
