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
import shlex
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import click

from edgecxr import data as D
from edgecxr.atomic import refuse_overlap, write_json_atomic, write_text_atomic
from edgecxr.comparison import PARITY_BOOTSTRAP
from edgecxr.errors import ConfigError, MissingDependencyError
from edgecxr.export.bench_rows import (_model_hash, _say, empty_row, export_row, machine_info, make_subset,
                                       measure_float, measure_row, plan_rows)
from edgecxr.export.bench_table import format_markdown, format_table
from edgecxr.targets import TARGETS

MIN_BOOTSTRAP = 40  # below it the 2.5 % percentile of a 95 % interval is not one resample


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:400] if text else ''}".rstrip(": ")


# -- the whole benchmark -------------------------------------------------------------------
def run_benchmark(model_path, data_root, out_dir, *, targets=("all",), prune: float | None = None, qat: bool = False,
                  distill: bool = False,
                  limit: int | None = None, runs: int = 100, warmup: int = 10, threads: int | None = None,
                  reuse: bool = True, tolerances=None, calib_count: int | None = None, finetune_epochs: int = 2,
                  classes=D.DEFAULT_CLASSES, n_boot: int = PARITY_BOOTSTRAP, cold: bool = False, scaling: bool = False,
                  scaling_archs=None, scaling_targets=None, train_images: int = 200, command: str | None = None,
                  stability_images: int = 64) -> dict:
    """Export/reuse, parity-check and time every planned row; writes OUT/benchmark.json and .md; returns the result."""
    from edgecxr.criteria import Tolerances
    from edgecxr.export.datasets import DEFAULT_CALIBRATION
    from edgecxr.export.pipeline import _check_options, versions

    started = time.time()
    tolerances = tolerances or Tolerances()
    plans = plan_rows(targets, prune, qat, distill)
    model_path, data_root, out_dir, threads, split_file = _check_inputs(model_path, data_root, out_dir, runs, warmup,
                                                                         threads, classes, limit)
    _check_options(prune, tolerances.max_recall_drop, tolerances.max_accuracy_drop, tolerances.min_agreement,
                   finetune_epochs)
    if n_boot < MIN_BOOTSTRAP:
        raise ConfigError(f"--bootstrap {n_boot}: parity's confidence intervals need at least {MIN_BOOTSTRAP} resamples")
    bundles = out_dir / "bundles"
    bundles.mkdir(parents=True, exist_ok=True)
    if command is None:
        command = (f"run_benchmark({str(model_path)!r}, {str(data_root)!r}, {str(out_dir)!r}, targets={list(targets)!r}, "
                   f"prune={prune!r}, qat={qat!r}, distill={distill!r}, limit={limit!r}, runs={runs!r}, threads={threads!r})")

    with tempfile.TemporaryDirectory(prefix="edgecxr-bench-data-") as tmp:
        root = data_root
        if limit:
            root = make_subset(data_root, Path(tmp) / "data", test=limit, train=train_images, classes=classes)
            calib_count = min(calib_count or DEFAULT_CALIBRATION, max(16, train_images // 3))
            _say(f"--limit {limit}: {limit} test and {train_images} train images of {data_root} (calibration {calib_count})")
        test = D.split_samples(root, "test", classes, split_file)
        test_sha, model_sha = D.files_hash(test), _model_hash(model_path)

        float_info = _time_float(model_path, root, classes=classes, runs=runs, warmup=warmup, threads=threads)
        float_p50 = float_info.get("p50_ms")

        rows = [_bench_row(i, len(plans), plan, model_path, root, bundles, reuse=reuse, model_sha=model_sha,
                           test_sha=test_sha, classes=classes, calib_count=calib_count, finetune_epochs=finetune_epochs,
                           tolerances=tolerances, runs=runs, warmup=warmup, threads=threads, float_p50=float_p50,
                           n_boot=n_boot, cold=cold, test_samples=test, stability_images=stability_images)
                for i, plan in enumerate(plans, 1)]
        _move_float_metrics(rows, float_info)

        result = {"rows": rows, "float": float_info, "machine": machine_info(), "versions": versions(),
                  "command": command,
                  **_run_record(data_root, test, test_sha, limit, train_images, model_path, model_sha, split_file),
                  "options": {"threads": threads, "runs": runs, "warmup": warmup, "calib_count": calib_count,
                              "finetune_epochs": finetune_epochs, "prune": prune, "qat": qat, "distill": distill,
                              "reuse": reuse,
                              "n_boot": n_boot, "stability_images": stability_images},
                  "tolerances": asdict(tolerances)}
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


def _time_float(model_path, root, **kw) -> dict:
    _say(f"float model {model_path}: timing batch 1 on {kw['threads']} thread(s)")
    try:
        return measure_float(model_path, root, **kw)
    except Exception as exc:  # noqa: BLE001 - still benchmark what can be benchmarked
        return {"error": _first_line(exc), "path": str(model_path)}


def _move_float_metrics(rows, float_info) -> None:
    """The float model's metrics, measured with the first plain row, belong to the float entry."""
    plain = next((r for r in rows if not r["error"] and "+" not in r["target"]), None)
    if plain is not None:
        float_info.update(plain.pop("float_metrics"), n=plain["n"])
    for r in rows:
        r.pop("float_metrics", None)


def _check_inputs(model_path, data_root, out_dir, runs, warmup, threads, classes, limit=None):
    """(model path, data root, out folder, threads, the model's pooled split file or None), every input checked
    before the first export."""
    from edgecxr.modelinfo import default_model_path
    from edgecxr.runtimes import default_threads

    if runs < 1 or warmup < 0:
        raise ConfigError("--runs must be at least 1 and --warmup at least 0")
    model_path = Path(model_path) if model_path else default_model_path()
    if not model_path.exists():
        raise ConfigError(f"model {model_path} not found; pass --model PATH")
    data_root, out_dir = Path(data_root), Path(out_dir)
    split_file = D.model_split_file(model_path)  # a pooled re-split names its own test images
    if limit and split_file:
        raise ConfigError(f"--limit takes its test images from {data_root}/test, but {model_path} follows the pooled "
                          f"re-split {split_file}, whose test images are others; run without --limit")
    D.split_samples(data_root, "test", classes, split_file)  # bad data fails now, not after the first export
    refuse_overlap(out_dir, (model_path, data_root))
    return model_path, data_root, out_dir, threads or default_threads(), split_file


def _bench_row(i, count, plan, model_path, root, bundles, *, reuse, model_sha, test_sha, classes, calib_count,
               finetune_epochs, tolerances, **measure) -> dict:
    """Export (or reuse) one planned row's bundle and measure it; a failure is a row with its error, never a crash."""
    _say(f"[{i}/{count}] {plan.name}")
    row = empty_row(plan)
    row["stage"] = "export"
    try:
        with contextlib.redirect_stdout(sys.stderr):  # Keras fit logs (prune/QAT): stdout keeps the table
            bundle, row["export_s"], row["reused"] = export_row(
                plan, model_path, root, bundles, reuse=reuse, model_sha=model_sha, test_sha=test_sha,
                classes=classes, calib_count=calib_count, finetune_epochs=finetune_epochs,
                max_recall_drop=tolerances.max_recall_drop, max_accuracy_drop=tolerances.max_accuracy_drop,
                min_agreement=tolerances.min_agreement)
        if row["reused"]:
            _say(f"    reusing {bundle}")
        measure_row(row, bundle, root, classes=classes, tolerances=tolerances, **measure)
        _say(f"    {row['runtime']}: agreement {row['agreement']:.4f}, recall {row['recall']:.4f}, "
             f"p50 {row['p50_ms']:.3f} ms, {'PASS' if row['passed'] else 'FAIL'}")
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - one failing target is a row, never a crash
        row.update(error=_first_line(exc), passed=False, missing_extra=isinstance(exc, MissingDependencyError))
        _say(f"    {row['stage']} failed: {row['error']}")
    return row


def _run_record(data_root: Path, test, test_sha, limit, train_images, model_path: Path, model_sha, split_file) -> dict:
    return {"data": str(data_root.resolve()),  # a path: `edgecxr report` resolves flipped files against it
            "data_info": {"root": str(data_root.resolve()), "split": "test", "images": len(test),
                          "split_file": str(Path(split_file).resolve()) if split_file else None,
                          "files_sha256": test_sha, "limit": limit, "train_images": train_images if limit else None},
            "model": {"path": str(model_path.resolve()), "sha256": model_sha}}


def parity_failures(rows) -> list[dict]:
    """int8 rows that failed parity or could not be exported/run (the int8 validation gate refusing a model is a parity
    loss); a row that could not run because an extra is not installed is not a parity result (missing_extras)."""
    return [r for r in rows if r["int8"] and not r["passed"] and not r.get("missing_extra")]


def missing_extras(rows) -> list[dict]:
    return [r for r in rows if r.get("missing_extra")]


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
@click.option("--target", "targets", multiple=True, metavar="NAME",
              help=f"Repeatable: {', '.join(TARGETS)}, all (default), or one row by its name, e.g. "
                   "tflite-int8+prune0.5+qat (re-runs or reuses that row alone).")
@click.option("--prune", type=float, help="Add a row tflite-int8+prune<S>: magnitude pruning to this sparsity, then int8.")
@click.option("--qat", is_flag=True, help="Add a row tflite-int8+qat (quantization-aware fine-tuning).")
@click.option("--distill", is_flag=True, help="With --qat: QAT learns the float model's probabilities (rows ...+qat-distill).")
@click.option("--limit", type=click.IntRange(min=1), help="Small CI run: N test images (half per class) and a few train images, as symlinks.")
@click.option("--runs", default=100, show_default=True, type=click.IntRange(min=1), help="Timed model calls per target.")
@click.option("--warmup", default=10, show_default=True, type=click.IntRange(min=0), help="Untimed model calls first.")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads of every runtime and of TensorFlow (default: cores up to 4).")
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
@click.option("--calib-count", type=click.IntRange(min=1),
              help="Calibration images [default: 300, or every train image when there are fewer; capped in --limit runs].")
@click.option("--finetune-epochs", default=2, show_default=True, help="Fine-tuning epochs for --prune / --qat.")
@click.option("--cold-start", "cold", is_flag=True, help="Also time a cold start (a fresh process) per target.")
@click.option("--bootstrap", "n_boot", default=PARITY_BOOTSTRAP, show_default=True,
              help="Bootstrap resamples of the parity CIs (the count export and device parity use: the same verdicts).")
@click.option("--classes", default="NORMAL,PNEUMONIA", show_default=True, help="The two class folder names, negative first.")
@click.option("--stability-images", default=64, show_default=True, type=click.IntRange(min=0),
              help="Test images (spread over the split) for the 'unstable' column; 0 skips it.")
def benchmark(model_path, data, out, targets, max_recall_drop, max_accuracy_drop, min_agreement, fail_on_parity,
              classes, scaling_archs, scaling_targets, **options):
    """Export every target, re-check parity on the test set on this device, time it: one table.

    Example: edgecxr benchmark --data data/kermany-cxr-224 --out bench --target all --runs 200"""
    from edgecxr.criteria import Tolerances

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
    failures, missing = parity_failures(result["rows"]), missing_extras(result["rows"])
    if missing and not failures:
        click.echo(f"error: {len(missing)} of {len(result['rows'])} targets could not run here: {missing[0]['error']}", err=True)
        sys.exit(2)
    if failures and fail_on_parity:
        click.echo("error: int8 parity failed for " + ", ".join(
            f"{r['target']} ({r['error'] or '; '.join(r['failed_checks'] or [])})" for r in failures), err=True)
        sys.exit(1)
