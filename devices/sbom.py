"""The software bill of materials (CycloneDX JSON) of the device environment a parity run was verified in.

`edgecxr device parity --sbom FILE` writes it and embeds it in its --json, so `edgecxr report` shows it. It
lists the runtime that ran the model, edgecxr, numpy, Pillow and what they require (as installed here), the
Python interpreter and the operating system; its subject (metadata.component) is the bundle's model. Each
component carries the SHA-256 it can honestly carry, and a property ``edgecxr:sha256-of`` says of what:

- a Python package: its installed ``*.dist-info/RECORD`` (the installer's list of every installed file with that
  file's SHA-256). Every file RECORD lists is re-hashed when the BOM is made (``edgecxr:record-check``;
  ``__pycache__`` left out: bytecode is rewritten at install); the package's native libraries mapped into this
  process (``/proc/self/maps``, loaded extension modules) are nested file components with their own SHA-256.
- edgecxr: a ``sha256sum``-style listing of every file of its packages (an editable install's RECORD holds no
  source file).
- Python: the interpreter executable (and libpython when mapped, nested).
- The archive a package was installed from, only where it is known (an external reference of type
  distribution): ``direct_url.json`` records it (``pip install FILE|URL``), or a wheel in pip's cache
  (``PIP_CACHE_DIR``, else ``~/.cache/pip``) holds a RECORD equal to the installed one for every package file.
  No wheel hash is taken from an index by name and version.
- The operating system: name, kernel, libc; no hash.

Standard library only at import; cyclonedx-python-lib (``pip install 'edgecxr[sbom]'``) when a BOM is made.
"""
from __future__ import annotations

import base64
import hashlib
import importlib.machinery
import importlib.metadata as md
import importlib.util
import json
import os
import platform
import re
import sys
import time
import zipfile
from pathlib import Path

from edgecxr.utils.atomic import sha256_file
from edgecxr.utils.errors import MissingDependencyError

SPEC = "1.6"
INSTALL = "pip install 'edgecxr[sbom]'"
# the packages of pyproject.toml's [tool.setuptools] (an editable install maps each to its own folder)
PACKAGES = ("edgecxr", "edgecxr.training", "edgecxr.export", "edgecxr.devices", "edgecxr.bench", "edgecxr.reports")
CORE_REQUIRES = ("numpy", "pillow", "click", "tqdm", "pydicom")  # when edgecxr's metadata is not installed
IF_IMPORTED = ("cryptography",)  # listed when this process imported it (a signed bundle's --trusted-key)
RECORD_OF = ("its installed {dist}/RECORD: the installer's list of every installed file with that file's "
             "SHA-256 (each re-hashed: edgecxr:record-check)")
TREE_OF = ("a sha256sum-style listing ('<sha256>  <path>' lines, sorted by path) of the {n} files of the packages "
           "{packages} in {roots}, __pycache__ left out")
POLICY = ("Component hashes are SHA-256 of what is installed on this device (edgecxr:sha256-of says of what); an "
          "archive (wheel) hash only where direct_url.json or pip's cache shows the archive the files came from.")


def require_cyclonedx() -> None:
    """Fail before the long work when the BOM cannot be written."""
    if importlib.util.find_spec("cyclonedx") is None:
        raise MissingDependencyError(f"--sbom needs cyclonedx-python-lib, which is not installed: {INSTALL}")


# -- facts about this environment (standard library only) ----------------------------------------
def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _record_file(dist) -> Path | None:
    for f in dist.files or ():
        if f.name == "RECORD" and f.parent.name.endswith(".dist-info"):
            path = Path(dist.locate_file(f))
            return path if path.is_file() else None
    return None


def record_check(dist) -> dict:
    """Re-hash every file the distribution's RECORD lists with a hash (bytecode in __pycache__ left out):
    {"checked": n, "mismatched": [paths], "missing": [paths]}."""
    checked, mismatched, missing = 0, [], []
    for f in dist.files or ():
        if f.hash is None or "__pycache__" in f.parts:
            continue
        try:
            h = hashlib.new(f.hash.mode)
            with open(dist.locate_file(f), "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        except ValueError:  # a hash algorithm hashlib does not know: not checked
            continue
        except OSError:
            missing.append(str(f))
            continue
        checked += 1
        if base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode() != f.hash.value:
            mismatched.append(str(f))
    return {"checked": checked, "mismatched": mismatched, "missing": missing}


def record_warning(name: str, version: str, check: dict) -> str | None:
    bad = check["mismatched"] + check["missing"]
    if not bad:
        return None
    return (f"{name} {version}: {len(check['mismatched'])} installed file(s) differ from its RECORD and "
            f"{len(check['missing'])} are missing (first: {bad[0]}); the package was changed after it was installed")


def loaded_files() -> set[str]:
    """Real paths of the files mapped into this process (Linux) and of the loaded extension modules."""
    paths = set()
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                parts = line.rstrip("\n").split(None, 5)
                if len(parts) == 6 and parts[5].startswith("/"):
                    paths.add(os.path.realpath(parts[5].removesuffix(" (deleted)")))
    except OSError:
        pass
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    for module in list(sys.modules.values()):
        f = getattr(module, "__file__", None)
        if isinstance(f, str) and f.endswith(suffixes):
            paths.add(os.path.realpath(f))
    return paths


def _top_levels(dist) -> set[str]:
    text = dist.read_text("top_level.txt")
    if text:
        return {t.strip() for t in text.split() if t.strip()}
    tops = set()
    for f in dist.files or ():
        first = f.parts[0] if f.parts else ""
        if first and first != ".." and not first.endswith((".dist-info", ".data", ".pth")) and first != "__pycache__":
            tops.add(first.split(".")[0] if len(f.parts) == 1 else first)
    return tops


def dist_of_module(module: str):
    """The installed distribution that provides the imported module `module` (its top-level package)."""
    top = module.split(".")[0]
    mod = sys.modules.get(top)
    where = getattr(mod, "__file__", None)
    if where:
        site = Path(where).resolve().parent
        site = site.parent if Path(where).name.startswith("__init__.") else site
        found = [d for d in md.distributions(path=[str(site)]) if top in _top_levels(d)]
        if found:
            return found[0]
    return next((d for d in md.distributions() if top in _top_levels(d)), None)


def _requires(dist) -> list[str]:
    """Names of the distribution's requirements outside extras (markers other than extra are not evaluated:
    the ones not installed here are left out)."""
    names = []
    for req in dist.requires or ():
        spec, _, marker = req.partition(";")
        if "extra" in marker:
            continue
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
        if m:
            names.append(m.group(1))
    return names


def _installed(name: str):
    try:
        return md.distribution(name)
    except md.PackageNotFoundError:
        return None


def _pip_cache() -> Path | None:
    cache = os.environ.get("PIP_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pip"
    return Path(cache) if Path(cache).is_dir() else None


def _rows(text: str) -> dict:
    """A RECORD's package files (not the dist-info's, not bytecode, not installed outside site-packages): path -> hash."""
    rows = {}
    for line in text.splitlines():
        path, _, rest = line.strip().partition(",")
        digest = rest.split(",")[0]
        first = path.split("/")[0]
        if digest and first != ".." and not first.endswith((".dist-info", ".data")) and "__pycache__" not in path:
            rows[path] = digest
    return rows


class WheelCache:
    """The wheels in pip's cache (built wheels, and downloads in http-v2/*.body), by dist-info folder name."""

    def __init__(self, root: Path | None):
        self.root, self._index = root, None

    def index(self) -> dict:
        if self._index is None:
            self._index = {}
            if self.root is not None:
                for path in [*self.root.glob("wheels/**/*.whl"), *self.root.glob("http-v2/**/*.body")]:
                    try:
                        with zipfile.ZipFile(path) as z:
                            for n in z.namelist():
                                if n.endswith(".dist-info/RECORD") and n.count("/") == 1:
                                    self._index.setdefault(n.split("/")[0].lower(), []).append(path)
                    except (OSError, zipfile.BadZipFile, ValueError):
                        continue
        return self._index

    def find(self, dist) -> dict | None:
        """The cached wheel whose RECORD lists exactly the installed package files with the same hashes."""
        record = _record_file(dist)
        if record is None:
            return None
        installed = _rows(record.read_bytes().decode("utf-8", "replace"))
        name = record.parent.name
        for path in self.index().get(name.lower(), []):
            try:
                with zipfile.ZipFile(path) as z:
                    wheel = _rows(z.read(f"{name}/RECORD").decode("utf-8", "replace"))
            except (OSError, KeyError, zipfile.BadZipFile):
                continue
            if installed and wheel == installed:
                return {"url": path.resolve().as_uri(), "sha256": sha256_file(path),
                        "source": "pip's cache: the wheel whose RECORD matches every installed package file"}
        return None


def archive(dist, cache: WheelCache) -> dict | None:
    """The archive the distribution was installed from, when its hash is known (see the module's doc)."""
    try:
        direct = json.loads(dist.read_text("direct_url.json") or "null")
    except ValueError:
        direct = None
    info = (direct or {}).get("archive_info") if isinstance(direct, dict) else None
    if isinstance(info, dict):
        digest = (info.get("hashes") or {}).get("sha256")
        if not digest and str(info.get("hash", "")).startswith("sha256="):
            digest = info["hash"].split("=", 1)[1]
        if digest:
            return {"url": direct.get("url"), "sha256": digest, "source": "direct_url.json (the archive pip installed)"}
    return cache.find(dist)


def _license(dist) -> str | None:
    meta = dist.metadata
    value = (meta.get("License-Expression") or meta.get("License") or "").strip()
    return value if value and "\n" not in value and len(value) <= 100 else None


def _package(dist, role: str, loaded: set, cache: WheelCache) -> dict:
    name, version = dist.metadata["Name"], dist.version
    record = _record_file(dist)
    check = record_check(dist) if record else None
    files = []
    for f in dist.files or ():
        path = dist.locate_file(f)
        if os.path.realpath(path) in loaded:
            files.append({"path": str(f), "sha256": sha256_file(path)})
    tops = _top_levels(dist)
    return {"name": name, "version": version, "kind": "library", "role": role, "purl": f"pkg:pypi/{_norm(name)}@{version}",
            "sha256": sha256_file(record) if record else None,
            "sha256_of": RECORD_OF.format(dist=record.parent.name) if record else "no RECORD installed: no hash",
            "check": check, "files": sorted(files, key=lambda x: x["path"]), "archive": archive(dist, cache),
            "imported": any(t in sys.modules for t in tops), "license": _license(dist),
            "requires": [_norm(r) for r in _requires(dist)]}


def _edgecxr(loaded: set) -> dict:
    import edgecxr

    roots = []
    for name in PACKAGES:
        try:
            spec = importlib.util.find_spec(name)  # imports the parent package only (never TensorFlow)
        except (ImportError, ValueError):
            spec = None
        for folder in (spec.submodule_search_locations or []) if spec else []:
            roots.append((name, Path(folder)))
    files = {}
    for name, root in sorted(roots, key=lambda r: len(r[0])):  # a subpackage inside its parent's folder: its own name
        for p in root.rglob("*"):
            if p.is_file() and "__pycache__" not in p.relative_to(root).parts:
                files[p.resolve()] = "/".join([*name.split("."), *p.relative_to(root).parts])
    listing = "".join(f"{sha256_file(p)}  {n}\n" for p, n in sorted(files.items(), key=lambda kv: kv[1]))
    dist = _installed("edgecxr")
    requires = [_norm(r) for r in _requires(dist)] if dist is not None else list(CORE_REQUIRES)
    where = sorted({str(r) for _, r in roots})
    return {"name": "edgecxr", "version": edgecxr.__version__, "kind": "application", "role": "edgecxr",
            "purl": f"pkg:pypi/edgecxr@{edgecxr.__version__}", "sha256": hashlib.sha256(listing.encode()).hexdigest(),
            "sha256_of": TREE_OF.format(n=len(files), packages=", ".join(n for n in PACKAGES if any(n == r[0] for r in roots)),
                                        roots=", ".join(where)),
            "check": None, "files": [], "archive": None, "imported": True, "license": "Apache-2.0", "requires": requires,
            "metadata_version": dist.version if dist is not None else None}


def _python(loaded: set) -> dict:
    exe = Path(os.path.realpath(sys.executable))
    libs = sorted(p for p in loaded if re.search(r"/libpython[\d.]*\w*\.(so|dylib)", p))
    version, impl = platform.python_version(), platform.python_implementation()
    return {"name": "python", "version": version, "kind": "platform", "role": "interpreter",
            "description": f"{impl} {' '.join(sys.version.split())}", "sha256": sha256_file(exe) if exe.is_file() else None,
            "sha256_of": f"the interpreter executable {exe}", "files": [{"path": p, "sha256": sha256_file(p)} for p in libs],
            "cpe": f"cpe:2.3:a:python:python:{version}:*:*:*:*:*:*:*" if impl == "CPython" else None,
            "check": None, "archive": None, "imported": True, "license": None, "requires": [], "purl": None}


def _os() -> dict:
    pretty = None
    try:
        pretty = next((line.split("=", 1)[1].strip().strip('"') for line in Path("/etc/os-release").read_text().splitlines()
                       if line.startswith("PRETTY_NAME=")), None)
    except OSError:
        pass
    libc = " ".join(platform.libc_ver()).strip()
    board = Path("/proc/device-tree/model")
    return {"name": platform.system() or "unknown", "version": platform.release(), "kind": "operating-system",
            "role": "operating system", "description": pretty or platform.platform(), "sha256": None,
            "sha256_of": "none: an operating system is not hashed here", "check": None, "files": [], "archive": None,
            "imported": True, "license": None, "requires": [], "purl": None, "cpe": None,
            "extra": {"machine": platform.machine(), "libc": libc or None, "platform": platform.platform(),
                      "board": board.read_bytes().rstrip(b"\0").decode(errors="replace") if board.is_file() else None}}


def environment(runtime: dict) -> list[dict]:
    """Facts about the components of this process's environment (see the module's doc). runtime: the
    Classifier's runtime dict (name, version, provider, threads): the runtime that ran the model."""
    from edgecxr.runtimes import RUNTIMES

    loaded, cache = loaded_files(), WheelCache(_pip_cache())
    spec = RUNTIMES.get(runtime["name"])
    rt = dist_of_module(spec.module) if spec else None
    if rt is None:
        raise MissingDependencyError(f"no installed package provides the runtime {runtime['name']!r}; cannot list it in the SBOM")
    ours = _edgecxr(loaded)
    roles = {_norm(rt.metadata["Name"]): "model runtime", "numpy": "core", "pillow": "core"}
    queue = [rt.metadata["Name"], *ours["requires"], *(n for n in IF_IMPORTED if n in sys.modules)]
    out, seen = [_python(loaded), _os(), ours], {"edgecxr"}
    while queue:
        name = queue.pop(0)
        if _norm(name) in seen:
            continue
        seen.add(_norm(name))
        dist = rt if _norm(name) == _norm(rt.metadata["Name"]) else _installed(name)
        if dist is None:
            continue
        fact = _package(dist, roles.get(_norm(name), "dependency"), loaded, cache)
        if fact["role"] == "model runtime":
            fact["runtime"] = dict(runtime)
        out.append(fact)
        queue += fact["requires"]
    return out


# -- the CycloneDX document ------------------------------------------------------------------
def _props(fact: dict) -> dict:
    p = {"edgecxr:role": fact["role"], "edgecxr:sha256-of": fact["sha256_of"]}
    if fact["check"] is not None:
        c = fact["check"]
        p["edgecxr:record-check"] = (f"{c['checked']} installed files match RECORD" if not (c["mismatched"] or c["missing"])
                                     else record_warning(fact["name"], fact["version"], c))
    elif fact["kind"] == "library":
        p["edgecxr:record-check"] = "not checked: no RECORD installed"
    if fact["kind"] == "library":
        p["edgecxr:imported"] = "true" if fact["imported"] else "false"
    rt = fact.get("runtime")
    if rt:
        p.update({"edgecxr:runtime:name": rt.get("name"), "edgecxr:runtime:reported-version": rt.get("version"),
                  "edgecxr:runtime:provider": rt.get("provider"), "edgecxr:runtime:threads": rt.get("threads")})
    if fact.get("metadata_version") and fact["metadata_version"] != fact["version"]:
        p["edgecxr:installed-metadata-version"] = fact["metadata_version"]
    for k, v in (fact.get("extra") or {}).items():
        p[f"edgecxr:{k}"] = v
    return {k: str(v) for k, v in p.items() if v is not None}


def _cyclonedx():
    """The cyclonedx-python-lib classes build_bom uses, as one namespace (their module paths moved in 11.5)."""
    require_cyclonedx()
    from types import SimpleNamespace

    from cyclonedx.model import ExternalReference, ExternalReferenceType, HashAlgorithm, HashType, Property, XsUri  # noqa: F401
    from cyclonedx.model.bom import Bom, BomMetaData  # noqa: F401
    from cyclonedx.model.component import Component, ComponentType  # noqa: F401
    from cyclonedx.model.lifecycle import LifecyclePhase, PredefinedLifecycle  # noqa: F401
    from packageurl import PackageURL  # noqa: F401

    try:
        from cyclonedx.contrib.this.builders import this_component  # noqa: F401
    except ImportError:  # cyclonedx-python-lib before 11.5
        from cyclonedx.builder.this import this_component  # noqa: F401
    try:
        from cyclonedx.contrib.license.factories import LicenseFactory  # noqa: F401
    except ImportError:
        from cyclonedx.factory.license import LicenseFactory  # noqa: F401
    c = SimpleNamespace(**{k: v for k, v in locals().items() if k != "SimpleNamespace"})
    c.sha = lambda content: [HashType(alg=HashAlgorithm.SHA_256, content=content)] if content else []
    c.props = lambda d: [Property(name=k, value=v) for k, v in d.items()]
    c.kinds = {"library": ComponentType.LIBRARY, "application": ComponentType.APPLICATION,
               "platform": ComponentType.PLATFORM, "operating-system": ComponentType.OPERATING_SYSTEM}
    return c


def _fact_component(f: dict, c):
    """One fact of environment() as a component: its loaded files nested, its wheel as a distribution reference."""
    ref = f["purl"] or f"{f['kind']}:{f['name']}@{f['version']}"
    nested = [c.Component(type=c.ComponentType.FILE, name=x["path"], bom_ref=f"{ref}#{x['path']}", hashes=c.sha(x["sha256"]),
                          properties=c.props({"edgecxr:loaded": "mapped into the process that ran parity"}))
              for x in f["files"]]
    refs = []
    if f["archive"]:
        a = f["archive"]
        refs.append(c.ExternalReference(type=c.ExternalReferenceType.DISTRIBUTION, url=c.XsUri(a["url"] or "urn:unknown"),
                                        hashes=c.sha(a["sha256"]), comment=a["source"]))
    lic = [c.LicenseFactory().make_from_string(f["license"])] if f["license"] else []
    key = _norm(f["name"]) if f["kind"] in ("library", "application") else ref
    return key, c.Component(
        type=c.kinds[f["kind"]], name=f["name"], version=f["version"], bom_ref=ref, description=f.get("description"),
        purl=c.PackageURL.from_string(f["purl"]) if f["purl"] else None, cpe=f.get("cpe"), hashes=c.sha(f["sha256"]),
        external_references=refs, licenses=lic, properties=c.props(_props(f)), components=nested)


def _model_components(clf, report, c):
    """The bundle's model (the BOM's subject) and, when the report's reference was recomputed by it, its twin."""
    m = clf.bundle.manifest
    model = c.Component(type=c.ComponentType.MACHINE_LEARNING_MODEL, name=f"edgecxr bundle {m['target']}", bom_ref="model",
                        hashes=c.sha(m["sha256"]), properties=c.props({k: str(v) for k, v in {
                            "edgecxr:sha256-of": f"the model file {m['model_file']}",
                            "edgecxr:bundle:path": str(clf.bundle.path), "edgecxr:bundle:digest": m.get("digest"),
                            "edgecxr:bundle:created": m.get("created"), "edgecxr:threshold": m.get("threshold")}.items()
                            if v is not None}))
    twin = m.get("twin")
    if not (twin and (report or {}).get("reference", {}).get("source") == "twin"):
        return model, None
    return model, c.Component(
        type=c.ComponentType.MACHINE_LEARNING_MODEL, name=f"edgecxr bundle {m['target']}: float twin {twin['target']}",
        bom_ref="model-twin", hashes=c.sha(m["files"][twin["model_file"]]),
        properties=c.props({"edgecxr:sha256-of": f"the model file {twin['model_file']}",
                            "edgecxr:role": "float reference recomputed on this device"}))


def build_bom(clf, report: dict | None = None):
    """The cyclonedx Bom of this environment, whose subject is `clf`'s model (and its float twin when `report`
    recomputed the reference with it)."""
    c = _cyclonedx()
    import edgecxr

    facts = environment(clf.runtime)
    components = dict(_fact_component(f, c) for f in facts)
    model, twin = _model_components(clf, report, c)
    bom = c.Bom(metadata=c.BomMetaData(component=model, lifecycles=[c.PredefinedLifecycle(c.LifecyclePhase.OPERATIONS)],
                                       properties=c.props({"edgecxr:hashes": POLICY,
                                                           "edgecxr:made-by": "edgecxr device parity --sbom"})))
    bom.metadata.tools.components.add(c.this_component())
    bom.metadata.tools.components.add(c.Component(type=c.ComponentType.APPLICATION, name="edgecxr",
                                                  version=edgecxr.__version__))
    for component in components.values():
        bom.components.add(component)
    uses = [components[_norm(f["name"])] for f in facts if f["role"] in ("model runtime", "edgecxr")]
    if twin is not None:
        bom.components.add(twin)
        bom.register_dependency(twin, uses)
    bom.register_dependency(model, uses)
    for f in facts:
        if f["kind"] in ("library", "application"):
            bom.register_dependency(components[_norm(f["name"])], [components[r] for r in f["requires"] if r in components])
    return bom, facts


def dump(doc: dict) -> str:
    """The BOM file's exact text (so a copy embedded in a parity JSON reproduces the file's SHA-256)."""
    return json.dumps(doc, indent=2) + "\n"


def write_sbom(path, clf, report: dict | None = None) -> dict:
    """Write the CycloneDX JSON of this environment to `path`; return what a parity report embeds: the file,
    its SHA-256, the BOM itself and warnings (installed files that differ from their RECORD)."""
    from cyclonedx.output.json import JsonV1Dot6

    from edgecxr.utils.atomic import write_text_atomic

    t0 = time.perf_counter()
    bom, facts = build_bom(clf, report)
    doc = json.loads(JsonV1Dot6(bom).output_as_string())
    text = dump(doc)
    write_text_atomic(Path(path), text)
    warnings = [w for f in facts if f["check"] and (w := record_warning(f["name"], f["version"], f["check"]))]
    return {"file": str(path), "sha256": hashlib.sha256(text.encode()).hexdigest(), "format": f"CycloneDX {SPEC} JSON",
            "serial": doc.get("serialNumber"), "components": len(doc.get("components", [])), "warnings": warnings,
            "seconds": round(time.perf_counter() - t0, 3), "bom": doc}


# -- reading one back (edgecxr report) ---------------------------------------------------------
def bom_rows(doc: dict) -> list[dict]:
    """The components of a CycloneDX JSON BOM as table rows: name, version, type, role, sha256, of what, check,
    loaded native files, archive."""
    rows = []
    for c in doc.get("components", []):
        p = {x.get("name"): x.get("value") for x in c.get("properties", [])}
        h = next((x["content"] for x in c.get("hashes", []) if x.get("alg") == "SHA-256"), None)
        arch = next((r for r in c.get("externalReferences", []) if r.get("type") == "distribution" and r.get("hashes")), None)
        rows.append({"name": c.get("name"), "version": c.get("version"), "type": c.get("type"), "role": p.get("edgecxr:role"),
                     "sha256": h, "sha256_of": p.get("edgecxr:sha256-of"), "check": p.get("edgecxr:record-check"),
                     "files": [{"path": n.get("name"), "sha256": next((x["content"] for x in n.get("hashes", [])), None)}
                               for n in c.get("components", [])],
                     "archive": {"url": arch.get("url"), "sha256": arch["hashes"][0]["content"], "source": arch.get("comment")}
                     if arch else None})
    order = {"model runtime": 0, "edgecxr": 1, "core": 2, "interpreter": 3, "operating system": 4}
    return sorted(rows, key=lambda r: (order.get(r["role"], 5), str(r["name"]).lower()))
