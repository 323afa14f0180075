"""`edgecxr explain`: where did the model look? Grad-CAM for a float model, occlusion for a bundle.

    edgecxr explain chest.jpeg --out cam.png                          # shipped model, Grad-CAM
    edgecxr explain chest.jpeg --model run/model.keras --out cam.png
    edgecxr explain chest.jpeg --bundle bundles/tflite-int8 --out occ.png   # any bundle, no gradients
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from edgecxr.options import trust_model_option
from edgecxr.utils.errors import ConfigError, ModelError

METHODS = ("gradcam", "occlusion")


@dataclass
class Explanation:
    gray: np.ndarray  # uint8 (H, W): the X-ray as the model saw it (crop, resize)
    heat: np.ndarray  # 0..1 (H, W)
    prob: float
    threshold: float
    labels: tuple
    method: str
    source: str  # "float model" or the bundle target

    @property
    def label(self) -> str:
        return self.labels[1] if self.prob >= self.threshold else self.labels[0]

    def overlay(self) -> np.ndarray:
        from edgecxr.occlusion import overlay

        return overlay(self.gray, self.heat)


class FloatExplainer:
    """A float tf_keras model with its sidecar info; Grad-CAM or occlusion."""

    def __init__(self, model_path: Path, *, trust: bool = False):
        from edgecxr.formats.modelinfo import load_info
        from edgecxr.training.evaluate import load_model

        self.info = load_info(model_path)
        if self.info is None:
            raise ModelError(f"{model_path}: no {Path(model_path).with_suffix('.json').name} beside it; "
                             "explain needs an edgecxr model (its preprocessing and threshold)")
        self.model = load_model(model_path, trust=trust)

    def explain(self, image, method: str = "gradcam", **kw) -> Explanation:
        spec, info = self.info.preprocess, self.info
        img = spec.read(image) if isinstance(image, (str, Path)) else image
        gray, x = spec.to_pixels(img), spec.apply(img)
        if method == "gradcam":
            from edgecxr.training.gradcam import gradcam

            heat, prob = gradcam(self.model, x, positive_index=info.positive_index, threshold=info.threshold)
        else:
            from edgecxr.occlusion import grey_value, normalize, occlusion_map

            predict = lambda b: self.model.predict(b, verbose=0).reshape(len(b), -1)[:, info.positive_index]  # noqa: E731
            drop, prob = occlusion_map(predict, x, fill=grey_value(spec), **kw)
            heat = normalize(drop if prob >= info.threshold else -drop)
        return Explanation(gray, heat, prob, info.threshold, info.labels, method, "float model")


class BundleExplainer:
    """A bundle on its device runtime; occlusion only (no gradients)."""

    def __init__(self, bundle, trusted_key=None):
        from edgecxr.devices.classifier import Classifier

        self.clf = bundle if hasattr(bundle, "infer") else Classifier.load(bundle, trusted_key=trusted_key)

    def explain(self, image, method: str = "occlusion", **kw) -> Explanation:
        if method != "occlusion":
            raise ConfigError("a bundle has no gradients: Grad-CAM needs the float model (--model); use --method occlusion")
        from edgecxr.occlusion import explain_bundle, normalize

        clf = self.clf
        img = clf.spec.read(image) if isinstance(image, (str, Path)) else image
        drop, prob = explain_bundle(clf, img, **kw)
        heat = normalize(drop if prob >= clf.threshold else -drop)
        return Explanation(clf.spec.to_pixels(img), heat, prob, clf.threshold, clf.labels, "occlusion",
                           clf.bundle.manifest["target"])


def png_bytes(rgb: np.ndarray, min_side: int = 0) -> bytes:
    from PIL import Image

    img = Image.fromarray(rgb)
    if min_side and min(img.size) < min_side:
        factor = min_side / min(img.size)
        img = img.resize((round(img.width * factor), round(img.height * factor)), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def figure(e: Explanation, side: int = 320) -> bytes:
    """The X-ray and its map side by side with a caption line, as PNG bytes."""
    from PIL import Image, ImageDraw, ImageFont

    gray = Image.fromarray(e.gray).convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
    heat = Image.fromarray(e.overlay()).resize((side, side), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (2 * side + 30, side + 70), "white")
    canvas.paste(gray, (10, 10))
    canvas.paste(heat, (side + 20, 10))
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=15)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    name = {"gradcam": "Grad-CAM", "occlusion": "occlusion"}[e.method]
    draw.text((10, side + 16), f"{e.label}: p(pneumonia) = {e.prob:.3f}, threshold {e.threshold:.3f} ({e.source})",
              fill="black", font=font)
    draw.text((10, side + 40), f"right: {name} map, red = regions that drove this decision", fill="#444", font=font)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


@click.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", "model_path", type=click.Path(path_type=Path), help="Float model (.keras); default: the shipped model.")
@click.option("--bundle", type=click.Path(exists=True, path_type=Path), help="Bundle folder or .zip (occlusion on its device runtime).")
@click.option("--method", type=click.Choice(METHODS), help="gradcam (float model, the default) or occlusion (default for --bundle).")
@click.option("--patch", type=int, help="Occlusion patch side in pixels (default: input size / 7).")
@click.option("--stride", type=int, help="Occlusion stride in pixels (default: patch / 2).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="PNG to write.")
@trust_model_option()
@click.option("--trusted-key", type=click.Path(dir_okay=False, path_type=Path),
              help="With --bundle: refuse a bundle not signed by this public key (default: $EDGECXR_TRUSTED_KEY).")
def explain(image, model_path, bundle, method, patch, stride, out, trust_model, trusted_key):
    """Show which regions of IMAGE drove the decision, as a colour map over the X-ray.

    Example: edgecxr explain chest.jpeg --out cam.png (Grad-CAM of the shipped model; --bundle B for occlusion)"""
    from edgecxr.utils.atomic import refuse_overlap, write_bytes_atomic

    refuse_overlap(out, (image, model_path, bundle))
    if model_path and bundle:
        raise ConfigError("pass either --model or --bundle, not both")
    if bundle and method == "gradcam":
        raise ConfigError("a bundle has no gradients: Grad-CAM needs the float model (--model); use --method occlusion")
    kw = {"patch": patch, "stride": stride} if (method == "occlusion" or bundle) else {}
    if bundle:
        from edgecxr.formats.signing import trusted_key_path

        e = BundleExplainer(bundle, trusted_key_path(trusted_key)).explain(image, method or "occlusion", **kw)
    else:
        from edgecxr.formats.modelinfo import default_model_path

        e = FloatExplainer(model_path or default_model_path(), trust=trust_model).explain(image, method or "gradcam", **kw)
    write_bytes_atomic(out, figure(e))
    click.echo(f"{image}: {e.label} (p={e.prob:.3f}, threshold {e.threshold:.3f}); {e.method} map written to {out}")
    if not np.any(e.heat > 0):
        click.echo(f"warning: the {e.method} map is empty: no region raised the score of this decision, so the picture "
                   "has no colour and explains nothing; try --method occlusion", err=True)
