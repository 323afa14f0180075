"""Augmentation presets of the published work, as one random affine warp per image (in-graph)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from edgecxr.utils.errors import ConfigError


@dataclass(frozen=True)
class Augment:
    rotation: float = 0.0  # degrees, uniform in [-r, r]
    shift: float = 0.0  # fraction of the size, each axis
    shear: float = 0.0  # shear factor (tangent), uniform in [-s, s]
    zoom: float = 0.0  # scale uniform in [1-z, 1+z], each axis
    flip: bool = False  # horizontal flip with probability 0.5
    intensity: float = 0.0  # brightness/contrast/gamma jitter strength
    acquisition: float = 0.0  # share of images given another acquisition path (resampling, blur/sharpen, JPEG)

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


def get_preset(name: str, intensity: float = 0.0, acquisition: float = 0.0) -> Augment:
    if name not in PRESETS:
        raise ConfigError(f"unknown augmentation preset {name!r}; valid: {', '.join(PRESETS)}")
    if not 0 <= acquisition <= 1:
        raise ConfigError(f"--acquisition {acquisition} is a share of images between 0 and 1, e.g. 0.5")
    return Augment(**{**PRESETS[name].to_dict(), "intensity": intensity, "acquisition": acquisition})


def augment_batch(tf, images, aug: Augment, seed=None):
    """Randomly warp a batch of float images (B, H, W) in 0..255; returns the same shape."""
    if not aug.active:
        return images
    batch = tf.shape(images)[0]
    geometric = aug.rotation or aug.shift or aug.shear or aug.zoom or aug.flip
    warped = _warp(tf, images, aug, batch) if geometric else images
    if aug.intensity:
        warped = _jitter_intensity(tf, warped, aug.intensity, batch)
    if aug.acquisition:
        warped = acquisition_path(tf, warped, aug.acquisition)
    return warped


def _warp(tf, images, aug: Augment, batch):
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
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images[..., None], transforms=transforms, output_shape=tf.shape(images)[1:3],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="NEAREST",
    )[..., 0]


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


# -- the acquisition path: what another scanner, PACS export or viewer does to the same X-ray ---------------
RESAMPLE_METHODS = ("bilinear", "bicubic", "area", "lanczos3", "nearest")


def acquisition_path(tf, images, share: float):
    """For a random `share` of a batch (B, H, W) in 0..255: resampling through another size and kernel,
    blur or sharpening, and JPEG re-encoding at quality 60-95 (the variants `edgecxr device stability`
    measures); the other images pass unchanged."""
    batch = tf.shape(images)[0]
    varied = _resample(tf, images)
    varied = _blur_or_sharpen(tf, varied, batch)
    varied = _jpeg_reencode(tf, varied)
    chosen = tf.random.uniform([batch, 1, 1]) < share
    return tf.where(chosen, varied, images)


def _resample(tf, images):
    """Down or up to 0.6-1.6 times the size with a random kernel, then back with bilinear (one draw per batch)."""
    size = tf.shape(images)[1:3]
    factor = tf.random.uniform([], 0.6, 1.6)
    middle = tf.cast(tf.round(tf.cast(size, tf.float32) * factor), tf.int32)
    x = images[..., None]
    pick = tf.random.uniform([], 0, len(RESAMPLE_METHODS), dtype=tf.int32)
    branches = [lambda m=m: tf.image.resize(x, middle, method=m, antialias=True) for m in RESAMPLE_METHODS]
    x = tf.switch_case(pick, branches)
    x = tf.image.resize(x, size, method="bilinear")
    return tf.clip_by_value(x[..., 0], 0.0, 255.0)


def _blur_or_sharpen(tf, images, batch):
    """x + a (x - blur(x)), a uniform in [-0.8, 0.8]: a < 0 blurs, a > 0 sharpens (unsharp mask)."""
    kernel = tf.constant([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16.0
    x = images[..., None]
    blurred = tf.nn.conv2d(tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC"),
                           kernel[:, :, None, None], strides=1, padding="VALID")
    amount = tf.random.uniform([batch, 1, 1, 1], -0.8, 0.8)
    return tf.clip_by_value(x + amount * (x - blurred), 0.0, 255.0)[..., 0]


def _jpeg_reencode(tf, images):
    def one(image):
        encoded = tf.image.random_jpeg_quality(tf.cast(tf.round(image), tf.uint8)[..., None], 60, 95)
        return tf.cast(encoded[..., 0], tf.float32)

    return tf.map_fn(one, images, fn_output_signature=tf.float32)


def nudge(tf, images, shift: float = 0.02, zoom: float = 0.06):
    """Each image of a batch (B, H, W, C) magnified about its centre by a factor in [1, 1 + `zoom`] (a crop of up
    to zoom / (2 (1 + zoom)) off every side, resized back), then moved by up to `shift` of its size on each axis,
    edges repeated. The defaults cover the geometric variants of `edgecxr device stability` (a 2.5 % crop off
    every side is a 1.053x magnification; a 1.5 % shift) with a margin; unlike them, the nudge comes after the
    spec's equalization and resize."""
    batch = tf.shape(images)[0]
    size = tf.cast(tf.shape(images)[1:3], tf.float32)
    scale = 1.0 / tf.random.uniform([batch], 1.0, 1.0 + zoom)  # output -> input: magnifying shrinks the map
    tx, ty = (tf.random.uniform([batch], -shift, shift) * size[i] for i in (1, 0))
    cx, cy = (size[1] - 1) / 2, (size[0] - 1) / 2
    zeros = tf.zeros([batch])
    # output (x, y) reads input (c + scale (x - c - t)): magnified about the centre c, then moved by t
    transforms = tf.stack([scale, zeros, cx - scale * (cx + tx), zeros, scale, cy - scale * (cy + ty), zeros, zeros], 1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.shape(images)[1:3], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="NEAREST")
