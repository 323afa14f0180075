"""`edgecxr report`: one self-contained HTML page (images inlined) a clinician can read, and its JSON twin:
the verification record of a bundle.

    edgecxr report runs/mnv2 runs/mnv2-test --out report.html     # training run + evaluate folder
    edgecxr report bench/ --out report.html                        # benchmark folder (parity table)
    edgecxr report test-eval/metrics.json bundles/tflite-int8 parity.json bench.json --out evidence.html

Each path may be a training run (model.keras, val_predictions.npz, history.csv), an evaluate folder
(metrics.json, predictions.npz) or its metrics.json, a bundle folder or its manifest.json, a benchmark
folder (benchmark.json), or parity / bench JSON files (`edgecxr device parity --json`, `device bench --json`),
given directly or inside a folder; direct subfolders are searched too. What is missing is said, not faked.
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

from edgecxr.options import data_option
from edgecxr.parity import metrics
from edgecxr.utils.errors import EdgecxrError
from edgecxr.reports.html import Mapper, render


@dataclass
class Section:
    """One set of predictions: validation (training run) or an evaluated split."""
    title: str
    folder: Path
    y: np.ndarray
    prob: np.ndarray
    rel: list
    threshold: float
    method: str
    m: dict = field(default_factory=dict)


@dataclass
class Found:
    sections: list = field(default_factory=list)
    history: dict | None = None
    model: Path | None = None
    info: object = None
    data_roots: list = field(default_factory=list)
    bench: list = field(default_factory=list)  # parity table rows
    parity: list = field(default_factory=list)  # parity reports (with flipped cases)
    notes: list = field(default_factory=list)  # what is missing
    manifests: dict = field(default_factory=dict)  # bundle folder -> its manifest
    device_bench: list = field(default_factory=list)  # `edgecxr device bench --json` results
    seen: set = field(default_factory=set)  # files already read (a file given and its folder too)


MAX_INPUT_JSON = 32 << 20  # edgecxr's largest (a benchmark with every row) is a few MB; a 50 MB string took 3.4 GB


def _json(path: Path):
    from edgecxr.utils.atomic import read_small

    if path.is_file() and path.stat().st_size > MAX_INPUT_JSON:
        raise EdgecxrError(f"{path}: {path.stat().st_size >> 20} MB, larger than any JSON edgecxr writes "
                           f"({MAX_INPUT_JSON >> 20} MB at most); pass the file edgecxr wrote, unchanged")
    try:
        return json.loads(read_small(path, str(path), limit=MAX_INPUT_JSON, error=EdgecxrError))
    except (EdgecxrError, ValueError, RecursionError):  # a file nested 100,000 deep is not one of edgecxr's
        return None


def _npz(path: Path):
    with np.load(path, allow_pickle=False) as z:
        return z["y"].astype(int), z["prob"].astype(np.float64), [str(r) for r in z["rel"]]


def _read_history(path: Path) -> dict:
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    return {k: [float(r[k]) for r in rows] for k in (rows[0] if rows else {}) if k != "epoch"}


def _scan(folder: Path, found: Found) -> None:
    from edgecxr.formats.modelinfo import load_info

    if (folder / "val_predictions.npz").is_file():
        info = load_info(folder / "model.keras") if (folder / "model.json").is_file() else None
        y, p, rel = _npz(folder / "val_predictions.npz")
        vm = _json(folder / "val_metrics.json") or {}
        thr = float(vm.get("threshold", info.threshold if info else 0.5))
        found.sections.append(Section(f"Validation split ({folder.name})", folder, y, p, rel, thr,
                                      info.threshold_method if info else "from the training run"))
        split = _json(folder / "split.json") or {}
        if split.get("data"):
            found.data_roots.append(Path(split["data"]))
    if (folder / "model.keras").is_file() and found.model is None:
        found.model = folder / "model.keras"
    if (folder / "history.csv").is_file() and found.history is None:
        found.history = _read_history(folder / "history.csv")
    if (folder / "metrics.json").is_file() and (folder / "predictions.npz").is_file():
        _add_evaluate(folder / "metrics.json", found)
    for path in sorted(folder.glob("*.json")):
        if path.name != "metrics.json":
            _add_json(path, _json(path), found, given=False)


def _kind(r) -> str | None:
    """What a JSON file is: evaluate, manifest, parity, bench (device bench) or benchmark, else None."""
    if not isinstance(r, dict):
        return None
    if r.get("format") == "edgecxr-bundle":
        return "manifest"
    if "agreement" in r and (isinstance(r.get("device"), dict) or r.get("labeled") is False):
        return "parity"  # labeled, or a site's unlabeled X-rays (no device metrics)
    if "latency_ms" in r and "bare_invoke_ms" in r:
        return "bench"
    if isinstance(r.get("rows"), list):
        return "benchmark"
    if "confusion" in r and "split" in r and "threshold" in r:
        return "evaluate"
    return None


def _add_evaluate(path: Path, found: Found) -> None:
    if path.resolve() in found.seen:
        return
    found.seen.add(path.resolve())
    folder = path.parent
    if not (folder / "predictions.npz").is_file():
        raise EdgecxrError(f"{path}: no predictions.npz beside this evaluate metrics.json; pass the folder "
                           "`edgecxr evaluate --out` wrote, unchanged")
    m = _json(path) or {}
    _number(path, "threshold", m.get("threshold"), low=0, high=1)
    y, p, rel = _npz(folder / "predictions.npz")
    found.sections.append(Section(f"{str(m.get('split', 'evaluated')).capitalize()} set ({folder.name})", folder,
                                  y, p, rel, float(m.get("threshold", 0.5)), m.get("threshold_method", ""), m))
    if m.get("model") and found.model is None and Path(m["model"]).is_file():
        found.model = Path(m["model"])
    if (m.get("data") or {}).get("root"):
        found.data_roots.append(Path(m["data"]["root"]))


def _add_json(path: Path, r, found: Found, *, given: bool) -> None:
    """One JSON file by what it holds; a file given by name that holds nothing usable is an error."""
    kind = _kind(r)
    if kind is None:
        if given:
            raise EdgecxrError(f"{path}: not a file `edgecxr report` reads; pass an evaluate metrics.json, a bundle "
                               "manifest.json, or the JSON of `device parity --json`, `device bench --json` or `benchmark`")
        return
    if kind == "evaluate":  # inside a folder, only metrics.json beside its predictions.npz counts (see _scan)
        if given:
            _add_evaluate(path, found)
        return
    if path.resolve() in found.seen:
        return
    found.seen.add(path.resolve())
    if kind == "manifest":
        found.manifests[str(path.parent.resolve())] = r
    elif kind == "bench":
        found.device_bench.append(r)
    elif kind == "benchmark":
        for i, row in enumerate(r.get("rows", [])):
            if not isinstance(row, dict):
                raise EdgecxrError(f"{path}: rows[{i}] is not a record; pass the file edgecxr wrote, unchanged")
            for k in ("agreement", "accuracy", "recall", "specificity", "roc_auc", "p50_ms", "size_mb", "new_fn", "new_fp"):
                _number(path, f"rows[{i}].{k}", row.get(k))
        found.bench += [dict(row) for row in r.get("rows", [])]
        found.parity += [row for row in r.get("rows", []) if isinstance(row, dict) and row.get("flipped")]
        if r.get("data"):
            found.data_roots.append(Path(r["data"]))
    else:
        _check_parity_numbers(path, r)
        found.parity.append(r)
        found.bench.append(_parity_row(r))
        if r.get("data", {}).get("root"):
            found.data_roots.append(Path(r["data"]["root"]))


def _number(path, where: str, value, *, optional=True, low=None, high=None):
    """A value the report computes with: a finite number (in [low, high] when given), else one line naming it."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value in (float("inf"), float("-inf")):
        raise EdgecxrError(f"{path}: {where} is {str(value)[:40]!r}, not a number; pass the file edgecxr wrote, unchanged")
    if (low is not None and value < low) or (high is not None and value > high):
        raise EdgecxrError(f"{path}: {where} is {value}, outside [{low}, {high}]; pass the file edgecxr wrote, unchanged")


DICT_FIELDS = ("bundle", "runtime", "data", "positives", "criteria", "host", "timing", "device", "float", "delta",
               "flipped_counts", "calibration", "bootstrap", "mcnemar", "subgroups", "tolerances", "stability", "sbom",
               "reference", "prob_abs_diff")
METRICS = ("accuracy", "recall", "specificity", "precision", "f1", "roc_auc")


def _kind_error(path, where: str, value, expected: str):
    return EdgecxrError(f"{path}: {where} is {type(value).__name__} {str(value)[:40]!r}, not {expected}; pass the file "
                        "edgecxr wrote, unchanged")


def _check_parity_numbers(path, r: dict) -> None:
    """A parity JSON's fields the report reads, checked for type and range before any is formatted or compared
    (a string there was an internal error, "passed": "false" a PASSED page)."""
    _number(path, "agreement", r.get("agreement"), optional=False, low=0, high=1)
    if not isinstance(r.get("n"), int) or isinstance(r.get("n"), bool) or r["n"] < 0:
        raise _kind_error(path, "n", r.get("n"), "a count")
    _number(path, "threshold", r.get("threshold"), low=0, high=1)
    if not isinstance(r.get("passed"), bool):
        raise _kind_error(path, "passed", r.get("passed"), "true or false")
    for key in DICT_FIELDS:
        if r.get(key) is not None and not isinstance(r[key], dict):
            raise _kind_error(path, key, r[key], "an object")
    for side in ("float", "device"):
        for k in METRICS:
            _number(path, f"{side}.{k}", (r.get(side) or {}).get(k), low=0, high=1)
    for k, v in (r.get("delta") or {}).items():
        if k != "confusion":
            _number(path, f"delta.{k}", v, low=-1, high=1)
    for k, v in (r.get("timing") or {}).items():
        _number(path, f"timing.{k}", v, low=0)
    for k, v in (r.get("flipped_counts") or {}).items():
        _number(path, f"flipped_counts.{k}", v, low=0)
    root = (r.get("data") or {}).get("root")
    if root is not None and not isinstance(root, str):
        raise _kind_error(path, "data.root", root, "a path")
    _check_records(path, r)


def _check_records(path, r: dict) -> None:
    for field_name, keys in (("checks", ("name", "message")), ("flipped", ("file", "kind"))):
        items = r.get(field_name) or []
        if not isinstance(items, list):
            raise _kind_error(path, field_name, items, "a list")
        for i, item in enumerate(items):
            where = f"{field_name}[{i}]"
            if not isinstance(item, dict):
                raise _kind_error(path, where, item, "a record")
            for k in keys:
                if not isinstance(item.get(k), str):
                    raise _kind_error(path, f"{where}.{k}", item.get(k), "text")
            if field_name == "checks" and not isinstance(item.get("passed"), bool):
                raise _kind_error(path, f"{where}.passed", item.get("passed"), "true or false")
            if field_name == "flipped":
                for k in ("float_prob", "device_prob"):
                    _number(path, f"{where}.{k}", item.get(k), optional=False, low=0, high=1)
                if "label" in item and item["label"] not in (0, 1):
                    raise _kind_error(path, f"{where}.label", item["label"], "0 or 1")


def _parity_row(r: dict) -> dict:
    """A parity JSON (`edgecxr device parity --json`) as one parity-table row."""
    b, d, fc = r.get("bundle", {}), r.get("device") or {}, r.get("flipped_counts", {})
    labeled = r.get("labeled", True) is not False
    row = {"target": b.get("target") if labeled else f"{b.get('target')} (unlabeled site images)",
           "runtime": r.get("runtime", {}).get("name"), "agreement": r["agreement"], "labeled": labeled,
           "new_fn": fc.get("new_false_negative"), "new_fp": fc.get("new_false_positive"),
           "new_negative": fc.get("new_negative"), "new_positive": fc.get("new_positive"),
           "p50_ms": r.get("timing", {}).get("infer_ms_p50"), "passed": r.get("passed"), "n": r.get("n")}
    row.update({k: d.get(k) for k in ("accuracy", "recall", "specificity", "roc_auc")})
    manifest = _json(Path(b.get("path", "")) / "manifest.json") if b.get("path") else None
    if isinstance(manifest, dict) and (Path(b["path"]) / manifest.get("model_file", "?")).is_file():
        row["size_mb"] = (Path(b["path"]) / manifest["model_file"]).stat().st_size / 2**20
    return row


def collect(paths, model: Path | None = None) -> Found:
    from edgecxr.data.folders import patient_id

    found = Found(model=Path(model) if model else None)
    for path in map(Path, paths):
        if path.is_file():
            if path.suffix.lower() != ".json":
                raise EdgecxrError(f"{path}: not a folder or a JSON file; pass a training run, an evaluate, bundle or "
                                   "benchmark folder, or a JSON file")
            _add_json(path, _json(path), found, given=True)
            continue
        if not path.is_dir():
            raise EdgecxrError(f"{path}: not found; pass a folder or a JSON file")
        _scan(path, found)
        for sub in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
            _scan(sub, found)
    if not (found.sections or found.bench or found.device_bench or found.manifests):
        raise EdgecxrError(f"nothing to report in {', '.join(map(str, paths))}: no val_predictions.npz, "
                           "predictions.npz + metrics.json, bundle manifest, benchmark.json, parity or bench JSON found")
    for r in found.parity:  # the bundle a parity run checked: its criteria, hashes and versions
        folder = Path((r.get("bundle") or {}).get("path") or "")
        if str(folder) != "." and str(folder.resolve()) not in found.manifests and (folder / "manifest.json").is_file():
            manifest = _json(folder / "manifest.json")
            if _kind(manifest) == "manifest":
                found.manifests[str(folder.resolve())] = manifest
    for s in found.sections:
        recorded = s.m.get("ci_info")
        groups = [patient_id(Path(r).name) for r in s.rel]
        ci = s.m.get("ci") if recorded else metrics.bootstrap_ci(s.y, s.prob, s.threshold, n_boot=500, groups=groups)
        s.m = {**metrics.binary_metrics(s.y, s.prob, s.threshold), "ci": ci, "shortcuts": s.m.get("shortcuts"),
               "ci_info": recorded or metrics.bootstrap_info(groups, len(s.y), 500, 0.95),
               "calibration": s.m.get("calibration") or metrics.calibration(s.y, s.prob),
               **{k: s.m[k] for k in ("data", "model_sha256", "model") if k in s.m}}
    found.sections.sort(key=lambda s: (s.title.startswith("Validation"), s.title))  # test first
    if found.model is not None:
        from edgecxr.formats.modelinfo import load_info

        found.info = load_info(found.model)
    return found


def build_report(folders, out: Path, *, model=None, bundle=None, data=None, gallery: int = 6,
                 maps: bool = True, title: str = "Pneumonia classifier report") -> Path:
    """Write the HTML page to `out` and its JSON twin (the verification record) beside it, OUT with .json."""
    from edgecxr.utils.atomic import refuse_overlap, write_json_atomic, write_text_atomic
    from edgecxr.reports.evidence import build_record

    found = collect(folders, model)
    twin = Path(out).with_suffix(".json")
    if Path(out).suffix.lower() == ".json":
        raise EdgecxrError(f"--out {out}: name the HTML file (e.g. report.html); its JSON twin is written beside it")
    refuse_overlap(out, (*folders, model, bundle, data))
    refuse_overlap(twin, (*folders, model, bundle, data))
    roots = [Path(data)] if data else []
    roots += found.data_roots
    if bundle is not None and not any((r.get("bundle") or {}).get("path") == str(bundle) for r in found.parity):
        if not roots:
            found.notes.append(f"parity of {bundle}: pass --data ROOT to run it")
        else:
            from edgecxr.devices.classifier import Classifier
            from edgecxr.devices.parity import run_parity

            r = run_parity(Classifier.load(bundle), roots[0], n_boot=200)
            r["bundle"]["path"] = str(bundle)
            found.parity.insert(0, r)
            found.bench.insert(0, _parity_row(r))
    if bundle is not None and (Path(bundle) / "manifest.json").is_file():
        found.manifests.setdefault(str(Path(bundle).resolve()), _json(Path(bundle) / "manifest.json"))
    if any(isinstance(r.get("device"), dict) and not r.get("sbom") for r in found.parity):
        found.notes.append("the software bill of materials of the device environment (run `edgecxr device parity "
                           "--sbom FILE --json FILE` and add the JSON)")
    record = build_record(found, title=title, sources=folders)
    html_text = render(found, roots=roots, mapper=Mapper(found.model, maps), gallery=gallery, title=title,
                       sources=folders, record=record)
    write_json_atomic(twin, record)
    write_text_atomic(out, html_text)
    return out


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="HTML file to write; its JSON twin (the same record) goes beside it with .json.")
@click.option("--model", "model_path", type=click.Path(exists=True, path_type=Path),
              help="Float model for Grad-CAM maps (default: the run's model.keras or the evaluated model).")
@click.option("--bundle", type=click.Path(exists=True, path_type=Path),
              help="Bundle to check on this machine: adds its parity row and device occlusion maps of flipped cases.")
@data_option("Data root holding the X-rays (default: the one recorded in the run).", required=False,
             type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--gallery", default=6, show_default=True, help="Cases shown per gallery group.")
@click.option("--maps/--no-maps", default=True, show_default=True, help="Draw Grad-CAM/occlusion maps (slower).")
@click.option("--title", default="Pneumonia classifier report", show_default=True)
def report(paths, out, model_path, bundle, data, gallery, maps, title):
    """Write one self-contained HTML report (and its JSON twin) from PATHS: training run, evaluate, bundle and
    benchmark folders, or JSON files (evaluate metrics.json, bundle manifest.json, device parity and device
    bench JSON). With a bundle and its parity it reads as the bundle's verification record.

    Example: edgecxr report eval-test/metrics.json bundles/tflite-int8 parity.json bench.json --out evidence.html
    """
    t0 = time.time()
    build_report(paths, out, model=model_path, bundle=bundle, data=data, gallery=gallery, maps=maps, title=title)
    click.echo(f"report written to {out} ({out.stat().st_size / 1024:.0f} KB, {time.time() - t0:.0f} s) "
               f"and {out.with_suffix('.json')}")
