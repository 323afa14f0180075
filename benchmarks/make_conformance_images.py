"""Write the fixed part of the conformance set (edgecxr/conformance_images/) from the full-size Kermany
originals: two full-size JPEGs as they are, a 16-bit PNG, a DICOM MONOCHROME1 with a VOI window and an
EXIF-rotated colour JPEG. Re-running it writes the same files (no randomness).

    python benchmarks/make_conformance_images.py --data ../shared/data/kermany-val-fullres
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

OUT = Path(__file__).resolve().parents[1] / "edgecxr" / "conformance_images"


def png16(src: Path, dst: Path) -> None:
    """Half size, 12-bit values in a 16-bit PNG, through a gamma and an offset: min-max scaling lands between
    grey levels, so its rounding (half to even, not floor) shows."""
    img = Image.open(src).convert("L")
    img = img.resize((img.width // 2, img.height // 2), Image.Resampling.BILINEAR)
    values = np.round((np.asarray(img, np.float64) / 255) ** 1.25 * 3000 + 500)
    Image.fromarray(values.astype(np.uint16)).save(dst)  # mode I;16


def portrait(src: Path, dst: Path) -> None:
    """The middle 40 % of a full-size original's width: taller than wide, so the contract's horizontal-first
    resize and Pillow 13's vertical-first one differ."""
    img = Image.open(src).convert("L")
    left = round(img.width * 0.3)
    img.crop((left, 0, left + round(img.width * 0.4), img.height)).save(dst, quality=90)


def dicom_monochrome1(src: Path, dst: Path) -> None:
    """3/10 size, 12 bits stored, inverted (MONOCHROME1: high values dark), a LINEAR window that clips."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    img = Image.open(src).convert("L")
    img = img.resize((img.width * 3 // 10, img.height * 3 // 10), Image.Resampling.BILINEAR)
    stored = (4095 - np.asarray(img, np.uint16) * 16).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.10.1.27.1"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(dst), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = "CR", "PA", "CHEST"
    ds.PatientName, ds.PatientID = "CONFORMANCE^FIXTURE", "edgecxr-27"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 1000, 3600, "LINEAR"
    ds.PixelData = stored.tobytes()
    ds.save_as(dst, enforce_file_format=True)
    pydicom.dcmread(dst)  # readable


def exif_rotated_colour(src: Path, dst: Path) -> None:
    """A warm-tinted colour photo of the film, stored turned 90 degrees with EXIF orientation 6."""
    gray = np.asarray(Image.open(src).convert("L"), np.float32)
    rgb = np.stack([gray, gray * 0.93, gray * 0.80 + 10], axis=-1).clip(0, 255).round().astype(np.uint8)
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(rgb, 1)))  # orientation 6 turns it back clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(dst, quality=92, exif=exif.tobytes())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/kermany-val-fullres"))
    data = ap.parse_args().data
    OUT.mkdir(exist_ok=True)
    shutil.copyfile(data / "NORMAL/NORMAL2-IM-1436-0001.jpeg", OUT / "fullsize-normal.jpeg")
    shutil.copyfile(data / "PNEUMONIA/person1946_bacteria_4874.jpeg", OUT / "fullsize-pneumonia.jpeg")
    png16(data / "NORMAL/NORMAL2-IM-1430-0001.jpeg", OUT / "png16-normal.png")
    dicom_monochrome1(data / "PNEUMONIA/person1950_bacteria_4881.jpeg", OUT / "dicom-monochrome1-pneumonia.dcm")
    exif_rotated_colour(data / "PNEUMONIA/person1947_bacteria_4876.jpeg", OUT / "exif6-colour-pneumonia.jpeg")
    portrait(data / "NORMAL/NORMAL2-IM-1438-0001.jpeg", OUT / "portrait-normal.jpeg")
    for p in sorted(OUT.iterdir()):
        print(f"{p.name}: {p.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
