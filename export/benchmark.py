"""`edgecxr benchmark`: one table of every export target, re-checked on this device.

One loop over the export-target registry: export (or reuse) each bundle, run device
parity on the test split at the float model's threshold and time the model call, one
row per target. A failing target becomes a row with its error, never a crash. The float
Keras model is timed in the same run (batch 1), so ``speedup`` compares like with like.

    from edgecxr.export.benchmark import run_benchmark
    result = run_benchmark("run/model.keras", "data/kermany", "bench", targets=["tflite-int8"], limit=40)
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import numpy as np

from edgecxr import data as D
from edgecxr.atomic import replace_dir, write_json_atomic, write_text_atomic
from edgecxr.errors import ConfigError, EdgecxrError
from edgecxr.export.bench_table import format_markdown, format_table
from edgecxr.targets import TARGETS, Target, resolve_targets

ROW_KEYS = ("target", "base_target", "family", "precision", "int8", "runtime", "provider", "threads", "size_mb",
            "size_gz_mb", "accuracy", "recall", "specificity", "roc_auc", "recall_drop", "accuracy_drop", "agreement",
            "new_fn", "new_fp", "prob_abs_diff_max", "p50_ms", "p90_ms", "e2e_p50_ms", "speedup", "passed",
            "failed_checks", "n", "export_s", "reused", "export_method", "bundle_path", "flipped", "stage", "error")
EXPORT_TIMES = "export_times.json"


def _say(msg: str) -> None:
    click.echo(msg, err=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:400] if text else ''}".rstrip(": ")


# -- which rows ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RowPlan:
    name: str  # row and bundle-folder name
    target: Target
    prune: float | None = None
    qat: bool = False


def plan_rows(targets=("all",), prune: float | None = None, qat: bool = False) -> list[RowPlan]:
    plans = [RowPlan(t.name, t) for t in resolve_targets(list(targets))]
    if prune is not None:
        if not 0 < prune < 1:
            raise ConfigError(f"--prune must be a sparsity between 0 and 1 (e.g. 0.5), got {prune}")
        plans.append(RowPlan(f"tflite-int8+prune{prune:g}", TARGETS["tflite-int8"], prune=prune))
    if qat:
        plans.append(RowPlan("tflite-int8+qat", TARGETS["tflite-int8"], qat=True))
    if not plans:
        raise ConfigError(f"no target given; valid: {', '.join(TARGETS)}, all")
    return plans


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
    info = {"cpu": cpu, "cores": cores, "machine": platform.machine(), "os": platform.platform(),
            "python": sys.version.split()[0], "hostname": platform.node()}
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
    from edgecxr.training import import_tf

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
    from edgecxr.bundle import load_bundle

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
    if plan.qat and not opt.get("qat"):
        return "not quantization-aware trained"
    return None


def _export_times(bundles: Path) -> dict:
    try:
        return json.loads((bundles / EXPORT_TIMES).read_text())
    except (OSError, ValueError):
        return {}


def export_row(plan: RowPlan, model_path, data_root, bundles: Path, *, reuse: bool, model_sha: str, test_sha: str,
               classes, calib_count: int, finetune_epochs: int, max_recall_drop: float, max_accuracy_drop: float):
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
                                        prune=plan.prune, qat=plan.qat, finetune_epochs=finetune_epochs,
                                        max_recall_drop=max_recall_drop, max_accuracy_drop=max_accuracy_drop,
                                        classes=classes, overwrite=True)
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
                float_p50: float | None, n_boot: int, cold: bool) -> dict:
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
               export_method=acc.get("method") if acc else None, bundle_path=str(bundle))
    row["stage"] = "parity"
    parity = run_parity(clf, data_root, classes=classes, tolerances=tolerances, n_boot=n_boot)
    dev, fc = parity["device"], parity["flipped_counts"]
    row.update({k: dev[k] for k in ("accuracy", "recall", "specificity", "roc_auc")})
    row.update(recall_drop=-parity["delta"]["recall"], accuracy_drop=-parity["delta"]["accuracy"],
               agreement=parity["agreement"], new_fn=fc["new_false_negative"], new_fp=fc["new_false_positive"],
               prob_abs_diff_max=parity["prob_abs_diff"]["max"], n=parity["n"], flipped=parity["flipped"],
               failed_checks=[c["message"] for c in parity["checks"] if not c["passed"]], passed=parity["passed"],
               float_metrics={k: parity["float"][k] for k in ("accuracy", "recall", "specificity", "roc_auc")})
    row["stage"] = "bench"
    bench = run_bench(clf, data=data_root, runs=runs, warmup=warmup, cold=cold, images=min(64, parity["n"]))
    lat = bench["latency_ms"]
    row.update(p50_ms=lat["p50"], p90_ms=lat["p90"], e2e_p50_ms=bench["end_to_end_ms"]["p50"],
               speedup=(float_p50 / lat["p50"]) if float_p50 and lat["p50"] else None)
    if cold:
        row["cold_start_s"] = bench.get("cold_start_s")
    row["stage"] = None
    return row


# -- the whole benchmark -------------------------------------------------------------------
def run_benchmark(model_path, data_root, out_dir, *, targets=("all",), prune: float | None = None, qat: bool = False,
                  limit: int | None = None, runs: int = 100, warmup: int = 10, threads: int | None = None,
                  reuse: bool = True, tolerances=None, calib_count: int = 300, finetune_epochs: int = 2,
                  classes=D.DEFAULT_CLASSES, n_boot: int = 1000, cold: bool = False, scaling: bool = False,
                  scaling_archs=None, scaling_targets=None, train_images: int = 200, command: str | None = None) -> dict:
    """Export/reuse, parity-check and time every planned row; writes OUT/benchmark.json and .md; returns the result."""
    from edgecxr.devices.parity import Tolerances
    from edgecxr.devices.runtimes import default_threads
    from edgecxr.export.pipeline import versions
    from edgecxr.modelinfo import default_model_path

    started = time.time()
    tolerances = tolerances or Tolerances()
    plans = plan_rows(targets, prune, qat)
    if runs < 1 or warmup < 0:
        raise ConfigError("--runs must be at least 1 and --warmup at least 0")
    model_path = Path(model_path) if model_path else default_model_path()
    if not model_path.exists():
        raise ConfigError(f"model {model_path} not found; pass --model PATH")
    threads = threads or default_threads()
    data_root = Path(data_root)
    D.list_split(data_root, "test", classes)  # bad data fails now, not after the first export
    out_dir = Path(out_dir)
    bundles = out_dir / "bundles"
    bundles.mkdir(parents=True, exist_ok=True)
    if command is None:
        command = (f"run_benchmark({str(model_path)!r}, {str(data_root)!r}, {str(out_dir)!r}, targets={list(targets)!r}, "
                   f"prune={prune!r}, qat={qat!r}, limit={limit!r}, runs={runs!r}, threads={threads!r})")

    with tempfile.TemporaryDirectory(prefix="edgecxr-bench-data-") as tmp:
        root = data_root
        if limit:
            root = make_subset(data_root, Path(tmp) / "data", test=limit, train=train_images, classes=classes)
            calib_count = min(calib_count, max(16, train_images // 3))
            _say(f"--limit {limit}: {limit} test and {train_images} train images of {data_root} (calibration {calib_count})")
        test = D.list_split(root, "test", classes)
        test_sha, model_sha = D.files_hash(test), _model_hash(model_path)

        _say(f"float model {model_path}: timing batch 1 on {threads} thread(s)")
        try:
            float_info = measure_float(model_path, root, classes=classes, runs=runs, warmup=warmup, threads=threads)
        except Exception as exc:  # noqa: BLE001 - still benchmark what can be benchmarked
            float_info = {"error": _first_line(exc), "path": str(model_path)}
        float_p50 = float_info.get("p50_ms")

        rows = []
        for i, plan in enumerate(plans, 1):
            _say(f"[{i}/{len(plans)}] {plan.name}")
            row = empty_row(plan)
            row["stage"] = "export"
            try:
                with contextlib.redirect_stdout(sys.stderr):  # Keras fit logs (prune/QAT): stdout keeps the table
                    bundle, row["export_s"], row["reused"] = export_row(
                        plan, model_path, root, bundles, reuse=reuse, model_sha=model_sha, test_sha=test_sha,
                        classes=classes, calib_count=calib_count, finetune_epochs=finetune_epochs,
                        max_recall_drop=tolerances.max_recall_drop, max_accuracy_drop=tolerances.max_accuracy_drop)
                if row["reused"]:
                    _say(f"    reusing {bundle}")
                measure_row(row, bundle, root, classes=classes, tolerances=tolerances, runs=runs, warmup=warmup,
                            threads=threads, float_p50=float_p50, n_boot=n_boot, cold=cold)
                _say(f"    {row['runtime']}: agreement {row['agreement']:.4f}, recall {row['recall']:.4f}, "
                     f"p50 {row['p50_ms']:.3f} ms, {'PASS' if row['passed'] else 'FAIL'}")
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - one failing target is a row, never a crash
                row.update(error=_first_line(exc), passed=False)
                _say(f"    {row['stage']} failed: {row['error']}")
            rows.append(row)

        plain = next((r for r in rows if not r["error"] and "+" not in r["target"]), None)
        if plain is not None:
            float_info.update(plain.pop("float_metrics"), n=plain["n"])
        for r in rows:
            r.pop("float_metrics", None)

        result = {
            "rows": rows,
            "float": float_info,
            "machine": machine_info(),
            "versions": versions(),
            "command": command,
            "data": str(data_root.resolve()),  # a path: `edgecxr report` resolves flipped files against it
            "data_info": {"root": str(data_root.resolve()), "split": "test", "images": len(test),
                          "files_sha256": test_sha, "limit": limit,
                          "train_images": train_images if limit else None},
            "model": {"path": str(model_path.resolve()), "sha256": model_sha},
            "options": {"threads": threads, "runs": runs, "warmup": warmup, "calib_count": calib_count,
                        "finetune_epochs": finetune_epochs, "prune": prune, "qat": qat, "reuse": reuse,
                        "n_boot": n_boot},
            "tolerances": asdict(tolerances),
        }
        failures = parity_failures(rows)
        result["parity_failures"] = [r["target"] for r in failures]
        result["passed"] = not failures

        if scaling:
            result["scaling"] = _scaling(result, model_path, data_root, root, out_dir, rows, threads=threads,
                                         runs=runs, archs=scaling_archs, targets=scaling_targets, classes=classes)
        result["seconds"] = time.time() - started
        result["created"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    write_json_atomic(out_dir / "benchmark.json", result)
    write_text_atomic(out_dir / "benchmark.md", format_markdown(result))
    return result


def parity_failures(rows) -> list[dict]:
    """int8 rows that failed parity or could not be exported/run (the int8 validation gate refusing a model is a parity loss)."""
    return [r for r in rows if r["int8"] and not r["passed"]]


def _scaling(result, model_path, data_root, root, out_dir, rows, *, threads, runs, archs, targets, classes) -> dict:
    from edgecxr.export import scaling as S
    from edgecxr.modelinfo import load_info

    out = {}
    spec = None
    try:
        info = load_info(model_path)
        if info is None:
            from edgecxr.bundle import load_bundle

            ok = next((r for r in rows if not r["error"]), None)
            spec = load_bundle(ok["bundle_path"]).spec if ok else None
        else:
            spec = info.preprocess
        if spec is None:
            raise ConfigError("no input spec (no model info and no bundle)")
        x = S.test_inputs(root, spec, max(S.BATCHES))
        models = [{"name": "keras (float)", "kind": "keras", "path": str(model_path), "precision": "fp32"}]
        from edgecxr.bundle import load_bundle

        for r in rows:
            if not r["error"]:
                models.append({"name": r["target"], "kind": r["family"], "precision": r["precision"],
                               "path": str(load_bundle(r["bundle_path"]).model_path)})
        out["batch"] = S.batch_scaling(models, x, threads=threads, runs=min(runs, 50))
    except Exception as exc:  # noqa: BLE001
        out["batch_error"] = _first_line(exc)
    archs = tuple(S.ARCHS if archs is None else archs)
    targets = tuple(S.ARCH_TARGETS if targets is None else targets)
    if archs:
        with tempfile.TemporaryDirectory(prefix="edgecxr-arch-data-") as tmp:
            small = make_subset(data_root, Path(tmp) / "data", test=16, train=64, classes=classes)
            out["architectures"] = S.arch_scaling(small, out_dir / "scaling", archs=archs, targets=targets,
                                                  calib_count=32, classes=classes)
        out["architecture_targets"] = list(targets)
    return out


# -- command line ------------------------------------------------------------------------
def _command_line() -> str:
    """The command as typed, or, when invoked from Python (tests, CliRunner), rebuilt from the parsed options."""
    if sys.argv and Path(sys.argv[0]).name == "edgecxr":
        return "edgecxr " + shlex.join(sys.argv[1:])
    words = ["edgecxr", "benchmark"]
    for name, value in click.get_current_context().params.items():
        flag = "--" + name.replace("_", "-")
        for v in value if isinstance(value, (tuple, list)) else [value]:
            if v is True:
                words.append(flag)
            elif v not in (None, False):
                words += [flag, str(v)]
    return shlex.join(words)


@click.command()
@click.option("--model", "model_path", type=click.Path(path_type=Path), help="Float model (default: the shipped model).")
@click.option("--data", "data", required=True, type=click.Path(path_type=Path),
              help="Kermany-layout folder ROOT/{train,test}/{NORMAL,PNEUMONIA} (test: parity; train: calibration).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Folder for benchmark.json, benchmark.md and bundles/<target>/.")
@click.option("--target", "targets", multiple=True, metavar="NAME", help=f"Repeatable: {', '.join(TARGETS)} or all (default).")
@click.option("--prune", type=float, help="Add a row tflite-int8+prune<S>: magnitude pruning to this sparsity, then int8.")
@click.option("--qat", is_flag=True, help="Add a row tflite-int8+qat (quantization-aware fine-tuning).")
@click.option("--limit", type=int, help="Small CI run: N test images (half per class) and a few train images, as symlinks.")
@click.option("--runs", default=100, show_default=True, help="Timed model calls per target.")
@click.option("--warmup", default=10, show_default=True, help="Untimed model calls first.")
@click.option("--threads", type=int, help="CPU threads of every runtime and of TensorFlow (default: cores up to 4).")
@click.option("--scaling", is_flag=True, help="Also measure batch 1/4/16 latency+memory and export cost per architecture.")
@click.option("--scaling-arch", "scaling_archs", multiple=True, metavar="ARCH",
              help="Architectures for --scaling (default: mobilenet, mobilenet_v2, mobilenet_v3_small/large, resnet50; 'none' skips).")
@click.option("--scaling-target", "scaling_targets", multiple=True, metavar="NAME",
              help="Targets for the architecture scaling (default: tflite-fp32, tflite-int8, onnx-fp32, openvino-fp32).")
@click.option("--reuse/--no-reuse", default=True, show_default=True,
              help="Reuse a valid bundle in OUT/bundles/ exported from the same model (same sha256) and test files.")
@click.option("--fail-on-parity/--no-fail-on-parity", default=True, show_default=True,
              help="Exit 1 when any int8 row fails parity or cannot be exported/run.")
@click.option("--max-recall-drop", default=0.01, show_default=True, help="Largest recall drop (export gate and device parity).")
@click.option("--max-accuracy-drop", default=0.01, show_default=True, help="Largest accuracy drop (export gate and device parity).")
@click.option("--min-agreement", default=0.98, show_default=True, help="Smallest share of identical decisions on the device.")
@click.option("--calib-count", default=300, show_default=True, help="Calibration images (capped in --limit runs).")
@click.option("--finetune-epochs", default=2, show_default=True, help="Fine-tuning epochs for --prune / --qat.")
@click.option("--cold-start", "cold", is_flag=True, help="Also time a cold start (a fresh process) per target.")
@click.option("--bootstrap", "n_boot", default=1000, show_default=True, help="Bootstrap resamples of the parity CIs.")
@click.option("--classes", default="NORMAL,PNEUMONIA", show_default=True, help="The two class folder names, negative first.")
def benchmark(model_path, data, out, targets, max_recall_drop, max_accuracy_drop, min_agreement, fail_on_parity,
              classes, scaling_archs, scaling_targets, **options):
    """Export every target, re-check parity on the test set on this device, time it: one table."""
    from edgecxr.devices.parity import Tolerances

    archs = None if not scaling_archs else tuple(a for a in scaling_archs if a != "none")
    result = run_benchmark(model_path, data, out, targets=targets or ("all",), classes=D.parse_classes(classes),
                           tolerances=Tolerances(max_recall_drop, max_accuracy_drop, min_agreement),
                           scaling_archs=archs, scaling_targets=scaling_targets or None, command=_command_line(),
                           **options)
    click.echo(format_table(result))
    if result.get("scaling"):
        from edgecxr.export import scaling as S

        sc = result["scaling"]
        if sc.get("batch"):
            click.echo("\n" + S.format_batch_scaling(sc["batch"]))
        if sc.get("architectures"):
            click.echo("\n" + S.format_arch_scaling(sc["architectures"], sc["architecture_targets"]))
    click.echo(f"written to {Path(out) / 'benchmark.json'} and {Path(out) / 'benchmark.md'}", err=True)
    failures = parity_failures(result["rows"])
    if failures and fail_on_parity:
        click.echo("error: int8 parity failed for " + ", ".join(
            f"{r['target']} ({r['error'] or '; '.join(r['failed_checks'] or [])})" for r in failures), err=True)
        sys.exit(1)
