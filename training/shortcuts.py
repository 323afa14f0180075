"""Shortcut check: does a model decide from the lungs, or from the border around them?

Run by `edgecxr evaluate` (metrics.json["shortcuts"]) and shown by `edgecxr report`. On the
preprocessed pixels (uint8, after the spec's crop/equalize/resize) a region is set to 0, the pixel
that means black for the model (input = 0 * scale + offset), and the split is predicted again:

- ``border``: everything outside the lung box (`edgecxr.data.preprocess.LUNG_CROP`) masked;
- ``top_band``: the top 15 % of the image masked (markers, labels and collimator edges sit there);

each with accuracy, recall, specificity, ROC-AUC and the share of decisions that changed. Then the
mean share of Grad-CAM mass (the map explaining each decision) that falls inside the lung box; a map
spread evenly would put the box's area there. Regions are fractions of the original image, mapped
into the model input's frame when the spec crops (a lung-cropped model has no border left to mask).
"""
from __future__ import annotations

import numpy as np

from edgecxr.parity import metrics
from edgecxr.data.preprocess import LUNG_CROP

TOP_BAND = 0.15
REPORTED = ("accuracy", "recall", "specificity", "roc_auc")


def _in_frame(box, crop) -> tuple[float, float, float, float]:
    """A box (top, bottom, left, right fractions of the original image) in the frame of the spec's crop."""
    if crop is None:
        return tuple(box)
    ct, cb, cl, cr = crop
    rows = [min(max((v - ct) / (cb - ct), 0.0), 1.0) for v in box[:2]]
    cols = [min(max((v - cl) / (cr - cl), 0.0), 1.0) for v in box[2:]]
    return (*rows, *cols)


def box_mask(box, size: int) -> np.ndarray:
    """bool (size, size), True inside a (top, bottom, left, right) box of fractions."""
    top, bottom, left, right = (round(v * size) for v in box)
    mask = np.zeros((size, size), bool)
    mask[top:bottom, left:right] = True
    return mask


def regions(spec) -> dict[str, np.ndarray]:
    """The lung box and the masked regions, as bool masks of the model input (size, size)."""
    lung = box_mask(_in_frame(LUNG_CROP, spec.crop), spec.size)
    return {"lung": lung, "border": ~lung, "top_band": box_mask(_in_frame((0.0, TOP_BAND, 0.0, 1.0), spec.crop), spec.size)}


def mask_pixels(pixels: np.ndarray, region: np.ndarray) -> np.ndarray:
    """A copy of uint8 pixels (N, H, W) with the region set to 0 (black once scaled)."""
    out = np.array(pixels, copy=True)
    out[:, region] = 0
    return out


def lung_share(maps: np.ndarray, lung: np.ndarray) -> np.ndarray:
    """Share of each map's mass (N, H, W) inside the lung box; NaN for an empty map."""
    total = maps.sum(axis=(1, 2))
    inside = maps[:, lung].sum(axis=1)
    return np.divide(inside, total, out=np.full(len(maps), np.nan), where=total > 0)


def shortcut_check(model, spec, pixels, labels, probs, threshold: float, *, kind: str = "sigmoid",
                   positive_index: int = 0, cam_images: int | None = 100, seed: int = 0, batch_size: int = 32) -> dict:
    """The shortcut numbers of a float tf_keras model on preprocessed uint8 pixels (N, H, W).

    probs: its probabilities on the unmasked pixels; cam_images: Grad-CAM on a seeded random subset
    of that many images (None or 0: all of them).
    """
    from edgecxr.formats.modelinfo import to_prob
    from edgecxr.training import import_tf
    from edgecxr.training.gradcam import gradcam_batch
    from edgecxr.training.train import predict_probs

    tf, _ = import_tf()
    masks = regions(spec)
    base = np.asarray(probs) >= threshold
    out = {"fill": {"pixel": 0, "model_input": float(spec.offset)}, "lung_box": list(LUNG_CROP), "top_band_rows": TOP_BAND}
    for name in ("border", "top_band"):
        p = to_prob(predict_probs(tf, model, mask_pixels(pixels, masks[name]), spec, batch_size).reshape(len(pixels), -1),
                    kind, positive_index)
        m = metrics.binary_metrics(labels, p, threshold)
        changed = (p >= threshold) != base
        out[name] = {**{k: m[k] for k in REPORTED}, "changed": float(changed.mean()), "n_changed": int(changed.sum()),
                     "mean_abs_shift": float(np.abs(p - probs).mean()), "masked_pixels": float(masks[name].mean())}
    n = len(pixels)
    pick = np.arange(n) if not cam_images or cam_images >= n else \
        np.sort(np.random.default_rng(seed).choice(n, cam_images, replace=False))
    cam = out["gradcam_in_lung"] = {"mean": None, "n": 0, "of": n, "lung_area": float(masks["lung"].mean()),
                                    "images": "all" if len(pick) == n else f"seeded random subset (seed {seed})"}

    def share_of(idx):
        maps, _ = gradcam_batch(model, spec.scale_pixels(pixels[idx]), positive_index=positive_index, threshold=threshold)
        return lung_share(maps, masks["lung"])

    try:
        shares = np.concatenate([share_of(pick[i:i + 16]) for i in range(0, len(pick), 16)] or [np.empty(0)])
    except Exception as e:  # noqa: BLE001  Grad-CAM is tf_keras-only and needs a CNN; the masked metrics stand without it
        cam["error"] = f"Grad-CAM not available for this model: {type(e).__name__}: {str(e)[:200]}"
        return out
    if np.isfinite(shares).any():
        cam.update(mean=float(np.nanmean(shares)), n=int(np.isfinite(shares).sum()))
    return out


def reading(sc: dict) -> str:
    """One sentence a reader can act on."""
    top, border, cam = sc["top_band"], sc["border"], sc.get("gradcam_in_lung") or {}
    verb = "depend on the border" if top["changed"] >= 0.01 else "barely depend on the top band"
    text = (f"Decisions {verb}: {100 * top['changed']:.1f} % change when the top band is masked "
            f"({100 * border['changed']:.1f} % with everything outside the lung box masked)")
    if cam.get("mean") is not None:
        text += (f"; Grad-CAM puts {100 * cam['mean']:.0f} % of its mass inside the lung box "
                 f"({100 * cam['lung_area']:.0f} % of the image)")
    return text + "."


def format_shortcuts(sc: dict) -> str:
    """Two lines for the terminal."""
    masked = "; ".join(
        f"{what} masked: acc {r['accuracy']:.3f} rec {r['recall']:.3f} spec {r['specificity']:.3f} "
        f"AUC {r['roc_auc']:.3f}, {100 * r['changed']:.1f} % changed"
        for what, r in ((f"top {100 * sc['top_band_rows']:.0f} %", sc["top_band"]), ("outside lungs", sc["border"])))
    cam = sc["gradcam_in_lung"]
    if cam["mean"] is None:
        return f"  shortcuts    {masked}\n               {cam.get('error', 'Grad-CAM: every map was empty')}"
    return (f"  shortcuts    {masked}\n               Grad-CAM mass inside the lung box {100 * cam['mean']:.1f} % (the box is "
            f"{100 * cam['lung_area']:.0f} % of the image; {cam['n']} of {cam['of']} images, {cam['images']})")
