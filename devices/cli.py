"""`edgecxr device ...`: classify, benchmark and re-check parity on the device (no TensorFlow)."""
from __future__ import annotations

import csv
import json
import math
import os
import sys
from pathlib import Path

import click

from edgecxr.formats.targets import device_help, runtime_help
from edgecxr.options import (CLASSES, data_option, json_option, max_accuracy_drop_option, max_recall_drop_option,
                             min_agreement_option, overwrite_option, strict_option, threads_option)
from edgecxr.parity.criteria import Tolerances
from edgecxr.utils.errors import ConfigError, DataError, ImageError

RUNTIME = click.option("--runtime", help=runtime_help())
THREADS = threads_option()
class Share(click.ParamType):
    """A share from 0 to 1 (click's FloatRange lets NaN through: every comparison with it is false)."""

    name = "share"

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not 0 <= number <= 1:
            self.fail(f"{value} is not a share from 0 to 1", param, ctx)
        return number


SHARE = Share()


def TOLERANCES(f):
    """The parity gate's limits (device parity, merge, choose): the bundle's acceptance criteria unless given."""
    for opt in reversed([
        max_recall_drop_option(f"Recall non-inferiority margin (default: the bundle's acceptance criteria, else "
                               f"{Tolerances.max_recall_drop}). Loosening the bundle's is recorded as a deviation.",
                               default=None, type=SHARE),
        max_accuracy_drop_option(f"Accuracy non-inferiority margin (default: the bundle's, else "
                                 f"{Tolerances.max_accuracy_drop}).", default=None, type=SHARE),
        min_agreement_option(f"Share of identical decisions (default: the bundle's, else {Tolerances.min_agreement}).",
                             default=None, type=SHARE),
        click.option("--min-coverage", type=SHARE,
                     help=f"Share of the bundle's reference images that must be compared (default: the bundle's, else "
                          f"{Tolerances.min_coverage}; lower it for a deliberate subset)."),
    ]):
        f = opt(f)
    return f


def given_tolerances(max_recall_drop, max_accuracy_drop, min_agreement, min_coverage) -> dict:
    """The TOLERANCES options as parity takes them (None: not given, the bundle's criterion applies)."""
    return {"max_recall_drop": max_recall_drop, "max_accuracy_drop": max_accuracy_drop,
            "min_agreement": min_agreement, "min_coverage": min_coverage}


def REPORTS(f):
    """Where a parity report goes (device parity, device merge)."""
    f = click.option("--junit", "junit_file", type=click.Path(path_type=Path), help="Write JUnit XML (one test case per check).")(f)
    return json_option()(f)


class ShardSpec(click.ParamType):
    """--shard I/N."""

    name = "I/N"

    def convert(self, value, param, ctx):
        from edgecxr.parity.shards import parse_shard

        if isinstance(value, tuple):
            return value
        try:
            return parse_shard(value)
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)
DEVICE = click.option("--device", "device_name", help=device_help())
BUNDLE = click.argument("bundle", type=click.Path(path_type=Path))
TRUSTED = click.option("--trusted-key", type=click.Path(dir_okay=False, path_type=Path),
                       help="Public key (edgecxr keygen's .pub): refuse bundles not signed by it (default: $EDGECXR_TRUSTED_KEY).")


def _probe_write(flag: str, path: Path, parent: Path) -> None:
    """Create and remove a file where the output will go: some folders pass every permission check and still refuse
    files (/proc, a read-only mount seen by root)."""
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".edgecxr-probe-"):
            pass
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot write to {parent} ({exc.strerror or exc}); choose another path") from None


def _check_outputs(inputs=(), **outputs) -> None:
    """Refuse output files that cannot be written before the long work starts.

    outputs: option name -> path or None. Cheap checks only: the target overlaps no input, is not a
    folder and its nearest existing parent is a writable folder (the atomic writers create missing parents).
    """
    from edgecxr.utils.atomic import refuse_overlap

    given = {opt: Path(p) for opt, p in outputs.items() if p is not None}
    for opt, path in given.items():
        flag = "--" + opt.replace("_", "-")
        refuse_overlap(path, inputs, flag)
        if path.is_dir():
            raise ConfigError(f"{flag} {path}: is a folder; pass a file path")
        if path.exists() and not path.is_file():
            raise ConfigError(f"{flag} {path}: not a regular file (a device or FIFO); pass a file path")
        parent = next((d for d in (path.parent, *path.parent.parents) if d.exists()), Path("."))
        if not parent.is_dir():
            raise ConfigError(f"{flag} {path}: {parent} is a file, not a folder; fix the path")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(f"{flag} {path}: cannot write to {parent} (permission denied); choose another path")
        _probe_write(flag, path, parent)
    paths = [p.resolve() for p in given.values()]
    if len(set(paths)) < len(paths):
        raise ConfigError(f"{' and '.join('--' + o for o in given)} name the same file; pass different paths")


def _load(bundle, runtime, threads, device_name, trusted_key):
    from edgecxr.devices.classifier import Classifier

    return Classifier.load(bundle, runtime=runtime, threads=threads, device=device_name, trusted_key=trusted_key)


@click.group()
def device():
    """Run a bundle on this device: classify images, benchmark, re-check parity (no TensorFlow needed)."""


@device.command()
def runtimes():
    """List the device runtimes and whether each is installed.

    Example: edgecxr device runtimes"""
    from edgecxr.runtimes import list_runtimes

    for r in list_runtimes():
        state = "installed" if r["installed"] else f"not installed (pip install 'edgecxr[{r['extra']}]')"
        click.echo(f"{r['name']:15s} {r['family']:9s} {state}  - {r['note']}")


def _expand(paths):
    """[(path, explicit)]: files as given, folders expanded to their image files (recursively, sorted)."""
    from edgecxr.data.images import is_image_file

    items = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and is_image_file(f))
            if not found:
                raise DataError(f"{p}: folder has no image files (.jpeg/.jpg/.png/.dcm)")
            items += [(f, False) for f in found]
        else:
            items.append((p, True))
    return items


def _run_help() -> str:
    from edgecxr.data.domain import describe_domain

    return f"""Classify image files or folders (JPEG, PNG, DICOM) with BUNDLE.

    A bad file named on the command line gives one error line and a non-zero exit;
    bad files found inside a folder are listed and the others still get results.

    Example: edgecxr device run bundles/tflite-int8 chest.jpeg xrays/ --format csv > results.csv

    Accepted inputs (the bundle manifest's 'domain'; these defaults for bundles without one):
    {describe_domain()}. Anything else is refused with one line saying why.
    """


@device.command(help=_run_help())
@BUNDLE
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@RUNTIME
@THREADS
@DEVICE
@TRUSTED
@click.option("--format", "output_format", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True,
              help="What to print on stdout: a table, JSON (results, failures, runtime) or CSV. (--json PATH in the "
                   "other commands writes a file.)")
@click.option("--workers", type=click.IntRange(1, 64), help="Decoding threads, 1-64 (default: up to 4).")
@strict_option("Stop at the first unreadable image.")
def run(bundle, paths, runtime, threads, device_name, trusted_key, output_format, workers, strict):
    from edgecxr.devices.classifier import Failure
    from edgecxr.runtimes import runtime_notes

    as_json, as_csv = output_format == "json", output_format == "csv"
    items = _expand(paths)
    clf = _load(bundle, runtime, threads, device_name, trusted_key)
    if len(items) == 1 and items[0][1]:
        results = [clf.predict(items[0][0])]  # a single bad file raises: one line, exit 2
    else:
        results = clf.predict_batch([p for p, _ in items], workers=workers, strict=strict)
    good = [r for r in results if not isinstance(r, Failure)]
    bad = [r for r in results if isinstance(r, Failure)]
    if as_json:
        click.echo(json.dumps({"bundle": str(bundle), "target": clf.bundle.manifest["target"], "runtime": clf.runtime,
                               "threshold": clf.threshold, "results": [r.to_dict() for r in good],
                               "failures": [{"file": f.source, "error": f.error} for f in bad]}, indent=2))
    elif as_csv:
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(["file", "probability", "label", "threshold", "decode_ms", "preprocess_ms", "infer_ms", "total_ms"])
        for r in good:
            t = r.timings
            w.writerow([r.source, f"{r.probability:.6f}", r.label, f"{r.threshold:.6f}", f"{t.decode_ms:.3f}",
                        f"{t.preprocess_ms:.3f}", f"{t.infer_ms:.3f}", f"{t.total_ms:.3f}"])
    else:
        rt = clf.runtime
        click.echo(f"# {clf.bundle.manifest['target']} on {rt['name']} {rt['version']} ({rt['provider']}), "
                   f"threshold {clf.threshold:.4f}")
        for line in runtime_notes(rt):
            click.echo(line, err=True)
        width = max([len(str(r.source)) for r in good] + [4])
        click.echo(f"{'file':{width}s}  {'prob':>6s}  {'label':10s} {'ms':>7s}")
        for r in good:
            click.echo(f"{r.source:{width}s}  {r.probability:6.4f}  {r.label:10s} {r.timings.total_ms:7.2f}")
    for r in good:
        if r.warning:
            click.echo(f"warning: {r.warning}", err=True)
    if bad:
        click.echo(f"{len(bad)} of {len(results)} file(s) could not be read or were refused:", err=True)
        for f in bad:
            click.echo(f"  {f.error}", err=True)
        named = {str(p) for p, explicit in items if explicit}
        if any(f.source in named for f in bad) or len(bad) == len(results):  # nothing classified is not success
            sys.exit(ImageError.exit_code)


@device.command()
@BUNDLE
@data_option("Kermany-layout ROOT whose real images are timed (default: the shipped sample).", required=False)
@click.option("--split", default="test", show_default=True)
@click.option("--warmup", default=10, show_default=True, type=click.IntRange(min=0))
@click.option("--runs", default=200, show_default=True, type=click.IntRange(min=1))
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), help="Also run sustained for S seconds and report drift.")
@THREADS
@RUNTIME
@DEVICE
@TRUSTED
@click.option("--cold-start/--no-cold-start", default=True, show_default=True, help="Time a fresh process to its first result.")
@json_option("Write all numbers to this JSON file.")
def bench(bundle, data, split, warmup, runs, duration, threads, runtime, device_name, trusted_key, cold_start, json_file):
    """Latency (model call vs bare runtime), end to end, throughput, cold start, peak RSS, drift.

    Example: edgecxr device bench bundles/tflite-int8 --runs 200 --json bench.json"""
    from edgecxr.utils.atomic import write_json_atomic
    from edgecxr.devices.bench import format_bench, run_bench

    _check_outputs((bundle, data), json=json_file)
    clf = _load(bundle, runtime, threads, device_name, trusted_key)
    result = run_bench(clf, data=data, split=split, warmup=warmup, runs=runs, duration=duration, cold=cold_start)
    click.echo(format_bench(result))
    if json_file:
        write_json_atomic(json_file, result)
        click.echo(f"written {json_file}")


@device.command()
@BUNDLE
@data_option("Kermany-layout ROOT, a CSV manifest (path[,label]), or a folder of a site's X-rays.")
@click.option("--split", default="test", show_default=True)
@CLASSES
@TOLERANCES
@REPORTS
@RUNTIME
@THREADS
@DEVICE
@TRUSTED
@click.option("--workers", type=click.IntRange(1, 64), help="Decoding threads, 1-64 (default: up to 4).")
@strict_option("Fail on the first unreadable image instead of skipping it.")
@click.option("--show", default=10, show_default=True, help="Flipped cases printed (all are in --json).")
@click.option("--reference", type=click.Choice(["auto", "bundle", "twin"]), default="auto", show_default=True,
              help="Float reference: stored at export (bundle), recomputed here by the bundle's float32 twin (twin), "
                   "or the stored one when it holds every image, else the twin (auto).")
@click.option("--stability", is_flag=True, help="Also measure input-path stability on the same images, for the device "
                                                "model and the float twin (see `device stability`).")
@click.option("--max-unstable", type=SHARE,
              help="With --stability (implies it): fail when a larger share of images flips under any input variant.")
@click.option("--shard", type=ShardSpec(), help="Run shard I of N only (images split by sorted relative path) and "
                                                "write its --predictions; combine the N files with `device merge`.")
@click.option("--predictions", "predictions_file", type=click.Path(path_type=Path),
              help="Write the per-image prediction file (the unit `device merge` combines) instead of a report.")
@click.option("--signing-key", type=click.Path(dir_okay=False, path_type=Path),
              help="With --predictions: sign the file with this device's private key (edgecxr keygen); "
                   "`device merge --device-key` then refuses any shard it did not sign.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", metavar="[ADDRESS]",
              help="Run on Ray (pip install 'edgecxr[ray]'): one classifier per worker over the image list, then "
                   "merged. Without ADDRESS a local Ray on this machine; 'auto' or ray://HOST:PORT for a cluster.")
@click.option("--ray-workers", type=click.IntRange(1, 1024), help="With --ray: classifier workers (default: the cluster's CPUs).")
@click.option("--sbom", "sbom_file", type=click.Path(path_type=Path),
              help="Write a CycloneDX JSON software bill of materials of this environment (the runtime that ran the "
                   "model, edgecxr, numpy, Pillow, their requirements, Python; versions and SHA-256) and embed it in "
                   "--json (pip install 'edgecxr[sbom]').")
def parity(bundle, data, split, classes, max_recall_drop, max_accuracy_drop, min_agreement, min_coverage, json_file,
           junit_file, runtime, threads, device_name, trusted_key, workers, strict, show, reference, stability,
           max_unstable, shard, predictions_file, signing_key, ray_address, ray_workers, sbom_file):
    """Re-run images on the device and compare its decisions with the float model's.

    --data is the data root the bundle was exported with (ROOT/SPLIT/CLASS/), a CSV manifest, or a site's
    own X-rays: a folder with the two class folders, or any folder of images (unlabeled). For images the
    bundle holds no reference for, its float32 twin computes the float reference here (no TensorFlow).

    Exit 0 when parity holds, 1 when it does not, 2 for usage or input errors, 3 for internal
    errors (see docs/reliability.md). Comparing fewer than
    --min-coverage of the reference images (a subset, unreadable files) is a failure.

    The acceptance criteria are the ones the bundle's manifest fixed at export (bundles exported before
    that get the defaults); options tighten them, and loosening one is reported as a deviation.
    Non-inferiority: the lower 95 % confidence bound (bootstrap by patient) of device minus float recall
    and accuracy must stay above minus the margin.

    Example: edgecxr device parity bundles/tflite-int8 --data clinic-xrays/ --json parity.json
    """
    from edgecxr.data.folders import parse_classes
    from edgecxr.devices.parity import run_parity

    _check_parity_modes(shard, predictions_file, json_file, junit_file, stability, max_unstable, ray_address,
                        ray_ignores={"--strict": strict, "--workers": workers, "--device": device_name})
    _check_outputs((bundle, data), json=json_file, junit=junit_file, predictions=predictions_file, sbom=sbom_file)
    if sbom_file:
        from edgecxr.devices.sbom import require_cyclonedx

        if ray_address or predictions_file:
            raise ConfigError("--sbom lists the environment of this process: run it without --ray and --predictions")
        require_cyclonedx()
    if signing_key:
        if not predictions_file:
            raise ConfigError("--signing-key signs a --predictions file; add --predictions FILE")
        from edgecxr.formats.signing import load_signing_key

        signing_key = load_signing_key(signing_key)  # a bad key fails now, not after the run
    tol = given_tolerances(max_recall_drop, max_accuracy_drop, min_agreement, min_coverage)
    if ray_address:
        from edgecxr.devices.distributed import parity_ray

        report = parity_ray(bundle, data, split=split, classes=parse_classes(classes), tolerances=tol,
                            reference=reference, address=ray_address, workers=ray_workers, runtime=runtime,
                            threads=threads or 1, trusted_key=trusted_key)
        _write_parity(report, show, json_file, junit_file)
    clf = _load(bundle, runtime, threads, device_name, trusted_key)
    if predictions_file:
        _write_shard(clf, data, split, parse_classes(classes), reference, workers, strict, shard or (1, 1),
                     predictions_file, signing_key)
    report = run_parity(clf, data, split=split, classes=parse_classes(classes), tolerances=tol, workers=workers,
                        strict=strict, reference=reference, stability=stability, max_unstable=max_unstable)
    if sbom_file:
        from edgecxr.devices.sbom import write_sbom

        report["sbom"] = write_sbom(sbom_file, clf, report)
    _write_parity(report, show, json_file, junit_file)


def _check_parity_modes(shard, predictions_file, json_file, junit_file, stability, max_unstable, ray_address,
                        ray_ignores: dict) -> None:
    from edgecxr.utils.errors import ConfigError

    if shard and not predictions_file:
        raise ConfigError("--shard needs --predictions FILE (where the shard's per-image predictions go)")
    if predictions_file and (json_file or junit_file or stability or max_unstable is not None or ray_address):
        raise ConfigError("--shard/--predictions write per-image predictions only: pass --json/--junit to "
                          "`edgecxr device merge`, and run --stability or --ray without --predictions")
    unsupported = [name for name, value in {**ray_ignores, "--stability": stability,
                                            "--max-unstable": max_unstable is not None}.items() if value]
    if ray_address and unsupported:
        raise ConfigError(f"--ray does not support {', '.join(unsupported)}: run those without --ray")


def _write_shard(clf, data, split, classes, reference, workers, strict, shard, predictions_file, signing_key=None):
    from edgecxr.parity import shards
    from edgecxr.devices.parity import parity_predictions, parity_samples

    doc = parity_predictions(clf, data, parity_samples(clf, data, split, classes, reference), split=split,
                             reference=reference, workers=workers, strict=strict, shard=shard)
    shards.write(predictions_file, doc, signing_key)
    done = sum(1 for r in doc["records"] if "device_prob" in r)
    click.echo(f"shard {shard[0]}/{shard[1]}: {done} of {len(doc['records'])} images compared in "
               f"{doc['seconds']:.1f} s (of {doc['list']['size']} listed); written {predictions_file}")
    sys.exit(0)


def _write_parity(report, show, json_file, junit_file):
    from edgecxr.utils.atomic import write_json_atomic
    from edgecxr.devices.junit import parity_junit
    from edgecxr.devices.parity import format_report

    click.echo(format_report(report, max_flips=show))
    if json_file:
        write_json_atomic(json_file, report)
    if junit_file:
        parity_junit(junit_file, report)
    sys.exit(0 if report["passed"] else 1)


@device.command()
@BUNDLE
@click.argument("submission", required=False, type=click.Path(exists=True, path_type=Path))
@RUNTIME
@THREADS
@DEVICE
@TRUSTED
@json_option()
@click.option("--write-example", type=click.Path(path_type=Path),
              help="Write edgecxr's own results for the conformance images as a .npz in the layout it reads, and stop.")
@click.option("--only-submitted", is_flag=True, help="Check only the images SUBMISSION has results for (a pipeline "
                                                      "without a DICOM reader); the verdict lists the others.")
def conform(bundle, submission, runtime, threads, device_name, trusted_key, json_file, write_example, only_submitted):
    """Check an integrator's own input pipeline against the bundle's golden vectors.

    \b
    SUBMISSION holds what your pipeline produced for the images in BUNDLE/conformance/images, any stages:
      .npz with arrays 'IMAGE/STAGE' (IMAGE: the file name or its stem), or a folder IMAGE/STAGE.npy,
      .json {IMAGE: {STAGE: value}} or {IMAGE: probability}, .csv with columns image,probability[,decision].
    Stages: decoded, cropped, equalized, resized (uint8), input (float32), quantized (int8), output,
    probability, decision (BUNDLE's manifest, input_contract, says which apply and how each is computed).
    Without SUBMISSION, edgecxr's own runner on this device is checked. Exit 0 pass, 1 fail, 2 bad input.

    \b
    edgecxr device conform bundles/tflite-int8 mine.npz --json conform.json
    """
    from edgecxr.data import conform as check, conformance as K
    from edgecxr.utils.atomic import write_json_atomic

    _check_outputs((bundle,) + ((submission,) if submission else ()), json=json_file, write_example=write_example)
    clf = _load(bundle, runtime, threads, device_name, trusted_key)
    io_ = K.ModelIO(clf.spec, clf.bundle.manifest["input"], clf.bundle.manifest["output"], clf.threshold,
                    lambda: clf.session)
    ids = [entry["id"] for entry, _, _ in K.golden_set(clf.bundle)]
    if write_example:
        from edgecxr.utils.atomic import write_bytes_atomic
        import io as _io

        import numpy as np

        buf = _io.BytesIO()
        own = K.own_submission(clf.bundle, clf)
        np.savez_compressed(buf, **{f"{i}/{s}": v for i, stages in own.items() for s, v in stages.items()})
        write_bytes_atomic(write_example, buf.getvalue())
        click.echo(f"wrote edgecxr's own results for {len(own)} conformance images to {write_example}")
        return
    given = check.load_submission(submission, ids, io_.stages) if submission else K.own_submission(clf.bundle, clf)
    report = check.check(clf.bundle, given, io_, only_submitted=only_submitted and submission is not None)
    report["submission"] = str(submission) if submission else "edgecxr's own runner on this device"
    report["runtime"] = clf.runtime
    click.echo(check.format_report(report))
    if json_file:
        write_json_atomic(json_file, report)
    sys.exit(0 if report["passed"] else 1)


@device.command("check-trt")
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@json_option("Write every finding here.")
def check_trt(model, json_file):
    """List what TensorRT would refuse in a quantized ONNX model (no GPU needed).

    MODEL is an onnx-* bundle folder or an .onnx file. Checked: QuantizeLinear/DequantizeLinear pairs of int8
    (not uint8) with zero point 0, constant positive scales, per-tensor activations, per-channel weights along
    the output channels in [-127, 127], no int32 (bias) dequantization, no Q/DQ on shape inputs, no
    operator-format ops. Exit 0 when TensorRT can build it (warnings allowed), 1 when it would refuse it.

    \b
    edgecxr device check-trt bundles/onnx-int8-trt
    """
    from edgecxr.formats import trt_check
    from edgecxr.utils.atomic import write_json_atomic

    _check_outputs((model,), json=json_file)
    onnx_model = trt_check.load(model)
    found = trt_check.check_model(onnx_model)
    errors = [p for p in found if p.error]
    for problem in found[:50]:
        click.echo(problem.line())
    if len(found) > 50:
        click.echo(f"... and {len(found) - 50} more (all in --json)")
    qdq = sum(n.op_type in trt_check.QDQ for n in trt_check.all_nodes(onnx_model.graph))
    if errors:
        rules = sorted({p.rule for p in errors})
        verdict = f"TensorRT would refuse it: {len(errors)} errors ({', '.join(rules)}) in {qdq} Q/DQ nodes"
    elif not trt_check.quantized(onnx_model):
        verdict = "no quantization: TensorRT builds it in float or fp16 (int8 needs a quantized model: onnx-int8-trt)"
    else:
        verdict = f"TensorRT-clean: {qdq} Q/DQ nodes, zero points 0" + (f"; {len(found)} warnings above" if found else "")
    click.echo(f"{model}: {verdict}")
    if json_file:
        write_json_atomic(json_file, {"model": str(model), "passed": not errors, "qdq_nodes": qdq, "verdict": verdict,
                                      "findings": [p.__dict__ for p in found]})
    sys.exit(1 if errors else 0)


@device.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@TOLERANCES
@REPORTS
@click.option("--show", default=10, show_default=True, help="Flipped cases printed (all are in --json).")
@click.option("--out", type=click.Path(path_type=Path), help="For `evaluate` shards: the output folder (metrics.json, "
                                                              "predictions.npz, figures), as `edgecxr evaluate --out`.")
@overwrite_option("With --out: replace an existing edgecxr output folder.")
@click.option("--bundle", "bundle_path", type=click.Path(path_type=Path),
              help="Parity shards: the bundle they ran; its acceptance criteria, threshold and stored float references "
                   "must be the files' (an edited criterion or reference is refused).")
@TRUSTED
@click.option("--device-key", type=click.Path(dir_okay=False, path_type=Path),
              help="Public key of the devices (edgecxr keygen's .pub): refuse any shard file not signed with it "
                   "(`device parity --predictions F --signing-key PRIVATE`).")
def merge(files, max_recall_drop, max_accuracy_drop, min_agreement, min_coverage, json_file, junit_file, show, out,
          overwrite, bundle_path, trusted_key, device_key):
    """Combine the prediction files of a sharded run (`--shard I/N --predictions FILE` of `device parity` or
    `evaluate`, from any machines) into the report and verdict the unsharded run gives.

    Refuses files of different runs (bundle or model, reference, threshold, image list), a shard given twice,
    a missing shard, and any file changed after it was written (its digest), a probability outside [0, 1], an
    unknown label or a name outside the data root. With --bundle the criteria and float references must be the
    bundle's (--trusted-key: and the bundle signed by that release key); with --device-key every file must be
    signed by that device key (`device parity --predictions F --signing-key K`): only that stops a forger who
    recomputes the digest.
    Exit 0 when parity holds, 1 when it does not, 2 for bad input.

    Example: edgecxr device merge shard-1.json shard-2.json shard-3.json --json parity.json --junit parity.xml
    """
    from edgecxr.parity import shards
    from edgecxr.devices.parity import parity_from_predictions
    from edgecxr.utils.errors import ConfigError

    from edgecxr.formats.bundle import load_bundle
    from edgecxr.formats.signing import trusted_key_path

    _check_outputs(files, json=json_file, junit=junit_file)
    bundle = load_bundle(bundle_path, trusted_key=trusted_key_path(trusted_key)) if bundle_path else None
    doc = shards.merge(files, bundle=bundle, trusted_key=device_key)
    if doc["task"] == "evaluate":
        from edgecxr.parity.clinical import write_merged

        ignored = [n for n, v in {"--json": json_file, "--junit": junit_file, "--max-recall-drop": max_recall_drop,
                                  "--max-accuracy-drop": max_accuracy_drop, "--min-agreement": min_agreement,
                                  "--min-coverage": min_coverage}.items() if v is not None]
        if out is None or ignored:
            raise ConfigError("evaluate shards: pass --out DIR for the merged metrics"
                              + (f" (not {', '.join(ignored)}: those are for parity shards)" if ignored else ""))
        write_merged(doc, Path(out), overwrite=overwrite, inputs=files)
        sys.exit(0)
    if out is not None or overwrite:
        raise ConfigError("parity shards: --out/--overwrite are for evaluate shards; pass --json/--junit")
    tol = given_tolerances(max_recall_drop, max_accuracy_drop, min_agreement, min_coverage)
    _write_parity(parity_from_predictions(doc, tol), show, json_file, junit_file)


@device.command()
@BUNDLE
@data_option("Folder of images, or a data ROOT holding SPLIT/ (searched recursively).", required=False)
@click.option("--split", default="test", show_default=True, help="Used when DATA/SPLIT is a folder.")
@click.option("--float", "float_bundle", type=click.Path(path_type=Path),
              help="The float model's bundle (e.g. tflite-fp32), measured too (default: the bundle's float twin, if any).")
@click.option("--pairs", nargs=2, type=click.Path(path_type=Path), metavar="ORIGINALS DOWNSIZED",
              help="Full-size originals and their downsized files (same relative paths): decision on each against the other.")
@click.option("--max-unstable", type=SHARE, help="Gate: fail (exit 1) when a larger share of images flips under any variant.")
@json_option()
@click.option("--show", default=10, show_default=True, help="Least stable images printed.")
@RUNTIME
@THREADS
@DEVICE
@TRUSTED
def stability(bundle, data, split, float_bundle, pairs, max_unstable, json_file, show, runtime, threads, device_name,
              trusted_key):
    """How decisions move under ordinary variation of the input path: other resize kernels, JPEG re-encoding,
    decoder noise, 16-bit, window, shift, crop, gamma; with --pairs, full-size originals against downsized files.

    Exit 0 when the share of unstable images is at most --max-unstable (or no gate is given), 1 when it is
    larger, 2 for errors.

    Example: edgecxr device stability bundles/tflite-int8 --data data/kermany-cxr-224 --max-unstable 0.02
    """
    from edgecxr.utils.atomic import write_json_atomic
    from edgecxr.utils.cpu import host_info
    from edgecxr.devices.stability import format_stability, image_files, match_pairs, measure_stability

    pairs = pairs or ()
    if data is None and not pairs:
        raise click.UsageError("pass --data, --pairs or both")
    _check_outputs((bundle, data, float_bundle, *pairs), json=json_file)
    paths = image_files(data, split) if data else []
    matched = match_pairs(*pairs) if pairs else []
    clf = _load(bundle, runtime, threads, device_name, trusted_key)
    twin = _load(float_bundle, runtime, threads, device_name, trusted_key) if float_bundle else clf.twin()
    report = measure_stability(clf, paths, float_clf=twin, pairs=matched, max_unstable=max_unstable, show=show,
                               progress=True)
    report["host"] = host_info()
    click.echo(format_stability(report, show=show))
    if json_file:
        write_json_atomic(json_file, report)
    sys.exit(0 if report["passed"] is not False else 1)


@device.command()
@click.argument("bundles", nargs=-1, required=True, type=click.Path(path_type=Path))
@data_option("Kermany-layout ROOT the bundles were exported with (default: the shipped sample).", required=False)
@click.option("--runs", default=100, show_default=True, type=click.IntRange(min=1), help="Timed calls per bundle that keeps parity.")
@TOLERANCES
@THREADS
@TRUSTED
@json_option("Write every row to this JSON file.")
@click.option("--max-ms", type=click.FloatRange(min=0, min_open=True),
              help="Latency budget: p50 per image on this device (choose the most accurate bundle within it).")
@click.option("--min-recall", type=SHARE, help="Clinical floor: device recall at the bundle's threshold on --data.")
@click.option("--min-specificity", type=SHARE, help="Clinical floor: device specificity.")
@click.option("--min-accuracy", type=SHARE, help="Clinical floor: device accuracy.")
@click.option("--min-roc-auc", type=SHARE, help="Clinical floor: device ROC-AUC.")
def choose(bundles, data, runs, max_recall_drop, max_accuracy_drop, min_agreement, min_coverage, threads, trusted_key,
           json_file, max_ms, min_recall, min_specificity, min_accuracy, min_roc_auc):
    """Rank BUNDLES (folders of bundles, or bundles) on this device: parity first, then latency.

    Names the fastest bundle that keeps parity here (judged as `edgecxr device parity` judges it: each
    bundle's own acceptance criteria unless given); exit 1 when none does. Bundles whose runtime
    is not installed are listed as skipped. With a latency budget or a clinical floor (bundles of several
    models), names the most accurate bundle that keeps parity, fits --max-ms and meets every --min-* on --data
    (accuracy, then ROC-AUC, then speed).

    \b
    Example: edgecxr device choose bundles/ --data data/kermany-cxr-224 --json choice.json
             edgecxr device choose fast/ accurate/ --data data/kermany-cxr-224 --max-ms 5 --min-recall 0.96
    """
    from edgecxr.utils.atomic import write_json_atomic
    from edgecxr.devices.bench import SAMPLE
    from edgecxr.devices.choose import find_bundles, format_choice, rank

    data = data or SAMPLE
    if max_ms is not None and not math.isfinite(max_ms):  # click's FloatRange lets NaN and inf through
        raise ConfigError(f"--max-ms {max_ms}: expected a latency in milliseconds, e.g. 5")
    _check_outputs((*bundles, data), json=json_file)
    found = find_bundles(bundles)
    result = rank(found, data, runs=runs, threads=threads, trusted_key=trusted_key,
                  tolerances=given_tolerances(max_recall_drop, max_accuracy_drop, min_agreement, min_coverage),
                  progress=lambda msg: click.echo(msg, err=True), max_ms=max_ms,
                  floors={"recall": min_recall, "specificity": min_specificity, "accuracy": min_accuracy,
                          "roc_auc": min_roc_auc})
    click.echo(format_choice(result))
    if json_file:
        write_json_atomic(json_file, result)
    sys.exit(0 if result["choice"] else 1)


@device.command()
@BUNDLE
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for the site (index.html, the model, the runtime).")
@overwrite_option("Replace an existing site edgecxr wrote.")
@click.option("--npm-cache", type=click.Path(file_okay=False, path_type=Path),
              help="Where the WebAssembly runtime is installed once by npm ci of edgecxr's lockfile (default: "
                   "$EDGECXR_WEB_CACHE or ~/.cache/edgecxr-web).")
@TRUSTED
def web(bundle, out, overwrite, npm_cache, trusted_key):
    """Build a static web app that classifies with BUNDLE inside the browser: nothing is uploaded.

    BUNDLE may be a folder of bundles (edgecxr export --out): the page is then built from its tflite-int8 bundle,
    else tflite-fp32, onnx-fp32, onnx-int8 (measured: the lightest page and the fastest model in the browser).

    One HTML page, its JavaScript (the bundle's input contract: JPEG, PNG and DICOM decoding, equalization,
    resize, int8 quantization), the model and the WebAssembly runtime (LiteRT.js for tflite bundles, ONNX
    Runtime Web for onnx bundles), vendored from npm at build time, never fetched from elsewhere when it runs.
    Serve the folder over http(s): `edgecxr serve BUNDLE --app SITE` (/app/, with WebAssembly threads) or any
    static web server. Browsers keep an offline copy on https or localhost.

    Example: edgecxr device web bundles/tflite-int8 --out site/
    """
    from edgecxr.utils.atomic import check_writable
    from edgecxr.devices.web import build_site, pick_bundle

    check_writable(out, overwrite=overwrite, inputs=(bundle,))
    bundle = pick_bundle(bundle)
    index = build_site(bundle, out, cache=npm_cache, trusted_key=trusted_key, overwrite=overwrite)
    files = index["files"]
    model = sum(f["bytes"] for f in files if f["path"].startswith("model/"))
    runtime = sum(f["bytes"] for f in files if f["path"].startswith("vendor/"))
    rt = index["runtime"]
    click.echo(f"site written: {out} ({len(files)} files, {index['bytes'] / 1e6:.1f} MB: model {model / 1e6:.1f} MB, "
               f"{rt['name']} {rt['version']} {runtime / 1e6:.1f} MB in all its WebAssembly builds; a browser loads one)")
    click.echo(f"bundle {index['bundle']['target']}, model SHA-256 {index['bundle']['model_sha256'][:16]}..., "
               f"site SHA-256 {index['site_sha256'][:16]}... (files.json lists every file)")
    click.echo(f"open it: edgecxr serve {bundle} --app {out}   -> http://127.0.0.1:8080/app/\n"
               f"     or: python -m http.server -d {out} 8000   -> http://localhost:8000/ (no WebAssembly threads)")
