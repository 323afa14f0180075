"""Reliability and security: hostile inputs, tampered bundles, unsafe models, kill -9 mid-write, bad files in folders.

Fuzzing uses hypothesis with a fixed seed (reproducible in CI); raise the number of
examples with EDGECXR_FUZZ_EXAMPLES=2000 for a longer local run.
"""
import hashlib
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from edgecxr.formats import bundle as B
from edgecxr.utils.errors import BundleError, ImageError, ModelError
from edgecxr.data.images import MAX_PIXELS, decode_image

REPO = Path(__file__).resolve().parents[1]
SAMPLE_JPEG = REPO / "edgecxr" / "sample" / "test" / "NORMAL" / "IM-0009-0001.jpeg"
EXAMPLES = int(os.environ.get("EDGECXR_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LIMIT_S = 2.0  # every input is decoded or refused within this


# -- seed files ------------------------------------------------------------------------
def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _dicom(pixels: np.ndarray, photometric="MONOCHROME2", *, syntax=None, with_pixels=True, pixel_bytes=None,
           **extra) -> bytes:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for key, value in extra.items():
        setattr(ds, key, value)
    if with_pixels:
        ds.PixelData = pixel_bytes if pixel_bytes is not None else pixels.astype(np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _encapsulated(frame: bytes) -> bytes:
    """Encapsulated pixel data: an empty basic offset table, one fragment, the sequence delimiter."""
    item = lambda body: struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body  # noqa: E731
    return item(b"") + item(frame + b"\0" * (len(frame) % 2)) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def _png_header_claiming(width: int, height: int) -> bytes:
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _seeds() -> dict:
    jpeg = SAMPLE_JPEG.read_bytes()
    gray = Image.open(io.BytesIO(jpeg)).convert("L").resize((64, 64))
    arr = np.asarray(gray)
    palette = gray.convert("P")
    palette.info["transparency"] = 0
    ramp = np.tile(np.arange(0, 4000, 60, dtype=np.uint16), (40, 1))
    return {
        "kermany.jpeg": jpeg,
        "gray.png": _save(gray, "PNG"),
        "rgb.png": _save(gray.convert("RGB"), "PNG"),
        "rgba.png": _save(gray.convert("RGBA"), "PNG"),
        "palette-transparent.png": _save(palette, "PNG", transparency=0),
        "sixteen.png": _save(Image.fromarray(arr.astype(np.uint16) * 257), "PNG"),
        "cmyk.jpeg": _save(gray.convert("CMYK"), "JPEG"),
        "progressive.jpeg": _save(gray, "JPEG", progressive=True),
        "gray.bmp": _save(gray, "BMP"),
        "gray.tiff": _save(gray, "TIFF"),
        "mono2.dcm": _dicom(ramp),
        "mono1.dcm": _dicom(ramp, "MONOCHROME1"),
        "windowed.dcm": _dicom(ramp, WindowCenter=1000, WindowWidth=500, RescaleSlope=2, RescaleIntercept=-100),
    }


SEEDS = _seeds()
NAMES = ["<bytes>", "x.jpeg", "x.png", "x.dcm", "x.dicom", "x.txt", "x.tiff", "noext"]


def check_decode(data: bytes, name: str = "<bytes>"):
    """The contract: an 8-bit "L" image or an ImageError with one line; never anything else; bounded time."""
    t0 = time.perf_counter()
    try:
        img = decode_image(data, name)
    except ImageError as exc:
        message = str(exc)
        assert message and "\n" not in message and len(message) < 1000, repr(message)
        result = exc
    else:
        assert img.mode == "L" and img.size[0] > 0 and img.size[1] > 0
        assert np.asarray(img).dtype == np.uint8
        result = img
    elapsed = time.perf_counter() - t0
    assert elapsed < LIMIT_S, f"{name}: {len(data)} bytes took {elapsed:.2f} s"
    return result


# -- every seed decodes --------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SEEDS))
def test_every_seed_decodes_to_gray(name):
    assert isinstance(check_decode(SEEDS[name], name), Image.Image)


def test_seed_semantics():
    mono2 = np.asarray(decode_image(SEEDS["mono2.dcm"], "a.dcm"))
    mono1 = np.asarray(decode_image(SEEDS["mono1.dcm"], "b.dcm"))
    assert np.array_equal(mono1, 255 - mono2)  # MONOCHROME1: white is low
    png, palette = (np.asarray(decode_image(SEEDS[n])) for n in ("gray.png", "palette-transparent.png"))
    assert palette.shape == png.shape and (palette == 0).sum() >= (png == 0).sum()  # transparent -> black
    sixteen = np.asarray(Image.open(io.BytesIO(SEEDS["sixteen.png"])), np.float64)
    ranked = np.sort(sixteen, axis=None)  # 16-bit: clipped to the samples of rank k and N-1-k, then stretched
    k = (ranked.size - 1) // 2000
    low, high = ranked[k], ranked[-1 - k]
    stretched = np.round((np.clip(sixteen, low, high) - low) * 255.0 / (high - low))
    assert np.abs(np.asarray(decode_image(SEEDS["sixteen.png"])).astype(int) - stretched).max() <= 1


# -- named hostile cases -----------------------------------------------------------------------
def test_png_header_claiming_100000_squared_is_refused_fast():
    err = check_decode(_png_header_claiming(100_000, 100_000), "bomb.png")
    assert isinstance(err, ImageError) and "limit" in str(err) and f"{MAX_PIXELS:,}" in str(err)


def test_dicom_claiming_huge_size_is_refused():
    data = _dicom(np.zeros((4, 4), np.uint16), pixel_bytes=b"\0" * 32)
    big = data.replace(struct.pack("<HH", 0x0028, 0x0010) + b"US" + struct.pack("<H", 2) + struct.pack("<H", 4),
                       struct.pack("<HH", 0x0028, 0x0010) + b"US" + struct.pack("<H", 2) + struct.pack("<H", 65535), 1)
    big = big.replace(struct.pack("<HH", 0x0028, 0x0011) + b"US" + struct.pack("<H", 2) + struct.pack("<H", 4),
                      struct.pack("<HH", 0x0028, 0x0011) + b"US" + struct.pack("<H", 2) + struct.pack("<H", 65535), 1)
    assert big != data
    err = check_decode(big, "big.dcm")
    assert isinstance(err, ImageError) and "65535x65535" in str(err)


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.50",
                                    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.5"])
def test_dicom_compressed_without_codec_is_one_line(syntax):
    junk = bytes(range(256)) * 4
    data = _dicom(np.zeros((16, 16), np.uint16), syntax=syntax, pixel_bytes=_encapsulated(junk))
    err = check_decode(data, "compressed.dcm")
    assert isinstance(err, ImageError) and "cannot decode DICOM pixel data" in str(err), err


def test_dicom_without_pixel_data():
    err = check_decode(_dicom(np.zeros((4, 4)), with_pixels=False), "nopixels.dcm")
    assert isinstance(err, ImageError) and "no pixel data" in str(err)


def test_dicom_pixel_data_shorter_than_declared():
    err = check_decode(_dicom(np.zeros((64, 64), np.uint16), pixel_bytes=b"\1\0" * 100), "short.dcm")
    assert isinstance(err, ImageError)


@pytest.mark.parametrize("data", [b"", b"\0", b"DICM", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"\0" * 132,
                                  b"\0" * 128 + b"DICM", b"GIF89a", b"%PDF-1.7\n", b"<html></html>"])
@pytest.mark.parametrize("name", ["x.jpeg", "x.dcm", "<bytes>"])
def test_tiny_and_magic_only_inputs(data, name):
    assert isinstance(check_decode(data, name), ImageError)


@pytest.mark.parametrize("seed", sorted(SEEDS))
@pytest.mark.parametrize("name", NAMES)
def test_wrong_extensions(seed, name):
    """A file's name never decides whether it can be read: content wins, or a clean ImageError."""
    check_decode(SEEDS[seed], name)


# -- fuzzing -------------------------------------------------------------------------------------------
@FUZZ
@given(data=st.binary(max_size=4096), name=st.sampled_from(NAMES))
def test_fuzz_random_bytes(data, name):
    check_decode(data, name)


@FUZZ
@given(seed=st.sampled_from(sorted(SEEDS)), cut=st.floats(0, 1, exclude_max=True), name=st.sampled_from(NAMES))
def test_fuzz_truncations(seed, cut, name):
    data = SEEDS[seed]
    check_decode(data[: int(len(data) * cut)], name)


@FUZZ
@given(seed=st.sampled_from(sorted(SEEDS)), flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True),
                                                                      st.integers(0, 7)), min_size=1, max_size=8))
def test_fuzz_bit_flips(seed, flips):
    data = bytearray(SEEDS[seed])
    for where, bit in flips:
        data[int(where * len(data))] ^= 1 << bit
    check_decode(bytes(data), seed)


@FUZZ
@given(seed=st.sampled_from(sorted(SEEDS)), where=st.floats(0, 1), junk=st.binary(min_size=1, max_size=64))
def test_fuzz_spliced_junk(seed, where, junk):
    data = SEEDS[seed]
    i = int(where * len(data))
    check_decode(data[:i] + junk + data[i:], seed)


@FUZZ
@given(width=st.integers(0, 2**31 - 1), height=st.integers(0, 2**31 - 1))
def test_fuzz_png_header_sizes(width, height):
    check_decode(_png_header_claiming(width, height), "claims.png")


@FUZZ
@given(rows=st.integers(0, 65535), cols=st.integers(0, 65535), nbytes=st.integers(0, 4096),
       photometric=st.sampled_from(["MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL", "JUNK"]),
       bits=st.sampled_from([1, 8, 12, 16, 32]), samples=st.sampled_from([1, 3]),
       signed=st.sampled_from([0, 1]))
def test_fuzz_dicom_headers(rows, cols, nbytes, photometric, bits, samples, signed):
    """Attributes that disagree with each other and with the pixel data."""
    data = _dicom(np.zeros((1, 1)), photometric, pixel_bytes=bytes(range(256)) * (nbytes // 256) + b"\1" * (nbytes % 256))
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(data))
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PixelRepresentation = rows, cols, samples, signed
    ds.BitsAllocated = bits
    ds.BitsStored = ds.HighBit = bits if bits < 32 else 16
    buf = io.BytesIO()
    ds.save_as(buf)
    check_decode(buf.getvalue(), "fuzz.dcm")


# -- tampered bundles ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def bundle_dir(tiny_bundles) -> Path:
    return tiny_bundles["tflite-int8"]


def _tree(folder: Path) -> dict:
    """Every file under `folder` (hidden ones too) -> SHA-256."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _edit_manifest(folder: Path, change, *, redigest: bool) -> None:
    path = folder / B.MANIFEST
    manifest = json.loads(path.read_text())
    change(manifest)
    if redigest:  # an edit that also recomputes the digest: only the schema or the file hashes can catch it
        manifest["digest"] = B.manifest_digest(manifest)
    path.write_text(json.dumps(manifest, indent=1))


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _first_prob(m):
    key = next(iter(m["reference"]["probs"]))
    m["reference"]["probs"][key] = 1.0 - m["reference"]["probs"][key]


TAMPER = {
    "model-one-byte": (lambda d, m: _flip_byte(d / m), "SHA-256"),
    "model-truncated": (lambda d, m: (d / m).write_bytes((d / m).read_bytes()[: (d / m).stat().st_size // 2]), "SHA-256"),
    "model-empty": (lambda d, m: (d / m).write_bytes(b""), "SHA-256"),
    "model-deleted": (lambda d, m: (d / m).unlink(), "missing"),
    "threshold-edited": (lambda d, m: _edit_manifest(d, lambda x: x.update(threshold=x["threshold"] + 0.1), redigest=False), "digest"),
    "reference-prob-edited": (lambda d, m: _edit_manifest(d, _first_prob, redigest=False), "digest"),
    "reference-metrics-edited": (lambda d, m: _edit_manifest(d, lambda x: x["reference"]["metrics"].update(recall=1.0), redigest=False), "digest"),
    "unknown-version": (lambda d, m: _edit_manifest(d, lambda x: x.update(version=99), redigest=True), "version 99"),
    "missing-key": (lambda d, m: _edit_manifest(d, lambda x: x.pop("threshold"), redigest=True), "missing 'threshold'"),
    "missing-reference-key": (lambda d, m: _edit_manifest(d, lambda x: x["reference"].pop("probs"), redigest=True), "probs"),
    "wrong-type": (lambda d, m: _edit_manifest(d, lambda x: x.update(threshold="0.5"), redigest=True), "wrong type"),
    "unknown-target": (lambda d, m: _edit_manifest(d, lambda x: x.update(target="tflite-int3"), redigest=True), "unknown target"),
    "model-hash-swapped": (lambda d, m: _edit_manifest(d, lambda x: x.update(sha256="0" * 64), redigest=True), "disagrees"),
    "file-outside-bundle": (lambda d, m: _edit_manifest(d, lambda x: x["files"].update({"../outside.txt": "0" * 64}), redigest=True), "outside the bundle"),
    "manifest-not-json": (lambda d, m: (d / B.MANIFEST).write_text('{"format": "edgecxr-bundle", '), "not valid JSON"),
    "manifest-a-list": (lambda d, m: (d / B.MANIFEST).write_text("[]"), "not a manifest"),
    "manifest-deleted": (lambda d, m: (d / B.MANIFEST).unlink(), "no manifest.json"),
}


@pytest.fixture()
def no_runtime(monkeypatch):
    """Fails the test if a runtime is opened: a bad bundle must be refused before that."""
    import edgecxr.devices.classifier as C

    opened = []
    monkeypatch.setattr(C, "open_session", lambda *a, **k: opened.append(a) or pytest.fail("a runtime was opened"))
    return opened


@pytest.mark.parametrize("case", sorted(TAMPER))
def test_tampered_bundle_is_refused_before_any_runtime(case, bundle_dir, tmp_path, no_runtime):
    from edgecxr.devices.classifier import Classifier

    folder = tmp_path / "bundle"
    shutil.copytree(bundle_dir, folder)
    B.load_bundle(folder)  # the untouched copy is fine
    tamper, expect = TAMPER[case]
    tamper(folder, json.loads((bundle_dir / B.MANIFEST).read_text())["model_file"])
    with pytest.raises(BundleError, match=expect.replace("(", r"\(")) as info:
        B.load_bundle(folder)
    assert "\n" not in str(info.value)
    with pytest.raises(BundleError):
        Classifier.load(folder)
    assert no_runtime == []


def test_tampered_bundle_cli_is_one_line(bundle_dir, tmp_path, sample):
    from click.testing import CliRunner

    from edgecxr.cli import main

    folder = tmp_path / "bundle"
    shutil.copytree(bundle_dir, folder)
    _flip_byte(folder / "model.tflite")
    for args in (["device", "run", folder, sample / "test" / "NORMAL"], ["serve", folder, "--port", "1"]):
        r = CliRunner().invoke(main, [str(a) for a in args])
        lines = r.stderr.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "SHA-256" in lines[0], r.output


def _zip_with(bundle_dir: Path, archive: Path, extra: dict) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(bundle_dir.rglob("*")):
            if p.is_file():
                zf.write(p, f"b/{p.relative_to(bundle_dir).as_posix()}")
        for name, data in extra.items():
            zf.writestr(name, data)
    return archive


def test_zipped_bundle_loads(bundle_dir, tmp_path):
    archive = B.zip_bundle(bundle_dir, tmp_path / "b.zip")
    assert B.load_bundle(archive).manifest["sha256"] == B.load_bundle(bundle_dir).manifest["sha256"]


@pytest.mark.parametrize("entry", ["../{tag}.txt", "b/../../{tag}.txt", "/tmp/{tag}.txt", "b/../../../../../../tmp/{tag}.txt"])
def test_zip_with_escaping_entry_is_refused(entry, bundle_dir, tmp_path, no_runtime):
    import tempfile

    from edgecxr.devices.classifier import Classifier

    tag = f"edgecxr-escape-{os.getpid()}-{time.monotonic_ns()}"
    archive = _zip_with(bundle_dir, tmp_path / "evil.zip", {entry.format(tag=tag): b"owned"})
    with pytest.raises(BundleError, match="escapes"):
        B.load_bundle(archive)
    with pytest.raises(BundleError):
        Classifier.load(archive)
    # every place an escaping entry could land (not a recursive glob of /tmp: other processes churn it)
    places = [Path(tempfile.gettempdir()) / f"{tag}.txt", Path("/tmp") / f"{tag}.txt", *tmp_path.glob(f"**/{tag}.txt")]
    assert [p for p in places if p.exists()] == []


def test_zip_with_tampered_model_or_garbage_is_refused(bundle_dir, tmp_path):
    data = bytearray((bundle_dir / "model.tflite").read_bytes())
    data[100] ^= 0xFF
    archive = tmp_path / "t.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(q for q in bundle_dir.rglob("*") if q.is_file()):
            rel = p.relative_to(bundle_dir).as_posix()
            zf.writestr(f"b/{rel}", bytes(data) if rel == "model.tflite" else p.read_bytes())
    with pytest.raises(BundleError, match="SHA-256"):
        B.load_bundle(archive)
    garbage = tmp_path / "g.zip"
    garbage.write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(BundleError, match="zip"):
        B.load_bundle(garbage)


# -- unsafe models: a Lambda layer is code ------------------------------------------------------------
@pytest.fixture(scope="session")
def lambda_models(tmp_path_factory):
    """A tf_keras model whose Lambda layer writes a marker file whenever its code runs, as .keras, .h5 and SavedModel."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tf_keras as keras

    folder = tmp_path_factory.mktemp("unsafe")
    marker = folder / "code-ran"

    def fn(t, path=str(marker)):
        open(path, "w").close()
        return t * 2.0

    inp = keras.Input((32, 32, 1))
    x = keras.layers.Lambda(fn)(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(x))
    paths = {"keras": folder / "lambda.keras", "h5": folder / "lambda.h5", "savedmodel": folder / "lambda_savedmodel"}
    model.save(paths["keras"])
    model.save(paths["h5"])
    model.save(paths["savedmodel"], save_format="tf")
    marker.unlink()
    return paths, marker


@pytest.mark.parametrize("fmt", ["keras", "h5", "savedmodel"])
def test_lambda_model_refused_by_evaluate_loader(lambda_models, fmt):
    from edgecxr.training.evaluate import load_model

    paths, marker = lambda_models
    with pytest.raises(ModelError, match="--trust-model") as info:
        load_model(paths[fmt])
    assert "\n" not in str(info.value)
    assert not marker.exists(), "the Lambda code ran although the model was refused"
    model = load_model(paths[fmt], trust=True)
    assert model.predict(np.ones((1, 32, 32, 1), np.float32), verbose=0).shape == (1, 1)
    marker.unlink(missing_ok=True)


@pytest.mark.parametrize("fmt", ["keras", "h5", "savedmodel"])
def test_lambda_model_refused_by_export_loader(lambda_models, fmt):
    from edgecxr.export import ModelOverrides, load_source

    paths, marker = lambda_models
    flags = ModelOverrides(scale=1 / 255, offset=0.0)
    with pytest.raises(ModelError, match="--trust-model") as info:
        load_source(paths[fmt], flags)
    assert "\n" not in str(info.value)
    assert not marker.exists(), "the Lambda code ran although the model was refused"
    source = load_source(paths[fmt], flags, trust=True)
    assert source.out_dim == 1
    marker.unlink(missing_ok=True)


def test_lambda_model_refused_by_export_cli(lambda_models, kermany, tmp_path):
    from click.testing import CliRunner

    from edgecxr.cli import main

    paths, marker = lambda_models
    r = CliRunner().invoke(main, ["export", "--model", str(paths["keras"]), "--target", "tflite-fp32", "--data", str(kermany),
                                  "--out", str(tmp_path / "out"), "--scale", str(1 / 255), "--offset", "0"])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code != 0 and len(lines) == 1 and "--trust-model" in lines[0], r.output
    assert not marker.exists() and not (tmp_path / "out" / "tflite-fp32").exists()


# -- kill -9 in the middle of a write ----------------------------------------------------------------------
def _kill_when_writing(cmd, watch: Path, final_name: str, delay: float, log: Path, timeout: float = 600) -> bool:
    """Start `cmd`; once its hidden temp folder `.FINAL.tmp-*` appears in `watch`, wait `delay` s and SIGKILL it.

    Returns True when the process was killed while still running.
    """
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(c) for c in cmd], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if any(p.name.startswith(f".{final_name}.tmp-") for p in watch.iterdir()):
                break
            time.sleep(0.02)
        time.sleep(delay)
        alive = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        return alive and proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def _assert_intact_after_kill(parent: Path, final: Path, before: dict, kept=()):
    """kept: names left on purpose (training's BackupAndRestore folder: the same command resumes from it)."""
    from edgecxr.utils.atomic import check_writable

    assert _tree(final) == before, "the previous result changed"
    others = sorted(p.name for p in parent.iterdir() if p.name != final.name and p.name not in kept)
    assert all(n.startswith(f".{final.name}.tmp-") for n in others), f"visible or unexpected leftovers: {others}"
    # What every later writer does first (train, export, evaluate): leftovers of dead writers go away.
    check_writable(final, overwrite=True)
    names = {p.name for p in parent.iterdir()}
    assert final.name in names and names <= {final.name, *kept}, names
    assert _tree(final) == before


@pytest.mark.slow
def test_kill_9_during_training_keeps_the_previous_run(tiny_run, kermany, tmp_path):
    parent = tmp_path / "runs"
    parent.mkdir()
    run = parent / "run"
    shutil.copytree(tiny_run, run)
    before = _tree(run)
    cmd = [sys.executable, "-m", "edgecxr.cli", "train", "--arch", "tiny_cnn", "--data", kermany, "--out", run,
           "--epochs", "3", "--augment", "none", "--seed", "2", "--overwrite"]
    killed = _kill_when_writing(cmd, parent, "run", 2.0, tmp_path / "train.log")
    assert killed, (tmp_path / "train.log").read_text()[-2000:]
    _assert_intact_after_kill(parent, run, before, kept={"run.backup"})


@pytest.mark.slow
def test_kill_9_during_export_keeps_the_previous_bundle(bundle_dir, tiny_model, kermany, tmp_path):
    parent = tmp_path / "bundles"
    parent.mkdir()
    final = parent / bundle_dir.name
    shutil.copytree(bundle_dir, final)
    before = _tree(final)
    cmd = [sys.executable, "-m", "edgecxr.cli", "export", "--model", tiny_model, "--target", bundle_dir.name,
           "--data", kermany, "--out", parent, "--calib-count", "50", "--overwrite"]
    killed = _kill_when_writing(cmd, parent, final.name, 0.3, tmp_path / "export.log")
    assert killed, (tmp_path / "export.log").read_text()[-2000:]
    _assert_intact_after_kill(parent, final, before)
    B.load_bundle(final)


def test_stale_leftovers_of_dead_writers_are_cleaned_and_a_half_swap_is_undone(tmp_path):
    from edgecxr.utils.atomic import atomic_dir, clean_stale, write_json_atomic

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    final = tmp_path / "out"
    (tmp_path / f".out.tmp-{pid}-abc").mkdir()
    (tmp_path / f".out.tmp-{pid}-abc" / "half.bin").write_bytes(b"half")
    (tmp_path / f".out.old-{pid}").mkdir()  # killed between the two renames: only the old result is left
    (tmp_path / f".out.old-{pid}" / "result.json").write_text("{}")
    (tmp_path / f".out.old-{pid}" / ".edgecxr-output").write_text("")  # an edgecxr result: --overwrite may replace it
    (tmp_path / f".out.tmp-{os.getpid()}-live").mkdir()  # a running writer's folder is left alone
    (tmp_path / ".other.tmp-1-x").mkdir()  # not ours
    clean_stale(final)
    assert (final / "result.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".other.tmp-1-x", f".out.tmp-{os.getpid()}-live", "out"])
    (tmp_path / f".out.tmp-{os.getpid()}-live").rmdir()
    with atomic_dir(final, overwrite=True) as tmp:
        assert tmp.name.startswith(f".out.tmp-{os.getpid()}-")
        (tmp / "new.json").write_text("1")
    assert sorted(p.name for p in final.iterdir()) == [".edgecxr-output", "new.json"]
    (tmp_path / f".r.json.tmp-{pid}-x").write_text("half")
    write_json_atomic(tmp_path / "r.json", {"a": 1})
    assert not (tmp_path / f".r.json.tmp-{pid}-x").exists() and json.loads((tmp_path / "r.json").read_text()) == {"a": 1}


# -- folder runs go on past bad files -----------------------------------------------------------------------
@pytest.fixture()
def folder_with_one_bad(tmp_path, sample) -> Path:
    data = tmp_path / "data"
    shutil.copytree(sample, data)
    good = sorted((data / "test" / "NORMAL").iterdir())[0]
    (data / "test" / "NORMAL" / "zz-corrupt.jpeg").write_bytes(good.read_bytes()[:1500])
    return data


def test_device_run_on_folder_keeps_going(bundle_dir, folder_with_one_bad):
    from click.testing import CliRunner

    from edgecxr.cli import main

    folder = folder_with_one_bad / "test" / "NORMAL"
    n = len(list(folder.iterdir()))
    r = CliRunner().invoke(main, ["device", "run", str(bundle_dir), str(folder), "--format", "json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert len(report["results"]) == n - 1
    assert [Path(f["file"]).name for f in report["failures"]] == ["zz-corrupt.jpeg"]
    assert "1 of " in r.stderr and "zz-corrupt.jpeg" in r.stderr
    strict = CliRunner().invoke(main, ["device", "run", str(bundle_dir), str(folder), "--strict"])
    lines = strict.stderr.strip().splitlines()
    assert strict.exit_code == 2 and len(lines) == 1 and "zz-corrupt.jpeg" in lines[0]


def test_evaluate_on_folder_keeps_going(tiny_model, folder_with_one_bad, tmp_path):
    from edgecxr.training.evaluate import evaluate

    result = evaluate(tiny_model, folder_with_one_bad, "test", tmp_path / "eval", n_boot=20)
    assert [Path(s["file"]).name for s in result["skipped"]] == ["zz-corrupt.jpeg"]
    with pytest.raises(ImageError, match="zz-corrupt.jpeg"):
        evaluate(tiny_model, folder_with_one_bad, "test", tmp_path / "eval2", n_boot=20, strict=True)
    assert not (tmp_path / "eval2").exists()
