"""`edgecxr serve`: the HTTP service on real images, with Starlette's TestClient and one real uvicorn on loopback."""
import io
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from edgecxr.utils.errors import ConfigError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")


@pytest.fixture(scope="session")
def serve_bundle(tiny_bundles) -> Path:
    return tiny_bundles["tflite-int8"]


@pytest.fixture(scope="session")
def clf(serve_bundle):
    from edgecxr.devices.classifier import Classifier

    return Classifier.load(serve_bundle)


@pytest.fixture()
def client(clf):
    from starlette.testclient import TestClient

    from edgecxr.devices.serve import create_app

    with TestClient(create_app(clf, max_bytes=2 * 2**20), raise_server_exceptions=True) as c:
        yield c


@pytest.fixture(scope="session")
def images(kermany) -> list:
    normal = sorted((kermany / "test" / "NORMAL").iterdir())[:4]
    pneumonia = sorted((kermany / "test" / "PNEUMONIA").iterdir())[:4]
    return normal + pneumonia


def _dicom_bytes(pixels: np.ndarray, photometric="MONOCHROME2") -> bytes:
    from test_reliability import _dicom

    return _dicom(pixels, photometric)


# -- the happy paths ---------------------------------------------------------------------------
def test_raw_jpeg_matches_the_classifier(client, clf, images):
    for path in images:
        r = client.post("/v1/classify", content=path.read_bytes(), headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 200, r.text
        body = r.json()
        expected = clf.predict(path)
        assert body["probability"] == pytest.approx(expected.probability, abs=1e-7)
        assert body["label"] == expected.label and body["threshold"] == clf.threshold
        assert body["model_sha256"] == clf.bundle.manifest["sha256"] and body["target"] == "tflite-int8"
        assert {"name", "version", "provider"} <= set(body["runtime"])
        assert set(body["timings"]) == {"decode_ms", "preprocess_ms", "infer_ms", "total_ms"}
        assert r.headers["content-type"] == "application/json"


def test_multipart_png_dicom_and_octet_stream(client, clf, images):
    from PIL import Image

    path = images[-1]
    png = io.BytesIO()
    Image.open(path).convert("L").save(png, format="PNG")
    # the same answer as the library for the same bytes (a JPEG decodes at reduced scale for the 32 px model,
    # so its PNG copy may differ by an int8 step or two)
    jpeg_p, png_p = clf.predict(path.read_bytes()).probability, clf.predict(png.getvalue()).probability
    cases = [
        (dict(files={"file": ("chest.jpeg", path.read_bytes(), "image/jpeg")}), jpeg_p),
        (dict(files={"file": ("chest.png", png.getvalue(), "image/png")}, data={"note": "x"}), png_p),
        (dict(content=path.read_bytes(), headers={"Content-Type": "application/octet-stream"}), jpeg_p),
        (dict(content=png.getvalue(), headers={"Content-Type": "image/png"}), png_p),
    ]
    for kw, expected in cases:
        r = client.post("/v1/classify", **kw)
        assert r.status_code == 200, r.text
        assert r.json()["probability"] == pytest.approx(expected, abs=1e-7)
    assert abs(jpeg_p - png_p) < 0.05
    gray = np.asarray(Image.open(path).convert("L")).astype(np.uint16) * 16  # a 12-bit DICOM of the same pixels
    for kw in (dict(content=_dicom_bytes(gray), headers={"Content-Type": "application/dicom"}),
               dict(files={"file": ("chest.dcm", _dicom_bytes(gray), "application/dicom")})):
        r = client.post("/v1/classify", **kw)
        assert r.status_code == 200, r.text
        assert 0.0 <= r.json()["probability"] <= 1.0


def test_healthz(client, clf):
    r = client.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["model_sha256"] == clf.bundle.manifest["sha256"]
    assert body["max_bytes"] == 2 * 2**20 and body["runtime"]["name"] == clf.runtime["name"]


# -- refusals: always JSON {"error": one line} ----------------------------------------------------
@pytest.mark.parametrize("kw,status,text", [
    (dict(content=b"hello", headers={"Content-Type": "text/plain"}), 415, "not an image"),
    (dict(content=b'{"a": 1}', headers={"Content-Type": "application/json"}), 415, "not an image"),
    (dict(content=b"\xff\xd8\xff\xe0", headers={"Content-Type": "application/x-www-form-urlencoded"}), 415, "curl -F"),
    (dict(content=b"\xff\xd8\xff\xe0"), 415, "(none)"),
    (dict(content=b"this is not a jpeg", headers={"Content-Type": "image/jpeg"}), 422, "not a readable image"),
    (dict(content=b"", headers={"Content-Type": "image/jpeg"}), 400, "empty"),
    (dict(files={"other": ("x.jpeg", b"\xff\xd8", "image/jpeg")}), 422, "field 'file'"),
    (dict(files={"file": ("x.jpeg", b"", "image/jpeg")}), 400, "empty"),
    (dict(data={"file": "just text"}), 415, "not an image"),
    (dict(files={"file": (None, b"just text")}), 422, "field 'file'"),
    (dict(content=b"--b\r\ngarbage", headers={"Content-Type": "multipart/form-data"}), 400, "multipart"),
])
def test_bad_requests_get_json_errors(client, kw, status, text):
    r = client.post("/v1/classify", **kw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert text in err and "\n" not in err and "Traceback" not in err


def test_corrupt_images_are_422(client, images):
    from test_reliability import _png_header_claiming

    jpeg = images[0].read_bytes()
    for body in (jpeg[:1000], _png_header_claiming(100_000, 100_000), b"\0" * 128 + b"DICM" + b"\0" * 64):
        r = client.post("/v1/classify", content=body, headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 422 and r.json()["error"].startswith("upload"), r.text
    r = client.post("/v1/classify", files={"file": ("../../etc/passwd\x00.jpeg", jpeg[:1000], "image/jpeg")})
    assert r.status_code == 422 and r.json()["error"].startswith("passwd_") and "/" not in r.json()["error"].split(":")[0], r.text


def test_size_cap_is_413(client, clf):
    from starlette.testclient import TestClient

    from edgecxr.devices.serve import create_app

    big = b"\xff\xd8" + b"\0" * (2 * 2**20)
    r = client.post("/v1/classify", content=big, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 413 and "limit" in r.json()["error"]
    r = client.post("/v1/classify", files={"file": ("big.jpeg", big, "image/jpeg")})
    assert r.status_code == 413

    def chunks():  # no Content-Length: the cap applies while streaming
        for _ in range(40):
            yield b"\0" * 65536

    with TestClient(create_app(clf, max_bytes=100_000)) as small:
        r = small.post("/v1/classify", content=chunks(), headers={"Content-Type": "image/png"})
        assert r.status_code == 413 and "100,000" in r.json()["error"]


def test_wrong_routes_are_json(client):
    r = client.get("/v1/classify")
    assert r.status_code == 405 and r.json() == {"error": "Method Not Allowed"}
    r = client.get("/admin")
    assert r.status_code == 404 and "error" in r.json()


def test_model_calls_never_overlap(clf, images):
    """Many threads at once: every answer right, and the runtime is never entered twice at the same time."""
    from starlette.testclient import TestClient

    from edgecxr.devices.serve import create_app

    expected = {p.name: clf.predict(p).probability for p in images}
    inside, overlaps = [0], [0]
    guard = threading.Lock()
    real_run = clf.session.run

    def run(x):
        with guard:
            inside[0] += 1
            overlaps[0] += inside[0] > 1
        try:
            time.sleep(0.002)
            return real_run(x)
        finally:
            with guard:
                inside[0] -= 1

    clf.session.run = run
    errors = []
    try:
        with TestClient(create_app(clf, workers=4)) as c:
            def worker(k):
                for i in range(6):
                    p = images[(k + i) % len(images)]
                    r = c.post("/v1/classify", content=p.read_bytes(), headers={"Content-Type": "image/jpeg"})
                    if r.status_code != 200 or abs(r.json()["probability"] - expected[p.name]) > 1e-7:
                        errors.append((p.name, r.status_code, r.text))

            threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert not any(t.is_alive() for t in threads)
            assert c.get("/healthz").json()["counts"]["classified"] == 36
    finally:
        del clf.session.run
    assert errors == [] and overlaps[0] == 0


def test_parse_size_and_loopback():
    from edgecxr.devices.serve import _is_loopback, parse_size

    assert parse_size("32MB") == 32 * 2**20 and parse_size("512k") == 512 * 1024 and parse_size(1000) == 1000
    for bad in ("", "ten", "5XB", "0"):
        with pytest.raises(ConfigError):
            parse_size(bad)
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("192.168.1.4")


def test_serve_never_imports_tensorflow(serve_bundle):
    code = ("import sys\n"
            "from edgecxr.cli import main\n"
            "from edgecxr.devices.classifier import Classifier\n"
            "from edgecxr.devices.serve import create_app, serve\n"
            f"create_app(Classifier.load({str(serve_bundle)!r}))\n"
            "print('TF', 'tensorflow' in sys.modules or 'tf_keras' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0 and "TF False" in out.stdout, out.stderr


# -- one real uvicorn on loopback ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundle: Path, *args, timeout: float = 90.0):
    """`edgecxr serve BUNDLE` in a subprocess on a free loopback port; returns (process, base url)."""
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edgecxr.cli", "serve", str(bundle), "--port", str(port), *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stdout.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def half_upload(host: str, port: int, total: int, send: int) -> None:
    """A client that announces `total` bytes, sends `send` of them and hangs up."""
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(f"POST /v1/classify HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
                  f"Content-Length: {total}\r\n\r\n".encode() + b"\xff\xd8" + b"\0" * (send - 2))


def test_real_server_on_loopback(serve_bundle, clf, images):
    import httpx

    proc, url = start_server(serve_bundle, "--max-bytes", "1MB", "--workers", "2", "--read-timeout", "2")
    try:
        host, port = "127.0.0.1", int(url.rsplit(":", 1)[1])
        expected = {p.name: clf.predict(p).probability for p in images}
        results, errors = [], []

        def worker(k):
            with httpx.Client(base_url=url, timeout=30) as c:
                for i in range(8):
                    p = images[(k + i) % len(images)]
                    try:
                        r = c.post("/v1/classify", content=p.read_bytes(), headers={"Content-Type": "image/jpeg"})
                        ok = r.status_code == 200 and abs(r.json()["probability"] - expected[p.name]) < 1e-7
                        (results if ok else errors).append((p.name, r.status_code))
                    except httpx.HTTPError as exc:
                        errors.append((p.name, repr(exc)))

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for _ in range(3):  # clients that hang up mid-upload while the others work
            half_upload(host, port, 200_000, 50_000)
        for t in threads:
            t.join(120)
        assert errors == [] and len(results) == 32
        with socket.create_connection((host, port), timeout=10) as s:  # a stalled upload gets 408, not a stuck worker
            s.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                      b"Content-Length: 5000\r\n\r\n\xff\xd8")
            t0 = time.monotonic()
            reply = b""
            while b"}" not in reply and time.monotonic() - t0 < 8:  # headers and the JSON body may come apart
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 408") and time.monotonic() - t0 < 8, reply
            assert b"--read-timeout" in reply or b"--min-upload-rate" in reply, reply
        with httpx.Client(base_url=url, timeout=30) as c:
            r = c.post("/v1/classify", files={"file": ("x.jpeg", images[0].read_bytes(), "image/jpeg")})
            assert r.status_code == 200 and r.json()["probability"] == pytest.approx(expected[images[0].name], abs=1e-7)
            r = c.post("/v1/classify", content=b"\0" * (2 * 2**20), headers={"Content-Type": "image/jpeg"})
            assert r.status_code == 413 and "error" in r.json()
            r = c.post("/v1/classify", content=b"hello", headers={"Content-Type": "text/plain"})
            assert r.status_code == 415
            health = c.get("/healthz").json()
        assert health["counts"]["classified"] == 33 and health["counts"]["errors"] == 0
        assert proc.poll() is None
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    text = out.decode()
    assert "Traceback" not in text, text[-3000:]
    assert "127.0.0.1" in text and "tflite-int8" in text


def test_a_busy_port_is_one_line_before_the_model_loads(serve_bundle, monkeypatch):
    """`edgecxr serve` on a port another program holds: exit 2 and one line naming host:port, never
    "serving at" followed by a uvicorn error."""
    import socket

    from click.testing import CliRunner

    from edgecxr.cli import main
    from edgecxr.devices import classifier

    monkeypatch.setattr(classifier.Classifier, "load", lambda *a, **k: pytest.fail("the model loaded first"))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        r = CliRunner().invoke(main, ["serve", str(serve_bundle), "--port", str(port)])
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert lines == [f"error: cannot use 127.0.0.1:{port}: Address already in use; another program holds that port; "
                     "choose another --port"]
