"""Issue 28 (hardening round three): each defect reproduced, refused or handled."""
import csv
import json
import shutil
import zipfile

import pytest
from click.testing import CliRunner

from edgecxr.cli import main
from edgecxr.utils.errors import BundleError, ConfigError, DataError
from conftest import assert_exit_is_verdict


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_a_twin_swapped_after_load_never_runs(tiny_bundles, tmp_path):
    """28.2: the model bytes are hashed and handed to the runtime in one read."""
    from edgecxr.formats.bundle import load_bundle
    from edgecxr.devices import Classifier

    folder = tmp_path / "b"
    shutil.copytree(tiny_bundles["tflite-int8"], folder)
    clf = Classifier.load(folder)
    twin = folder / clf.bundle.manifest["twin"]["model_file"]
    twin.write_bytes((folder / "model.tflite").read_bytes())  # another valid model, unsigned
    with pytest.raises(BundleError, match="changed since the bundle was verified"):
        clf.twin()
    assert Classifier.load(load_bundle(tiny_bundles["tflite-int8"])).twin() is not None  # the untouched one opens


def test_the_main_model_swapped_between_verification_and_opening_is_refused(tiny_bundles, tmp_path):
    from edgecxr.formats.bundle import load_bundle
    from edgecxr.devices import Classifier

    for target in ("tflite-int8", "onnx-fp32", "openvino-fp32"):
        folder = tmp_path / target
        shutil.copytree(tiny_bundles[target], folder)
        bundle = load_bundle(folder)
        model = folder / bundle.manifest["model_file"]
        data = bytearray(model.read_bytes())
        data[len(data) // 2] ^= 1  # one bit in the middle of the weights
        model.write_bytes(bytes(data))
        with pytest.raises(BundleError, match="changed since the bundle was verified"):
            Classifier.load(bundle)


def test_a_folder_among_the_images_is_one_unreadable_image(tiny_bundles, sample, tmp_path):
    """28.4: a site CSV naming a folder: the run goes on, the folder is counted unreadable."""
    from edgecxr.devices import Classifier
    from edgecxr.devices.classifier import Failure

    images = sorted((sample / "test" / "NORMAL").iterdir())[:3]
    sick = sorted((sample / "test" / "PNEUMONIA").iterdir())[:3]
    (tmp_path / "a-folder").mkdir()
    rows = [[str(p), "NORMAL"] for p in images] + [[str(p), "PNEUMONIA"] for p in sick] + \
        [[str(tmp_path / "a-folder"), "NORMAL"]]
    with open(tmp_path / "site.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["path", "label"], *rows])
    r = cli("device", "parity", tiny_bundles["tflite-int8"], "--data", tmp_path / "site.csv", "--min-coverage", "0",
            "--json", tmp_path / "p.json")
    report = assert_exit_is_verdict(r, tmp_path / "p.json")
    assert [u["error"] for u in report["data"]["unreadable"]] == [f"{tmp_path / 'a-folder'}: is a folder, not an image file"]
    results = Classifier.load(tiny_bundles["tflite-int8"]).predict_batch([tmp_path / "a-folder", images[0]], strict=False)
    assert isinstance(results[0], Failure) and "is a folder" in results[0].error and not isinstance(results[1], Failure)


def test_degenerate_splits_and_classes_are_refused(kermany, tmp_path):
    """28.9"""
    r = cli("split", "--data", kermany, "--ratios", "1e-9,0.5,0.499999999", "--out", tmp_path / "s.json")
    assert r.exit_code == 2 and "train part would hold 0 images" in r.output and not (tmp_path / "s.json").exists()
    r = cli("split", "--data", kermany, "--classes", "NORMAL,NORMAL", "--out", tmp_path / "s.json")
    assert r.exit_code == 2 and "two different folder names" in r.output
    r = cli("export", "--target", "tflite-fp32", "--data", kermany, "--classes", "NORMAL,NORMAL", "--out", tmp_path / "b")
    assert r.exit_code == 2 and "two different folder names" in r.output
    assert "CSV manifest is not re-split" in cli("split", "--help").output


def test_an_uppercase_zip_is_a_bundle(tiny_bundles, tmp_path):
    """28.12: bundle.ZIP"""
    from edgecxr.formats.bundle import load_bundle, zip_bundle

    archive = zip_bundle(tiny_bundles["tflite-fp32"], tmp_path / "bundle.ZIP")
    assert zipfile.is_zipfile(archive) and load_bundle(archive).manifest["target"] == "tflite-fp32"


def test_hostile_json_inputs_are_one_line_errors(tmp_path):
    """28.7: 100,000 nested brackets and a negative count."""
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    r = cli("baseline", "--data", tmp_path, "--out", tmp_path / "o", "--cnn", deep)
    assert r.exit_code == 2, r.output
    from edgecxr.training.baseline import load_cnn_row

    metrics = {"accuracy": 0.9, "recall": 0.9, "specificity": 0.9, "f1": 0.9, "roc_auc": 0.9, "threshold": 0.5,
               "n": -3, "ci": {k: [0.8, 0.95] for k in ("accuracy", "recall", "specificity", "f1", "roc_auc")}}
    (tmp_path / "m.json").write_text(json.dumps(metrics))
    with pytest.raises(DataError, match="n a count"):
        load_cnn_row(tmp_path / "m.json")



def test_token_files_with_a_bom_work_and_non_ascii_tokens_are_refused(tmp_path):
    """28.10"""
    from edgecxr.devices.serve import read_token
    from edgecxr.utils.errors import ConfigError

    token = "a" * 40
    (tmp_path / "bom").write_bytes(b"\xef\xbb\xbf" + token.encode() + b"\n")
    assert read_token(tmp_path / "bom") == token
    (tmp_path / "utf").write_text("ä" * 40)
    with pytest.raises(ConfigError, match="must be ASCII"):
        read_token(tmp_path / "utf")


def test_keygen_on_a_full_disk_leaves_no_key_behind(tmp_path, monkeypatch):
    """28.11: a failed write removes the half-written key, so a retry is not blocked."""
    import os

    from edgecxr.formats import signing
    from edgecxr.utils.errors import ConfigError

    real_fsync = os.fsync

    def full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(ConfigError, match="No space left on device"):
        signing.keygen(tmp_path / "k")
    assert not (tmp_path / "k").exists() and not (tmp_path / "k.pub").exists()
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert signing.keygen(tmp_path / "k")[0].stat().st_size > 0


def test_explain_with_a_bundle_honours_the_trusted_key(tiny_bundles, sample, tmp_path):
    """28.12: `explain --bundle` refuses an unsigned bundle when a trusted key is given."""
    from edgecxr.formats.signing import keygen

    _, public = keygen(tmp_path / "release")
    image = next((sample / "test" / "NORMAL").iterdir())
    r = cli("explain", image, "--bundle", tiny_bundles["tflite-fp32"], "--trusted-key", public, "--out", tmp_path / "m.png")
    assert r.exit_code == 2 and "not signed" in r.output and not (tmp_path / "m.png").exists()


def test_slow_uploaders_cannot_hold_the_service_and_shutdown_does_not_wait_for_them(tiny_bundles, kermany):
    """28.3: 16 clients announcing 100 kB and sending 1 byte every 0.5 s, against --max-connections 4: a real
    client is answered at once, each trickler gets 408 within seconds, and SIGTERM ends the service promptly."""
    import signal
    import socket
    import threading
    import time

    import httpx

    from tests.test_serve import start_server

    image = next((kermany / "test" / "NORMAL").iterdir())
    proc, url = start_server(tiny_bundles["tflite-int8"], "--max-connections", "4", "--read-timeout", "60")
    port = int(url.rsplit(":", 1)[1])
    replies, stop = [], threading.Event()

    def trickle():
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                      b"Content-Length: 100000\r\n\r\n")
            started = time.monotonic()
            try:
                while not stop.is_set() and time.monotonic() - started < 15:
                    s.sendall(b"\0")
                    s.settimeout(0.5)
                    try:
                        reply = s.recv(4096)
                    except socket.timeout:
                        continue
                    replies.append((reply, time.monotonic() - started))
                    return
            except OSError as exc:  # the server closed the connection after its 408
                replies.append((repr(exc).encode(), time.monotonic() - started))

    try:
        threads = [threading.Thread(target=trickle) for _ in range(16)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # every trickler is connected and sending
        t0 = time.monotonic()
        r = httpx.post(f"{url}/v1/classify", content=image.read_bytes(), headers={"Content-Type": "image/jpeg"}, timeout=20)
        assert r.status_code == 200 and time.monotonic() - t0 < 5, (r.status_code, r.text)
        for t in threads:
            t.join(20)
        assert len(replies) == 16
        assert all(reply.startswith(b"HTTP/1.1 408") and took < 6 for reply, took in replies), replies
        assert any(b"slower than 16 KiB/s" in reply for reply, _ in replies)  # the JSON may come in a later packet
        late = [threading.Thread(target=trickle) for _ in range(4)]  # uploads in progress at shutdown
        for t in late:
            t.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        assert time.monotonic() - t0 < 8
        assert "Traceback" not in proc.stdout.read().decode()  # cancelled uploads answer 503, quietly
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ray_at_an_address_where_nothing_listens_is_one_line_within_seconds(tiny_bundles, sample):
    """28.5: a bounded connect instead of ten silent minutes; ray:// without Ray Client is an install hint."""
    import socket
    import time

    pytest.importorskip("ray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    t0 = time.monotonic()
    r = cli("device", "parity", tiny_bundles["tflite-int8"], "--data", sample, "--ray", f"127.0.0.1:{port}")
    assert r.exit_code == 2 and time.monotonic() - t0 < 30, r.output
    assert f"nothing answers at 127.0.0.1:{port}" in r.output and "ray start --head" in r.output
    assert len(r.output.strip().splitlines()) == 1
    import importlib.util

    from devices import distributed

    if importlib.util.find_spec("grpc") is None:
        r = cli("device", "parity", tiny_bundles["tflite-int8"], "--data", sample, "--ray", f"ray://127.0.0.1:{port}")
        assert r.exit_code == 2 and "pip install 'ray[client]'" in r.output, r.output
    with pytest.raises(ConfigError, match="expected HOST:PORT"):
        distributed._reachable("nohost")
    with pytest.raises(ConfigError, match="a port from 1 to 65535"):
        distributed._reachable("127.0.0.1:99999")  # getaddrinfo wraps it to 34463, where anything may listen


def test_report_reads_an_unlabeled_site_parity_and_refuses_strings_for_numbers(tiny_bundles, kermany, tmp_path):
    """28.7: docs/devices.md says `report` reads site parity JSON; a string where a number belongs is one line, exit 2."""
    site = tmp_path / "site"
    site.mkdir()
    for p in sorted((kermany / "test" / "PNEUMONIA").iterdir())[:6] + sorted((kermany / "test" / "NORMAL").iterdir())[:6]:
        shutil.copy(p, site / p.name)
    parity = tmp_path / "site.json"
    r = cli("device", "parity", tiny_bundles["tflite-int8"], "--data", site, "--json", parity)
    assert assert_exit_is_verdict(r, parity)["labeled"] is False
    out = tmp_path / "r.html"
    r = cli("report", parity, "--out", out, "--no-maps")
    assert r.exit_code == 0, r.output
    page = out.read_text()
    assert "unlabeled site X-rays" in page and "No labels, so no recall" in page
    record = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").is_file() else None
    if record is not None:
        assert record["parity"] and record["parity"][0]["labeled"] is False
    doc = json.loads(parity.read_text())
    doc["agreement"] = "0.99"
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    r = cli("report", tmp_path / "bad.json", "--out", tmp_path / "bad.html", "--no-maps")
    assert r.exit_code == 2 and "agreement is '0.99', not a number" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "bad.html").exists()
    good = json.loads(parity.read_text())
    for field, value, message in (("passed", "false", "passed is str 'false', not true or false"),
                                  ("runtime", "onnxruntime", "runtime is str 'onnxruntime', not an object"),
                                  ("checks", [5], "checks[0] is int '5', not a record"),
                                  ("n", 7.5, "n is float '7.5', not a count")):
        (tmp_path / "bad.json").write_text(json.dumps({**good, field: value}))
        r = cli("report", tmp_path / "bad.json", "--out", tmp_path / "bad.html", "--no-maps")
        assert r.exit_code == 2 and message in r.output, (field, r.output)


def test_export_on_a_full_disk_names_the_full_disk(tiny_model, sample, tmp_path, monkeypatch):
    """28.11: not "the converter failed" (the converters wrap ENOSPC in their own errors, or in text)."""
    import errno
    import os

    from edgecxr.export import build as build_mod

    def disk_full(target, ctx, folder):
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / "model.tflite"))
        except OSError as exc:
            raise RuntimeError("tflite converter: could not write the flatbuffer") from exc

    monkeypatch.setattr(build_mod, "build", disk_full)
    r = cli("export", "--model", tiny_model, "--target", "tflite-fp32", "--data", sample, "--out", tmp_path / "o")
    assert r.exit_code == 2 and "tflite-fp32: the disk is full" in r.output and "converter failed" not in r.output
    assert not (tmp_path / "o" / "tflite-fp32").exists()
    monkeypatch.setattr(build_mod, "build", lambda *a: (_ for _ in ()).throw(
        RuntimeError("Failed to save: /tmp/x.onnx: No space left on device")))
    r = cli("export", "--model", tiny_model, "--target", "onnx-fp32", "--data", sample, "--out", tmp_path / "o2")
    assert r.exit_code == 2 and "onnx-fp32: the disk is full" in r.output


def test_zip_extractions_left_by_a_killed_process_are_removed_by_the_next(tiny_bundles, tmp_path, monkeypatch):
    """28.11: kill -9 runs no atexit; the next extraction removes folders whose process is gone."""
    import os
    import subprocess
    import sys
    import tempfile

    from edgecxr.formats.bundle import ZIP_PREFIX, load_bundle, zip_bundle

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f"{ZIP_PREFIX}{gone.stdout.strip()}-abc123"
    (dead / "bundle").mkdir(parents=True)
    (dead / "bundle" / "model.tflite").write_bytes(b"x" * 1000)
    alive = tmp_path / f"{ZIP_PREFIX}{os.getppid()}-def456"  # a running process's extraction stays
    alive.mkdir()
    other = tmp_path / "edgecxr-bundle-notapid"
    other.mkdir()
    archive = zip_bundle(tiny_bundles["tflite-int8"], tmp_path / "b.zip")
    bundle = load_bundle(archive)
    assert not dead.exists() and alive.exists() and other.exists()
    assert str(bundle.path).startswith(str(tmp_path / f"{ZIP_PREFIX}{os.getpid()}-"))


def test_a_missing_extra_in_the_benchmark_is_exit_2_not_a_failed_parity(tiny_model, sample, tmp_path, monkeypatch):
    """28.12: in a LiteRT-only venv every row raised MissingDependencyError and the benchmark said "int8 parity failed"."""
    from edgecxr.utils.errors import MissingDependencyError
    from edgecxr.bench import run as B

    def no_export(*a, **k):
        raise MissingDependencyError("export needs tensorflow, which is not installed; pip install 'edgecxr[export]'")

    monkeypatch.setattr(B, "export_row", no_export)
    r = cli("benchmark", "--model", tiny_model, "--data", sample, "--out", tmp_path / "b", "--target", "tflite-int8",
            "--target", "onnx-int8", "--runs", "2")
    assert r.exit_code == 2, r.output
    assert "could not run here" in r.output and "pip install 'edgecxr[export]'" in r.output
    assert "int8 parity failed" not in r.output
    assert json.loads((tmp_path / "b" / "benchmark.json").read_text())["passed"] is None  # not measured, not passed
    assert B.parity_failures([{"int8": True, "passed": False, "missing_extra": True}]) == []


def test_a_hard_link_to_an_image_already_in_a_csv_is_a_duplicate(kermany, tmp_path):
    """28.12: a symlink was caught (it resolves to the same path); a hard link has its own path, the same inode."""
    import os

    from edgecxr.data.folders import csv_paths

    images = sorted((kermany / "test" / "NORMAL").iterdir())[:2]
    site = tmp_path / "site"
    site.mkdir()
    for p in images:
        shutil.copy(p, site / p.name)
    os.link(site / images[0].name, site / "linked.jpeg")
    manifest = tmp_path / "site.csv"
    manifest.write_text(f"path\nsite/{images[0].name}\nsite/{images[1].name}\nsite/linked.jpeg\n")
    with pytest.raises(DataError, match="linked.jpeg is the same image as the row also on line 2"):
        csv_paths(manifest)
    manifest.write_text(f"path\nsite/{images[0].name}\nsite/{images[1].name}\n")
    assert len(csv_paths(manifest)) == 2


def test_the_same_pixels_decide_the_same_as_png_dicom_array_and_rgba(tiny_bundles, kermany, tmp_path):
    """28.12: 8-bit DICOM pixels were min-max stretched (PNG's were not), and an RGBA array skipped the alpha."""
    import io

    import numpy as np
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    from edgecxr.devices import Classifier
    from edgecxr.utils.errors import ImageError
    from edgecxr.data.images import decode_image

    clf = Classifier.load(tiny_bundles["tflite-int8"])
    gray = np.asarray(Image.open(sorted((kermany / "test" / "PNEUMONIA").iterdir())[0]).convert("L"))
    gray = (gray.astype(np.float32) * 0.6 + 40).astype(np.uint8)  # not spanning 0..255: a stretch would show
    png = io.BytesIO()
    Image.fromarray(gray).save(png, format="PNG")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID, "CR"
    ds.Rows, ds.Columns = gray.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = gray.tobytes()
    dcm = io.BytesIO()
    ds.save_as(dcm, enforce_file_format=True)
    assert np.array_equal(np.asarray(decode_image(dcm.getvalue(), "x.dcm")), gray)
    probs = {kind: clf.predict(item).probability for kind, item in
             (("png", png.getvalue()), ("dicom", dcm.getvalue()), ("array", gray))}
    assert probs["png"] == probs["dicom"] == probs["array"], probs

    rgba = np.dstack([np.repeat(gray[..., None], 3, -1), np.full(gray.shape, 128, np.uint8)])
    as_file = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(as_file, format="PNG")
    assert clf.predict(rgba).probability == clf.predict(as_file.getvalue()).probability
    clear = rgba.copy()
    clear[..., 3] = 0  # fully transparent: refused as a file, and now as an array
    for item in (clear,):
        with pytest.raises(ImageError, match="constant or fully transparent"):
            clf.predict(item)


def test_big_decodes_in_serve_run_one_at_a_time_and_small_ones_in_parallel(tiny_bundles, monkeypatch):
    """28.6: four 16-bit 8000 x 8000 uploads at once took 1.1 GB; images above BIG_DECODE_PIXELS (read from the
    header) now decode one at a time."""
    import io
    import threading
    import time

    from PIL import Image

    from edgecxr.data import images
    from edgecxr.devices import Classifier
    from edgecxr.devices.serve import Service
    from edgecxr.data.images import BIG_DECODE_PIXELS
    from edgecxr.utils.errors import ImageError

    def png(side, mode="I;16"):
        buf = io.BytesIO()
        Image.new(mode, (side, side)).save(buf, format="PNG")
        return buf.getvalue()

    big, small = png(4096 + 1), png(512, "L")
    assert images.declared_pixels(big) == 4097 ** 2 > BIG_DECODE_PIXELS and images.declared_pixels(b"junk") is None
    inside, most = [0], [0]
    guard = threading.Lock()

    def slow_decode(data, name, draft=None):
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.3)
        with guard:
            inside[0] -= 1
        raise ImageError("stop here")

    monkeypatch.setattr(images, "decode_image", slow_decode)
    service = Service(Classifier.load(tiny_bundles["tflite-int8"]), max_bytes=2**30, workers=4, read_timeout=10)

    def run(data):
        threads = [threading.Thread(target=lambda: pytest.raises(ImageError, service.classify, data, "x.png"))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return most[0]

    assert run(big) == 1
    most[0] = 0
    assert run(small) > 1
    monkeypatch.undo()  # the decoder itself: big images one at a time in any caller (device run --workers 4 too)
    assert images._BIG_DECODE.acquire(blocking=False)
    try:
        done = []
        t = threading.Thread(target=lambda: done.append(images.decode_image(small, "s.png").size))
        t.start()
        t.join(10)
        assert done == [(512, 512)]  # a small image does not wait for a big one
        t = threading.Thread(target=lambda: done.append(images.decode_image(big, "b.png").size))
        t.start()
        t.join(1)
        assert t.is_alive() and len(done) == 1  # a big one waits
    finally:
        images._BIG_DECODE.release()
    t.join(30)
    assert done[-1] == (4097, 4097)


def test_choose_removes_each_zip_extraction_after_its_row_and_report_caps_its_inputs(tiny_bundles, kermany, tmp_path,
                                                                                    monkeypatch):
    """28.6: `device choose DIR` kept every extracted zip until exit; a 50 MB string in a report input took 3.4 GB."""
    import os
    import tempfile

    from edgecxr.formats.bundle import ZIP_PREFIX, zip_bundle
    from edgecxr.devices.choose import rank

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    archives = [zip_bundle(tiny_bundles[t], tmp_path / f"{t}.zip") for t in ("tflite-int8", "onnx-fp32")]
    result = rank(archives, kermany, runs=2, warmup=0)
    assert all(r.get("parity") is not None for r in result["rows"]), result["rows"]
    assert not list(scratch.glob(f"{ZIP_PREFIX}{os.getpid()}-*"))
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps({"agreement": 0.99, "labeled": False, "note": "x" * (33 << 20)}))
    r = cli("report", huge, "--out", tmp_path / "r.html", "--no-maps")
    assert r.exit_code == 2 and "larger than any JSON edgecxr writes" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_uploads_in_progress_cannot_hold_more_than_four_bodies_of_memory(tiny_bundles, kermany):
    """The hostile review: uploads hold no request slot, so 25 stalled 30 MB uploads held 880 MB. Bodies in memory
    across uploads are bounded by 4 x --max-bytes (declared lengths reserved up front): the fifth gets 503."""
    import socket
    import time

    import httpx

    from tests.test_serve import start_server

    proc, url = start_server(tiny_bundles["tflite-int8"], "--max-bytes", "1MB", "--read-timeout", "4")
    port = int(url.rsplit(":", 1)[1])
    held = []
    try:
        for _ in range(4):  # each declares 1 MB, sends 900 kB at once, then stalls
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                      b"Content-Length: 1048576\r\n\r\n" + b"\0" * 900_000)
            held.append(s)
        time.sleep(0.5)
        image = next((kermany / "test" / "NORMAL").iterdir()).read_bytes()
        r = httpx.post(f"{url}/v1/classify", content=image, headers={"Content-Type": "image/jpeg"}, timeout=10)
        assert r.status_code == 503 and "uploads in progress hold" in r.json()["error"], r.text
        assert r.headers.get("retry-after") == "1"
        time.sleep(4.5)  # the stalled uploads end at --read-timeout and free their share
        r = httpx.post(f"{url}/v1/classify", content=image, headers={"Content-Type": "image/jpeg"}, timeout=10)
        assert r.status_code == 200, r.text
    finally:
        for s in held:
            s.close()
        proc.kill()
        proc.wait()


def test_one_saturated_pixel_does_not_squeeze_a_16_bit_xray(shipped_int8, kermany):
    """28.8: min-max put 98 % of a 12-bit image with one pixel at 65535 into grey levels 0..13 and the domain check
    refused it as nearly constant; the contract's rank rule (clip to the samples of rank k and N-1-k) decodes it
    as without the pixel, for PNG and un-windowed DICOM alike."""
    import io

    import numpy as np
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    from edgecxr.data import contract
    from edgecxr.devices import Classifier
    from edgecxr.data.images import decode_image

    gray = np.asarray(Image.open(sorted((kermany / "test" / "PNEUMONIA").iterdir())[0]).convert("L"), np.uint16)
    twelve = gray * 16 + 7  # 12-bit values
    marked = twelve.copy()
    marked[5, 5] = 65535  # a burned-in marker pixel

    def png(a):
        buf = io.BytesIO()
        Image.fromarray(a.astype(np.uint16)).save(buf, format="PNG")
        return buf.getvalue()

    def dcm(a):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID, "CR"
        ds.Rows, ds.Columns = a.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = a.astype(np.uint16).tobytes()
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()

    clf = Classifier.load(shipped_int8)
    for encode in (png, dcm):
        clean, with_marker = (np.asarray(decode_image(encode(a), "x.dcm" if encode is dcm else "x.png")) for a in (twelve, marked))
        assert np.array_equal(clean, contract.scale_uint8(twelve))
        moved = np.abs(clean.astype(int) - with_marker)
        moved[5, 5] = 0  # the marker itself is clipped to white
        assert moved.max() <= 2  # the high rank moves by one sample: a grey level or two elsewhere
        assert len(np.unique(with_marker)) > 200  # min-max left 14 levels
        p_clean, p_marked = (clf.predict(encode(a)).probability for a in (twelve, marked))
        assert (p_clean >= clf.threshold) == (p_marked >= clf.threshold) and abs(p_clean - p_marked) < 0.02
