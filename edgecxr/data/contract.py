"""The input contract: every step from file bytes to the model's input tensor, as algorithms another
language can reproduce exactly, and a numpy reference of each step (no Pillow resize or equalize).

Stages, in order (the names conformance files and `edgecxr device conform` use):
  decoded    uint8 (H, W): upright 8-bit gray at the decode scale
  cropped    uint8: the spec's crop box (only when the spec has a crop)
  equalized  uint8: histogram equalization by LUT_FORMULA (only when the spec equalizes)
  resized    uint8 (size, size): the separable triangle filter below (skipped when already size x size)
  input      float32 model input, pixel * scale + offset in float32, gray repeated over the channels,
             in the model's layout (NHWC, or NCHW where the model takes it)
  quantized  the integer tensor fed to an int8/uint8 model: round half to even of x / scale, + zero point
  output     the model's raw output tensor
  probability, decision: the positive class's probability, and probability >= threshold

The numpy functions here are the specification's executable form: tests hold them bit-identical to
edgecxr's runner (Pillow) on the 624 test images, the full-size originals and the fixtures.
"""
from __future__ import annotations

import functools
import hashlib
import math

import numpy as np

VERSION = 1
STAGES = ("decoded", "cropped", "equalized", "resized", "input", "quantized", "output", "probability", "decision")
PIXEL_STAGES = ("decoded", "cropped", "equalized", "resized")
PRECISION_BITS = 22  # the resize's fixed-point coefficients: 32 - 8 - 2 bits (Pillow's Resample.c)
JPEG_SCALES = (8, 4, 2, 1)

LUMA = "gray = (19595 * R + 38470 * G + 7471 * B + 32768) >> 16 (ITU-R 601-2 luma, 16-bit fixed point)"
LUT_FORMULA = ("h = histogram of the 256 levels; last = the highest level with h > 0; "
               "step = (N - h[last]) // 255 (N = pixel count); if fewer than 2 levels occur or step == 0: "
               "lut[i] = i; else lut[i] = (step // 2 + sum(h[0..i-1])) // step, clipped to 255")


def algorithms(spec) -> dict:
    """The manifest's `input_contract`: each stage named with its algorithm and parameters."""
    steps = {
        "decoded": {
            "jpeg": "ISO/IEC 10918-1 with libjpeg's accurate integer IDCT (islow) and fancy upsampling; "
                    "a file larger than needed is decoded at 1/s scale by libjpeg's scaled IDCT, "
                    f"s = the largest of 8, 4, 2, 1 with s <= min(W // {spec.draft_size}, H // {spec.draft_size}), "
                    "giving ceil(W / s) x ceil(H / s) pixels (OpenCV: IMREAD_REDUCED_*_s; Pillow: draft)",
            "draft_size": spec.draft_size,
            "exif_orientation": "tag 0x0112 values 2-8 applied after decoding (TIFF 6.0 orientation); a file with "
                                "no EXIF orientation but an XMP tiff:Orientation uses that (Pillow's rule)",
            "color_to_gray": LUMA,
            "other_color_models": "palette, CMYK, YCbCr and 1-bit images are converted to RGB by the decoder "
                                  "(Pillow's conversions) before the luma",
            "alpha": "composited over opaque black: c' = (t + (t >> 8)) >> 8 with t = c * a + 128, then the luma",
            "high_bit_depth": "16-bit gray, 32-bit integer or float samples: low and high are the samples of rank k "
                              "and N - 1 - k in ascending order, k = (N - 1) // 2000 with N the sample count (the "
                              "0.05th and 99.95th percentiles, no interpolation); v' = rint((clip(v, low, high) - "
                              "low) * float32(255 / (high - low))) in float32, round half to even; high <= low "
                              "gives 0. 16-bit "
                              "colour PNGs: the decoder's 8-bit reduction (Pillow keeps the high byte), then the luma",
            "dicom": "unsigned 8-bit grey samples with no modality LUT, no rescale other than slope 1 / intercept 0 and "
                     "no window: taken as they are (as an 8-bit PNG), MONOCHROME1 inverted; otherwise "
                     "modality LUT or RescaleSlope/Intercept; a LINEAR window clips to [c - 0.5 - (w - 1) / 2, "
                     "c - 0.5 + (w - 1) / 2] (LINEAR_EXACT: [c - w / 2, c + w / 2]); a VOI LUT sequence or a "
                     "SIGMOID window: pydicom's apply_voi_lut; colour: the mean of the three channels in float32; "
                     "then the 16-bit rule above; MONOCHROME1 inverted as 255 - v; first frame only",
        },
        "cropped": {"box": list(spec.crop) if spec.crop else None,
                    "rule": "rows round(top * H) .. round(bottom * H), columns round(left * W) .. round(right * W), "
                            "end exclusive, round half to even"},
        "equalized": {"enabled": bool(spec.equalize), "lut": LUT_FORMULA,
                      "note": "not OpenCV's equalizeHist (another formula); apply this table with cv2.LUT"},
        "resized": {
            "size": [spec.size, spec.size],
            "kernel": spec.interpolation, "antialias": spec.interpolation != "nearest",
            "rule": resize_rule(spec.interpolation),
        },
        "input": {"formula": f"x = float32(float32(p) * float32({spec.scale!r})) + float32({spec.offset!r}), "
                             "IEEE float32, no fused multiply-add", "channels": spec.channels,
                  "layout": "NHWC (1, size, size, channels) unless the model's input shape is NCHW",
                  "table": [float(v) for v in scale_table(spec)]},
        "quantized": {"formula": "q = clip(round_half_to_even(float32(x) / float32(scale)) + zero_point, "
                                 "dtype min, dtype max), scale and zero point from the manifest's input"},
        "probability": {"sigmoid": "the positive index's output", "softmax": "the positive index's output",
                        "logits": "1 / (1 + exp(-z)) of the positive index's output",
                        "dequantize": "(q - zero_point) * scale when the output is an integer tensor"},
        "decision": {"rule": "positive (labels[1]) when probability >= threshold"},
    }
    return {"version": VERSION, "stages": [s for s in STAGES if s != "cropped" or spec.crop], "steps": steps}


def resize_rule(kernel: str) -> str:
    if kernel == "nearest":
        return ("per axis: s = in / out; the source index of output i is int(t_i) with t_0 = s / 2 and "
                "t_i = t_(i-1) + s, accumulated in float64")
    return (f"separable {kernel} filter, horizontal pass first, each pass rounded to uint8. Per axis (in -> out): "
            "scale = in / out, fs = max(scale, 1), support = kernel support * fs; for output i: "
            "center = (i + 0.5) * scale, lo = max(int(center - support + 0.5), 0), "
            "hi = min(int(center + support + 0.5), in); w[j] = kernel((j - center + 0.5) / fs) for j in lo..hi-1, "
            "normalized to sum 1 in float64; k[j] = int(w[j] * 2^22 + 0.5) (w < 0: - 0.5, toward zero); "
            "out = clip((2^21 + sum(p[j] * k[j])) >> 22, 0, 255) in 32-bit integers. "
            "Bilinear: kernel(t) = 1 - |t| for |t| < 1, support 1 (antialiased: the support widens with the "
            "scale, unlike cv2.INTER_LINEAR)")


# -- decoding: orientation, gray, bit depth -------------------------------------------------------
def exif_transpose(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """TIFF orientation 1-8 -> upright (the row/column order of Pillow's exif_transpose)."""
    ops = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: np.swapaxes(a, 0, 1), 6: lambda a: np.rot90(a, -1),
           7: lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1], 8: lambda a: np.rot90(a, 1)}
    return np.ascontiguousarray(ops[orientation](pixels)) if orientation in ops else pixels


def rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (H, W) by LUMA."""
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    return ((19595 * r + 38470 * g + 7471 * b + 32768) >> 16).astype(np.uint8)


def composite_on_black(rgba: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 4) -> (H, W, 3): alpha over an opaque black background (Pillow's alpha_composite)."""
    alpha = rgba[..., 3:4].astype(np.uint32)
    # Pillow: out = (src * a + dst * (255 - a)) / 255 with its rounding: tmp = c * a + 128; (tmp + (tmp >> 8)) >> 8
    tmp = rgba[..., :3].astype(np.uint32) * alpha + 128
    return ((tmp + (tmp >> 8)) >> 8).astype(np.uint8)


def scale_uint8(values: np.ndarray) -> np.ndarray:
    """16-bit or float samples -> uint8 by the contract's rule: clip to the samples of rank k and N - 1 - k
    (k = (N - 1) // 2000), then rint((v - low) * float32(255 / (high - low))) in float32, round half to even."""
    v = np.sort(np.asarray(values, np.float32).reshape(-1))
    k = (v.size - 1) // 2000
    low, high = float(v[k]), float(v[v.size - 1 - k])
    if high <= low:
        return np.zeros(np.shape(values), np.uint8)
    v = np.clip(np.asarray(values, np.float32), np.float32(low), np.float32(high))
    v -= np.float32(low)
    v *= np.float32(255.0 / (high - low))
    return np.rint(v).astype(np.uint8)


def jpeg_scale(width: int, height: int, draft_size: int) -> int:
    """The reduced-DCT factor the contract decodes a W x H JPEG at."""
    ratio = min(width // draft_size, height // draft_size)
    return next(s for s in JPEG_SCALES if ratio >= s or s == 1)


# -- crop, equalize ---------------------------------------------------------------------------------
def crop(pixels: np.ndarray, box) -> np.ndarray:
    top, bottom, left, right = box
    h, w = pixels.shape
    return pixels[round(top * h):round(bottom * h), round(left * w):round(right * w)]


def equalize_lut(hist: np.ndarray) -> np.ndarray:
    """The 256-entry table of LUT_FORMULA for a histogram of 256 counts."""
    hist = np.asarray(hist, np.int64)
    used = np.flatnonzero(hist)
    identity = np.arange(256, dtype=np.uint8)
    if len(used) <= 1:
        return identity
    step = (int(hist.sum()) - int(hist[used[-1]])) // 255
    if step == 0:
        return identity
    before = np.concatenate([[0], np.cumsum(hist)[:-1]])
    return np.minimum((step // 2 + before) // step, 255).astype(np.uint8)


def equalize(pixels: np.ndarray) -> np.ndarray:
    return equalize_lut(np.bincount(pixels.ravel(), minlength=256))[pixels]


# -- resize -------------------------------------------------------------------------------------------
def _bilinear(t: np.ndarray) -> np.ndarray:
    t = np.abs(t)
    return np.where(t < 1.0, 1.0 - t, 0.0)


def _bicubic(t: np.ndarray) -> np.ndarray:  # a = -0.5, as Pillow
    t = np.abs(t)
    a = -0.5
    return np.where(t < 1.0, ((a + 2.0) * t - (a + 3.0)) * t * t + 1,
                    np.where(t < 2.0, (((t - 5) * t + 8) * t - 4) * a, 0.0))


def _lanczos(t: np.ndarray) -> np.ndarray:
    def sinc(x):
        x = x * math.pi
        return np.where(x == 0, 1.0, np.sin(x) / np.where(x == 0, 1.0, x))
    return np.where((t > -3.0) & (t < 3.0), sinc(t) * sinc(t / 3.0), 0.0)


KERNELS = {"bilinear": (_bilinear, 1.0), "bicubic": (_bicubic, 2.0), "lanczos": (_lanczos, 3.0)}


@functools.lru_cache(maxsize=64)
def resize_weights(in_size: int, out_size: int, kernel: str = "bilinear") -> tuple[np.ndarray, np.ndarray]:
    """(first input index per output pixel, int64 fixed-point weights (out, taps)): the rule of resize_rule.
    Weights past an output's last input pixel are 0. Cached: read-only arrays."""
    fn, support = KERNELS[kernel]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support *= filterscale
    taps = int(math.ceil(support)) * 2 + 1
    center = (np.arange(out_size) + 0.5) * scale
    first = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    last = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64)
    j = first[:, None] + np.arange(taps)[None, :]
    w = np.where(j < last[:, None], fn((j - center[:, None] + 0.5) * (1.0 / filterscale)), 0.0)
    total = np.cumsum(w, axis=1)[:, -1:]  # summed left to right, as the C loop does
    w = np.where(total != 0.0, w / np.where(total != 0.0, total, 1.0), w)
    weights = np.trunc(np.where(w < 0, -0.5, 0.5) + w * (1 << PRECISION_BITS)).astype(np.int64)
    first.flags.writeable = weights.flags.writeable = False
    return first, weights


def _resize_axis(pixels: np.ndarray, out_size: int, kernel: str) -> np.ndarray:
    """Resize axis 1 of a uint8 (rows, in) array to out_size columns, in the contract's integer arithmetic."""
    first, weights = resize_weights(pixels.shape[1], out_size, kernel)
    acc = np.full((pixels.shape[0], out_size), 1 << (PRECISION_BITS - 1), np.int64)
    for j in range(weights.shape[1]):  # one tap at a time: (rows, out) work each, whatever the input width
        acc += pixels[:, np.minimum(first + j, pixels.shape[1] - 1)] * weights[:, j]
    return np.clip(acc >> PRECISION_BITS, 0, 255).astype(np.uint8)


def _nearest_index(n: int, size: int) -> np.ndarray:
    """Source index of each output pixel: x = scale / 2, then x += scale per pixel, in float64, truncated."""
    scale = n / size
    return np.minimum(np.cumsum(np.r_[scale * 0.5, np.full(size - 1, scale)]).astype(np.int64), n - 1)


def _resize_nearest(pixels: np.ndarray, size: int) -> np.ndarray:
    return pixels[_nearest_index(pixels.shape[0], size)][:, _nearest_index(pixels.shape[1], size)]


def resize(pixels: np.ndarray, size: int, kernel: str = "bilinear") -> np.ndarray:
    """uint8 (H, W) -> uint8 (size, size) by resize_rule (identity when already that size)."""
    if pixels.shape == (size, size):
        return pixels
    if kernel == "nearest":
        return _resize_nearest(pixels, size)
    out = pixels
    if pixels.shape[1] != size:
        out = _resize_axis(out, size, kernel)
    if pixels.shape[0] != size:
        out = _resize_axis(out.T, size, kernel).T
    return np.ascontiguousarray(out)


# -- scale, layout, quantize --------------------------------------------------------------------------
def scale_table(spec) -> np.ndarray:
    """float32 input value of each grey level 0..255 (the `input` formula, as a table)."""
    return np.arange(256, dtype=np.float32) * np.float32(spec.scale) + np.float32(spec.offset)


def to_input(pixels: np.ndarray, spec, nchw: bool = False) -> np.ndarray:
    """uint8 (size, size) -> float32 (1, size, size, C), or (1, C, size, size) for an NCHW model."""
    x = np.repeat(scale_table(spec)[pixels][None, ..., None], spec.channels, axis=-1)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if nchw else x)


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype, rounding=np.rint) -> np.ndarray:
    """float32 input -> integer tensor: rounding (half to even) of x / scale, plus the zero point, clipped."""
    info = np.iinfo(dtype)
    q = rounding(np.asarray(x, np.float32) / np.float32(scale)) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def array_sha256(a) -> str:
    """SHA-256 of an array's bytes in C order, little-endian: the hash the conformance set lists."""
    a = np.ascontiguousarray(np.asarray(a))
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return hashlib.sha256(a.tobytes()).hexdigest()
