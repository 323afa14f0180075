"""edgecxr's input contract re-written with OpenCV and numpy, as an integrator would: no edgecxr import.

    python examples/opencv_recipe.py BUNDLE --conformance mine.npz   # then: edgecxr device conform BUNDLE mine.npz
    python examples/opencv_recipe.py BUNDLE image.jpeg ...           # probability and decision per image

Every number comes from the bundle's manifest.json (`preprocess`, `input_contract`, `input`, `threshold`).
"""
import json
import sys
from pathlib import Path

import cv2
import numpy as np

REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
           8: cv2.IMREAD_REDUCED_COLOR_8}


def luma(bgr):
    """The contract's gray: (19595 R + 38470 G + 7471 B + 32768) >> 16 (cv2.COLOR_BGR2GRAY rounds otherwise)."""
    b, g, r = (bgr[..., i].astype(np.uint32) for i in range(3))
    return ((19595 * r + 38470 * g + 7471 * b + 32768) >> 16).astype(np.uint8)


def to_uint8(values):
    """16-bit samples: clip to the samples of rank k and N-1-k, k = (N-1) // 2000, then
    rint((v - low) * float32(255 / (high - low))) in float32."""
    v = values.astype(np.float32)
    ranked = np.sort(v, axis=None)
    k = (ranked.size - 1) // 2000
    low, high = float(ranked[k]), float(ranked[-1 - k])
    if high <= low:
        return np.zeros(v.shape, np.uint8)
    v = np.clip(v, np.float32(low), np.float32(high))
    return np.rint((v - np.float32(low)) * np.float32(255.0 / (high - low))).astype(np.uint8)


def decode_dicom(path):
    import pydicom

    ds = pydicom.dcmread(path)
    v = ds.pixel_array.astype(np.float32) * np.float32(ds.get("RescaleSlope", 1)) + np.float32(ds.get("RescaleIntercept", 0))
    if "WindowCenter" in ds:  # LINEAR window: clip, the scaling does the rest
        c, w = float(ds.WindowCenter) - 0.5, float(ds.WindowWidth) - 1
        v = np.clip(v, c - w / 2, c + w / 2)
    gray = to_uint8(v)
    return 255 - gray if ds.PhotometricInterpretation == "MONOCHROME1" else gray


def decode(path, draft_size):
    """File -> upright uint8 gray at the contract's JPEG scale (cv2.imdecode applies EXIF orientation)."""
    if str(path).lower().endswith(".dcm"):
        return decode_dicom(path)
    data = np.fromfile(path, np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise ValueError(f"{path}: not a readable image")
    if img.ndim == 3 and img.shape[2] == 4 or (img.dtype != np.uint8 and img.ndim == 3):
        raise NotImplementedError(f"{path}: alpha and 16-bit colour files: see the contract (not in this recipe)")
    if img.dtype != np.uint8:  # 16-bit gray PNG
        return to_uint8(cv2.imdecode(data, cv2.IMREAD_ANYDEPTH))
    scale = 1
    if data[:2].tobytes() == b"\xff\xd8":  # JPEG: the largest of 8, 4, 2, 1 with scale <= min(W, H) // draft
        ratio = min(img.shape[1] // draft_size, img.shape[0] // draft_size)
        scale = next(s for s in (8, 4, 2, 1) if ratio >= s or s == 1)
    colour = cv2.imdecode(data, REDUCED[scale])
    return luma(colour)


def equalize(gray):
    """The contract's table (not cv2.equalizeHist, another formula), applied with cv2.LUT."""
    h = np.bincount(gray.ravel(), minlength=256).astype(np.int64)
    used = np.flatnonzero(h)
    step = (gray.size - int(h[used[-1]])) // 255 if len(used) > 1 else 0
    if step == 0:
        return gray
    before = np.concatenate([[0], np.cumsum(h)[:-1]])
    return cv2.LUT(gray, np.minimum((step // 2 + before) // step, 255).astype(np.uint8))


def _axis(pixels, out):
    """One pass of the contract's antialiased bilinear (cv2 has none): 22-bit fixed-point weights."""
    n = pixels.shape[1]
    scale = n / out
    fs = max(scale, 1.0)
    support = fs
    acc = np.full((pixels.shape[0], out), 1 << 21, np.int64)
    for i in range(out):
        center = (i + 0.5) * scale
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n)
        w = np.maximum(1.0 - np.abs((np.arange(lo, hi) - center + 0.5) / fs), 0.0)
        w = w / np.cumsum(w)[-1]  # normalized to sum 1, summed left to right
        k = np.trunc(0.5 + w * (1 << 22)).astype(np.int64)
        acc[:, i] += pixels[:, lo:hi].astype(np.int64) @ k
    return np.clip(acc >> 22, 0, 255).astype(np.uint8)


def resize(gray, size):
    if gray.shape == (size, size):
        return gray
    out = _axis(gray, size) if gray.shape[1] != size else gray  # horizontal pass first
    return np.ascontiguousarray(_axis(np.ascontiguousarray(out.T), size).T) if gray.shape[0] != size else out


def crop(gray, box):
    """Rows round(top H)..round(bottom H), columns round(left W)..round(right W) (Python's round: half to even)."""
    top, bottom, left, right = box
    h, w = gray.shape
    return gray[round(top * h):round(bottom * h), round(left * w):round(right * w)]


def stages(path, manifest):
    """Every stage of the contract for one file: what `edgecxr device conform` checks."""
    pre, steps = manifest["preprocess"], manifest["input_contract"]["steps"]
    if pre["interpolation"] != "bilinear":
        raise NotImplementedError(f"this recipe resizes bilinear only, the bundle says {pre['interpolation']}")
    out = {"decoded": decode(path, steps["decoded"]["draft_size"])}
    gray = out["decoded"]
    if pre["crop"]:
        gray = out["cropped"] = np.ascontiguousarray(crop(gray, pre["crop"]))
    if pre["equalize"]:
        gray = out["equalized"] = equalize(gray)
    out["resized"] = resize(gray, pre["size"])
    x = np.asarray(steps["input"]["table"], np.float32)[out["resized"]]
    out["input"] = np.repeat(x[None, ..., None], pre["channels"], axis=-1)  # NHWC
    table = steps["quantized"].get("table")
    if table is not None:
        q = np.asarray(table, manifest["input"]["dtype"])[out["resized"]]
        out["quantized"] = np.repeat(q[None, ..., None], pre["channels"], axis=-1)
    return out


def probability(y, output):
    """The positive class's probability from the dequantized output (the manifest's output kind)."""
    if y.size == 1:
        return 1 / (1 + np.exp(-y[0])) if output["kind"] == "logits" else y[0]
    if output["kind"] == "logits":
        y = np.exp(y - y.max()) / np.exp(y - y.max()).sum()
    return y[output.get("positive_index", 0)]


def classify(bundle, paths):
    """(path, stages with output, probability and decision) per file, on the bare LiteRT interpreter."""
    from ai_edge_litert.interpreter import Interpreter

    manifest = json.loads((Path(bundle) / "manifest.json").read_text())
    interpreter = Interpreter(str(Path(bundle) / manifest["model_file"]))
    interpreter.allocate_tensors()
    inp, outp = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    for path in paths:
        s = stages(path, manifest)
        interpreter.set_tensor(inp["index"], s.get("quantized", s["input"]))
        interpreter.invoke()
        s["output"] = interpreter.get_tensor(outp["index"]).copy()
        scale, zero = outp["quantization"]
        y = (s["output"].astype(np.float64) - zero) * scale if scale else s["output"].astype(np.float64)
        s["probability"] = np.float64(probability(y.reshape(-1), manifest["output"]))
        s["decision"] = np.int64(s["probability"] >= manifest["threshold"])
        yield path, s


def main(argv):
    bundle, rest = argv[0], argv[1:]
    if rest[:1] == ["--conformance"]:
        images = sorted((Path(bundle) / "conformance" / "images").iterdir())
        arrays = {f"{p.name}/{k}": v for p, s in classify(bundle, images) for k, v in s.items()}
        np.savez_compressed(rest[1], **arrays)
        print(f"wrote {rest[1]}: {len(images)} images")
        return
    for path, s in classify(bundle, rest):
        print(f"{path}\t{float(s['probability']):.6f}\t{int(s['decision'])}")


if __name__ == "__main__":
    main(sys.argv[1:])
