"""`edgecxr benchmark`: one table of every export target, re-checked on this device.

One loop over the export-target registry: export (or reuse) each bundle, run device
parity on the test split at the float model's threshold and time the model call, one
row per target. A failing target becomes a row with its error, never a crash. The float
Keras model is timed in the same run (batch 1), so ``speedup`` compares like with like.

    from edgecxr.bench.run import run_benchmark
    result = run_benchmark("run/model.keras", "data/kermany", "bench", targets=["tflite-int8"], limit=40)
"""
from __future__ import annotations

import contextlib
import datetime as dt
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import click

from edgecxr.data import folders as D
from edgecxr.utils.atomic import refuse_overlap, write_json_atomic, write_text_atomic
from edgecxr.parity.verdict import judge_benchmark
from edgecxr.utils.errors import ConfigError, MissingDependencyError
from edgecxr.bench.rows import (_model_hash, _say, empty_row, export_row, machine_info, make_subset,
                                       measure_float, measure_row, plan_rows)
from edgecxr.bench.table import format_markdown, format_table
from edgecxr.bench.config import BenchConfig
from edgecxr.options import config_from, config_options, configured, data_option

MIN_BOOTSTRAP = 40  # below it the 2.5 % percentile of a 95 % interval is not one resample
# the settings benchmark.json records under "options"
RECORDED_OPTIONS = ("threads", "runs", "warmup", "calib_count", "finetune_epochs", "prune", "qat", "distill", "reuse",
                    "n_boot", "stability_images")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:400] if text else ''}".rstrip(": ")


# -- the whole benchmark -------------------------------------------------------------------
def run_benchmark(model_path, data_root, out_dir, config: BenchConfig | None = None, *, command: str | None = None,
                  **settings) -> dict:
    """Export/reuse, parity-check and time every planned row; writes OUT/benchmark.json and .md; returns the result.

    config: the settings (BenchConfig; its defaults without one); keyword settings replace its fields, e.g.
    run_benchmark(m, d, out, targets=["tflite-int8"], limit=40). command: what the record names as the command."""
    from edgecxr.export.pipeline import versions

    c = configured(BenchConfig, config, settings)
    started = time.time()
    plans = plan_rows(c.targets, c.prune, c.qat, c.distill)
    model_path, data_root, out_dir, c, split_file = _check_inputs(model_path, data_root, out_dir, c)
    bundles = out_dir / "bundles"
    bundles.mkdir(parents=True, exist_ok=True)
    if command is None:
        command = (f"run_benchmark({str(model_path)!r}, {str(data_root)!r}, {str(out_dir)!r}, "
                   f"targets={list(c.targets)!r}, prune={c.prune!r}, qat={c.qat!r}, distill={c.distill!r}, "
                   f"limit={c.limit!r}, runs={c.runs!r}, threads={c.threads!r})")

    with tempfile.TemporaryDirectory(prefix="edgecxr-bench-data-") as tmp:
        root, c = _subset(data_root, Path(tmp) / "data", c)
        test = D.split_samples(root, "test", c.classes, split_file)
        test_sha, model_sha = D.files_hash(test), _model_hash(model_path)

        float_info = _time_float(model_path, root, classes=c.classes, runs=c.runs, warmup=c.warmup, threads=c.threads)
        rows = [_bench_row(i, len(plans), plan, model_path, root, bundles, c, model_sha=model_sha, test_sha=test_sha,
                           float_p50=float_info.get("p50_ms"), test_samples=test)
                for i, plan in enumerate(plans, 1)]
        _move_float_metrics(rows, float_info)

        result = {"rows": rows, "float": float_info, "machine": machine_info(), "versions": versions(),
                  "command": command,
                  **_run_record(data_root, test, test_sha, c.limit, c.train_images, model_path, model_sha, split_file),
                  "options": {k: getattr(c, k) for k in RECORDED_OPTIONS}, "tolerances": asdict(c.tolerances)}
        failures = parity_failures(rows)
        result["parity_failures"] = [r["target"] for r in failures]
        judge_benchmark(result, failures, missing_extras(rows))

        if c.scaling:
            result["scaling"] = _scaling(result, model_path, data_root, root, out_dir, rows, threads=c.threads,
                                         runs=c.runs, archs=c.scaling_archs, targets=c.scaling_targets,
                                         classes=c.classes)
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


def _check_scaling(c: BenchConfig) -> None:
    """--scaling-target / --scaling-arch names checked before the benchmark, not after it."""
    from edgecxr.formats.targets import TARGETS
    from edgecxr.training.models import get_entry

    unknown = [t for t in c.scaling_targets or () if t not in TARGETS]
    if unknown:
        raise ConfigError(f"--scaling-target {unknown[0]}: unknown target; valid: {', '.join(TARGETS)}")
    for arch in c.scaling_archs or ():
        get_entry(arch)


def _check_inputs(model_path, data_root, out_dir, c: BenchConfig):
    """(model path, data root, out folder, config with its threads resolved, the model's pooled split file or None),
    every input checked before the first export."""
    from edgecxr.export.pipeline import _check_options
    from edgecxr.formats.modelinfo import default_model_path
    from edgecxr.runtimes import default_threads

    if c.runs < 1 or c.warmup < 0:
        raise ConfigError("--runs must be at least 1 and --warmup at least 0")
    model_path = Path(model_path) if model_path else default_model_path()
    if not model_path.exists():
        raise ConfigError(f"model {model_path} not found; pass --model PATH")
    data_root, out_dir = Path(data_root), Path(out_dir)
    split_file = D.model_split_file(model_path)  # a pooled re-split names its own test images
    if c.limit and split_file:
        raise ConfigError(f"--limit takes its test images from {data_root}/test, but {model_path} follows the pooled "
                          f"re-split {split_file}, whose test images are others; run without --limit")
    D.split_samples(data_root, "test", c.classes, split_file)  # bad data fails now, not after the first export
    refuse_overlap(out_dir, (model_path, data_root))
    t = c.tolerances
    _check_options(c.prune, t.max_recall_drop, t.max_accuracy_drop, t.min_agreement, c.finetune_epochs)
    if c.n_boot < MIN_BOOTSTRAP:
        raise ConfigError(f"--bootstrap {c.n_boot}: parity's confidence intervals need at least {MIN_BOOTSTRAP} resamples")
    if c.scaling:
        _check_scaling(c)
    return model_path, data_root, out_dir, replace(c, threads=c.threads or default_threads()), split_file


def _subset(data_root: Path, folder: Path, c: BenchConfig) -> tuple[Path, BenchConfig]:
    """(data root to measure, config): with --limit, a small symlinked subset in `folder` and a calibration count
    capped to its train images."""
    from edgecxr.export.calibration import DEFAULT_CALIBRATION

    if not c.limit:
        return data_root, c
    root = make_subset(data_root, folder, test=c.limit, train=c.train_images, classes=c.classes)
    calib_count = min(c.calib_count or DEFAULT_CALIBRATION, max(16, c.train_images // 3))
    _say(f"--limit {c.limit}: {c.limit} test and {c.train_images} train images of {data_root} (calibration {calib_count})")
    return root, replace(c, calib_count=calib_count)


def _bench_row(i, count, plan, model_path, root, bundles, c: BenchConfig, *, model_sha, test_sha, float_p50,
               test_samples) -> dict:
    """Export (or reuse) one planned row's bundle and measure it; a failure is a row with its error, never a crash."""
    _say(f"[{i}/{count}] {plan.name}")
    row = empty_row(plan)
    row["stage"] = "export"
    try:
        with contextlib.redirect_stdout(sys.stderr):  # Keras fit logs (prune/QAT): stdout keeps the table
            bundle, row["export_s"], row["reused"] = export_row(
                plan, model_path, root, bundles, reuse=c.reuse, model_sha=model_sha, test_sha=test_sha,
                classes=c.classes, calib_count=c.calib_count, finetune_epochs=c.finetune_epochs,
                max_recall_drop=c.tolerances.max_recall_drop, max_accuracy_drop=c.tolerances.max_accuracy_drop,
                min_agreement=c.tolerances.min_agreement)
        if row["reused"]:
            _say(f"    reusing {bundle}")
        measure_row(row, bundle, root, classes=c.classes, tolerances=c.tolerances, runs=c.runs, warmup=c.warmup,
                    threads=c.threads, float_p50=float_p50, n_boot=c.n_boot, cold=c.cold, test_samples=test_samples,
                    stability_images=c.stability_images)
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
    from edgecxr.bench import scaling as S
    from edgecxr.formats.modelinfo import load_info

    out = {}
    spec = None
    try:
        info = load_info(model_path)
        if info is None:
            from edgecxr.formats.bundle import load_bundle

            ok = next((r for r in rows if not r["error"]), None)
            spec = load_bundle(ok["bundle_path"]).spec if ok else None
        else:
            spec = info.preprocess
        if spec is None:
            raise ConfigError("no input spec (no model info and no bundle)")
        x = S.test_inputs(root, spec, max(S.BATCHES))
        models = [{"name": "keras (float)", "kind": "keras", "path": str(model_path), "precision": "fp32"}]
        from edgecxr.formats.bundle import load_bundle

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
@data_option("Kermany-layout folder ROOT/{train,test}/{NORMAL,PNEUMONIA} (test: parity; train: calibration).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Folder for benchmark.json, benchmark.md and bundles/<target>/.")
@config_options(BenchConfig, before={"tolerances": [click.option(
    "--fail-on-parity/--no-fail-on-parity", default=True, show_default=True,
    help="Exit 1 when any int8 row fails parity or cannot be exported/run.")]})
def benchmark(model_path, data, out, fail_on_parity, **options):
    """Export every target, re-check parity on the test set on this device, time it: one table.

    Example: edgecxr benchmark --data data/kermany-cxr-224 --out bench-out --target all --runs 200"""
    result = run_benchmark(model_path, data, out, config_from(BenchConfig, options), command=_command_line())
    click.echo(format_table(result))
    if result.get("scaling"):
        from edgecxr.bench import scaling as S

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
