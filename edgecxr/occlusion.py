"""Occlusion sensitivity: slide a grey patch over the image and watch the pneumonia probability.

Model-agnostic (no gradients, no TensorFlow): it needs only a predict function
``f(batch of preprocessed inputs (N, H, W, C)) -> probabilities (N,)``, so it runs
on any bundle, int8 included, with the device runtime:

    from edgecxr.devices import Classifier
    from edgecxr.occlusion import explain_bundle
    heat, prob = explain_bundle(Classifier.load("bundles/tflite-int8"), "chest.jpeg")

The map is the drop in probability when a region is hidden: positive where the
region supported "pneumonia", negative where hiding it raised the probability.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

PredictFn = Callable[[np.ndarray], np.ndarray]


def _starts(length: int, patch: int, stride: int) -> list[int]:
    starts = list(range(0, max(length - patch, 0) + 1, stride))
    if starts[-1] != max(length - patch, 0):
        starts.append(length - patch)  # the last window touches the far edge
    return starts


def occlusion_map(predict: PredictFn, x: np.ndarray, *, fill: float, patch: int | None = None,
                  stride: int | None = None, batch_size: int = 32) -> tuple[np.ndarray, float]:
    """(drop map (H, W) in probability units, probability of the unoccluded image).

    x: one preprocessed input (H, W, C); fill: the model-input value of the grey patch
    (see `grey_value`); patch: side in pixels (default H/7); stride: default patch/2.
    Each pixel gets the mean drop over all the windows that covered it.
    """
    x = np.asarray(x, np.float32)
    h, w = x.shape[:2]
    patch = int(patch or max(2, round(h / 7)))
    stride = int(stride or max(1, patch // 2))
    base = float(np.asarray(predict(x[None])).reshape(-1)[0])
    windows = [(r, c) for r in _starts(h, patch, stride) for c in _starts(w, patch, stride)]
    total, count = np.zeros((h, w)), np.zeros((h, w))
    for i in range(0, len(windows), batch_size):
        chunk = windows[i:i + batch_size]
        batch = np.repeat(x[None], len(chunk), axis=0)
        for j, (r, c) in enumerate(chunk):
            batch[j, r:r + patch, c:c + patch] = fill
        probs = np.asarray(predict(batch), np.float64).reshape(-1)
        for (r, c), p in zip(chunk, probs):
            total[r:r + patch, c:c + patch] += base - p
            count[r:r + patch, c:c + patch] += 1
    return total / np.maximum(count, 1), base


def normalize(heat: np.ndarray) -> np.ndarray:
    """Positive part scaled to 0..1 (all zeros when nothing supported the decision)."""
    heat = np.maximum(np.asarray(heat, np.float64), 0)
    top = heat.max()
    return heat / top if top > 0 else heat


def grey_value(spec) -> float:
    """Model-input value of a mid-grey pixel (128) under a PreprocessSpec."""
    return float(128 * spec.scale + spec.offset)


# -- the device Classifier -------------------------------------------------------------
def classifier_predict(clf) -> PredictFn:
    """Wrap a devices Classifier as a batch predict function (one runtime call per image)."""
    return lambda batch: np.array([clf.infer(clf.to_model_input(x))[0] for x in batch], np.float64)


def explain_bundle(clf, image, *, patch: int | None = None, stride: int | None = None):
    """Occlusion map of one image (a path or a PIL image) with a loaded Classifier."""
    if not hasattr(image, "convert"):
        image = clf.spec.read(image)
    x = clf.spec.apply(image)
    return occlusion_map(classifier_predict(clf), x, fill=grey_value(clf.spec), patch=patch, stride=stride)


# -- pictures (numpy + Pillow only, so a device can draw them too) ----------------------
_JET = np.array([[0, 0, 0.5], [0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0], [0.5, 0, 0]])


def colorize(heat: np.ndarray) -> np.ndarray:
    """0..1 map -> RGB uint8 with a jet-like colour scale (blue low, red high)."""
    t = np.clip(heat, 0, 1) * (len(_JET) - 1)
    lo = np.floor(t).astype(int).clip(0, len(_JET) - 2)
    frac = (t - lo)[..., None]
    return np.round((_JET[lo] * (1 - frac) + _JET[lo + 1] * frac) * 255).astype(np.uint8)


def resize_map(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map to (height, width)."""
    from PIL import Image

    img = Image.fromarray(np.asarray(heat, np.float32), mode="F")
    return np.asarray(img.resize((size[1], size[0]), Image.Resampling.BILINEAR), np.float64)


def overlay(gray: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Grayscale uint8 X-ray (H, W) + 0..1 map -> RGB uint8; cold areas keep the plain X-ray."""
    heat = resize_map(heat, gray.shape[:2]) if heat.shape != gray.shape[:2] else heat
    heat = np.clip(heat, 0, 1)
    base = np.repeat(np.asarray(gray, np.float64)[..., None], 3, axis=-1)
    weight = alpha * np.sqrt(heat)[..., None]  # faint colour where the map is weak
    return np.round(base * (1 - weight) + colorize(heat) * weight).astype(np.uint8)
