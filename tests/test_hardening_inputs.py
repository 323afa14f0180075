"""Issue 12, inputs answered wrongly or taking the machine down: EXIF orientation, decompression bombs,
the intended-use domain, non-regular files and unbounded thread counts."""
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgecxr.utils.errors import ImageError
from edgecxr.data.images import decode_image, read_image

REPO = Path(__file__).resolve().parents[1]
NORMAL = sorted((REPO / "edgecxr" / "sample" / "test" / "NORMAL").glob("*.jpeg"))
T = Image.Transpose
# EXIF orientation -> the transform that produced the stored pixels (the inverse of what a viewer applies)
STORED = {2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM, 5: T.TRANSPOSE, 6: T.ROTATE_90,
          7: T.TRANSVERSE, 8: T.ROTATE_270}


@pytest.fixture(scope="session")
def bundle(tiny_bundles) -> Path:
    return tiny_bundles["tflite-int8"]


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


# -- 2. decompression bombs ----------------------------------------------------------------------
MB = 1 << 20


def _peak(fn, *args):
    """(result or ImageError, peak bytes Python and numpy allocated while fn ran)."""
    import tracemalloc

    tracemalloc.start()
    try:
        result = fn(*args)
    except ImageError as exc:
        result = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return result, peak


def _ramp16(rows: int, cols: int) -> np.ndarray:
    return ((np.arange(rows)[:, None] * 7 + np.arange(cols)[None, :] * 13) % 4096).astype(np.uint16)


def _dcm(pixels: np.ndarray, **extra) -> bytes:
    from test_reliability import _dicom

    return _dicom(pixels, **extra)


def _deflated_dicom(pixel_bytes: int) -> bytes:
    """A deflated DICOM whose header claims 16x16 pixels but whose pixel data element holds `pixel_bytes`
    zeros: about 1000:1, written in 1 MB steps so the test itself stays small."""
    import struct
    import zlib

    from pydicom.uid import DeflatedExplicitVRLittleEndian

    head = _dcm(np.zeros((16, 16), np.uint16), syntax=DeflatedExplicitVRLittleEndian, with_pixels=False)
    meta_end = 132 + 12 + struct.unpack("<I", head[140:144])[0]  # (0002,0000) group length
    body = zlib.decompress(head[meta_end:], -zlib.MAX_WBITS)
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [z.compress(body + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_bytes))]
    zeros = bytes(MB)
    for _ in range(pixel_bytes // MB):
        parts.append(z.compress(zeros))
    return head[:meta_end] + b"".join(parts) + z.flush()


def test_dicom_header_claiming_many_frames_is_refused_before_the_pixels():
    data = _dcm(np.zeros((1024, 1024), np.uint16), pixel_bytes=b"\0" * 64, NumberOfFrames=5000)
    err, peak = _peak(decode_image, data, "frames.dcm")
    assert isinstance(err, ImageError) and "5000 frame" in str(err) and "limit" in str(err), err
    assert peak < 4 * MB


def test_only_the_first_frame_is_decoded():
    frames = np.stack([_ramp16(96, 80), 4095 - _ramp16(96, 80), np.zeros((96, 80), np.uint16)])
    multi = decode_image(_dcm(frames[0], pixel_bytes=frames.tobytes(), NumberOfFrames=3), "multi.dcm")
    assert np.array_equal(np.asarray(multi), np.asarray(decode_image(_dcm(frames[0]), "one.dcm")))


def test_deflated_dicom_bomb_is_refused_without_inflating_it():
    data = _deflated_dicom(300 * MB)
    assert len(data) < 1 * MB
    err, peak = _peak(decode_image, data, "deflated.dcm")
    assert isinstance(err, ImageError) and "inflates" in str(err), err
    assert peak < 16 * MB, f"{peak / MB:.0f} MB"


def test_small_deflated_dicom_still_decodes():
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ramp = _ramp16(96, 80)
    deflated = decode_image(_dcm(ramp, syntax=DeflatedExplicitVRLittleEndian), "small.dcm")
    assert np.array_equal(np.asarray(deflated), np.asarray(decode_image(_dcm(ramp), "plain.dcm")))


def test_deflated_dicom_with_bytes_after_the_stream_does_not_hang(tmp_path):
    """The stream ends after the 1 MB output cap was hit, with a pad byte after it (pydicom pads to an even
    length): the size check looped forever on the byte it could not consume. Decoded now, in a child with a
    timeout."""
    import struct
    import zlib

    from pydicom.uid import DeflatedExplicitVRLittleEndian

    rows = np.repeat(_ramp16(1, 768), 1024, axis=0)  # 1.5 MB inflated: the cap is hit, in one 16 KB chunk
    head = _dcm(rows, syntax=DeflatedExplicitVRLittleEndian)
    meta_end = 132 + 12 + struct.unpack("<I", head[140:144])[0]
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = z.compress(zlib.decompress(head[meta_end:], -zlib.MAX_WBITS)) + z.flush()
    assert len(body) < 1 << 14
    path = tmp_path / "padded.dcm"
    path.write_bytes(head[:meta_end] + body + b"\0" * (1 + len(body) % 2))
    r = _python("import sys, numpy as np; from edgecxr.data.images import read_image; "
                "print(np.asarray(read_image(sys.argv[1])).shape)", path, timeout=60)
    assert r.returncode == 0 and "(1024, 768)" in r.stdout, (r.stdout, r.stderr[-500:])


def _png16(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["png16", "dicom-rescaled-windowed"])
def test_peak_memory_of_16_bit_conversion(kind):
    """float32 in place: a few bytes per pixel, not the 26 of float64 copies (a 124 KB PNG took 763 MB)."""
    pixels = _ramp16(2000, 2000)
    data = _png16(pixels) if kind == "png16" else _dcm(pixels, RescaleSlope=2, RescaleIntercept=-100,
                                                       WindowCenter=3000, WindowWidth=4000)
    img, peak = _peak(decode_image, data, kind)
    assert isinstance(img, Image.Image) and img.size == (2000, 2000)
    assert peak < 12 * pixels.size, f"{peak / pixels.size:.1f} bytes per pixel"


@pytest.mark.parametrize("window", [dict(WindowCenter=1000, WindowWidth=500), dict(WindowCenter=3000, WindowWidth=9000),
                                    dict(WindowCenter=[800, 2000], WindowWidth=[300, 900]),
                                    dict(WindowCenter=1000, WindowWidth=500, VOILUTFunction="LINEAR_EXACT"),
                                    dict(WindowCenter=1000, WindowWidth=500, VOILUTFunction="SIGMOID"),
                                    dict(RescaleSlope=0.5, RescaleIntercept=-1024, WindowCenter=0, WindowWidth=800)])
def test_float32_windowing_matches_pydicom(window):
    from pydicom import dcmread
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    data = _dcm(_ramp16(96, 80), **window)
    ds = dcmread(io.BytesIO(data))
    ref = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
    ranked = np.sort(ref, axis=None)  # the contract's scaling: clipped to the samples of rank k and N-1-k
    k = (ranked.size - 1) // 2000
    ref = np.round((np.clip(ref, ranked[k], ranked[-1 - k]) - ranked[k]) * 255.0 / (ranked[-1 - k] - ranked[k]))
    assert np.abs(np.asarray(decode_image(data, "w.dcm")).astype(int) - ref).max() <= 1


# -- 3. intended use: refuse what the model was not validated for -------------------------------------
def _save(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _float_tiff(bad: float) -> bytes:
    pixels = _ramp16(128, 128).astype(np.float32)
    pixels[5, 7] = bad
    return _save(Image.fromarray(pixels, mode="F"), "TIFF")


def _transparent() -> bytes:
    rgba = np.zeros((256, 256, 4), np.uint8)
    rgba[..., :3] = np.asarray(read_image(NORMAL[0]).resize((256, 256)))[..., None]  # an X-ray, alpha 0
    return _save(Image.fromarray(rgba, mode="RGBA"))


def _near_gray() -> bytes:
    pixels = np.full((512, 512), 128, np.uint8)
    pixels[5, 5] = 129  # equalized, one level became full contrast: PNEUMONIA 0.83
    return _save(Image.fromarray(pixels))


def _faint() -> bytes:
    la = read_image(NORMAL[0]).convert("LA")
    la.putalpha(1)  # composited on black: pixels 0 and 1
    return _save(la)


XRAY = _ramp16(128, 128)
REFUSED = {  # input -> words the one-line reason must hold
    "blank.png": (lambda: _save(Image.new("L", (512, 512), 0)), "constant"),
    "gray.png": (lambda: _save(Image.new("L", (512, 512), 128)), "constant"),
    "transparent.png": (_transparent, "constant"),
    "near-gray.png": (_near_gray, "nearly constant"),
    "faint.png": (_faint, "nearly constant or nearly transparent"),
    "one-pixel.png": (lambda: _save(Image.new("L", (1, 1), 7)), "64 px"),
    "strip.png": (lambda: _save(read_image(NORMAL[0]).resize((400, 40))), "64 px"),
    "nan.tiff": (lambda: _float_tiff(float("nan")), "NaN"),
    "inf.tiff": (lambda: _float_tiff(float("inf")), "NaN or infinite"),
    "mr.dcm": (lambda: _dcm(XRAY, Modality="MR"), "modality MR"),
    "ct.dcm": (lambda: _dcm(XRAY, Modality="CT"), "modality CT"),
    "rtdose.dcm": (lambda: _dcm(XRAY, Modality="RTDOSE"), "modality RTDOSE"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_out_of_domain_inputs_are_refused_with_one_line(clf, name):
    make, why = REFUSED[name]
    with pytest.raises(ImageError) as caught:
        clf.predict(make())
    message = str(caught.value)
    assert why in message and "\n" not in message, message


@pytest.mark.parametrize("fill, why", [(np.nan, "NaN"), (np.inf, "infinite"), (-np.inf, "infinite"),
                                       (0.0, "constant"), (0.5, "constant")])
def test_preprocessed_float_input_is_checked(clf, fill, why):
    """A float array is taken as already preprocessed: all-NaN gave PNEUMONIA 0.949, all-zero 0.957."""
    x = np.full(clf.spec.input_shape, fill, np.float32)
    if fill == -np.inf:
        x = clf.spec.apply(read_image(NORMAL[0]))
        x[3, 4, 0] = fill  # one value is enough
    with pytest.raises(ImageError) as caught:
        clf.predict(x)
    assert why in str(caught.value) and "\n" not in str(caught.value)
    img = read_image(NORMAL[0])
    assert clf.predict(clf.spec.apply(img)).probability == pytest.approx(clf.predict(img).probability, abs=1e-6)


@pytest.mark.parametrize("extra", [dict(Modality="DX"), dict(Modality="CR"), {}])
def test_radiographs_are_accepted(clf, extra):
    assert clf.predict(_dcm(XRAY, **extra)).warning is None


def test_lateral_view_is_classified_with_a_warning(clf):
    p = clf.predict(_dcm(XRAY, Modality="DX", ViewPosition="LL"))
    assert p.warning and "lateral" in p.warning and "LL" in p.warning and "\n" not in p.warning
    decoded = decode_image(_dcm(XRAY, Modality="CR", ViewPosition="RL"))  # a PIL image keeps what the DICOM said
    assert "lateral" in clf.predict(decoded).warning


def test_real_images_are_inside_the_domain(kermany, fullres):
    from edgecxr.data.domain import DOMAIN, check_domain

    paths = sorted((kermany / "test").rglob("*.jpeg")) + sorted(fullres.rglob("*.jpeg")) + NORMAL
    assert len(paths) > 624 + 16
    for path in paths:
        assert check_domain(read_image(path), str(path), DOMAIN) is None


def test_a_batch_reports_refused_images_and_goes_on(clf, bundle, tmp_path):
    import json

    from click.testing import CliRunner

    from edgecxr.cli import main
    from edgecxr.devices.classifier import Failure

    folder = tmp_path / "mixed"
    folder.mkdir()
    for path in NORMAL[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "blank.png").write_bytes(REFUSED["blank.png"][0]())
    (folder / "mr.dcm").write_bytes(REFUSED["mr.dcm"][0]())
    (folder / "lateral.dcm").write_bytes(_dcm(XRAY, Modality="DX", ViewPosition="LATERAL"))
    results = clf.predict_batch(sorted(folder.iterdir()), strict=False)
    assert [type(r).__name__ for r in results] == ["Prediction", "Prediction", "Prediction", "Failure",
                                                   "Prediction", "Failure"]
    r = CliRunner().invoke(main, ["device", "run", str(bundle), str(folder), "--format", "json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert len(report["results"]) == 4 and {Path(f["file"]).name for f in report["failures"]} == {"blank.png", "mr.dcm"}
    assert "constant" in r.stderr and "modality MR" in r.stderr and "lateral" in r.stderr
    assert isinstance(results[3], Failure) and "constant" in results[3].error


def test_the_domain_is_in_the_manifest_and_old_bundles_load(bundle, tmp_path):
    import json
    import shutil

    from edgecxr.formats import bundle as B
    from edgecxr.data.domain import DOMAIN
    from edgecxr.utils.errors import BundleError

    assert B.load_bundle(bundle).manifest["domain"] == DOMAIN
    old = tmp_path / "old"
    shutil.copytree(bundle, old)

    def rewrite(change):
        m = json.loads((old / B.MANIFEST).read_text())
        change(m)
        m["digest"] = B.manifest_digest(m)
        (old / B.MANIFEST).write_text(json.dumps(m))

    rewrite(lambda m: m.pop("domain"))  # a bundle exported before the field existed
    assert B.load_bundle(old).domain == DOMAIN
    rewrite(lambda m: m.update(domain={**DOMAIN, "min_side": 300}))
    assert B.load_bundle(old).domain["min_side"] == 300
    for bad in ({**DOMAIN, "min_side": "64"}, {**DOMAIN, "min_side": 0}, {**DOMAIN, "modalities": "CR"},
                {**DOMAIN, "colour": True}, ["CR"]):
        rewrite(lambda m: m.update(domain=bad))
        with pytest.raises(BundleError, match="domain"):
            B.load_bundle(old)


def test_run_help_shows_the_accepted_inputs():
    from click.testing import CliRunner

    from edgecxr.cli import main

    r = CliRunner().invoke(main, ["device", "run", "--help"])
    text = " ".join(r.output.split())
    assert r.exit_code == 0 and "64 px" in text and "CR or DX" in text and "lateral" in text and "constant" in text


# -- 4. non-regular files and unbounded thread counts ------------------------------------------------------
def _python(code: str, *args, timeout: float = 60, memory: int = 4 << 30):
    """Run `code` in a child python with an address-space limit and a timeout: before the fix these inputs
    read without end, hang or segfault, and must not take the test run with them."""
    import os
    import resource
    import subprocess
    import sys

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    try:
        return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, preexec_fn=limit, env=os.environ.copy(), cwd=REPO)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {timeout} s: {code} {args}")


READ = "import sys; from edgecxr.data.images import read_image; from edgecxr.utils.errors import ImageError\n" \
       "try: read_image(sys.argv[1])\nexcept ImageError as e: print(e)"


@pytest.fixture()
def fifo(tmp_path) -> Path:
    import os

    path = tmp_path / "pipe.png"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("which", ["/dev/zero", "fifo"])
def test_non_regular_files_are_refused(which, fifo):
    path = fifo if which == "fifo" else Path(which)
    r = _python(READ, path, timeout=20, memory=1 << 30)
    assert r.returncode == 0 and "not a regular file" in r.stdout, (r.stdout, r.stderr[-500:])


@pytest.mark.parametrize("which", ["/dev/zero", "fifo"])
def test_device_run_on_non_regular_files_is_one_line(bundle, which, fifo):
    path = fifo if which == "fifo" else Path(which)
    r = _python("from edgecxr.cli import main; main()", "device", "run", bundle, path)
    lines = [line for line in r.stderr.splitlines() if not line.startswith(("INFO:", "WARNING:"))]
    assert r.returncode == 2 and len(lines) == 1 and "not a regular file" in lines[0], r.stderr[-500:]


def test_a_file_above_the_byte_limit_is_refused_unread(tmp_path):
    from edgecxr.data.images import MAX_BYTES

    big = tmp_path / "big.png"
    with open(big, "wb") as fh:
        fh.truncate(MAX_BYTES + MB)  # sparse: no disk used
    err, peak = _peak(read_image, big)
    assert isinstance(err, ImageError) and "larger than" in str(err)
    assert peak < MB


def test_threads_are_bounded_with_one_line(bundle):
    r = _python("from edgecxr.cli import main; main()", "device", "run", bundle, NORMAL[0], "--threads", "100000")
    lines = [line for line in r.stderr.splitlines() if not line.startswith(("INFO:", "WARNING:"))]
    assert r.returncode == 2 and len(lines) == 1 and "--threads" in lines[0] and "100000" in lines[0], r.stderr[-500:]
    ok = _python("from edgecxr.cli import main; main()", "device", "run", bundle, NORMAL[0], "--threads", "2")
    assert ok.returncode == 0, ok.stderr[-500:]


def test_serve_refuses_out_of_domain_and_warns_on_lateral(clf):
    pytest.importorskip("httpx")
    from starlette.testclient import TestClient

    from edgecxr.devices.serve import create_app

    with TestClient(create_app(clf)) as client:
        r = client.post("/v1/classify", content=REFUSED["blank.png"][0](), headers={"Content-Type": "image/png"})
        assert r.status_code == 422 and "constant" in r.text
        lateral = _dcm(XRAY, Modality="DX", ViewPosition="LL")
        r = client.post("/v1/classify", content=lateral, headers={"Content-Type": "application/dicom"})
        assert r.status_code == 200 and "lateral" in r.json()["warning"]


def test_compressed_dicom_frame_larger_than_its_header_is_refused_undecoded():
    """The header says 224x224, the embedded JPEG is 9000x9000 (81 M pixels > the 64 M limit): Pillow only warns
    about such an image and would decode it (1.27 GB for the attack's 11000x11000 RGB); it is refused instead."""
    import io

    from PIL import Image
    from pydicom.uid import JPEGBaseline8Bit
    from test_reliability import _encapsulated

    buf = io.BytesIO()
    Image.new("L", (9000, 9000), 10).save(buf, "JPEG", quality=50)
    data = _dcm(np.zeros((224, 224), np.uint16), syntax=JPEGBaseline8Bit, pixel_bytes=_encapsulated(buf.getvalue()),
                BitsAllocated=8, BitsStored=8, HighBit=7)
    err, peak = _peak(decode_image, data, "embedded.dcm")
    assert isinstance(err, ImageError) and "larger than its header says" in str(err), err
    assert peak < 64 * MB, f"{peak / MB:.0f} MB"
