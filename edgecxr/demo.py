"""`edgecxr demo`: the whole pipeline on the built-in default, no data download.

The shipped float model is evaluated on the shipped sample of real test X-rays,
exported to an int8 bundle (calibrated on the shipped train sample), and the
bundle is re-checked on the device runtime against the float model.
"""
from __future__ import annotations

from pathlib import Path

import click

from edgecxr.formats.modelinfo import default_model_path

SAMPLE = Path(__file__).parent / "sample"


def run_demo(out: Path, target: str = "tflite-int8", *, overwrite: bool = False) -> bool:
    from edgecxr.utils.atomic import MARKER, check_writable, write_json_atomic
    from edgecxr.utils.errors import ConfigError
    from edgecxr.formats.targets import TARGETS

    if target not in TARGETS:
        raise ConfigError(f"the demo checks one target; --target {target!r} is not one of {', '.join(TARGETS)}")
    model = default_model_path()
    check_writable(out, overwrite=overwrite, inputs=(SAMPLE, model))
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by edgecxr: --overwrite may replace this folder\n")
    click.secho(f"1/3 float model {model.name} on {SAMPLE}/test (100 real X-rays)", bold=True, err=True)
    from edgecxr.training.evaluate import evaluate, format_metrics

    click.echo(format_metrics(evaluate(model, SAMPLE, "test", out / "float", n_boot=300, overwrite=True)))

    click.secho(f"2/3 export {target} (calibrated on {SAMPLE}/train)", bold=True, err=True)
    from edgecxr.export import export_model

    [bundle] = export_model(model, [target], SAMPLE, out / "bundles", calib_count=96, overwrite=True)

    click.secho(f"3/3 device parity of {bundle} (no TensorFlow in the device runtime)", bold=True, err=True)
    from edgecxr.devices import Classifier
    from edgecxr.devices.parity import format_report, run_parity

    clf = Classifier.load(bundle)
    report = run_parity(clf, SAMPLE, split="test")
    write_json_atomic(out / "parity.json", report)
    click.echo(format_report(report))
    from edgecxr.data.conform import check
    from edgecxr.data.conformance import own_submission

    conform = check(clf.bundle, own_submission(clf.bundle, clf))
    click.echo(f"input contract: this device reproduces the bundle's golden vectors on "
               f"{len(conform['images'])} conformance images: {'PASSED' if conform['passed'] else 'FAILED'} "
               f"(integrators: edgecxr device conform {bundle} THEIR.npz)")
    click.echo(f"\nwritten to {out}: float/metrics.json, bundles/{target}/, parity.json")
    click.echo(f"next: edgecxr device bench {bundle} --json {out}/bench.json && edgecxr report {out}/float "
               f"{bundle} {out}/parity.json {out}/bench.json --out {out}/report.html")
    return bool(report["passed"] and conform["passed"])


@click.command()
@click.option("--out", default="demo", show_default=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--target", default="tflite-int8", show_default=True, help="Export target to check on the device.")
@click.option("--overwrite/--no-overwrite", default=True, show_default=True, help="Replace an earlier demo folder.")
def demo(out, target, overwrite):
    """Run the pipeline on the shipped model and sample: evaluate, export, device parity, golden vectors.

    Example: edgecxr demo --out demo"""
    passed = run_demo(out, target, overwrite=overwrite)
    raise SystemExit(0 if passed else 1)
