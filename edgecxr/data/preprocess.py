"""The preprocessing spec: written once with every model, applied identically at
train, evaluation and device time (numpy + Pillow only)."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image

from edgecxr.utils.errors import ConfigError
from edgecxr.data.images import read_image

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
LUNG_CROP = (0.15, 0.90, 0.20, 0.80)  # rows top..bottom, columns left..right (fractions)


@dataclass(frozen=True)
class PreprocessSpec:
    """How a grayscale X-ray becomes a model input: crop, equalize, resize, scale.

    Model input = pixel * scale + offset, pixel in 0..255, shape (size, size, channels).
    """

    size: int = 224
    channels: int = 3
    crop: tuple[float, float, float, float] | None = None
    equalize: bool = False
    scale: float = 1 / 127.5
    offset: float = -1.0
    interpolation: str = "bilinear"

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise ConfigError(f"preprocess channels must be 1 or 3, got {self.channels}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"unknown interpolation {self.interpolation!r}; valid: {', '.join(INTERPOLATIONS)}"
            )
        if not 8 <= int(self.size) <= 2048:
            raise ConfigError(f"preprocess size must be 8..2048, got {self.size}")
        if self.crop is not None:
            top, bottom, left, right = self.crop
            if not (0 <= top < bottom <= 1 and 0 <= left < right <= 1):
                raise ConfigError(f"crop must be fractions top<bottom, left<right in 0..1: {self.crop}")
            object.__setattr__(self, "crop", tuple(float(v) for v in self.crop))

    @property
    def draft_size(self) -> int:
        """The fewest pixels per side a decoded image needs so that crop + resize still downsample."""
        if self.crop is None:
            return self.size
        top, bottom, left, right = self.crop
        return math.ceil(self.size / min(bottom - top, right - left))

    def read(self, path) -> Image.Image:
        """Read a file for this spec: large JPEGs are decoded at a reduced scale (see draft_size)."""
        return read_image(path, draft=self.draft_size)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.size, self.size, self.channels)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["crop"] = list(self.crop) if self.crop else None
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessSpec":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown preprocess keys {sorted(unknown)}; valid: {sorted(known)}")
        data = dict(data)
        if data.get("crop") is not None:
            data["crop"] = tuple(data["crop"])
        return cls(**data)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "PreprocessSpec":
        return cls.from_dict(json.loads(Path(path).read_text()))

    # -- applying it -------------------------------------------------------
    def to_pixels(self, img: Image.Image, resample=None) -> np.ndarray:
        """Grayscale PIL image -> uint8 array (size, size): crop, equalize, resize, as edgecxr.data.contract
        writes them (its numpy steps, not Pillow's resize: Pillow 13 turned some images vertically first).

        resample: a Pillow kernel to resize with instead of the spec's (edgecxr.devices.stability)."""
        from edgecxr.data import contract

        if img.mode != "L":
            img = img.convert("L")
        pixels = np.asarray(img, dtype=np.uint8)
        if self.crop is not None:
            pixels = contract.crop(pixels, self.crop)
        if self.equalize:
            pixels = contract.equalize(pixels)
        if resample is not None and pixels.shape != (self.size, self.size):
            return np.asarray(Image.fromarray(pixels).resize((self.size, self.size), resample), dtype=np.uint8)
        return np.ascontiguousarray(contract.resize(pixels, self.size, self.interpolation))

    def scale_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (..., H, W) -> float32 model input (..., H, W, channels)."""
        x = pixels.astype(np.float32) * np.float32(self.scale) + np.float32(self.offset)
        x = x[..., None]
        return np.repeat(x, self.channels, axis=-1) if self.channels == 3 else x

    def apply(self, img: Image.Image) -> np.ndarray:
        """Grayscale PIL image -> float32 model input (size, size, channels)."""
        return self.scale_pixels(self.to_pixels(img))

    def load_input(self, path) -> np.ndarray:
        """Read a file and return the model input; raises ImageError for bad files."""
        return self.apply(self.read(path))
