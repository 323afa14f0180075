"""The bundle: the contract between export and devices.

A folder (or a .zip of one) holding the model file(s) and ``manifest.json``.
The manifest lists the SHA-256 of every other file and carries its own digest
(SHA-256 of its canonical JSON without the ``digest`` key), so a changed,
truncated or missing file is refused before anything runs. That stops accidents,
not a forger who recomputes the hashes: signed bundles (edgecxr.formats.signing) do.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edgecxr.utils.atomic import read_small, sha256_file  # noqa: F401  (sha256_file: imported from here too)
from edgecxr.data.domain import DOMAIN, domain_problem
from edgecxr.utils.errors import BundleError, ConfigError
from edgecxr.formats.modelinfo import OUTPUT_KINDS, is_int, is_number
from edgecxr.data.preprocess import PreprocessSpec
from edgecxr.formats.targets import TARGETS

FORMAT = "edgecxr-bundle"
VERSION = 1
MANIFEST = "manifest.json"
REQUIRED = {
    "format": str, "version": int, "target": str, "runtime": str, "model_file": str, "sha256": str,
    "files": dict, "input": dict, "output": dict, "preprocess": dict, "labels": list, "threshold": float,
    "source_model": dict, "calibration": (dict, type(None)), "optimization": dict, "versions": dict,
    "created": str, "reference": dict, "digest": str,
}
REFERENCE_KEYS = ("split", "probs", "labels", "metrics")
TENSOR_KEYS = ("name", "shape", "dtype", "quantization")
ZERO_POINTS = {"int8": (-128, 127), "uint8": (0, 255)}  # a float tensor has no quantization
DTYPES = ("float32", "float16", "int8", "uint8", "int16")
MAX_UNZIPPED = 2 << 30  # a zip bomb guard: no edge model bundle is near 2 GB
ZIP_PREFIX = "edgecxr-bundle-"  # + the pid of the process that extracted it: orphans are found by it
MAX_MANIFEST = 64 << 20  # a manifest is a few KB (its reference probabilities some more)


def manifest_digest(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def finalize(folder: Path, manifest: dict) -> dict:
    """Hash every file in `folder`, fill files/sha256/digest, write manifest.json; returns it."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): sha256_file(p)
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    manifest = {"format": FORMAT, "version": VERSION, **manifest, "files": files}
    check_values(str(folder), manifest)
    if manifest["model_file"] not in files:
        raise BundleError(f"{folder}: model file {manifest['model_file']} was not written")
    manifest["sha256"] = files[manifest["model_file"]]
    manifest["digest"] = manifest_digest(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


@dataclass
class Bundle:
    path: Path  # the folder
    manifest: dict

    @property
    def target(self):
        return TARGETS[self.manifest["target"]]

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest["model_file"]

    @property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.manifest["preprocess"])

    @property
    def threshold(self) -> float:
        return float(self.manifest["threshold"])

    @property
    def labels(self) -> tuple[str, str]:
        return tuple(self.manifest["labels"])

    @property
    def domain(self) -> dict:
        """The accepted inputs (edgecxr.data.domain); bundles exported before the field get the defaults."""
        return {**DOMAIN, **self.manifest.get("domain", {})}

    @property
    def reference(self) -> dict:
        return self.manifest["reference"]

    def read_verified(self, rel: str) -> bytes:
        """The bytes of a bundle file, read once and checked against the manifest's SHA-256 now: what is handed to
        a runtime is what was hashed, even if the file is swapped after load_bundle verified it."""
        data = (self.path / rel).read_bytes()
        if hashlib.sha256(data).hexdigest() != self.manifest["files"].get(rel):
            raise BundleError(f"{self.path}: {rel} changed since the bundle was verified (its SHA-256 no longer "
                              "matches the manifest); refusing to run it")
        return data

    def model_source(self):
        """The model for open_session, from verified bytes: the bytes themselves, or what the family's
        `from_bytes` of the format table builds from them (OpenVINO: an openvino.Model from the .xml and .bin)."""
        from edgecxr.formats.targets import FAMILIES, load

        data = self.read_verified(self.manifest["model_file"])
        family = FAMILIES[self.target.family]
        return load(family.from_bytes)(self, data) if family.from_bytes else data

    def twin(self) -> "Bundle | None":
        """The float32 model shipped in twin/ as a bundle of its own (same folder, preprocessing, threshold):
        the float reference for images this bundle holds none for. None for bundles without one."""
        twin = self.manifest.get("twin")
        if not twin:
            return None
        output = {**twin["output"], "kind": self.manifest["output"]["kind"],
                  "positive_index": self.manifest["output"].get("positive_index", 0)}
        manifest = {**self.manifest, "target": twin["target"], "model_file": twin["model_file"],
                    "sha256": self.manifest["files"][twin["model_file"]], "input": twin["input"], "output": output,
                    "twin": None}
        return Bundle(self.path, manifest)


def _check_schema(name: str, manifest: dict) -> None:
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{name}: not an edgecxr bundle manifest (format {manifest.get('format')!r})")
    if manifest.get("version") != VERSION:
        raise BundleError(f"{name}: bundle version {manifest.get('version')!r} is not supported (this edgecxr reads version {VERSION}); re-export or upgrade edgecxr")
    for key, kind in REQUIRED.items():
        if key not in manifest:
            raise BundleError(f"{name}: manifest is missing '{key}'; re-export the bundle")
        if not isinstance(manifest[key], kind) and not (kind is float and isinstance(manifest[key], int)):
            raise BundleError(f"{name}: manifest '{key}' has the wrong type; re-export the bundle")
    if manifest["target"] not in TARGETS:
        raise BundleError(f"{name}: unknown target {manifest['target']!r}; valid: {', '.join(TARGETS)}")
    for tensor in ("input", "output"):
        missing = [k for k in TENSOR_KEYS if k not in manifest[tensor]]
        if missing:
            raise BundleError(f"{name}: manifest '{tensor}' lacks {missing}; re-export the bundle")
    problem = domain_problem(manifest.get("domain", DOMAIN))
    if problem:
        raise BundleError(f"{name}: manifest 'domain' {problem}; re-export the bundle")
    _check_twin(name, manifest)
    missing = [k for k in REFERENCE_KEYS if k not in manifest["reference"]]
    if missing:
        raise BundleError(f"{name}: manifest 'reference' lacks {missing}; re-export the bundle")
    check_values(name, manifest)


def _first_bad(items, ok):
    return next((item for item in items if not ok(item)), None)


def check_values(name: str, m: dict) -> None:
    """Every value the device reads is of the right type, finite and in range: one line naming the field.

    Run at export (before the manifest is written) and at every load, so a NaN or impossible number
    never reaches a decision, even in a manifest whose digest was recomputed.
    """
    def fail(field, value, what):
        shown = repr(value)
        raise BundleError(f"{name}: manifest '{field}' must be {what}, got {shown[:80]}; re-export the bundle")

    t = m.get("threshold")
    if not (is_number(t) and 0 < t < 1):
        fail("threshold", t, "a finite probability strictly between 0 and 1")
    labels = m.get("labels")
    if not (isinstance(labels, list) and len(labels) == 2 and all(isinstance(x, str) and x.strip() for x in labels)
            and labels[0] != labels[1]):
        fail("labels", labels, "two different names, negative first")
    _check_preprocess(name, m.get("preprocess"), fail)
    _check_tensors(m, fail)
    _check_reference(m.get("reference") if isinstance(m.get("reference"), dict) else {}, fail)
    if m.get("acceptance") is not None:  # absent in bundles exported before it: parity applies the defaults
        from edgecxr.parity.criteria import check_criteria

        problem = check_criteria(name, m["acceptance"])
        if problem:
            raise BundleError(f"{problem}; re-export the bundle")
    verified = m.get("verified_on", {})
    if not isinstance(verified, dict) or not isinstance(verified.get("cpu") or {}, dict):
        fail("verified_on", verified, "an object whose 'cpu' is an object or null")


def _check_preprocess(name, pre, fail) -> None:
    if not isinstance(pre, dict):
        fail("preprocess", pre, "an object")
    for key, ok, what in (("size", is_int, "an integer"), ("channels", is_int, "an integer"),
                          ("scale", is_number, "a finite number"), ("offset", is_number, "a finite number")):
        if not ok(pre.get(key)):
            fail(f"preprocess.{key}", pre.get(key), what)
    if not isinstance(pre.get("equalize", False), bool):
        fail("preprocess.equalize", pre.get("equalize"), "true or false")
    try:
        PreprocessSpec.from_dict(pre)
    except (ConfigError, TypeError, ValueError) as exc:
        raise BundleError(f"{name}: manifest 'preprocess' is invalid ({exc}); re-export the bundle") from None


def _check_tensors(m: dict, fail) -> None:
    for tensor, rank in (("input", 4), ("output", 2)):
        spec = m.get(tensor) if isinstance(m.get(tensor), dict) else {}
        shape = spec.get("shape")
        if not (isinstance(shape, list) and len(shape) == rank
                and all(d is None or (is_int(d) and (d > 0 or d == -1)) for d in shape)):
            fail(f"{tensor}.shape", shape, f"{rank} sizes (positive integers, -1 for any)")
        if spec.get("dtype") not in DTYPES:
            fail(f"{tensor}.dtype", spec.get("dtype"), f"one of {', '.join(DTYPES)}")
        q = spec.get("quantization")
        low, high = ZERO_POINTS.get(spec["dtype"], (0, 0))
        if q is not None and not (isinstance(q, dict) and is_number(q.get("scale")) and 1e-9 < q["scale"] < 1e3
                                  and is_int(q.get("zero_point")) and low <= q["zero_point"] <= high):
            fail(f"{tensor}.quantization", q, f"null or {{scale: a number in (1e-9, 1e3), zero_point: an integer in "
                                              f"{low}..{high} for {spec['dtype']}}}")
    out = m["output"]
    if out.get("kind", "sigmoid") not in OUTPUT_KINDS:
        fail("output.kind", out.get("kind"), f"one of {', '.join(OUTPUT_KINDS)}")
    units = out["shape"][-1] if is_int(out["shape"][-1]) and out["shape"][-1] > 0 else 2
    pos = out.get("positive_index", 0)
    if not (is_int(pos) and 0 <= pos < units):
        fail("output.positive_index", pos, f"an integer from 0 to {units - 1}")


def _check_reference(ref: dict, fail) -> None:
    probs, ref_labels, ref_metrics = ref.get("probs"), ref.get("labels"), ref.get("metrics")
    if not isinstance(ref.get("split"), str):
        fail("reference.split", ref.get("split"), "a split name")
    if not (isinstance(probs, dict) and probs):
        fail("reference.probs", probs, "a non-empty map of image -> probability")
    bad = _first_bad(probs.items(), lambda kv: is_number(kv[1]) and 0 <= kv[1] <= 1)
    if bad:
        fail("reference.probs", bad[1], f"probabilities in [0, 1] (image {bad[0]})")
    if not (isinstance(ref_labels, dict) and set(ref_labels) == set(probs)):
        fail("reference.labels", type(ref_labels).__name__, "a label for exactly the images of reference.probs")
    bad = _first_bad(ref_labels.items(), lambda kv: is_int(kv[1]) and kv[1] in (0, 1))
    if bad:
        fail("reference.labels", bad[1], f"0 or 1 (image {bad[0]})")
    if not isinstance(ref_metrics, dict):
        fail("reference.metrics", ref_metrics, "an object")
    for key in ("accuracy", "recall", "specificity"):
        v = ref_metrics.get(key)
        if not (is_number(v) and 0 <= v <= 1):
            fail(f"reference.metrics.{key}", v, "a finite number in [0, 1]")


def _check_twin(name: str, manifest: dict) -> None:
    twin = manifest.get("twin")
    if twin is None:
        return
    ok = (isinstance(twin, dict) and twin.get("target") in TARGETS and TARGETS[twin["target"]].precision == "fp32"
          and TARGETS[twin["target"]].family == TARGETS[manifest["target"]].family
          and twin.get("model_file") in manifest["files"]
          and all(isinstance(twin.get(t), dict) and all(k in twin[t] for k in TENSOR_KEYS)
                  and twin[t]["dtype"] == "float32" and twin[t]["quantization"] is None for t in ("input", "output")))
    if ok and manifest["files"][twin["model_file"]] == manifest["files"].get(manifest["model_file"]):
        raise BundleError(f"{name}: manifest 'twin' is the bundle's own model, not its float32 twin; re-export the bundle")
    if not ok:
        raise BundleError(f"{name}: manifest 'twin' is malformed (a float32 model of the bundle's format, listed "
                          "in its files, with input and output specs); re-export the bundle")


def _verify_files(folder: Path, manifest: dict) -> None:
    for rel, digest in manifest["files"].items():
        path = folder / rel
        if PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts:
            raise BundleError(f"{folder}: manifest names a file outside the bundle ({rel}); refusing it")
        if not path.is_file():
            raise BundleError(f"{folder}: bundle file {rel} is missing; re-export or re-copy the bundle")
        if sha256_file(path) != digest:
            raise BundleError(f"{folder}: {rel} does not match its SHA-256 in the manifest (changed or truncated); refusing to load it")
    if manifest["files"].get(manifest["model_file"]) != manifest["sha256"]:
        raise BundleError(f"{folder}: model sha256 disagrees with the file list; the manifest was edited")


def load_bundle(path, trusted_key=None) -> Bundle:
    """Open and fully verify a bundle folder or .zip, before anything runs.

    trusted_key: a public key file (edgecxr keygen's .pub); when given, the bundle must carry a
    signature by that key (see edgecxr.formats.signing). The digest alone does not stop a forger.
    """
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".zip":
        path = _extract_zip(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{path}: no {MANIFEST}; pass a bundle folder written by `edgecxr export`")
    text = read_small(manifest_path, str(manifest_path), limit=MAX_MANIFEST, error=BundleError)
    deep = BundleError(f"{manifest_path}: nested too deeply to be a manifest; re-export the bundle")
    try:
        manifest = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{manifest_path}: not valid JSON ({exc}); re-export the bundle") from None
    except RecursionError:  # [[[[... 200k levels deep
        raise deep from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path}: not a manifest object; re-export the bundle")
    try:
        _check_schema(str(manifest_path), manifest)
        digest = manifest_digest(manifest)  # json.dumps: as deep as the parser allowed, from deeper in the stack
    except RecursionError:
        raise deep from None
    if digest != manifest["digest"]:
        raise BundleError(f"{manifest_path}: manifest digest mismatch (the manifest was edited); re-export the bundle")
    _verify_files(path, manifest)
    if trusted_key:
        from edgecxr.formats.signing import verify_bundle

        verify_bundle(path, manifest, trusted_key)
    return Bundle(path, manifest)


def _extract_zip(archive: Path) -> Path:
    """Extract a zipped bundle to a private temporary folder (removed at exit), refusing escaping paths."""
    import atexit
    import shutil
    import tempfile

    _remove_orphans(Path(tempfile.gettempdir()))
    target = Path(tempfile.mkdtemp(prefix=f"{ZIP_PREFIX}{os.getpid()}-"))
    atexit.register(shutil.rmtree, target, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                dest = (target / info.filename).resolve()
                if not dest.is_relative_to(target.resolve()) or info.filename.startswith("/"):
                    raise BundleError(f"{archive}: archive entry {info.filename!r} escapes the bundle folder; refusing it")
            if sum(info.file_size for info in zf.infolist()) > MAX_UNZIPPED:
                raise BundleError(f"{archive}: unpacks to more than {MAX_UNZIPPED >> 20} MB; refusing it")
            zf.extractall(target)
    except zipfile.BadZipFile as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise BundleError(f"{archive}: not a valid zip archive ({exc})") from None
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    inner = [p for p in target.iterdir()]
    return inner[0] if len(inner) == 1 and inner[0].is_dir() else target


def release_extraction(folder: Path) -> None:
    """Remove this process's extraction of a zipped bundle now, not at exit (a ranking of many zips would keep
    every one on disk); a bundle folder that is not an extraction is left alone."""
    import shutil
    import tempfile

    folder = Path(folder)
    for candidate in (folder, folder.parent):
        if candidate.name.startswith(f"{ZIP_PREFIX}{os.getpid()}-") and candidate.parent == Path(tempfile.gettempdir()):
            shutil.rmtree(candidate, ignore_errors=True)
            return


def _remove_orphans(tmp: Path) -> None:
    """Extractions whose process is gone (killed with -9: no atexit ran) are removed by the next extraction."""
    import shutil

    for folder in tmp.glob(f"{ZIP_PREFIX}*-*"):
        pid = folder.name[len(ZIP_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or folder.is_symlink() or folder.stat().st_uid != os.getuid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # alive, another user's process
            pass


def zip_bundle(folder: Path, archive: Path) -> Path:
    """Pack a bundle folder into a .zip (written atomically)."""
    from edgecxr.utils.atomic import write_bytes_atomic
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file():
                zf.write(p, Path(folder.name) / p.relative_to(folder))
    write_bytes_atomic(archive, buf.getvalue())
    return archive
