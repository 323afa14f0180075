"""The accepted input domain: what the model was validated for. Written into every bundle's manifest at
export ('domain'); the device refuses anything outside it with one line saying why. Light: no imports."""
from __future__ import annotations

DOMAIN = {
    "min_side": 64,  # px on the short side; the training images are 224 px, the originals about 600-1800
    "modalities": ["CR", "DX"],  # DICOM Modality; a secondary capture passes when it names one of these
    "lateral_views": ["LL", "RL", "LATERAL"],  # DICOM ViewPosition: classified, with a warning
}
# grey levels between the 1st and 99th percentile of the 8-bit image, below which it is refused as nearly
# constant (equalization would blow a one-level difference up to full contrast); real X-rays have 117 or more
MIN_RANGE = 32


def describe_domain(domain: dict = DOMAIN) -> str:
    return (f"chest X-rays at least {domain['min_side']} px on the short side, with finite, not (nearly) constant pixels "
            f"(at least {MIN_RANGE} grey levels between the 1st and 99th percentile); "
            f"DICOM Modality {' or '.join(domain['modalities'])} (files without a Modality are taken as such); "
            f"lateral views (DICOM ViewPosition {', '.join(domain['lateral_views'])}) are classified with a warning")


def domain_problem(domain) -> str | None:
    """What is wrong with a manifest's 'domain' (None when it is valid)."""
    if not isinstance(domain, dict):
        return "is not an object"
    unknown = set(domain) - set(DOMAIN)
    if unknown:
        return f"has unknown keys {sorted(unknown)} (written by a newer edgecxr?)"
    side = domain.get("min_side", DOMAIN["min_side"])
    if type(side) is not int or not 1 <= side <= 4096:
        return f"min_side must be an integer 1..4096, got {side!r}"
    for key in ("modalities", "lateral_views"):
        value = domain.get(key, DOMAIN[key])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return f"{key} must be a list of strings, got {value!r}"
    return None


def check_domain(img, name: str, domain: dict = DOMAIN) -> str | None:
    """Refuse (ImageError) a decoded grayscale image the model was not validated for; returns a warning or None.

    DICOM attributes come from the image's info ('dicom_modality', 'dicom_view_position'), set by the reader.
    """
    from itertools import accumulate

    from edgecxr.utils.errors import ImageError

    width, height = img.info.get("source_size", img.size)  # the file's size, not a reduced-scale decode's
    if min(width, height) < domain["min_side"]:
        raise ImageError(f"{name}: image is {width}x{height} px, below the {domain['min_side']} px minimum on the "
                         "short side the model accepts")
    low, high = img.getextrema()
    if low == high:
        raise ImageError(f"{name}: every pixel is {low} (a constant or fully transparent image); not an X-ray")
    cumulative = list(accumulate(img.histogram()))
    p1, p99 = (next(i for i, c in enumerate(cumulative) if c >= q * cumulative[-1]) for q in (0.01, 0.99))
    if p99 - p1 < MIN_RANGE:
        raise ImageError(f"{name}: 98% of the pixels lie within grey levels {p1}..{p99}, fewer than the {MIN_RANGE} "
                         "levels an X-ray spans (a nearly constant or nearly transparent image); not an X-ray")
    modality = img.info.get("dicom_modality")
    if modality and modality not in domain["modalities"]:
        raise ImageError(f"{name}: DICOM modality {modality}; the model was validated on "
                         f"{' and '.join(domain['modalities'])} chest radiographs only")
    view = img.info.get("dicom_view_position")
    if view and view in domain["lateral_views"]:
        return f"{name}: lateral view (DICOM ViewPosition {view}); the model was validated on frontal chest X-rays"
    return None


INTENDED_USE = ("A decision aid that flags pneumonia on frontal chest X-rays of children (the Kermany data set: "
                "children aged 1-5 from one hospital in Guangzhou), under evaluation: not a diagnosis, and not "
                "validated on adults, other hospitals or other populations (see the model card's external-validity "
                "limits).")
