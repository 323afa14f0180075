"""Issue 12, inputs answered wrongly or taking the machine down: EXIF orientation, decompression bombs,
the intended-use domain, non-regular files and unbounded thread counts."""
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgecxr.errors import ImageError
from edgecxr.images import decode_image, read_image

REPO = Path(__file__).resolve().parents[1]
NORMAL = sorted((REPO / "edgecxr" / "sample" / "test" / "NORMAL").glob("*.jpeg"))
T = Image.Transpose
# EXIF orientation -> the transform that produced the stored pixels (the inverse of what a viewer applies)
STORED = {2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM, 5: T.TRANSPOSE, 6: T.ROTATE_90,
          7: T.TRANSVERSE, 8: T.ROTATE_270}


@pytest.fixture(scope="session")
def bundle(tmp_path_factory, tiny_model, kermany) -> Path:
    from test_reliability import exported_bundle

    return exported_bundle(tmp_path_factory, tiny_model, kermany)


@pytest.fixture(scope="session")
def clf(bundle):
    from edgecxr.devices.classifier import Classifier

    return Classifier.load(bundle)


def _oriented_png(img: Image.Image, orientation: int) -> bytes:
    """`img` stored turned, with the EXIF Orientation tag that turns it back (as a phone saves a photo)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.transpose(STORED[orientation]).save(buf, format="PNG", exif=exif.tobytes())
    return buf.getvalue()


# -- 1. EXIF orientation -------------------------------------------------------------------------
@pytest.mark.parametrize("orientation", sorted(STORED))
def test_exif_orientation_is_applied_when_decoding(orientation):
    original = read_image(NORMAL[0]).crop((0, 0, 224, 160))  # not square: a turn changes the size
    turned = decode_image(_oriented_png(original, orientation), "phone.png")
    assert turned.size == original.size
    assert np.array_equal(np.asarray(turned), np.asarray(original))


def test_exif_orientation_keeps_the_probability(clf, tmp_path):
    """Files, bytes and PIL images given to predict all see the image upright."""
    for path in NORMAL[:4]:
        original = read_image(path)
        expected = clf.predict(original).probability
        data = _oriented_png(original, 6)
        file = tmp_path / f"{path.stem}-rotated.png"
        file.write_bytes(data)
        opened = Image.open(io.BytesIO(data))  # a PIL image as an application holds it: tag still set
        for item in (file, data, opened):
            assert clf.predict(item).probability == pytest.approx(expected, abs=1e-6), (path.name, type(item))
