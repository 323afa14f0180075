"""Shards: per-image prediction files, the unit of work of parity and evaluation, and their merge.

A run over N shards lists the same images on every machine (a data root, folder or CSV), assigns image
k of the list sorted by relative path to shard (k mod N) + 1, and writes one prediction file per shard:

    {"format": "edgecxr-predictions", "version": 1, "task": "parity" | "evaluate",
     "shard": {"index": I, "count": N}, "list": {"sha256": <hash of all N shards' file list>, "size": ...},
     "context": {bundle/model, reference, threshold, ...}, "host": {...}, "seconds": ...,
     "records": [{"index": <position in the list>, "file": <relative path>, "sha256", "label",
                  "float_prob", "device_prob" | "prob", "decode_ms", "preprocess_ms", "infer_ms"}, ...]}

Every file carries `digest` (SHA-256 of its canonical JSON without digest and signature) and, when the
device has a key (`--signing-key`), `signature` (Ed25519 over the digest). `merge` refuses an edited file
(digest), a value no run can write (a probability outside [0, 1], an unknown label, a path that escapes the
data root), file names that do not hash to the run's list, and, given the bundle, criteria or float
references other than the bundle's; given a trusted key, any shard it did not sign. The digest stops
accidents and careless edits; only a signature stops a forger who recomputes it.
`merge` checks the files belong to one run (same task, bundle or model, reference, threshold and file
list), that no shard is given twice and none is missing, and returns one document holding every image
in list order: the report is then computed from it by the same function as an unsharded run's.
No machine talks to another: the file list's hash makes a shard of another list detectable.
No TensorFlow or NumPy here.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path, PurePosixPath

from edgecxr.data.folders import files_hash
from edgecxr.utils.errors import ConfigError, DataError, printable

FORMAT = "edgecxr-predictions"
VERSION = 2  # 2: digest (and signature) over the file
MAX_SHARDS = 10_000
MAX_FILE_BYTES = 1 << 30  # a prediction record is ~300 bytes: a million images is ~300 MB
LOCAL = {"runtime", "data.root", "bundle.path", "model.path"}  # may differ between machines of one run
HINT = "pass the shard files of one run, written by `--shard I/N --predictions FILE`"


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N), 1 <= I <= N."""
    try:
        index, count = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected I/N (shard I of N, e.g. 2/3)") from None
    if not 1 <= index <= count <= MAX_SHARDS:
        raise ConfigError(f"--shard {text}: need 1 <= I <= N <= {MAX_SHARDS}, e.g. 1/3, 2/3 and 3/3")
    return index, count


def select(samples, index: int, count: int) -> list[tuple[int, object]]:
    """[(position in samples, sample)] of shard `index` of `count`: every machine agrees without talking
    (the rank of the relative path in the sorted list decides), every image is in exactly one shard."""
    order = sorted(range(len(samples)), key=lambda i: samples[i].rel)
    mine = sorted(i for rank, i in enumerate(order) if rank % count == index - 1)
    return [(i, samples[i]) for i in mine]


def document(task: str, context: dict, samples, shard: tuple[int, int], records: list[dict], seconds: float,
             host: dict) -> dict:
    """The prediction file of one shard (of (1, 1) for an unsharded run)."""
    doc = {"format": FORMAT, "version": VERSION, "task": task,
           "shard": {"index": shard[0], "count": shard[1]},
           "list": {"sha256": files_hash(samples), "size": len(samples)},
           "context": context, "host": host, "seconds": seconds, "records": records}
    return {**doc, "digest": digest(doc)}


def digest(doc: dict) -> str:
    """SHA-256 of the canonical JSON of a prediction file without its digest and signature."""
    from edgecxr.utils.atomic import finite

    body = finite({k: v for k, v in doc.items() if k not in ("digest", "signature")})  # as write_json_atomic writes it
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def write(path: Path, doc: dict, signing_key=None) -> None:
    """Write a prediction file; signing_key (edgecxr keygen's private key, loaded): sign its digest."""
    from edgecxr.utils.atomic import write_json_atomic

    if signing_key is not None:
        from edgecxr.formats.signing import sign_digest

        doc = {**doc, "signature": sign_digest(signing_key, doc["digest"])}
    write_json_atomic(Path(path), doc)


def read(path) -> dict:
    """One prediction file, checked for shape; DataError (one line) naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such prediction file; {HINT}")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise DataError(f"{path}: larger than {MAX_FILE_BYTES >> 20} MB, not a prediction file; {HINT}")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DataError(f"{path}: not a readable JSON prediction file ({type(exc).__name__}); {HINT}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DataError(f"{path}: not an edgecxr prediction file (no \"format\": \"{FORMAT}\"); {HINT}")
    if doc.get("version") != VERSION:
        raise DataError(f"{path}: prediction file version {doc.get('version')!r}, this edgecxr reads {VERSION}; "
                        "re-run the shard with this version")
    _check_shape(path, doc)
    if digest(doc) != doc.get("digest"):
        raise DataError(f"{path}: the prediction file does not match its digest (edited after it was written, "
                        "or truncated); re-run that shard")
    return doc


def _check_shape(path: Path, doc: dict) -> None:
    try:
        index, count, size = doc["shard"]["index"], doc["shard"]["count"], doc["list"]["size"]
        ok = (all(isinstance(v, int) for v in (index, count, size)) and 1 <= index <= count
              and isinstance(doc["context"], dict) and isinstance(doc["records"], list)
              and isinstance(doc["seconds"], (int, float)) and isinstance(doc["host"], dict))
        indices = [r["index"] for r in doc["records"]]
        ok = ok and all(isinstance(i, int) and 0 <= i < size for i in indices) and len(set(indices)) == len(indices)
    except (KeyError, TypeError) as exc:
        raise DataError(f"{path}: prediction file without {exc} (truncated or edited); re-run that shard") from None
    if not ok:
        raise DataError(f"{path}: prediction file with inconsistent shard, list or record indices (edited?); "
                        "re-run that shard")
    _check_fields(path, doc)


# what a merge reads: the context keys and the fields of a compared image's record, per task
REQUIRED = {
    "parity": ({"threshold", "source", "reference", "bundle", "runtime", "data"},
               {"file": str, "label": int, "float_prob": (int, float), "device_prob": (int, float), "sha256": str,
                "infer_ms": (int, float)}, "device_prob"),
    "evaluate": ({"model", "threshold", "threshold_method", "labels", "n_boot", "prob_dtype", "data"},
                 {"file": str, "label": int, "prob": (int, float)}, "prob"),
}


def _check_fields(path: Path, doc: dict) -> None:
    if doc.get("task") not in REQUIRED:
        raise DataError(f"{path}: prediction file of an unknown task {doc.get('task')!r}; re-run that shard")
    context_keys, fields, marker = REQUIRED[doc["task"]]
    missing = sorted(context_keys - set(doc["context"]))
    if missing:
        raise DataError(f"{path}: prediction file without context {missing[0]!r} (truncated or edited); re-run that shard")
    for record in doc["records"]:
        if not isinstance(record, dict):
            raise DataError(f"{path}: a record is not an object (edited); re-run that shard")
        problem = _name_problem(record.get("file"))
        if problem:
            raise DataError(f"{path}: record {record.get('index')} names {printable(repr(record.get('file')))[:80]}: "
                            f"{problem} (edited); re-run that shard")
        if marker not in record:
            continue
        bad = next((k for k, t in fields.items() if not isinstance(record.get(k), t) or isinstance(record.get(k), bool)),
                   None) or _value_problem(record, marker, doc["task"], doc["context"].get("source"))
        if bad:
            raise DataError(f"{path}: record {record.get('index')} has no valid {bad!r} (truncated or edited); "
                            "re-run that shard")


def _name_problem(name) -> str | None:
    """Why a record's file name cannot be one a run wrote: relative paths inside the data root only."""
    if not isinstance(name, str) or not name:
        return "not a file name"
    if not name.isprintable():
        return "a name with control characters"
    if PurePosixPath(name).is_absolute() or name.startswith("\\") or ".." in PurePosixPath(name).parts:
        return "a path outside the data root"
    return None


def _value_problem(record: dict, marker: str, task: str, source: str | None) -> str | None:
    """A value no run writes: a probability outside [0, 1] (NaN, infinity), a label other than 0 / 1 (or
    unlabeled, for a site's images parity compares with the twin)."""
    from edgecxr.data.folders import UNLABELED

    for key in ("float_prob", marker):
        v = record.get(key)
        if key in record and not (math.isfinite(v) and 0.0 <= v <= 1.0):
            return key
    labels = (0, 1, UNLABELED) if task == "parity" and source == "twin" else (0, 1)
    return None if record.get("label") in labels else "label"


def merge(paths, *, bundle=None, trusted_key=None) -> dict:
    """One document from the shard files of one run, records in list order; DataError when they are not
    one run, a shard is given twice, or one is missing. bundle (a loaded Bundle): the files' acceptance
    criteria and float references must be the bundle's; trusted_key (a public key file): every file must be
    signed by it."""
    if not paths:
        raise DataError(f"no prediction files given; {HINT}")
    docs = [(Path(p), read(p)) for p in paths]
    for path, doc in docs:
        if trusted_key:
            from edgecxr.formats.signing import verify_digest

            verify_digest(trusted_key, doc["digest"], doc.get("signature"), f"{path}", DataError)
        if bundle is not None:
            _check_against_bundle(path, doc, bundle)
    first_path, first = docs[0]
    for path, doc in docs[1:]:
        _same_run(first_path, first, path, doc)
    by_index: dict[int, Path] = {}
    for path, doc in docs:
        index = doc["shard"]["index"]
        if index in by_index:
            raise DataError(f"{path} and {by_index[index]} are both shard {index}/{doc['shard']['count']} "
                            "(overlapping shards); pass each shard once")
        by_index[index] = path
    count = first["shard"]["count"]
    missing = [i for i in range(1, count + 1) if i not in by_index]
    if missing:
        raise DataError(f"shard(s) {', '.join(f'{i}/{count}' for i in missing[:10])} missing "
                        f"({len(by_index)} of {count} given); pass every shard's file")
    docs.sort(key=lambda d: d[1]["shard"]["index"])
    records = sorted((r for _, doc in docs for r in doc["records"]), key=lambda r: r["index"])
    _check_records(records, first["list"]["size"], docs)
    if files_hash([r["file"] for r in records]) != first["list"]["sha256"]:
        raise DataError("the records' file names do not hash to the run's image list (a name was edited or a "
                        "record copied from another image); re-run the shards")
    return {**docs[0][1], "shard": {"index": 1, "count": 1}, "records": records,
            "seconds": sum(doc["seconds"] for _, doc in docs),
            "shards": [_shard_info(path, doc) for path, doc in docs]}


def _check_records(records: list[dict], size: int, docs) -> None:
    seen = [r["index"] for r in records]
    if len(set(seen)) != len(seen):
        dup = next(i for a, i in zip(seen, seen[1:]) if a == i)
        owners = [str(p) for p, d in docs if any(r["index"] == dup for r in d["records"])]
        raise DataError(f"image {dup} of the list is in {' and '.join(owners)} (overlapping shards); "
                        "re-run the shards with one --shard count")
    if len(seen) != size:
        raise DataError(f"the shards hold {len(seen)} of the {size} images of their list (a shard was cut short "
                        "or edited); re-run the incomplete shard")


def _check_against_bundle(path: Path, doc: dict, bundle) -> None:
    """A parity file's criteria, bundle and stored float references must be those of `bundle`."""
    if doc["task"] != "parity":
        raise DataError(f"{path}: --bundle checks parity shards; this is an {doc['task']} shard")
    ctx, m = doc["context"], bundle.manifest
    if (ctx.get("bundle") or {}).get("digest") != m["digest"]:
        raise DataError(f"{path}: a shard of another bundle (manifest digest differs from {bundle.path}'s); {HINT}")
    if ctx.get("acceptance") != m.get("acceptance") or ctx.get("threshold") != float(m["threshold"]):
        raise DataError(f"{path}: its acceptance criteria or threshold are not the bundle's (edited); re-run that shard")
    if ctx.get("source") == "bundle":
        probs = m["reference"]["probs"]
        for r in doc["records"]:
            if "float_prob" in r and probs.get(r["file"]) != r["float_prob"]:
                raise DataError(f"{path}: record {r['index']} ({printable(r['file'])}) holds a float probability "
                                "that is not the bundle's reference (edited); re-run that shard")


def _same_run(path_a: Path, a: dict, path_b: Path, b: dict) -> None:
    for key in ("task", "shard.count", "list.sha256", "list.size"):
        va, vb = _get(a, key), _get(b, key)
        if va != vb:
            raise DataError(f"{path_b} is not a shard of the run of {path_a}: {key} {vb!r} vs {va!r}; {HINT}")
    fa, fb = _flat(a["context"]), _flat(b["context"])
    for key in sorted(set(fa) | set(fb)):
        if key not in LOCAL and not any(key.startswith(k + ".") for k in LOCAL) and fa.get(key) != fb.get(key):
            raise DataError(f"{path_b} is not a shard of the run of {path_a}: {key} {_short(fb.get(key))} vs "
                            f"{_short(fa.get(key))} (a different bundle, model, reference or threshold); {HINT}")


def _get(doc: dict, dotted: str):
    for part in dotted.split("."):
        doc = doc.get(part) if isinstance(doc, dict) else None
    return doc


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 70 else text[:67] + "..."


def _shard_info(path: Path, doc: dict) -> dict:
    host, runtime = doc["host"], doc["context"].get("runtime") or {}
    return {"shard": f"{doc['shard']['index']}/{doc['shard']['count']}", "file": str(path),
            "images": len(doc["records"]), "seconds": doc["seconds"], "platform": host.get("platform"),
            "machine": host.get("machine"), "runtime": {k: runtime.get(k) for k in ("name", "version", "provider")}}
