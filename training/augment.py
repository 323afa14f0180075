"""Augmentation presets of the published work, as one random affine warp per image (in-graph)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from edgecxr.errors import ConfigError


@dataclass(frozen=True)
class Augment:
    rotation: float = 0.0  # degrees, uniform in [-r, r]
    shift: float = 0.0  # fraction of the size, each axis
    shear: float = 0.0  # shear factor (tangent), uniform in [-s, s]
    zoom: float = 0.0  # scale uniform in [1-z, 1+z], each axis
    flip: bool = False  # horizontal flip with probability 0.5
    intensity: float = 0.0  # brightness/contrast/gamma jitter strength

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def active(self) -> bool:
        return any(asdict(self).values())


PRESETS = {
    "standard": Augment(rotation=7, shift=0.05, shear=0.2, zoom=0.45, flip=True),
    "no-flip": Augment(rotation=30, shift=0.1, zoom=0.2),  # keeps the heart on its side
    "strong": Augment(rotation=20, shift=0.2, shear=0.1, zoom=0.2, flip=True),
    "none": Augment(),
}


def get_preset(name: str, intensity: float = 0.0) -> Augment:
    if name not in PRESETS:
        raise ConfigError(f"unknown augmentation preset {name!r}; valid: {', '.join(PRESETS)}")
    return Augment(**{**PRESETS[name].to_dict(), "intensity": intensity})


def augment_batch(tf, images, aug: Augment, seed=None):
    """Randomly warp a batch of float images (B, H, W) in 0..255; returns the same shape."""
    if not aug.active:
        return images
    batch = tf.shape(images)[0]
    size = tf.cast(tf.shape(images)[1], tf.float32)

    def uniform(limit):
        return tf.random.uniform([batch], -limit, limit)

    theta = uniform(aug.rotation * math.pi / 180)
    shear = uniform(aug.shear)
    zx, zy = 1.0 + uniform(aug.zoom), 1.0 + uniform(aug.zoom)
    tx, ty = uniform(aug.shift) * size, uniform(aug.shift) * size
    flip = tf.where(tf.random.uniform([batch]) < 0.5, -1.0, 1.0) if aug.flip else tf.ones([batch])
    cos, sin = tf.cos(theta), tf.sin(theta)
    # forward map (input -> output) = rotate @ shear @ zoom @ flip, about the centre
    a = cos * zx * flip
    b = (cos * shear - sin) * zy
    c = sin * zx * flip
    d = (sin * shear + cos) * zy
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det  # inverse: output -> input
    centre = (size - 1) / 2
    ox, oy = centre + tx, centre + ty
    x0 = centre - (ia * ox + ib * oy)
    y0 = centre - (ic * ox + id_ * oy)
    zeros = tf.zeros([batch])
    transforms = tf.stack([ia, ib, x0, ic, id_, y0, zeros, zeros], axis=1)
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=images[..., None], transforms=transforms, output_shape=tf.shape(images)[1:3],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="NEAREST",
    )[..., 0]
    if aug.intensity:
        warped = _jitter_intensity(tf, warped, aug.intensity, batch)
    return warped


def _jitter_intensity(tf, images, strength, batch):
    """Random gamma, contrast and brightness: scanners and exposure differ between sites."""
    shape = [batch, 1, 1]
    x = images / 255.0
    gamma = tf.exp(tf.random.uniform(shape, -strength, strength))
    x = tf.pow(tf.clip_by_value(x, 1e-6, 1.0), gamma)
    mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
    x = (x - mean) * (1.0 + tf.random.uniform(shape, -strength, strength)) + mean
    x = x + tf.random.uniform(shape, -strength, strength) * 0.5
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0
