"""Read JPEG, PNG (8/16-bit, L/RGB/RGBA/P/CMYK) and DICOM into an 8-bit grayscale PIL image.

Chest X-rays are grayscale; colour inputs are converted with Pillow's ITU-R 601
luma, which keeps equal-channel RGB files (the Kermany JPEGs) exactly as they are.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgecxr.errors import ImageError

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".dcm", ".dicom", ".bmp", ".tif", ".tiff"}
MAX_PIXELS = 64_000_000  # above this a file is refused as a decompression bomb
MAX_BYTES = 256 * 1024 * 1024

Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _is_dicom(data: bytes, name: str) -> bool:
    return data[128:132] == b"DICM" or name.lower().endswith((".dcm", ".dicom"))


def _brief(exc: BaseException, limit: int = 300) -> str:
    """An exception as one short line (decoder messages can span several lines)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Min-max scale any numeric array to 0..255 (used for 16-bit, float and DICOM data)."""
    values = values.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def to_gray(img: Image.Image) -> Image.Image:
    """Any PIL image -> upright 8-bit grayscale: the EXIF orientation applied (a phone photo of a film),
    16-bit/float min-max scaled, transparency composited on black. Every input passes here."""
    from PIL import ImageOps

    if img.getexif().get(0x0112, 1) != 1:  # Orientation; exif_transpose copies the image even without one
        img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(img)), mode="L")
    if img.mode == "L":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("L")
    return img.convert("RGB").convert("L")


def _decode_pil(data: bytes, name: str) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        if width * height > MAX_PIXELS:
            raise ImageError(
                f"{name}: image claims {width}x{height} pixels, above the {MAX_PIXELS:,} limit; "
                "resize it before classifying"
            )
        img.load()
        return to_gray(img)
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: image is larger than the {MAX_PIXELS:,}-pixel limit") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not a readable image (JPEG, PNG or DICOM expected)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"{name}: corrupt or truncated image ({_brief(exc)})") from None


def _decode_dicom(data: bytes, name: str) -> Image.Image:
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:
        raise ImageError(f"{name}: DICOM support needs pydicom: pip install pydicom") from None
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:  # pydicom raises many types for garbage input
        raise ImageError(f"{name}: not a readable DICOM file ({_brief(exc)})") from None
    if "PixelData" not in ds:
        raise ImageError(f"{name}: DICOM file has no pixel data")
    try:
        rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    except (TypeError, ValueError) as exc:  # e.g. a damaged file with several values in Rows
        raise ImageError(f"{name}: DICOM Rows/Columns are malformed ({_brief(exc)})") from None
    if rows * cols > MAX_PIXELS or rows * cols == 0:
        raise ImageError(f"{name}: DICOM claims {cols}x{rows} pixels; not a usable image")
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise ImageError(
            f"{name}: cannot decode DICOM pixel data (transfer syntax {syntax}: {_brief(exc)}); "
            "install its codec (e.g. pip install pylibjpeg pylibjpeg-libjpeg) or convert the file"
        ) from None
    try:
        return _dicom_to_gray(pixels, ds, apply_modality_lut, apply_voi_lut)
    except Exception as exc:  # damaged rescale/window attributes or an unexpected pixel layout
        raise ImageError(f"{name}: cannot convert the DICOM pixels to grayscale ({_brief(exc)})") from None


def _dicom_to_gray(pixels, ds, apply_modality_lut, apply_voi_lut) -> Image.Image:
    if pixels.ndim == 4 or (pixels.ndim == 3 and pixels.shape[-1] not in (3, 4)):
        pixels = pixels[0]  # multi-frame: first frame
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        values = apply_voi_lut(values, ds).astype(np.float64)
    if values.ndim == 3:
        values = values[..., :3].mean(axis=-1)
    gray = _to_uint8(values)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        gray = 255 - gray
    return Image.fromarray(gray, mode="L")


def decode_image(data: bytes, name: str = "<bytes>") -> Image.Image:
    """Decode image bytes to an 8-bit grayscale ("L") PIL image, or raise ImageError."""
    if not data:
        raise ImageError(f"{name}: file is empty")
    if len(data) > MAX_BYTES:
        raise ImageError(f"{name}: file is larger than {MAX_BYTES // 2**20} MB")
    if _is_dicom(data, name):
        return _decode_dicom(data, name)
    return _decode_pil(data, name)


def read_image(path: str | os.PathLike) -> Image.Image:
    """Read an image file as an 8-bit grayscale PIL image, or raise ImageError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image file") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot open ({exc.strerror or exc})") from None
    return decode_image(data, str(path))
