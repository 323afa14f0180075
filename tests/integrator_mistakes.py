"""An integrator's OpenCV pipeline (examples/opencv_recipe.py) with one known mistake each, made the way
a person writing it would make it (cv2.equalizeHist, cv2.INTER_LINEAR, BGR taken for RGB ...)."""
import importlib.util
from pathlib import Path

import cv2
import numpy as np

RECIPE_FILE = Path(__file__).resolve().parents[1] / "examples" / "opencv_recipe.py"
_spec = importlib.util.spec_from_file_location("opencv_recipe", RECIPE_FILE)
recipe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recipe)


def _decode(path, draft, mistake):
    if mistake == "monochrome1_not_inverted" and str(path).endswith(".dcm"):
        return 255 - recipe.decode_dicom(path)  # the recipe inverts MONOCHROME1: undo it
    if mistake in ("bgr", "exif_ignored") and not str(path).endswith((".dcm", ".png")):
        data = np.fromfile(path, np.uint8)
        probe = cv2.imdecode(data, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
        ratio = min(probe.shape[1] // draft, probe.shape[0] // draft)
        scale = next(s for s in (8, 4, 2, 1) if ratio >= s or s == 1)
        flags = recipe.REDUCED[scale] | (cv2.IMREAD_IGNORE_ORIENTATION if mistake == "exif_ignored" else 0)
        colour = cv2.imdecode(data, flags)
        return recipe.luma(colour[..., ::-1] if mistake == "bgr" else colour)
    return recipe.decode(path, draft)


def mistaken_stages(path, manifest, mistake: str) -> dict:
    """The recipe's stages for one file with `mistake` (a name of edgecxr.data.conformance.MISTAKES) made."""
    pre, steps = manifest["preprocess"], manifest["input_contract"]["steps"]
    out = {"decoded": _decode(path, steps["decoded"]["draft_size"], mistake)}
    gray = out["decoded"]
    if mistake == "opencv_equalizehist":
        gray = out["equalized"] = cv2.equalizeHist(gray)
    elif mistake != "no_equalization":  # a pipeline without equalization has no such stage to submit
        gray = out["equalized"] = recipe.equalize(gray)
    size = pre["size"]
    if mistake == "resize_no_antialias" and gray.shape != (size, size):
        out["resized"] = cv2.resize(gray, (size, size), interpolation=cv2.INTER_LINEAR)
    elif mistake == "resize_nearest" and gray.shape != (size, size):
        out["resized"] = cv2.resize(gray, (size, size), interpolation=cv2.INTER_NEAREST)
    else:
        out["resized"] = recipe.resize(gray, size)
    scale, offset = (1 / 255, 0.0) if mistake == "scale_0_1" else (pre["scale"], pre["offset"])
    x = out["resized"].astype(np.float32) * np.float32(scale) + np.float32(offset)
    x = np.repeat(x[None, ..., None], pre["channels"], axis=-1)
    out["input"] = np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if mistake == "layout_chw" else x
    q = manifest["input"].get("quantization")
    if mistake == "input_other_formula":  # (p - mean) / std, as MediaPipe and most tutorials write it
        mean, std = -pre["offset"] / pre["scale"], 1 / pre["scale"]
        x = (out["resized"].astype(np.float32) - np.float32(mean)) / np.float32(std)
        x = out["input"] = np.repeat(x[None, ..., None], pre["channels"], axis=-1)
    if q and mistake != "layout_chw":
        v = x / np.float32(q["scale"])
        rounded = {"int8_round_half_up": lambda: np.floor(v + np.float32(0.5)),
                   "int8_round_half_away": lambda: np.sign(v) * np.floor(np.abs(v) + np.float32(0.5)),
                   "int8_truncate": lambda: np.trunc(v)}.get(mistake, lambda: np.rint(v))()
        out["quantized"] = np.clip(rounded + q["zero_point"], -128, 127).astype(manifest["input"]["dtype"])
    return out


def submission(bundle: Path, mistake: str, stages=None) -> dict:
    """{image id: stages} for the bundle's conformance images, keeping only `stages` when given."""
    import json

    manifest = json.loads((Path(bundle) / "manifest.json").read_text())
    out = {}
    for image in sorted((Path(bundle) / "conformance" / "images").iterdir()):
        s = mistaken_stages(image, manifest, mistake)
        out[image.name] = {k: v for k, v in s.items() if stages is None or k in stages}
    return out
