"""The software bill of materials of the device environment (issue 27, item 6): `device parity --sbom`."""
import base64
import hashlib
import importlib.metadata as md
import json
import os
import platform
import re
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgecxr.cli import main
from edgecxr.devices import sbom
from conftest import assert_exit_is_verdict

RUNTIMES = {"tflite-int8": ("litert", "ai-edge-litert"), "onnx-fp32": ("onnxruntime", "onnxruntime"),
            "openvino-fp32": ("openvino", "openvino")}
LOOSE = ["--min-coverage", "0", "--min-agreement", "0", "--max-recall-drop", "1", "--max-accuracy-drop", "1"]


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _validate(text: str):
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    return JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)


def _props(component: dict) -> dict:
    return {p["name"]: p["value"] for p in component.get("properties", [])}


def _parity(args) -> object:
    r = CliRunner().invoke(main, ["device", "parity", *map(str, args)])
    assert_exit_is_verdict(r, args[args.index("--json") + 1])
    return r


@pytest.fixture(scope="session")
def sbom_runs(tiny_bundles, sample, tmp_path_factory) -> dict:
    """`device parity --sbom --json` on the tiny model's bundles of three runtimes."""
    root = tmp_path_factory.mktemp("sbom")
    runs = {}
    for target in RUNTIMES:
        out = root / target
        r = _parity([tiny_bundles[target], "--data", sample, *LOOSE, "--json", out / "parity.json",
                     "--sbom", out / "sbom.cdx.json"])
        runs[target] = {"bundle": tiny_bundles[target], "json": out / "parity.json", "bom": out / "sbom.cdx.json",
                        "output": r.output}
    return runs


@pytest.mark.parametrize("target", list(RUNTIMES))
def test_sbom_lists_the_runtime_that_ran_and_validates(sbom_runs, target):
    import numpy
    import PIL

    import edgecxr

    run = sbom_runs[target]
    text = run["bom"].read_text()
    assert _validate(text) is None  # the CycloneDX 1.6 JSON schema
    bom, report = json.loads(text), json.loads(run["json"].read_text())
    assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"] == "1.6"
    assert report["sbom"]["bom"] == bom and report["sbom"]["sha256"] == _sha(run["bom"])  # embedded, exactly the file
    assert f"written {run['bom']}" in run["output"] and "SBOM: CycloneDX 1.6 JSON" in run["output"]
    by_name = {c["name"]: c for c in bom["components"]}
    runtime_name, dist = RUNTIMES[target]
    runtimes = [c for c in bom["components"] if _props(c).get("edgecxr:role") == "model runtime"]
    assert [c["name"] for c in runtimes] == [dist]  # the one that ran, not the other installed ones
    assert not {"ai-edge-litert", "onnxruntime", "openvino"} - {dist} & set(by_name)
    rt = runtimes[0]
    assert report["runtime"]["name"] == runtime_name
    assert rt["version"] == md.version(dist) == report["runtime"]["version"]
    assert rt["purl"] == f"pkg:pypi/{dist}@{md.version(dist)}"
    assert _props(rt)["edgecxr:runtime:name"] == runtime_name
    assert _props(rt)["edgecxr:runtime:reported-version"] == report["runtime"]["version"]
    assert by_name["numpy"]["version"] == numpy.__version__ and by_name["pillow"]["version"] == PIL.__version__
    assert by_name["edgecxr"]["version"] == edgecxr.__version__
    assert by_name["python"]["version"] == platform.python_version()
    for name in ("click", "tqdm", "pydicom"):  # edgecxr's own requirements, as installed
        assert by_name[name]["version"] == md.version(name)
    # the hashes are the files': RECORD of each package, the loaded native libraries, the interpreter
    for name in (dist, "numpy", "pillow"):
        d = md.distribution(name)
        record = next(Path(d.locate_file(f)) for f in d.files if f.name == "RECORD" and f.parent.name.endswith(".dist-info"))
        c = by_name[name]
        assert c["hashes"] == [{"alg": "SHA-256", "content": _sha(record)}], name
        assert record.parent.name in _props(c)["edgecxr:sha256-of"]
        assert re.fullmatch(r"\d+ installed files match RECORD", _props(c)["edgecxr:record-check"])
        for f in c.get("components", []):
            assert f["type"] == "file" and f["hashes"][0]["content"] == _sha(d.locate_file(f["name"])), f["name"]
    native = [f["name"] for f in rt["components"]]
    assert any(re.search(r"\.so(\.|$)|\.pyd$|\.dylib$", n) for n in native), native  # the runtime's library that ran
    assert by_name["python"]["hashes"][0]["content"] == _sha(os.path.realpath(sys.executable))
    manifest = json.loads((run["bundle"] / "manifest.json").read_text())
    subject = bom["metadata"]["component"]
    assert subject["type"] == "machine-learning-model" and subject["hashes"][0]["content"] == manifest["sha256"]
    deps = {d["ref"]: set(d.get("dependsOn", [])) for d in bom["dependencies"]}
    assert deps["model"] == {rt["bom-ref"], by_name["edgecxr"]["bom-ref"]}
    assert by_name["numpy"]["bom-ref"] in deps[by_name["edgecxr"]["bom-ref"]]
    # packages outside this check may be altered on the machine (a CI image that strips tests folders): only
    # the ones checked above must be clean
    checked = (dist, "numpy", "pillow", "edgecxr", "click", "tqdm", "pydicom")
    assert not [w for w in report["sbom"]["warnings"] if w.split(" ", 1)[0].lower() in checked]


def test_edgecxr_hash_is_a_listing_of_its_package_files(sbom_runs, tmp_path, monkeypatch):
    bom = json.loads(sbom_runs["tflite-int8"]["bom"].read_text())
    ours = next(c for c in bom["components"] if c["name"] == "edgecxr")
    of = _props(ours)["edgecxr:sha256-of"]
    assert "sha256sum-style listing" in of and "__pycache__ left out" in of and "edgecxr.devices" in of
    site = _fake_site(tmp_path)  # the same listing of a package whose files the test controls
    (site / "fakepkg" / "__pycache__").mkdir()
    (site / "fakepkg" / "__pycache__" / "x.pyc").write_bytes(b"bytecode")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(sbom, "PACKAGES", ("fakepkg",))
    listing = "".join(f"{_sha(site / rel)}  {rel}\n" for rel in ("fakepkg/__init__.py", "fakepkg/_native.so"))
    fact = sbom._edgecxr(set())
    assert fact["sha256"] == hashlib.sha256(listing.encode()).hexdigest() and "the 2 files" in fact["sha256_of"]
    (site / "fakepkg" / "__init__.py").write_text("X = 2\n")
    assert sbom._edgecxr(set())["sha256"] != fact["sha256"]


# -- a planted change in an installed package is caught -------------------------------------------
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _fake_site(root: Path, name="fakepkg", version="1.0", files=None) -> Path:
    """A site-packages folder holding one installed distribution (files, METADATA, RECORD as pip writes them)."""
    files = files or {f"{name}/__init__.py": b"X = 1\n", f"{name}/_native.so": b"\x7fELF not really"}
    site = root / "site"
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nLicense-Expression: MIT\n")
    rows = []
    for rel, data in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(data)
        rows.append(f"{rel},sha256={_b64(data)},{len(data)}")
    rows.append(f"{name}/__pycache__/__init__.cpython-311.pyc,,")
    rows += [f"{info.name}/METADATA,sha256={_b64((info / 'METADATA').read_bytes())},", f"{info.name}/RECORD,,"]
    (info / "RECORD").write_bytes(("\r\n".join(rows) + "\r\n").encode())
    return site


def _dist(site: Path, name="fakepkg"):
    return next(d for d in md.distributions(path=[str(site)]) if d.metadata["Name"] == name)


def test_record_check_catches_a_changed_or_missing_installed_file(tmp_path):
    site = _fake_site(tmp_path)
    d = _dist(site)
    assert sbom.record_check(d) == {"checked": 3, "mismatched": [], "missing": []}
    fact = sbom._package(d, "dependency", {os.path.realpath(site / "fakepkg" / "_native.so")}, sbom.WheelCache(None))
    assert fact["sha256"] == _sha(site / "fakepkg-1.0.dist-info" / "RECORD") and fact["license"] == "MIT"
    assert fact["files"] == [{"path": "fakepkg/_native.so", "sha256": _sha(site / "fakepkg" / "_native.so")}]
    (site / "fakepkg" / "_native.so").write_bytes(b"\x7fELF patched")  # planted
    (site / "fakepkg" / "__init__.py").unlink()
    check = sbom.record_check(d)
    assert check == {"checked": 2, "mismatched": ["fakepkg/_native.so"], "missing": ["fakepkg/__init__.py"]}
    warning = sbom.record_warning("fakepkg", "1.0", check)
    assert "1 installed file(s) differ from its RECORD and 1 are missing (first: fakepkg/_native.so)" in warning
    patched = sbom._package(d, "dependency", {os.path.realpath(site / "fakepkg" / "_native.so")}, sbom.WheelCache(None))
    assert patched["files"][0]["sha256"] == hashlib.sha256(b"\x7fELF patched").hexdigest()  # what is there now


def test_a_changed_package_is_flagged_in_the_bom_the_parity_output_and_the_report(tiny_bundles, sample, tmp_path,
                                                                                    monkeypatch):
    site = _fake_site(tmp_path)
    (site / "fakepkg" / "_native.so").write_bytes(b"\x7fELF patched")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(sys.modules, "fakepkg", types.ModuleType("fakepkg"))
    monkeypatch.setattr(sbom, "IF_IMPORTED", ("fakepkg",))  # listed as a package this process imported
    out = tmp_path / "out"
    r = _parity([tiny_bundles["tflite-int8"], "--data", sample, *LOOSE, "--json", out / "p.json", "--sbom", out / "s.json"])
    assert "warning: fakepkg 1.0: 1 installed file(s) differ from its RECORD" in r.output
    bom = json.loads((out / "s.json").read_text())
    assert _validate((out / "s.json").read_text()) is None
    fake = next(c for c in bom["components"] if c["name"] == "fakepkg")
    assert "differ from its RECORD" in _props(fake)["edgecxr:record-check"] and _props(fake)["edgecxr:imported"] == "true"
    rr = CliRunner().invoke(main, ["report", str(out / "p.json"), "--out", str(out / "r.html"), "--no-maps", "--gallery", "1"])
    assert rr.exit_code == 0, rr.output
    rec = json.loads((out / "r.json").read_text())
    assert any("SBOM: fakepkg 1.0: 1 installed file(s) differ" in reason for reason in rec["verdict"]["reasons"])
    assert "fakepkg 1.0: 1 installed file(s) differ from its RECORD" in (out / "r.html").read_text()


def test_the_archive_hash_comes_from_pips_cache_only_when_its_record_matches(tmp_path, monkeypatch):
    site = _fake_site(tmp_path)
    d = _dist(site)
    info = "fakepkg-1.0.dist-info"

    native = b"\x7fELF not really"

    def wheel(path: Path, init: bytes):
        path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("fakepkg/__init__.py", init)
            z.writestr("fakepkg/_native.so", native)
            z.writestr(f"{info}/METADATA", "Name: fakepkg\n")
            z.writestr(f"{info}/RECORD", f"fakepkg/__init__.py,sha256={_b64(init)},{len(init)}\n"
                                         f"fakepkg/_native.so,sha256={_b64(native)},{len(native)}\n{info}/RECORD,,\n")

    cache = tmp_path / "pip-cache"
    wheel(cache / "http-v2" / "a" / "b" / "other.body", b"X = 2\n")  # another build: different files
    monkeypatch.setenv("PIP_CACHE_DIR", str(cache))
    assert sbom.archive(d, sbom.WheelCache(sbom._pip_cache())) is None
    wheel(cache / "http-v2" / "c" / "d" / "same.body", b"X = 1\n")
    (cache / "http-v2" / "e").mkdir()
    (cache / "http-v2" / "e" / "page.body").write_bytes(b"<html>an index page</html>")
    found = sbom.archive(d, sbom.WheelCache(sbom._pip_cache()))
    assert found["sha256"] == _sha(cache / "http-v2" / "c" / "d" / "same.body") and "pip's cache" in found["source"]
    assert found["url"].endswith("same.body")
    # direct_url.json (pip install FILE|URL) names the archive and its hash: that one is used
    (site / info / "direct_url.json").write_text(json.dumps(
        {"url": "https://example.org/fakepkg-1.0-py3-none-any.whl", "archive_info": {"hashes": {"sha256": "ab" * 32}}}))
    assert sbom.archive(_dist(site), sbom.WheelCache(None)) == {
        "url": "https://example.org/fakepkg-1.0-py3-none-any.whl", "sha256": "ab" * 32,
        "source": "direct_url.json (the archive pip installed)"}


# -- the report --------------------------------------------------------------------------------
def test_report_shows_the_sbom_and_embeds_the_file(sbom_runs, tmp_path):
    run = sbom_runs["onnx-fp32"]
    out = tmp_path / "report.html"
    r = CliRunner().invoke(main, ["report", str(run["json"]), str(run["bundle"]), "--out", str(out), "--no-maps",
                                  "--gallery", "1"])
    assert r.exit_code == 0, r.output
    text, rec = out.read_text(), json.loads(out.with_suffix(".json").read_text())
    bom = json.loads(run["bom"].read_text())
    assert "<h2 id='sbom'>Software bill of materials</h2>" in text and "href='#sbom'" in text
    for c in bom["components"]:
        assert f"<b>{c['name']}</b></td><td>{c.get('version', '–')}</td>" in text, c["name"]
        if c.get("hashes"):
            assert c["hashes"][0]["content"] in text
    link = re.search(r"download='sbom-onnx-fp32\.cdx\.json' href='data:application/vnd\.cyclonedx\+json;base64,([^']+)'", text)
    assert link and base64.b64decode(link.group(1)) == run["bom"].read_bytes()  # the device's file, byte for byte
    assert "the same SHA-256 as the file written on the device" in text
    s = rec["parity"][0]["sbom"]
    assert s["embedded_is_the_file"] and s["bom"] == bom and s["rows"][0]["role"] == "model runtime"
    assert s["rows"][0]["name"] == "onnxruntime" and "software bill of materials" not in " ".join(rec["not_in_report"])
    # an embedded copy changed after the run is said, not shown as the device's
    changed = json.loads(run["json"].read_text())
    changed["sbom"]["bom"]["components"][0]["version"] = "0.0.0"
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    CliRunner().invoke(main, ["report", str(tmp_path / "changed.json"), "--out", str(tmp_path / "c.html"), "--no-maps"])
    assert "NOT the file written on the device" in (tmp_path / "c.html").read_text()
    assert any("not the file written on the device" in x
               for x in json.loads((tmp_path / "c.json").read_text())["verdict"]["reasons"])
    # a parity JSON without one: the report says what is missing
    plain = {k: v for k, v in json.loads(run["json"].read_text()).items() if k != "sbom"}
    (tmp_path / "plain.json").write_text(json.dumps(plain))
    CliRunner().invoke(main, ["report", str(tmp_path / "plain.json"), "--out", str(tmp_path / "p.html"), "--no-maps"])
    assert "software bill of materials of the device environment" in (tmp_path / "p.html").read_text()


# -- optional, and no TensorFlow ----------------------------------------------------------------
def test_sbom_without_cyclonedx_fails_first_with_one_line_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "cyclonedx", None)  # as if not installed
    (tmp_path / "data").mkdir()
    args = ["device", "parity", str(tmp_path / "no-bundle"), "--data", str(tmp_path / "data"), "--json",
            str(tmp_path / "p.json"), "--sbom", str(tmp_path / "s.json")]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and r.output.strip().splitlines() == [
        "error: --sbom needs cyclonedx-python-lib, which is not installed: pip install 'edgecxr[sbom]'"]
    assert not (tmp_path / "p.json").exists() and not (tmp_path / "s.json").exists()
    r = CliRunner().invoke(main, [*args[:5], "--sbom", str(tmp_path / "s.json"), "--ray"])
    assert r.exit_code == 2 and "--sbom lists the environment of this process" in r.output
    r = CliRunner().invoke(main, [*args[:5], "--sbom", str(tmp_path / "x.json"), "--json", str(tmp_path / "x.json")])
    assert r.exit_code == 2 and "name the same file" in r.output


def test_sbom_is_written_without_tensorflow(tiny_bundles, sample, tmp_path):
    code = ("import importlib.util, sys\nfrom edgecxr.cli import main\nimport edgecxr.devices.sbom\n"
            "lazy = 'cyclonedx' not in sys.modules\n"
            "try:\n    main(sys.argv[1:], standalone_mode=False)\nexcept SystemExit as e:\n    pass\n"
            "print('LAZY', lazy, 'TF', 'tensorflow' in sys.modules, 'KERAS', 'tf_keras' in sys.modules or 'keras' in sys.modules)\n")
    args = ["device", "parity", tiny_bundles["tflite-int8"], "--data", sample, *LOOSE, "--sbom", tmp_path / "s.json"]
    p = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert p.stdout.strip().splitlines()[-1] == "LAZY True TF False KERAS False", (p.stdout[-2000:], p.stderr[-2000:])
    bom = json.loads((tmp_path / "s.json").read_text())
    names = {c["name"] for c in bom["components"]}
    assert "ai-edge-litert" in names and not {"tensorflow", "tf-keras", "keras"} & names


def test_the_edgecxr_hash_covers_every_installed_folder():
    """The stages are folders of their own in a source install (pyproject's package-dir): each must be hashed."""
    import tomllib

    from edgecxr.devices.sbom import PACKAGES

    setup = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(PACKAGES) == {"edgecxr", *setup["package-dir"]}
