"""The web app (`edgecxr device web`, issue 30): the input contract in JavaScript, the model in WebAssembly in a
real headless Chromium, parity and conformance checked by edgecxr, and `edgecxr serve --app`.

The JavaScript decoders and the contract's steps run in Node first (fast lane, no bundle): bit-exact with
edgecxr's reader on real X-rays and on generated JPEG, PNG and DICOM variants. The browser tests need the
system's Chromium (apt-get install chromium; .ci/extra_setup.sh does it), PyPI playwright, and the npm runtime
(npm ci of the committed lockfile, cached after the first build); without one of them they skip with one line.
"""
from __future__ import annotations

import base64
import io
import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgecxr.cli import main

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "devices" / "webapp" / "app"
CONFORMANCE = REPO / "edgecxr" / "conformance_images"


# -- generated inputs: every JPEG, PNG and DICOM path of the page's decoders --------------------------------
def _xray(h, w, seed=0):
    """Smooth structure with edges and mild noise: compresses like a radiograph, not like random noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = 128 + 60 * np.sin(x / 37.0 + seed) * np.cos(y / 23.0) + 40 * ((x - w / 2) ** 2 + (y - h / 2) ** 2 < (min(h, w) / 3) ** 2)
    return np.clip(img + rng.normal(0, 6, (h, w)), 0, 255).astype(np.uint8)


def _colour(h, w, seed=1):
    return np.stack([_xray(h, w, seed + k) for k in range(3)], -1)


def _jpeg(arr, orientation=None, **kw):
    from PIL import Image

    out, im = io.BytesIO(), Image.fromarray(arr)
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
    im.save(out, "JPEG", **kw)
    return out.getvalue()


def _png(arr, depth, colour_type, plte=None, trns=None, interlace=False, exif=None):
    """A PNG written by hand (Pillow writes few of these variants): every filter type, optional Adam7."""
    h, w = arr.shape[:2]
    ch = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour_type]

    def packed(row):
        if depth >= 8:
            return row.astype(">u2" if depth == 16 else "u1").tobytes()
        bits = np.unpackbits(np.asarray(row, np.uint8)[:, None], axis=1)[:, 8 - depth:]  # each value's low bits
        return np.packbits(bits.ravel()).tobytes()

    def filtered(rows):  # each row with one of the five filters in turn (the encoder sees the original bytes)
        bpp, out, prev = max(1, ch * depth // 8), [], None
        for i, row in enumerate(rows):
            line = np.frombuffer(packed(row), np.uint8).astype(np.int16)
            up = prev if prev is not None else np.zeros_like(line)
            a, c = np.r_[np.zeros(bpp, np.int16), line[:-bpp]], np.r_[np.zeros(bpp, np.int16), up[:-bpp]]
            pa, pb, pc = np.abs(up - c), np.abs(a - c), np.abs(a + up - 2 * c)
            paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, up, c))
            p = [np.zeros_like(line), a, up, (a + up) // 2, paeth][i % 5]
            out.append(bytes([i % 5]) + ((line - p) & 255).astype(np.uint8).tobytes())
            prev = line
        return b"".join(out)

    if interlace:
        raw = b"".join(filtered(arr[y0::dy, x0::dx].reshape(len(range(y0, h, dy)), -1))
                       for x0, y0, dx, dy in [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4),
                                              (1, 0, 2, 2), (0, 1, 1, 2)] if x0 < w and y0 < h)
    else:
        raw = filtered(arr.reshape(h, w * ch))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, int(interlace)))
    for kind, data in ((b"PLTE", plte), (b"tRNS", trns), (b"eXIf", exif)):
        if data is not None:
            out += chunk(kind, data)
    return out + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _dicom(pixels, *, photometric="MONOCHROME2", signed=False, stored=None, slope=None, intercept=None, center=None,
           width=None, function=None, modality="CR", view=None, implicit=False, syntax=None, data=None):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax or (ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID, modality
    if view:
        ds.ViewPosition = view
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    ds.PhotometricInterpretation = photometric
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(signed)
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if center is not None:
        ds.WindowCenter, ds.WindowWidth = center, width
    if function:
        ds.VOILUTFunction = function
    ds.PixelData = data if data is not None else pixels.tobytes()
    out = io.BytesIO()
    ds.save_as(out, implicit_vr=implicit, little_endian=True, enforce_file_format=True)
    return out.getvalue()


def variants() -> dict[str, bytes]:
    """Inputs edgecxr reads, one per decoder path: progressive and restart-interval JPEG, 4:4:4 / 4:2:2 / 4:2:0
    colour at every reduced scale, odd sizes, EXIF orientations 1-8, PNG of every colour type and bit depth
    (interlaced too), uncompressed DICOM (signed, rescaled, windowed, implicit VR, RGB)."""
    g, c, big = _xray(300, 420), _colour(300, 420), _xray(1900, 2000, 4)
    rng = np.random.default_rng(7)
    exif8 = b"MM\x00\x2a\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x08\x00\x00\x00\x00\x00\x00"
    return {
        "progressive-gray.jpeg": _jpeg(g, progressive=True, quality=90),
        "progressive-colour.jpeg": _jpeg(c, progressive=True, quality=85),
        "restart-gray.jpeg": _jpeg(g, restart_marker_blocks=3),
        "restart-colour.jpeg": _jpeg(c, restart_marker_rows=1),
        "colour-444.jpeg": _jpeg(c, subsampling=0),
        "colour-422.jpeg": _jpeg(c, subsampling=1),
        "colour-420-odd-size.jpeg": _jpeg(np.ascontiguousarray(c[:297, :413])),
        "colour-422-half-scale.jpeg": _jpeg(_colour(700, 900, 5), subsampling=1),
        "colour-420-quarter-scale.jpeg": _jpeg(_colour(1000, 1100, 5)),
        "gray-eighth-scale.jpeg": _jpeg(big, quality=75),
        "colour-420-eighth-scale.jpeg": _jpeg(np.stack([big, big[::-1], big[:, ::-1]], -1)),
        "quality-100.jpeg": _jpeg(g, quality=100),
        "quality-5.jpeg": _jpeg(g, quality=5),
        **{f"exif-{o}.jpeg": _jpeg(np.ascontiguousarray(g[:, :333]), orientation=o) for o in range(1, 9)},
        "exif-6-progressive-colour.jpeg": _jpeg(c, orientation=6, progressive=True),
        "gray8.png": _png(g, 8, 0),
        "gray16.png": _png(g.astype(np.uint16) * 200 + 1000, 16, 0),
        "gray16-interlaced.png": _png(g.astype(np.uint16) * 37, 16, 0, interlace=True),
        "gray1.png": _png((g > 128).astype(np.uint8), 1, 0),
        "gray2.png": _png(g >> 6, 2, 0),
        "gray4.png": _png(g >> 4, 4, 0),
        "rgb8.png": _png(c, 8, 2),
        "rgb16.png": _png(c.astype(np.uint16) * 257 + 3, 16, 2),
        "rgba8.png": _png(np.concatenate([c, rng.integers(0, 256, (300, 420, 1))], -1), 8, 6),
        "gray-alpha8.png": _png(np.stack([g, rng.integers(0, 256, (300, 420))], -1), 8, 4),
        "gray-alpha16.png": _png(np.stack([g.astype(np.uint16) * 257, rng.integers(0, 65536, (300, 420))], -1), 16, 4),
        "palette-transparency.png": _png(g >> 2, 8, 3, plte=bytes(np.repeat(np.arange(64) * 4, 3).astype(np.uint8)),
                                         trns=bytes(range(0, 256, 8))),
        "palette4.png": _png(g >> 4, 4, 3, plte=bytes(np.repeat(np.arange(16) * 17, 3).astype(np.uint8))),
        "rgb8-interlaced.png": _png(c, 8, 2, interlace=True),
        "exif-8.png": _png(g, 8, 0, exif=exif8),
        "mono2-u16.dcm": _dicom(g.astype(np.uint16) * 16),
        "mono1-12bit-window.dcm": _dicom((g.astype(np.uint16) * 16) | 0xF000, photometric="MONOCHROME1", stored=12,
                                         center="1800", width="2400"),
        "signed-rescale-two-windows.dcm": _dicom(g.astype(np.int16) * 8 - 1024, signed=True, slope="0.5",
                                                 intercept="-100", center="-200\\50", width="900\\100"),
        "linear-exact-window.dcm": _dicom(g.astype(np.uint16) * 3, center="300", width="400", function="LINEAR_EXACT"),
        "implicit-vr-u8.dcm": _dicom(g, implicit=True),
        "rgb.dcm": _dicom(c, photometric="RGB"),
    }


# -- fast lane: the JavaScript in Node -------------------------------------------------------------------------
def _node(request: dict) -> dict:
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js not installed (the web app's JavaScript runs in Node for these checks)")
    r = subprocess.run([node, str(REPO / "tests" / "web_node.mjs")], input=json.dumps({"app": str(APP), **request}),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def _edgecxr_decoded(path: Path) -> np.ndarray:
    from edgecxr.data.images import decode_image

    return np.asarray(decode_image(path.read_bytes(), path.name, draft=224))


def test_runtimes_are_pinned_by_committed_lockfiles():
    from edgecxr.devices.web import RUNTIMES, WEB

    for family, runtime in RUNTIMES.items():
        folder = WEB / "npm" / runtime.lock
        pkg = json.loads((folder / "package.json").read_text())
        lock = json.loads((folder / "package-lock.json").read_text())
        pinned = pkg["dependencies"][runtime.package]
        assert pinned[0].isdigit(), f"{runtime.package} must be pinned to one version, not {pinned}"
        for name, entry in lock["packages"].items():
            if name:  # every installed package: an exact version and its integrity hash
                assert entry["version"] and entry["integrity"].startswith("sha512-"), name
        assert lock["packages"][f"node_modules/{runtime.package}"]["version"] == pinned
        for src, _ in runtime.files:
            assert src.split("/")[0] in {p.split("/")[0] for p in runtime.packages}, src


@pytest.mark.slow  # about 5 s on 2 CPUs
def test_page_decoders_match_edgecxr_bit_for_bit(tmp_path, fullres, kermany):
    """JPEG (reduced-scale IDCT, colour, progressive, restarts, EXIF), PNG and DICOM decoded by the page's
    JavaScript equal edgecxr's reader exactly: the contract's `decoded` stage with no decoder tolerance used."""
    files = []
    for name, data in variants().items():
        (tmp_path / name).write_bytes(data)
        files.append(tmp_path / name)
    files += sorted(CONFORMANCE.iterdir())
    files += sorted(p for p in fullres.rglob("*.jpeg"))[:16] if fullres.is_dir() else []
    files += sorted((kermany / "test" / "NORMAL").iterdir())[:10] + sorted((kermany / "test" / "PNEUMONIA").iterdir())[:10]
    out = _node({"draft": 224, "decode": [str(f) for f in files]})["decode"]
    differ = []
    for f, r in zip(files, out):
        assert "error" not in r, f"{f.name}: {r.get('error')}"
        assert r["decoder"] == "contract", f.name
        page = np.frombuffer(base64.b64decode(r["b64"]), np.uint8).reshape(r["shape"])
        ours = _edgecxr_decoded(f)
        if page.shape != ours.shape or not np.array_equal(page, ours):
            differ.append(f"{f.name}: {page.shape} vs {ours.shape}")
    assert not differ, differ
    scales = {Path(r["file"]).name: r["scale"] for r in out}
    assert (scales["colour-422-half-scale.jpeg"], scales["colour-420-quarter-scale.jpeg"], scales["gray-eighth-scale.jpeg"]) == (2, 4, 8)


def test_page_resize_and_equalize_are_the_contracts():
    from edgecxr.data import contract as C

    rng = np.random.default_rng(3)
    cases = [(300, 420, 224, "bilinear"), (224, 224, 224, "bilinear"), (100, 150, 224, "bilinear"),
             (1041, 313, 224, "bilinear"), (224, 500, 224, "bilinear"), (500, 224, 224, "bilinear"),
             (300, 420, 224, "bicubic"), (300, 420, 224, "lanczos"), (300, 421, 224, "nearest"), (57, 61, 32, "bilinear")]
    arrays = [rng.integers(0, 256, (h, w)).astype(np.uint8) for h, w, _, _ in cases]
    arrays[0] = _xray(300, 420)
    flat = [np.zeros((10, 10), np.uint8), np.full((50, 40), 7, np.uint8), _xray(64, 64), arrays[3]]
    out = _node({"resize": [{"b64": base64.b64encode(a.tobytes()).decode(), "h": h, "w": w, "size": s, "kernel": k}
                            for a, (h, w, s, k) in zip(arrays, cases)],
                 "equalize": [{"b64": base64.b64encode(a.tobytes()).decode()} for a in flat]})
    for a, (h, w, s, k), r in zip(arrays, cases, out["resize"]):
        page = np.frombuffer(base64.b64decode(r), np.uint8).reshape(s, s)
        assert np.array_equal(page, C.resize(a, s, k)), (h, w, s, k)
    for a, r in zip(flat, out["equalize"]):
        assert np.array_equal(np.frombuffer(base64.b64decode(r), np.uint8).reshape(a.shape), C.equalize(a))


def test_page_refuses_what_edgecxr_cannot_read(tmp_path):
    from edgecxr.utils.errors import ImageError
    from edgecxr.data.images import decode_image

    good = _jpeg(_xray(300, 420))
    bad = {"truncated.jpeg": good[: len(good) // 2], "garbage.jpeg": b"\xff\xd8\xff" + bytes(range(256)) * 4,
           "noise.png": b"\x89PNG\r\n\x1a\n" + bytes(100), "empty.jpeg": b"", "text.jpeg": b"not an image at all"}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageError):
            decode_image(data, name, draft=224)
    out = _node({"draft": 224, "decode": [str(tmp_path / n) for n in bad]})["decode"]
    assert all("error" in r for r in out), [r for r in out if "error" not in r]


# -- the site, in headless Chromium ---------------------------------------------------------------------------
def _npm_ready() -> str | None:
    from edgecxr.devices.web import RUNTIMES, node_modules
    from edgecxr.utils.errors import MissingDependencyError

    try:
        node_modules(RUNTIMES["litert.js"], install=False)
        return None
    except MissingDependencyError:
        return None if shutil.which("npm") else "npm is not installed and the web runtime is not cached"


@pytest.fixture(scope="module")
def site(shipped_int8, tmp_path_factory) -> Path:
    why = _npm_ready()
    if why:
        pytest.skip(why)
    from edgecxr.devices.web import build_site

    out = tmp_path_factory.mktemp("web") / "site"
    build_site(shipped_int8, out)
    return out


def _browser_missing() -> str | None:
    from edgecxr.devices.web import chromium_path

    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright not installed (pip install playwright; it drives the system's chromium)"
    if chromium_path() is None:
        return "Chromium not installed (apt-get install -y chromium; .ci/extra_setup.sh does it in CI)"
    return None


@pytest.fixture(scope="module")
def page(site):
    why = _browser_missing()
    if why:
        pytest.skip(why)
    from edgecxr.devices.web import Browser, serve_site

    with serve_site(site) as url, Browser(url) as browser:
        yield browser


def test_page_classifies_the_sample_with_parity_in_headless_chromium(page, shipped_int8, sample):
    """Issue 30's done-when: the shipped model's int8 bundle, in the page, in Chromium, on the sample's 100 test
    images picked through the page's file input: parity with the bundle's acceptance criteria passes."""
    from edgecxr.data.folders import list_site
    from edgecxr.devices.classifier import Classifier
    from edgecxr.devices.parity import format_report
    from edgecxr.devices.web import browser_runtime, parity_report

    samples = list_site(sample, "test")
    results = page.classify_files([s.path for s in samples])
    assert [Path(r["name"]).name for r in results] == [s.path.name for s in samples]
    assert not [r for r in results if r.get("error")]
    report = parity_report(shipped_int8, sample, results, runtime=browser_runtime(page.ready))
    print(format_report(report))
    assert report["passed"], format_report(report)
    assert report["criteria"]["source"] == "bundle" and report["data"]["compared"] == 100
    assert report["runtime"]["name"] == "litert.js"
    native = Classifier.load(shipped_int8)  # the same model on the native runtime: the same decisions
    theirs = np.array([native.predict(s.path).probability for s in samples])
    mine = np.array([r["probability"] for r in results])
    assert np.array_equal(mine >= native.threshold, theirs >= native.threshold)
    assert np.abs(mine - theirs).max() <= 0.02
    assert all(r["decoder"] == "contract" and r["timings"]["infer_ms"] > 0 for r in results)


def test_page_stages_pass_device_conform(page, shipped_int8, tmp_path):
    """The page's stage arrays for the bundle's conformance images (its test hook), as an integrator's JSON
    submission, pass `edgecxr device conform`."""
    from edgecxr.devices.web import conform_submission, page_conformance

    stages = page_conformance(page, shipped_int8)
    assert set(stages) == {e["id"] for e in json.loads((shipped_int8 / "manifest.json").read_text())["conformance"]["images"]}
    assert not [i for i, s in stages.items() if "error" in s]
    submission = tmp_path / "page.json"
    submission.write_text(json.dumps(conform_submission(stages)))
    r = CliRunner().invoke(main, ["device", "conform", str(shipped_int8), str(submission), "--json", str(tmp_path / "c.json")])
    print(r.output)
    assert r.exit_code == 0, r.output
    for image, st in stages.items():  # bit-exact, not only within the decoders' tolerance
        golden = np.load(shipped_int8 / "conformance" / "golden" / f"{Path(image).stem}.npz")
        assert np.array_equal(st["decoded"], golden["decoded"]), image
        assert np.array_equal(st["quantized"].reshape(golden["quantized"].shape), golden["quantized"]), image


def test_page_refuses_inputs_outside_the_domain(page, shipped_int8, tmp_path):
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    from edgecxr.devices.classifier import Classifier
    from edgecxr.utils.errors import ImageError

    g = _xray(300, 420)
    files = {"tiny.jpeg": _jpeg(_xray(40, 60)), "constant.png": _png(np.full((300, 300), 90, np.uint8), 8, 0),
             "mr.dcm": _dicom(g.astype(np.uint16), modality="MR"), "noise.jpeg": b"\xff\xd8\xff\xe0" + bytes(300)}
    native = Classifier.load(shipped_int8)
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageError):
            native.prepare(tmp_path / name, name)
        r = page.stages(tmp_path / name, ["decoded"])
        assert "error" in r, name
    assert "below the 64 px minimum" in page.stages(tmp_path / "tiny.jpeg", ["decoded"])["error"]
    assert "modality MR" in page.stages(tmp_path / "mr.dcm", ["decoded"])["error"]
    (tmp_path / "lateral.dcm").write_bytes(_dicom(g.astype(np.uint16) * 9, view="LL"))
    r = page.stages(tmp_path / "lateral.dcm", ["decoded"])
    assert "lateral view" in r["warning"] and r["probability"] >= 0
    compressed = _dicom(g, syntax=JPEGBaseline8Bit, data=encapsulate([_jpeg(g)]), photometric="MONOCHROME2")
    (tmp_path / "jpeg.dcm").write_bytes(compressed)
    assert "not supported in the browser" in page.stages(tmp_path / "jpeg.dcm", ["decoded"])["error"]


def test_device_web_writes_a_listed_self_contained_site(site, shipped_int8, tmp_path):
    import sys

    from edgecxr.devices.web import load_site, pick_bundle
    from edgecxr.utils.errors import ConfigError

    out = tmp_path / "site"
    code = ("import sys\nfrom edgecxr.cli import main\ntry:\n    main(sys.argv[1:], standalone_mode=False)\n"
            "finally:\n    print('TF', 'tensorflow' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code, "device", "web", str(shipped_int8), "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "litert.js 2.5.3" in r.stdout and "edgecxr serve" in r.stdout and r.stdout.rstrip().endswith("TF False")
    s = load_site(out)  # every file against its SHA-256
    assert {"index.html", "app.js", "sw.js", "config.json", "model/model.tflite", "vendor/litert/index.js",
            "vendor/NOTICE.txt"} <= set(s.files)
    assert (out / "model" / "model.tflite").read_bytes() == (shipped_int8 / "model.tflite").read_bytes()
    html = (out / "index.html").read_text()
    assert "connect-src 'self'" in html and "https://" not in html  # nothing from elsewhere
    cfg = s.config
    manifest = json.loads((shipped_int8 / "manifest.json").read_text())
    assert cfg["threshold"] == manifest["threshold"] and cfg["quantized_table"] == manifest["input_contract"]["steps"]["quantized"]["table"]
    assert "reference" not in json.dumps(cfg)  # the test set's predictions stay in the bundle
    assert pick_bundle(shipped_int8.parent) == shipped_int8  # a folder of bundles: its tflite-int8
    with pytest.raises(ConfigError, match="no bundle for the browser"):
        pick_bundle(tmp_path)
    again = CliRunner().invoke(main, ["device", "web", str(shipped_int8), "--out", str(out)])
    assert again.exit_code != 0 and "--overwrite" in again.output
    (out / "app.js").write_text("tampered")
    with pytest.raises(Exception, match="does not match its SHA-256"):
        load_site(out)


# -- edgecxr serve --app ------------------------------------------------------------------------------------------
TOKEN = "t0ken-for-the-web-app-tests-0123456789"


@pytest.fixture(scope="module")
def service(site, shipped_int8):
    from edgecxr.devices.classifier import Classifier
    from edgecxr.devices.serve import allowed_hosts, create_app
    from edgecxr.devices.web import load_site

    return create_app(Classifier.load(shipped_int8), token=TOKEN, hosts=allowed_hosts("127.0.0.1"),
                      site=load_site(site))


def test_serve_app_keeps_the_services_protections(service, site, shipped_int8):
    from starlette.testclient import TestClient

    from edgecxr.devices.classifier import Classifier
    from edgecxr.devices.serve import create_app
    from edgecxr.devices.web import load_site
    from edgecxr.utils.errors import ConfigError

    c = TestClient(service, base_url="http://127.0.0.1")
    assert c.get("/app/").status_code == 401
    assert c.get("/app/?token=wrong").status_code == 401
    first = c.get(f"/app/?token={TOKEN}", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/app/"
    cookie = first.headers["set-cookie"]
    assert "HttpOnly" in cookie and "Path=/app" in cookie and "SameSite=strict" in cookie
    page = c.get("/app/")  # the client keeps the cookie
    assert page.status_code == 200 and "Intended use" in page.text
    h = page.headers
    assert h["cross-origin-opener-policy"] == "same-origin" and h["cross-origin-embedder-policy"] == "require-corp"
    assert "connect-src 'self'" in h["content-security-policy"] and h["x-content-type-options"] == "nosniff"
    model = c.get("/app/model/model.tflite")
    assert model.content == (shipped_int8 / "model.tflite").read_bytes()
    assert c.get("/app/vendor/litert/litert_wasm_internal.wasm").headers["content-type"] == "application/wasm"
    for path in ("/app/.edgecxr-output", "/app/%2e%2e/manifest.json", "/app/nothing.js"):
        assert c.get(path).status_code == 404, path
    assert c.post("/app/").status_code == 401  # the cookie opens GET /app only
    assert c.post("/app/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 405
    assert c.post("/v1/classify", content=b"x", headers={"Content-Type": "image/jpeg"}).status_code == 401  # cookie is /app only
    assert c.get("/app/", headers={"Host": "evil.example"}).status_code == 421
    cfg = json.loads((site / "config.json").read_text())
    other = load_site(site, verify=False)
    other.config = {**cfg, "bundle": {**cfg["bundle"], "model_sha256": "0" * 64}}
    with pytest.raises(ConfigError, match="built from another model"):
        create_app(Classifier.load(shipped_int8), site=other)


def test_app_from_edgecxr_serve_classifies_offline_and_uploads_nothing(service, sample):
    why = _browser_missing()
    if why:
        pytest.skip(why)
    from edgecxr.devices.web import Browser, run_server

    image = sorted((sample / "test" / "PNEUMONIA").iterdir())[0]
    with run_server(service) as base, Browser(f"{base}/app/?token={TOKEN}") as b:
        assert b.ready["runtime"]["cross_origin_isolated"] is True
        online = b.classify_files([image])[0]
        cached = b.offline_copy()
        assert cached and cached["files"] >= 10, b.console
        b.context.set_offline(True)
        b.open(reload=True)  # from the service worker's copy: no network at all
        offline = b.classify_files([image])[0]
        text = b.page.inner_text("#offline")
    assert offline["probability"] == online["probability"] and "Works offline" in text
    assert service.state.service.counts["classified"] == 0  # the image never reached the service
