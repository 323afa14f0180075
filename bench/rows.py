"""The rows of `edgecxr benchmark`: plan each row, export (or reuse) its bundle, run device parity and time it.

Also the float Keras model's batch-1 latency and the provenance (machine, model hash) of a run.
`edgecxr.bench.run.run_benchmark` loops over these, one row per export target.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from edgecxr.data import folders as D
from edgecxr.utils.atomic import replace_dir, write_json_atomic
from edgecxr.utils.errors import ConfigError, EdgecxrError
from edgecxr.formats.targets import TARGETS, Target, resolve_targets

ROW_KEYS = ("target", "base_target", "family", "precision", "int8", "runtime", "provider", "threads", "size_mb",
            "size_gz_mb", "accuracy", "recall", "specificity", "roc_auc", "recall_drop", "accuracy_drop", "agreement",
            "new_fn", "new_fp", "prob_abs_diff_max", "unstable", "stability_n", "p50_ms", "p90_ms", "e2e_p50_ms", "speedup", "passed",
            "failed_checks", "n", "export_s", "reused", "export_method", "weight_zeros", "bundle_path", "flipped", "stage",
            "error")
EXPORT_TIMES = "export_times.json"


def _say(msg: str) -> None:
    click.echo(msg, err=True)


# -- which rows ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RowPlan:
    name: str  # row and bundle-folder name
    target: Target
    prune: float | None = None
    qat: bool = False
    distill: bool = False  # QAT fits the float model's probabilities, not the labels


# a row of the table asked for by its name: tflite-int8+prune0.5, tflite-int8+qat-distill, tflite-int8+prune0.5+qat, ...
ROW_NAME = re.compile(r"tflite-int8(?:\+prune(?P<prune>\d*\.?\d+))?(?:\+(?P<qat>qat(?:-distill)?))?")


def _named_row(name: str) -> RowPlan:
    match = ROW_NAME.fullmatch(name)
    if match is None or not (match["prune"] or match["qat"]):
        raise ConfigError(f"unknown benchmark row {name!r}; rows beyond the targets are tflite-int8+prune<S>, "
                          "tflite-int8+qat[-distill] and tflite-int8+prune<S>+qat[-distill], e.g. tflite-int8+prune0.5+qat")
    prune = float(match["prune"]) if match["prune"] else None
    if prune is not None and not 0 < prune < 1:
        raise ConfigError(f"{name}: the sparsity must be between 0 and 1 (e.g. tflite-int8+prune0.5)")
    suffix = (f"+prune{_sparsity(prune)}" if prune else "") + (f"+{match['qat']}" if match["qat"] else "")
    return RowPlan("tflite-int8" + suffix, TARGETS["tflite-int8"], prune=prune, qat=bool(match["qat"]),
                   distill=match["qat"] == "qat-distill")


def _sparsity(prune: float) -> str:
    """The sparsity as a row name writes it (0.5, 0.000001), refused when the name would not give it back."""
    text = f"{prune:.6f}".rstrip("0")
    if float(text) != prune:
        raise ConfigError(f"sparsity {prune!r}: give at most six decimals (e.g. 0.5), so that its row has one name")
    return text


def plan_rows(targets=("all",), prune: float | None = None, qat: bool = False, distill: bool = False) -> list[RowPlan]:
    """The rows: the named targets and rows (`tflite-int8+prune0.5+qat` alone re-runs that row), then those
    --prune/--qat add."""
    if distill and not qat:
        raise ConfigError("--distill changes how the --qat rows train; add --qat (or leave out --distill)")
    targets = list(targets)
    plans = [RowPlan(t.name, t) for t in resolve_targets([t for t in targets if "+" not in t])]
    plans += [_named_row(t) for t in targets if "+" in t]
    qat_name = "qat-distill" if distill else "qat"
    if prune is not None:
        if not 0 < prune < 1:
            raise ConfigError(f"--prune must be a sparsity between 0 and 1 (e.g. 0.5), got {prune}")
        plans.append(RowPlan(f"tflite-int8+prune{_sparsity(prune)}", TARGETS["tflite-int8"], prune=prune))
    if qat:
        plans.append(RowPlan(f"tflite-int8+{qat_name}", TARGETS["tflite-int8"], qat=True, distill=distill))
    if prune is not None and qat:  # pruning-preserving QAT: the zeros survive int8
        plans.append(RowPlan(f"tflite-int8+prune{_sparsity(prune)}+{qat_name}", TARGETS["tflite-int8"], prune=prune, qat=True,
                             distill=distill))
    if not plans:
        raise ConfigError(f"no target given; valid: {', '.join(TARGETS)}, all")
    return list({p.name: p for p in plans}.values())  # a row named and added by --prune/--qat runs once


# -- a small subset for CI -----------------------------------------------------------------
def _spread(items: list, k: int) -> list:
    if k >= len(items):
        return list(items)
    idx = np.unique(np.linspace(0, len(items) - 1, k).round().astype(int))
    return [items[i] for i in idx]


def make_subset(root, dest, *, test: int, train: int = 200, classes=D.DEFAULT_CLASSES) -> Path:
    """A Kermany-layout folder of symlinks: `test` test images and `train` train images, each half per class,
    spread evenly over the sorted file lists (deterministic, so reruns pick the same files and reuse bundles)."""
    if test < 2:
        raise ConfigError(f"--limit must be at least 2 (one image per class), got {test}")
    dest = Path(dest)
    for split, count in (("test", test), ("train", train)):
        samples = D.list_split(root, split, classes)
        for label in (0, 1):
            members = [s for s in samples if s.label == label]
            for s in _spread(members, count // 2 + (count % 2 if label == 1 else 0)):
                link = dest / s.rel
                link.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.symlink(s.path, link)
                except OSError:  # no symlinks (Windows without developer mode)
                    shutil.copyfile(s.path, link)
    return dest


# -- provenance ---------------------------------------------------------------------------
def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    from edgecxr.utils.cpu import cpu_info

    features = cpu_info()
    info = {"cpu": cpu, "cores": cores, "machine": platform.machine(), "os": platform.platform(),
            "python": sys.version.split()[0], "hostname": platform.node(),
            "cpu_features": features["features"], "int8_path": features["int8_path"]}
    board = Path("/proc/device-tree/model")
    if board.is_file():
        info["board"] = board.read_bytes().rstrip(b"\0").decode(errors="replace")
    return info


def _model_hash(path: Path) -> str:
    from edgecxr.export.loading import _model_hash as model_hash

    return model_hash(Path(path))


def _model_mb(path: Path) -> float:
    path = Path(path)
    size = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return size / 2**20


# -- the float model, timed in this run ---------------------------------------------------------
def _set_tf_threads(tf, threads: int) -> int:
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already started in this process: keep its setting
        pass
    return tf.config.threading.get_intra_op_parallelism_threads() or (os.cpu_count() or 1)


def measure_float(model_path, data_root, *, classes=D.DEFAULT_CLASSES, runs: int = 100, warmup: int = 10,
                  threads: int = 2, images: int = 16) -> dict:
    """Batch-1 latency of the float model (its tf.function, as every converter reads it) on real test images."""
    from edgecxr.export.loading import load_source
    from edgecxr.formats.kerasfile import import_tf

    tf, _ = import_tf()
    used = _set_tf_threads(tf, threads)
    source = load_source(model_path)
    spec = source.spec
    samples = _spread(D.list_split(data_root, "test", classes), images)
    x = spec.scale_pixels(D.load_pixels(samples, spec)[0]).astype(np.float32)
    fn = source.fn
    for i in range(warmup):
        fn(x[i % len(x)][None])
    ms = []
    for i in range(runs):
        t0 = time.perf_counter()
        np.asarray(fn(x[i % len(x)][None]))
        ms.append((time.perf_counter() - t0) * 1e3)
    return {"runtime": f"tensorflow {tf.__version__} ({source.flavor})", "threads": used, "runs": runs,
            "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "size_mb": _model_mb(model_path), "sha256": source.sha256, "path": str(Path(model_path).resolve()),
            "input": list(spec.input_shape), "threshold": float(source.info.threshold)}


# -- export or reuse one row's bundle -------------------------------------------------------
def reuse_problem(folder: Path, plan: RowPlan, model_sha: str, test_sha: str) -> str | None:
    """None when the bundle in `folder` can be reused for `plan`, else why not."""
    from edgecxr.formats.bundle import load_bundle

    if not (folder / "manifest.json").is_file():
        return "no bundle yet"
    try:
        m = load_bundle(folder).manifest
    except EdgecxrError as exc:
        return f"invalid bundle ({exc})"
    opt = m.get("optimization", {})
    if m["target"] != plan.target.name:
        return f"bundle is {m['target']}"
    if m["source_model"].get("sha256") != model_sha:
        return "exported from another model"
    if m["reference"].get("files_sha256") != test_sha:
        return "its reference covers other test images"
    if (opt.get("prune") or {}).get("target_sparsity") != plan.prune:
        return "different pruning"
    if plan.qat and not opt.get("qat_requested", opt.get("qat")):  # a QAT export that fell back to PTQ is still one
        return "not exported with --qat"
    if plan.qat and opt.get("qat_training", "labels") != ("distillation" if plan.distill else "labels"):
        return "its QAT trained on " + opt.get("qat_training", "labels")
    return None


def _export_times(bundles: Path) -> dict:
    try:
        return json.loads((bundles / EXPORT_TIMES).read_text())
    except (OSError, ValueError):
        return {}


def export_row(plan: RowPlan, model_path, data_root, bundles: Path, *, reuse: bool, model_sha: str, test_sha: str,
               classes, calib_count: int, finetune_epochs: int, max_recall_drop: float, max_accuracy_drop: float,
               min_agreement: float):
    """(bundle folder, export seconds or None, reused) for one row; raises on failure."""
    from edgecxr.export import pipeline

    final = bundles / plan.name
    times = _export_times(bundles)
    if reuse:
        why = reuse_problem(final, plan, model_sha, test_sha)
        if why is None:
            sha = json.loads((final / "manifest.json").read_text())["sha256"]
            recorded = times.get(plan.name, {})
            return final, (recorded.get("export_s") if recorded.get("sha256") == sha else None), True
        _say(f"    exporting ({why})")
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{os.getpid()}-", dir=bundles))
    try:
        t0 = time.perf_counter()
        written = pipeline.export_model(model_path, [plan.target.name], data_root, staging, calib_count=calib_count,
                                        prune=plan.prune, qat=plan.qat, distill=plan.distill,
                                        finetune_epochs=finetune_epochs,
                                        max_recall_drop=max_recall_drop, max_accuracy_drop=max_accuracy_drop,
                                        min_agreement=min_agreement, classes=classes, overwrite=True)
        seconds = time.perf_counter() - t0
        replace_dir(written[0], final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    times = _export_times(bundles)  # re-read: cheap, and keeps other rows' entries
    times[plan.name] = {"export_s": seconds, "sha256": json.loads((final / "manifest.json").read_text())["sha256"]}
    write_json_atomic(bundles / EXPORT_TIMES, times)
    return final, seconds, False


# -- parity + bench of one bundle ------------------------------------------------------------
def empty_row(plan: RowPlan) -> dict:
    row = dict.fromkeys(ROW_KEYS)
    row.update(target=plan.name, base_target=plan.target.name, family=plan.target.family,
               precision=plan.target.precision, int8=plan.target.int8, passed=False)
    return row


def measure_row(row: dict, bundle: Path, data_root, *, classes, tolerances, runs: int, warmup: int, threads: int,
                float_p50: float | None, n_boot: int, cold: bool, test_samples, stability_images: int = 64) -> dict:
    from edgecxr.devices.bench import run_bench
    from edgecxr.devices.classifier import Classifier
    from edgecxr.devices.parity import run_parity

    row["stage"] = "load"
    clf = Classifier.load(bundle, threads=threads)
    rt = clf.runtime
    m = clf.bundle.manifest
    size = m["optimization"].get("size") or {}
    acc = m["optimization"].get("accuracy_control") or {}
    row.update(runtime=f"{rt['name']} {rt['version']}", provider=rt["provider"], threads=rt["threads"],
               size_mb=size.get("bytes", 0) / 2**20, size_gz_mb=size.get("gzip_bytes", 0) / 2**20,
               export_method=acc.get("method") if acc else None, bundle_path=str(bundle),
               weight_zeros=((m["optimization"].get("prune") or {}).get("int8_weights") or {}).get("sparsity"))
    row["stage"] = "parity"
    parity = run_parity(clf, data_root, classes=classes, tolerances=tolerances, n_boot=n_boot)
    dev, fc = parity["device"], parity["flipped_counts"]
    row.update({k: dev[k] for k in ("accuracy", "recall", "specificity", "roc_auc")})
    row.update(recall_drop=-parity["delta"]["recall"], accuracy_drop=-parity["delta"]["accuracy"],
               agreement=parity["agreement"], new_fn=fc["new_false_negative"], new_fp=fc["new_false_positive"],
               prob_abs_diff_max=parity["prob_abs_diff"]["max"], n=parity["n"], flipped=parity["flipped"],
               failed_checks=[c["message"] for c in parity["checks"] if not c["passed"]], passed=parity["passed"],
               float_metrics={k: parity["float"][k] for k in ("accuracy", "recall", "specificity", "roc_auc")})
    if stability_images:
        row["stage"] = "stability"
        row.update(measure_unstable(clf, test_samples, stability_images))
    row["stage"] = "bench"
    bench = run_bench(clf, data=data_root, runs=runs, warmup=warmup, cold=cold, images=min(64, parity["n"]))
    lat = bench["latency_ms"]
    row.update(p50_ms=lat["p50"], p90_ms=lat["p90"], e2e_p50_ms=bench["end_to_end_ms"]["p50"],
               speedup=(float_p50 / lat["p50"]) if float_p50 and lat["p50"] else None)
    if cold:
        row["cold_start_s"] = bench.get("cold_start_s")
    row["stage"] = None
    return row


def measure_unstable(clf, test_samples, images: int) -> dict:
    """The share of `images` test images (spread over the split) that flip under any input-path variant."""
    from edgecxr.devices.stability import measure_stability

    samples = _spread(test_samples, images)
    report = measure_stability(clf, [s.path for s in samples], names=[s.rel for s in samples])
    return {"unstable": report["device"]["unstable"], "stability_n": report["device"]["n"]}
