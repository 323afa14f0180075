"""Issue 12, input/output hardening: no input deleted by --overwrite, atomic exchange, the service under
idle connections, authentication and Host checks, signed bundles. Serve tests are loopback-only and bounded."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgecxr.utils import atomic
from edgecxr.utils.atomic import atomic_dir, check_writable
from edgecxr.cli import main
from edgecxr.utils.errors import EdgecxrError

REPO = Path(__file__).resolve().parents[1]
MARKER = getattr(atomic, "MARKER", ".edgecxr-output")


def _cli(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r, r.stderr.strip().splitlines()


def _tree(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture()
def data(tmp_path, sample) -> Path:
    d = tmp_path / "data"
    shutil.copytree(sample, d)
    return d


@pytest.fixture(scope="session")
def bundle_dir(tiny_bundles) -> Path:
    return tiny_bundles["tflite-int8"]


# -- 1. outputs never overlap inputs; --overwrite replaces only what edgecxr wrote --------------------------
def test_output_overlapping_an_input_is_refused(tmp_path, data):
    link = tmp_path / "link"
    link.symlink_to(data)
    for out in (data, data / "test", data / "new", link, tmp_path):  # equal, inside, inside, via a symlink, contains
        with pytest.raises(EdgecxrError, match="the input"):
            check_writable(out, overwrite=True, inputs=(data,))


def test_evaluate_refuses_out_equal_to_or_inside_the_data_or_the_model_folder(tmp_path, data):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes(b"not a model")
    (run / MARKER).write_text("")  # even an edgecxr output is refused when it holds an input
    before = _tree(data)
    for out in (data, data / "test", run):
        r, lines = _cli("evaluate", "--model", run / "model.keras", "--data", data, "--out", out, "--overwrite")
        assert r.exit_code == 2 and len(lines) == 1 and "the input" in lines[0], r.output
    assert _tree(data) == before and (run / "model.keras").read_bytes() == b"not a model"


def test_overwrite_replaces_only_what_edgecxr_wrote(tmp_path):
    plain = tmp_path / "notes.txt"
    plain.write_text("mine")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    for final in (plain, mine):
        with pytest.raises(EdgecxrError, match="not an edgecxr output"):
            with atomic_dir(final, overwrite=True) as tmp:
                (tmp / "metrics.json").write_text("{}")
    assert plain.read_text() == "mine" and (mine / "thesis.tex").read_text() == "years of work"
    ours = tmp_path / "ours"
    for n in range(2):  # written, then replaced: the marker says it is ours
        with atomic_dir(ours, overwrite=True) as tmp:
            (tmp / "metrics.json").write_text(str(n))
    assert (ours / "metrics.json").read_text() == "1" and (ours / MARKER).is_file()


def test_bundle_folder_is_an_edgecxr_output(tmp_path, bundle_dir):
    old = tmp_path / "old-bundle"
    shutil.copytree(bundle_dir, old)
    (old / MARKER).unlink(missing_ok=True)  # bundles written before the marker: their manifest identifies them
    check_writable(old, overwrite=True)


def test_device_json_inside_the_bundle_is_refused(tmp_path, bundle_dir, sample):
    b = tmp_path / "b"
    shutil.copytree(bundle_dir, b)
    before = _tree(b)
    for args in (["parity", b, "--data", sample, "--json", b / "manifest.json"],
                 ["parity", b, "--data", sample, "--junit", sample / "parity.xml"],
                 ["bench", b, "--json", b, "--runs", "1"]):
        r, lines = _cli("device", *args)
        assert r.exit_code == 2 and len(lines) == 1 and "the input" in lines[0], r.output
    assert _tree(b) == before


# -- 2. the replace never leaves the final path empty; SIGTERM cleans up ------------------------------------
class Killed(BaseException):
    pass


def test_replace_is_one_atomic_exchange(tmp_path, monkeypatch):
    """A writer killed right after any rename still leaves a complete result at the final path."""
    final = tmp_path / "out"
    with atomic_dir(final) as tmp:
        (tmp / "r.json").write_text("old")
    real_rename = os.rename

    def rename_then_die_if_gone(src, dst):
        real_rename(src, dst)
        if not final.exists():
            raise Killed(f"killed after rename({src}, {dst}): {final} is missing")

    monkeypatch.setattr(atomic.os, "rename", rename_then_die_if_gone)
    with atomic_dir(final, overwrite=True) as tmp:
        (tmp / "r.json").write_text("new")
    assert (final / "r.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the previous copy was removed


def test_replace_falls_back_to_two_renames_without_exchange(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False, raising=False)
    final = tmp_path / "out"
    for text in ("old", "new"):
        with atomic_dir(final, overwrite=True) as tmp:
            (tmp / "r.json").write_text(text)
    assert (final / "r.json").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundle: Path, *args, env=None, timeout: float = 90.0):
    """`edgecxr serve BUNDLE` on a free loopback port; returns (process, port)."""
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edgecxr.cli", "serve", str(bundle), "--port", str(port), *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stdout.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code in (200, 401):
                return proc, port
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def stop(proc) -> str:
    if proc.poll() is None:
        proc.terminate()
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out.decode()


def test_sigterm_removes_the_extracted_zip_bundle(tmp_path, bundle_dir):
    pytest.importorskip("uvicorn")
    from edgecxr.formats.bundle import zip_bundle

    archive = zip_bundle(bundle_dir, tmp_path / "b.zip")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc, _ = start_server(archive, env={"TMPDIR": str(scratch)})
    assert [p.name for p in scratch.iterdir() if p.name.startswith("edgecxr-bundle-")]  # extracted while serving
    proc.send_signal(signal.SIGTERM)
    out = stop(proc)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in out, out[-2000:]
    assert not [p.name for p in scratch.iterdir() if p.name.startswith("edgecxr-bundle-")]


# -- 3. the service: idle connections, authentication, Host check ----------------------------------------
TOKEN = "t0k3n-" + "x" * 26


def _recv_all(s: socket.socket, until: float) -> bytes:
    reply = b""
    while time.monotonic() < until:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            break
        if not chunk:
            break
        reply += chunk
    return reply


def test_idle_and_half_sent_connections_neither_block_requests_nor_stay_open(bundle_dir, sample):
    pytest.importorskip("uvicorn")
    image = sorted((sample / "test" / "NORMAL").iterdir())[0].read_bytes()
    proc, port = start_server(bundle_dir, "--header-timeout", "2", "--max-connections", "64",
                              env={"EDGECXR_SERVE_TOKEN": TOKEN})
    idle = []
    try:
        for i in range(64 + 8):  # the default limit in idle connections, and some with half-sent headers
            s = socket.create_connection(("127.0.0.1", port), timeout=0.2)
            if i >= 64:
                s.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
            idle.append(s)
        time.sleep(0.3)
        t0 = time.monotonic()
        import httpx

        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "image/jpeg"}
            for _ in range(3):
                r = c.post("/v1/classify", content=image, headers=auth)
                assert r.status_code == 200 and 0 <= r.json()["probability"] <= 1, r.text
            assert time.monotonic() - t0 < 10  # answered while the idle connections are still open
            assert c.post("/v1/classify", content=image, headers={"Content-Type": "image/jpeg"}).status_code == 401
            r = c.post("/v1/classify", content=image, headers={**auth, "Host": "attacker.example"})
            assert r.status_code == 421 and "--allowed-host" in r.json()["error"]
            assert c.get("/healthz").json() == {"status": "ok"}
            assert c.get("/healthz", headers=auth).json()["counts"]["classified"] == 3
        until = time.monotonic() + 6  # --header-timeout 2: every idle connection is closed by the server
        assert all(_recv_all(s, until) == b"" for s in idle)
        assert time.monotonic() < until
    finally:
        for s in idle:
            s.close()
        out = stop(proc)
    assert "Traceback" not in out, out[-2000:]


@pytest.fixture(scope="session")
def guarded_app(bundle_dir):
    pytest.importorskip("starlette")
    from edgecxr.devices.classifier import Classifier
    from edgecxr.devices.serve import allowed_hosts, create_app

    return create_app(Classifier.load(bundle_dir), token=TOKEN, hosts=allowed_hosts("127.0.0.1"))


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_token_and_host_checks(guarded_app, sample):
    from starlette.testclient import TestClient

    image = sorted((sample / "test" / "NORMAL").iterdir())[0].read_bytes()
    jpeg = {"Content-Type": "image/jpeg"}
    with TestClient(guarded_app, base_url="http://localhost:8080") as c:
        for auth in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}):
            r = c.post("/v1/classify", content=image, headers={**jpeg, **auth})
            assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer" and "token" in r.json()["error"]
        ok = {**jpeg, "Authorization": f"Bearer {TOKEN}"}
        assert c.post("/v1/classify", content=image, headers=ok).status_code == 200
        for host in ("[::1]:8080", "127.0.0.1", "LOCALHOST."):
            assert c.post("/v1/classify", content=image, headers={**ok, "Host": host}).status_code == 200, host
        for host in ("evil.example", "localhost.evil.example:8080", "127.0.0.2", ""):
            assert c.get("/healthz", headers={"Host": host}).status_code == 421, host
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/healthz", headers=ok).json()["model_sha256"]


def test_token_sources(tmp_path, monkeypatch):
    from edgecxr.devices.serve import TOKEN_ENV, read_token
    from edgecxr.utils.errors import ConfigError

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert read_token(None) is None
    (tmp_path / "t").write_text(TOKEN + "\n")
    assert read_token(tmp_path / "t") == TOKEN
    monkeypatch.setenv(TOKEN_ENV, "short")
    with pytest.raises(ConfigError, match="at least 16"):
        read_token(None)
    with pytest.raises(ConfigError, match="cannot read"):
        read_token(tmp_path / "missing")


# -- 4. signed bundles ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    r, _ = _cli("keygen", root / "release")
    assert r.exit_code == 0, r.output
    r, _ = _cli("keygen", root / "other")
    assert r.exit_code == 0, r.output
    return root


@pytest.fixture(scope="session")
def signed_bundle(tmp_path_factory, tiny_model, kermany, keys) -> Path:
    """The tiny model exported with --signing-key (tflite-fp32: no calibration)."""
    out = tmp_path_factory.mktemp("signed")
    r, _ = _cli("export", "--model", tiny_model, "--target", "tflite-fp32", "--data", kermany, "--out", out,
                "--signing-key", keys / "release")
    assert r.exit_code == 0, r.output
    return out / "tflite-fp32"


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(keys):
    assert (keys / "release").stat().st_mode & 0o777 == 0o600 and (keys / "release.pub").is_file()
    assert b"PRIVATE" not in (keys / "release.pub").read_bytes()
    r, lines = _cli("keygen", keys / "release")
    assert r.exit_code == 2 and len(lines) == 1 and "already exists" in lines[0]


def _forge(folder: Path) -> None:
    """What a forger does: change the decision threshold and recompute every digest."""
    from edgecxr.formats import bundle as B

    manifest = json.loads((folder / B.MANIFEST).read_text())
    manifest["threshold"] = 0.99  # every image would be normal
    manifest["digest"] = B.manifest_digest(manifest)
    (folder / B.MANIFEST).write_text(json.dumps(manifest, indent=1))


def test_signed_bundle_verifies_and_a_forged_one_is_refused(signed_bundle, bundle_dir, keys, tmp_path, sample, monkeypatch):
    from edgecxr.formats.bundle import load_bundle
    from edgecxr.devices.classifier import Classifier
    from edgecxr.utils.errors import BundleError
    from edgecxr.formats.signing import TRUSTED_KEY_ENV

    monkeypatch.delenv(TRUSTED_KEY_ENV, raising=False)
    release, other = keys / "release.pub", keys / "other.pub"
    assert Classifier.load(signed_bundle, trusted_key=release).bundle.threshold < 0.99
    forged = tmp_path / "forged"
    shutil.copytree(signed_bundle, forged)
    _forge(forged)
    load_bundle(forged)  # the digest alone cannot tell: it was recomputed
    cases = {forged: "does not verify", signed_bundle: "does not verify", bundle_dir: "not signed"}
    for folder, why in cases.items():
        key = other if folder == signed_bundle else release
        with pytest.raises(BundleError, match=why):
            Classifier.load(folder, trusted_key=key)
    image = sorted((sample / "test" / "NORMAL").iterdir())[0]
    for folder, why in cases.items():
        key = other if folder == signed_bundle else release
        r, lines = _cli("device", "run", folder, image, "--trusted-key", key)
        assert r.exit_code == 2 and len(lines) == 1 and why in lines[0], r.output
    monkeypatch.setenv(TRUSTED_KEY_ENV, str(release))  # the same from the environment (a device's config)
    with pytest.raises(BundleError, match="does not verify"):
        Classifier.load(forged)
    r, lines = _cli("device", "run", signed_bundle, image, "--format", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["results"], r.output


def test_device_stage_needs_cryptography_only_to_verify(signed_bundle, keys):
    code = ("import sys; sys.modules['cryptography'] = None\n"
            "from edgecxr.devices.classifier import Classifier\n"
            f"Classifier.load({str(signed_bundle)!r})\n"
            "print('loaded without cryptography')\n"
            "from edgecxr.utils.errors import MissingDependencyError\n"
            "try:\n"
            f"    Classifier.load({str(signed_bundle)!r}, trusted_key={str(keys / 'release.pub')!r})\n"
            "except MissingDependencyError as exc:\n"
            "    print(exc)\n")
    env = {k: v for k, v in os.environ.items() if k != "EDGECXR_TRUSTED_KEY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    assert "loaded without cryptography" in out.stdout and "edgecxr[signing]" in out.stdout, out.stderr[-2000:]
