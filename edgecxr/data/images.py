"""Read JPEG, PNG (8/16-bit, L/RGB/RGBA/P/CMYK) and DICOM into an 8-bit grayscale PIL image.

Chest X-rays are grayscale; colour inputs are converted with Pillow's ITU-R 601
luma, which keeps equal-channel RGB files (the Kermany JPEGs) exactly as they are.
"""
from __future__ import annotations

import contextlib
import io
import os
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgecxr.utils.errors import ImageError

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".dcm", ".dicom", ".bmp", ".tif", ".tiff"}
MAX_PIXELS = 64_000_000  # above this a file is refused as a decompression bomb
MAX_BYTES = 256 * 1024 * 1024
# above this many pixels (read from the header) a decode takes hundreds of MB (a 124 KB 16-bit 8000 x 8000 PNG:
# about 550 MB): such images are decoded one at a time in a process, whatever its --workers
BIG_DECODE_PIXELS = 16_000_000
RANK_CHUNK = 1 << 20  # samples ranked at a time by robust_range
_BIG_DECODE = threading.Lock()

Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _is_dicom(data: bytes, name: str) -> bool:
    return data[128:132] == b"DICM" or name.lower().endswith((".dcm", ".dicom"))


def _brief(exc: BaseException, limit: int = 300) -> str:
    """An exception as one short line (decoder messages can span several lines)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def robust_range(values: np.ndarray) -> tuple[float, float]:
    """The contract's scaling range of 16-bit, float and DICOM samples: the samples of rank k and N - 1 - k in
    ascending order, k = (N - 1) // 2000 (the 0.05th and 99.95th percentiles, no interpolation), so a burned-in
    marker or one saturated pixel does not squeeze the image into a few grey levels."""
    flat = values.reshape(-1)
    k = (flat.size - 1) // 2000
    if k == 0:
        return float(flat.min()), float(flat.max())
    # the k+1 smallest (largest) samples are among the k+1 smallest (largest) of each chunk: exact, and no
    # copy of the whole image (a partition of all of it took 4 more bytes per pixel)
    lows, highs = [], []
    for start in range(0, flat.size, RANK_CHUNK):
        chunk = flat[start:start + RANK_CHUNK]
        ranked = np.partition(chunk, (min(k, chunk.size - 1), max(chunk.size - 1 - k, 0)))
        lows.append(ranked[:k + 1].copy())  # copies: a view would keep each chunk's ranking alive
        highs.append(ranked[-(k + 1):].copy())
        del ranked
    lows, highs = np.concatenate(lows), np.concatenate(highs)
    return float(np.partition(lows, k)[k]), float(np.partition(highs, highs.size - 1 - k)[highs.size - 1 - k])


def _to_uint8(values: np.ndarray, name: str) -> np.ndarray:
    """Scale a float32 array to 0..255, in place (16-bit, float and DICOM data): clipped to robust_range, then
    rint((v - low) * float32(255 / (high - low))) in float32, round half to even.

    float32 and no temporaries but the ranking: a 124 KB 16-bit PNG took 763 MB with float64 copies.
    """
    if not (np.isfinite(values.min()) and np.isfinite(values.max())):  # NaN or inf when any pixel is
        raise ImageError(f"{name}: pixel values include NaN or infinite numbers; not a usable image")
    low, high = robust_range(values)
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    np.clip(values, np.float32(low), np.float32(high), out=values)
    values -= np.float32(low)
    values *= np.float32(255.0 / (high - low))
    np.rint(values, out=values)
    return values.astype(np.uint8)


def to_gray(img: Image.Image, name: str = "<image>") -> Image.Image:
    """Any PIL image -> upright 8-bit grayscale: the EXIF orientation applied (a phone photo of a film),
    16-bit/float scaled by the contract's rank rule, transparency composited on black. Every input but DICOM passes here."""
    from PIL import ImageOps

    if img.getexif().get(0x0112, 1) != 1:  # Orientation; exif_transpose copies the image even without one
        img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return Image.fromarray(_to_uint8(np.array(img, dtype=np.float32), name), mode="L")
    if img.mode == "L":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("L")
    return img.convert("RGB").convert("L")


def _decode_pil(data: bytes, name: str, draft: int | None = None) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        if width * height > MAX_PIXELS:
            raise ImageError(
                f"{name}: image claims {width}x{height} pixels, above the {MAX_PIXELS:,} limit; "
                "resize it before classifying"
            )
        if draft and img.format == "JPEG":
            # decode at 1/2, 1/4 or 1/8 scale in the IDCT, never below `draft` pixels on either side: a
            # full-size X-ray decodes and equalizes in a fraction of the time, and a 224 px file is unchanged
            img.draft(img.mode, (draft, draft))
        img.load()
        gray = to_gray(img, name)
        gray.info["source_size"] = (width, height)  # before any reduced-scale decode: what the domain check judges
        return gray
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: image is larger than the {MAX_PIXELS:,}-pixel limit") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not a readable image (JPEG, PNG or DICOM expected)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"{name}: corrupt or truncated image ({_brief(exc)})") from None


def _check_inflated(data: bytes, name: str) -> None:
    """pydicom inflates a deflated DICOM whole while reading it (a 765 KB file, 2.6 GB): measure it first,
    1 MB of output at a time, keeping nothing."""
    import zlib

    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    fp = io.BytesIO(data)
    try:
        read_preamble(fp, True)
        syntax = _read_file_meta_info(fp).get("TransferSyntaxUID")
    except Exception:  # a damaged header: dcmread reports it
        return
    if syntax != DeflatedExplicitVRLittleEndian:
        return
    inflater, size = zlib.decompressobj(-zlib.MAX_WBITS), 0
    for start in range(fp.tell(), len(data), 1 << 14):
        chunk = data[start:start + (1 << 14)]
        while chunk and size <= MAX_BYTES and not inflater.eof:  # after the end, bytes may stay unconsumed
            try:
                out = len(inflater.decompress(chunk, 1 << 20))  # at most 1 MB out per call
            except zlib.error:  # dcmread reports it
                return
            if not out and len(inflater.unconsumed_tail) == len(chunk):  # no progress: never loop on it
                return
            size, chunk = size + out, inflater.unconsumed_tail
        if inflater.eof and size <= MAX_BYTES:
            return
        if size > MAX_BYTES:
            raise ImageError(f"{name}: deflated DICOM inflates to more than {MAX_BYTES >> 20} MB; "
                             "refused as a decompression bomb")


def _decode_dicom(data: bytes, name: str) -> Image.Image:
    try:
        import pydicom
    except ImportError:
        raise ImageError(f"{name}: DICOM support needs pydicom: pip install pydicom") from None
    _check_inflated(data, name)
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:  # pydicom raises many types for garbage input
        raise ImageError(f"{name}: not a readable DICOM file ({_brief(exc)})") from None
    if "PixelData" not in ds:
        raise ImageError(f"{name}: DICOM file has no pixel data")
    try:
        rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
        frames, samples = int(ds.get("NumberOfFrames", 1) or 1), int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.get("BitsAllocated", 16) or 16)
    except (TypeError, ValueError) as exc:  # e.g. a damaged file with several values in Rows
        raise ImageError(f"{name}: DICOM Rows/Columns/NumberOfFrames/SamplesPerPixel/BitsAllocated are malformed "
                         f"({_brief(exc)})") from None
    if rows * cols > MAX_PIXELS or rows * cols == 0:
        raise ImageError(f"{name}: DICOM claims {cols}x{rows} pixels; not a usable image")
    decoded = rows * cols * max(frames, 1) * max(samples, 1) * max(-(-bits // 8), 1)
    if decoded > MAX_BYTES:  # from the header, before any pixel data is touched
        raise ImageError(f"{name}: DICOM claims {frames} frame(s) of {cols}x{rows}x{samples} at {bits} bits "
                         f"({decoded / 2**20:,.0f} MB decoded), above the {MAX_BYTES >> 20} MB limit")
    with _one_at_a_time(rows * cols):
        return _dicom_pixels_to_gray(ds, name)


def _dicom_pixels_to_gray(ds, name: str) -> Image.Image:
    try:
        ds.pixel_array_options(index=0)  # decode the first frame only
        with warnings.catch_warnings():  # a compressed frame larger than its header says: Pillow only warns
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            pixels = ds.pixel_array
    except Exception as exc:
        if isinstance(exc, Image.DecompressionBombWarning) or "decompression bomb" in str(exc):  # pydicom wraps it
            raise ImageError(f"{name}: the compressed DICOM frame is larger than its header says, above the "
                             f"{MAX_PIXELS:,}-pixel limit") from None
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise ImageError(
            f"{name}: cannot decode DICOM pixel data (transfer syntax {syntax}: {_brief(exc)}); "
            "install its codec (e.g. pip install pylibjpeg pylibjpeg-libjpeg) or convert the file"
        ) from None
    try:
        return _dicom_to_gray(pixels, ds, name)
    except ImageError:
        raise
    except Exception as exc:  # damaged rescale/window attributes or an unexpected pixel layout
        raise ImageError(f"{name}: cannot convert the DICOM pixels to grayscale ({_brief(exc)})") from None


def _dicom_to_gray(pixels: np.ndarray, ds, name: str) -> Image.Image:
    """One frame -> gray, in float32 in place: modality rescale, VOI window, the contract's scaling."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if _plain_8bit(pixels, ds):  # as an 8-bit PNG of the same pixels: no stretch
        gray = pixels.astype(np.uint8)
        return _dicom_image(255 - gray if _monochrome1(ds) else gray, ds)
    if "ModalityLUTSequence" in ds:
        values = apply_modality_lut(pixels, ds).astype(np.float32)
    else:
        values = pixels.astype(np.float32)
        if "RescaleSlope" in ds and "RescaleIntercept" in ds:
            values *= np.float32(ds.RescaleSlope)
            values += np.float32(ds.RescaleIntercept)
    function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
    if "VOILUTSequence" in ds or ("WindowCenter" in ds and function not in ("LINEAR", "LINEAR_EXACT")):
        values = apply_voi_lut(values, ds).astype(np.float32)  # a LUT or a sigmoid: rare, pydicom's float64
    elif "WindowCenter" in ds:
        values = _linear_window(values, ds, function)
    if values.ndim == 3:
        values = values[..., :3].mean(axis=-1, dtype=np.float32)
    gray = _to_uint8(values, name)
    return _dicom_image(255 - gray if _monochrome1(ds) else gray, ds)


def _monochrome1(ds) -> bool:
    return str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1"


def _plain_8bit(pixels: np.ndarray, ds) -> bool:
    """Unsigned 8-bit grey samples with no modality LUT, an identity rescale (or none) and no window: already the
    grey levels a viewer shows."""
    rescale = (float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0))
    return (pixels.ndim == 2 and int(ds.get("BitsAllocated", 16) or 16) == 8 and int(ds.get("PixelRepresentation", 0) or 0) == 0
            and rescale == (1.0, 0.0) and not any(k in ds for k in ("ModalityLUTSequence", "VOILUTSequence", "WindowCenter")))


def _dicom_image(gray: np.ndarray, ds) -> Image.Image:
    img = Image.fromarray(gray, mode="L")
    attribute = lambda key: str(ds.get(key, "") or "").strip().upper()  # noqa: E731
    img.info.update(dicom_modality=attribute("Modality"), dicom_view_position=attribute("ViewPosition"))
    return img  # info: for edgecxr.data.domain.check_domain


def _linear_window(values: np.ndarray, ds, function: str) -> np.ndarray:
    """A LINEAR(_EXACT) VOI window (PS3.3 C.11.2.1.2) is affine inside the window and flat outside; the
    rank-based scaling follows, which undoes any increasing affine map, so clipping to the window gives pydicom's result."""
    from pydicom.multival import MultiValue

    center, width = (float(v[0] if isinstance(v, MultiValue) else v) for v in (ds.WindowCenter, ds.WindowWidth))
    if function == "LINEAR":
        if width < 1:
            raise ValueError(f"Window Width {width} must be at least 1 for a LINEAR window")
        center, width = center - 0.5, width - 1
    elif width <= 0:
        raise ValueError(f"Window Width {width} must be above 0 for a LINEAR_EXACT window")
    if width == 0:  # a LINEAR window of width 1: a threshold
        return np.greater(values, center).astype(np.float32)
    return np.clip(values, center - width / 2, center + width / 2, out=values)


def _check_size(size: int, name: str) -> None:
    if size > MAX_BYTES:
        raise ImageError(f"{name}: file is larger than {MAX_BYTES // 2**20} MB")


def decode_image(data: bytes, name: str = "<bytes>", draft: int | None = None) -> Image.Image:
    """Decode image bytes to an 8-bit grayscale ("L") PIL image, or raise ImageError.

    draft: the smallest side the caller needs (PreprocessSpec.draft_size); a larger JPEG may then be
    decoded at a reduced scale that keeps at least that many pixels."""
    if not data:
        raise ImageError(f"{name}: file is empty")
    _check_size(len(data), name)
    if _is_dicom(data, name):
        return _decode_dicom(data, name)  # serialized there, once its header is checked (a deflated one too)
    with _one_at_a_time(declared_pixels(data, name)):
        return _decode_pil(data, name, draft)


def _one_at_a_time(pixels):
    return _BIG_DECODE if (pixels or 0) > BIG_DECODE_PIXELS else contextlib.nullcontext()


def declared_pixels(data: bytes, name: str = "<bytes>") -> int | None:
    """Width x height from the header alone, no pixel decoded; None when it cannot tell. A DICOM file is not
    parsed here (a deflated one would be inflated to read its header): _decode_dicom checks its own."""
    if _is_dicom(data, name):
        return None
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size[0] * img.size[1]
    except Exception:  # noqa: BLE001 - a header no reader takes: the decode says why, in one line
        return None


def read_image(path: str | os.PathLike, draft: int | None = None) -> Image.Image:
    """Read an image file as an 8-bit grayscale PIL image, or raise ImageError.

    Regular files only, at most MAX_BYTES: /dev/zero would read without end and a FIFO would block.
    """
    import stat

    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO opens without waiting
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image file") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot open ({exc.strerror or exc})") from None
    info = os.fstat(fd)
    if stat.S_ISDIR(info.st_mode):  # opened with O_RDONLY on Linux; fdopen would raise IsADirectoryError
        os.close(fd)
        raise ImageError(f"{path}: is a folder, not an image file")
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(f"{path}: not a regular file (a device, FIFO or socket); pass an image file")
        _check_size(info.st_size, str(path))
        try:
            data = fh.read(MAX_BYTES + 1)  # a file that grew since fstat is still refused
        except OSError as exc:
            raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return decode_image(data, str(path), draft)
