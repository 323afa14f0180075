"""`edgecxr benchmark`, small: the CI version of the parity benchmark (tiny model, 40 real test images).

The gate test is what CI relies on: the command exits non-zero when an int8 target loses parity.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")
pytest.importorskip("openvino")

from edgecxr.parity.criteria import Tolerances  # noqa: E402
from edgecxr.utils.errors import ConfigError  # noqa: E402
from edgecxr.formats.targets import TARGETS  # noqa: E402
from conftest import TINY_INT8_LIMITS  # noqa: E402

TARGET_NAMES = ["tflite-fp32", "tflite-int8", "onnx-int8", "openvino-fp32"]
LIMIT = 40
# 40 images: one decision is 2.5 %; the tiny model flips one or two of them in int8. The table's mechanics are
# tested here, so the limits let the tiny model's int8 bundles be written (export refuses what parity would fail).
SMALL_SET_LIMITS = Tolerances(0.1, 0.1, 0.9)
FIELDS = ("target", "runtime", "size_mb", "size_gz_mb", "accuracy", "recall", "specificity", "roc_auc", "agreement",
          "new_fn", "new_fp", "unstable", "p50_ms", "p90_ms", "speedup", "passed", "n", "export_s", "error")


@pytest.fixture(scope="module")
def bench(tiny_model, kermany, tmp_path_factory):
    from edgecxr.bench.run import run_benchmark

    out = tmp_path_factory.mktemp("bench")
    result = run_benchmark(tiny_model, kermany, out, targets=TARGET_NAMES, limit=LIMIT, runs=20, warmup=3, n_boot=200,
                           tolerances=SMALL_SET_LIMITS)
    return out, result


def test_make_subset_is_balanced_symlinked_and_deterministic(kermany, tmp_path):
    from edgecxr.data.folders import files_hash, list_split
    from edgecxr.bench.run import make_subset

    a = make_subset(kermany, tmp_path / "a", test=11, train=30)
    b = make_subset(kermany, tmp_path / "b", test=11, train=30)
    test = list_split(a, "test")
    assert len(test) == 11 and sum(s.label for s in test) == 6
    assert len(list_split(a, "train")) == 30
    assert all((a / s.rel).is_symlink() and (kermany / s.rel).is_file() for s in test)
    assert files_hash(test) == files_hash(list_split(b, "test"))  # same files again: bundles can be reused


def test_one_row_per_target_with_parity_and_latency(bench):
    out, result = bench
    rows = {r["target"]: r for r in result["rows"]}
    assert list(rows) == TARGET_NAMES
    for name, r in rows.items():
        assert set(FIELDS) <= set(r), name
        assert r["error"] is None, (name, r["error"])
        assert r["n"] == LIMIT
        assert r["size_mb"] > 0 and r["size_gz_mb"] > 0
        assert r["p50_ms"] > 0 and r["p90_ms"] >= r["p50_ms"]
        assert r["speedup"] > 0 and r["export_s"] > 0 and not r["reused"]
        assert r["runtime"].split()[0] in ("litert", "onnxruntime", "openvino", "tf-lite")
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["roc_auc"] <= 1
        assert 0 <= r["unstable"] <= 1 and r["stability_n"] == LIMIT  # --stability-images 64 > the 40 images
        if TARGETS[name].precision == "fp32":
            assert r["agreement"] == 1.0 and r["new_fn"] == 0 and r["new_fp"] == 0 and r["passed"], name
        else:
            assert r["agreement"] >= TINY_INT8_LIMITS["min_agreement"], (name, r["agreement"])  # 0.98: the demo test
    fl = result["float"]
    assert fl["p50_ms"] > 0 and fl["n"] == LIMIT and fl["accuracy"] == rows["tflite-fp32"]["accuracy"]
    assert result["machine"]["cores"] >= 1 and result["versions"]["python"]
    assert result["data_info"]["images"] == LIMIT and result["data_info"]["limit"] == LIMIT
    assert isinstance(result["data"], str)  # `edgecxr report` reads it as a path

    saved = json.loads((out / "benchmark.json").read_text())
    assert [r["target"] for r in saved["rows"]] == TARGET_NAMES and saved["command"]
    md = (out / "benchmark.md").read_text()
    assert all(f"| {name} |" in md for name in TARGET_NAMES) and "keras (float)" in md
    assert not list(out.glob(".*tmp*")) and not list((out / "bundles").glob(".staging*"))


def _copy(out: Path, dest: Path) -> Path:
    shutil.copytree(out / "bundles", dest / "bundles", symlinks=True)
    return dest


def test_reuse_and_a_failing_target_becomes_an_error_row(bench, tiny_model, kermany, tmp_path, monkeypatch):
    from edgecxr.export import pipeline
    from edgecxr.bench.run import run_benchmark

    out = _copy(bench[0], tmp_path)
    real = pipeline.export_model

    def export_model(model_path, targets, *args, **kwargs):
        if list(targets) == ["onnx-fp32"]:
            raise RuntimeError("converter exploded")
        return real(model_path, targets, *args, **kwargs)

    monkeypatch.setattr(pipeline, "export_model", export_model)
    result = run_benchmark(tiny_model, kermany, out, targets=["tflite-fp32", "onnx-fp32", "tflite-int8"], limit=LIMIT,
                           runs=5, warmup=1, n_boot=50, tolerances=SMALL_SET_LIMITS)
    rows = {r["target"]: r for r in result["rows"]}
    assert list(rows) == ["tflite-fp32", "tflite-int8", "onnx-fp32"]  # registry order
    bad = rows["onnx-fp32"]
    assert bad["error"] == "RuntimeError: converter exploded" and bad["stage"] == "export" and bad["passed"] is False
    assert rows["tflite-fp32"]["reused"] and rows["tflite-fp32"]["error"] is None and rows["tflite-fp32"]["passed"]
    assert rows["tflite-int8"]["reused"] and rows["tflite-int8"]["p50_ms"] > 0
    assert "converter exploded" in (out / "benchmark.md").read_text()


def test_ci_gate_exits_non_zero_when_int8_loses_parity(bench, tiny_model, kermany, tmp_path):
    from click.testing import CliRunner

    from edgecxr.cli import main

    int8 = next(r for r in bench[1]["rows"] if r["target"] == "tflite-int8")
    if int8["agreement"] == 1.0:  # an agreement limit of 1 fails on one flipped decision
        pytest.skip("the tiny int8 bundle flips no decision of the subset on this CPU")
    out = _copy(bench[0], tmp_path)
    args = ["benchmark", "--model", str(tiny_model), "--data", str(kermany), "--out", str(out),
            "--target", "tflite-fp32", "--target", "tflite-int8", "--limit", str(LIMIT), "--runs", "5",
            "--warmup", "1", "--bootstrap", "50", "--min-agreement", "1"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1, res.output
    assert "int8 parity failed for tflite-int8" in res.output and "tflite-fp32" not in res.output.split("int8 parity failed")[1]
    saved = json.loads((out / "benchmark.json").read_text())
    assert saved["passed"] is False and saved["parity_failures"] == ["tflite-int8"]
    assert all(r["reused"] for r in saved["rows"])  # same model, same test files: no re-export
    assert "edgecxr" in saved["command"] or "benchmark" in saved["command"]

    res = CliRunner().invoke(main, args + ["--no-fail-on-parity"])
    assert res.exit_code == 0, res.output
    assert "| tflite-int8 |" in res.output  # the table goes to stdout


def test_batch_scaling_resizes_every_runtime(bench, kermany):
    from edgecxr.formats.bundle import load_bundle
    from edgecxr.bench import scaling

    out, result = bench
    rows = {r["target"]: r for r in result["rows"]}
    models = []
    for name in ("tflite-int8", "onnx-int8", "openvino-fp32"):
        b = load_bundle(rows[name]["bundle_path"])
        models.append({"name": name, "kind": TARGETS[name].family, "path": str(b.model_path),
                       "precision": TARGETS[name].precision})
    x = scaling.test_inputs(kermany, b.spec, 16)
    assert x.shape == (16, *b.spec.input_shape) and x.dtype == np.float32
    entries = scaling.batch_scaling(models, x, batches=(1, 4, 16), threads=1, runs=10, warmup=1)
    for e in entries:
        assert [r["batch"] for r in e["batches"]] == [1, 4, 16], e
        for r in e["batches"]:
            assert r["supported"] and r["p50_ms"] > 0 and r["peak_rss_mb"] > 0, (e["name"], r)
        assert e["per_image_speedup"] > 0
    assert "| onnx-int8 |" in scaling.format_batch_scaling(entries)


def test_a_row_can_be_asked_for_by_its_name_and_runs_once():
    from edgecxr.bench.rows import plan_rows

    def rows(*args, **kw):
        return [(p.name, p.prune, p.qat, p.distill) for p in plan_rows(*args, **kw)]

    assert rows(["tflite-int8", "tflite-int8+prune0.50+qat-distill"]) == [
        ("tflite-int8", None, False, False), ("tflite-int8+prune0.5+qat-distill", 0.5, True, True)]
    assert rows(["tflite-int8+qat"]) == [("tflite-int8+qat", None, True, False)]
    assert [r[0] for r in rows(["tflite-int8+prune0.5"], 0.5, True)] == [
        "tflite-int8+prune0.5", "tflite-int8+qat", "tflite-int8+prune0.5+qat"]
    for bad, message in ((["tflite-int8+prune1.5"], "between 0 and 1"), (["onnx-int8+qat"], "unknown benchmark row"),
                         (["tflite-int8+"], "unknown benchmark row"),
                         (["tflite-int8+prune0.12345678"], "at most six decimals")):
        with pytest.raises(ConfigError, match=message):
            plan_rows(bad)
    with pytest.raises(ConfigError, match="at most six decimals"):  # would share a name with 0.123457
        plan_rows(["tflite-int8"], prune=0.1234567)
    assert rows(["tflite-int8+prune0.000001"]) == [("tflite-int8+prune0.000001", 1e-06, False, False)]
    assert [r[0] for r in rows(["tflite-int8"], prune=1e-06)] == ["tflite-int8", "tflite-int8+prune0.000001"]


def test_a_qat_row_that_fell_back_to_post_training_int8_is_reused(monkeypatch, tmp_path):
    """The reuse key is whether --qat was asked for, not whether QAT won: a +qat row whose QAT missed the gate
    and fell back to post-training int8 used to be rebuilt (about 7 minutes) on every benchmark run."""
    from types import SimpleNamespace

    import edgecxr.formats.bundle
    from edgecxr.bench.rows import plan_rows, reuse_problem

    (tmp_path / "manifest.json").write_text("{}")
    plan = next(p for p in plan_rows(["tflite-int8"], None, True) if p.qat)

    def manifest(opt):
        return SimpleNamespace(manifest={"target": "tflite-int8", "source_model": {"sha256": "m"},
                                         "reference": {"files_sha256": "t"}, "optimization": opt})

    for opt, expected in (({"qat": False, "qat_requested": True}, None),
                          ({"qat": True, "qat_requested": True}, None),
                          ({"qat": True}, None),  # bundles from before the field: what was used
                          ({"qat": False, "qat_requested": False}, "not exported with --qat"),
                          ({"qat": False}, "not exported with --qat")):
        monkeypatch.setattr(edgecxr.formats.bundle, "load_bundle", lambda folder, opt=opt: manifest(opt))
        assert reuse_problem(tmp_path, plan, "m", "t") == expected, opt

    # a distilled QAT row is another row: neither bundle stands in for the other
    distilled = next(p for p in plan_rows(["tflite-int8"], 0.5, True, distill=True) if p.qat and p.prune)
    assert distilled.name == "tflite-int8+prune0.5+qat-distill" and distilled.distill
    for row, training, expected in ((plan, "distillation", "its QAT trained on distillation"),
                                    (distilled, "labels", "its QAT trained on labels"),
                                    (distilled, "distillation", None)):
        opt = {"qat": True, "qat_requested": True, "qat_training": training,
               "prune": {"target_sparsity": 0.5} if row.prune else None}
        monkeypatch.setattr(edgecxr.formats.bundle, "load_bundle", lambda folder, opt=opt: manifest(opt))
        assert reuse_problem(tmp_path, row, "m", "t") == expected, (row.name, training)
    with pytest.raises(ConfigError, match="add --qat"):
        plan_rows(["tflite-int8"], 0.5, False, distill=True)


def test_the_benchmark_export_and_device_parity_draw_the_same_bootstrap():
    """A bundle whose accuracy lower bound sits at the margin passed export parity (2000 draws, -0.0098) and failed
    the benchmark (1000 draws, -0.0103): every parity verdict, `device choose`'s too, uses one resample count."""
    import inspect

    from edgecxr.parity.comparison import PARITY_BOOTSTRAP, compare
    from edgecxr.devices.choose import rank
    from edgecxr.devices.parity import parity_from_predictions, run_parity
    from edgecxr.bench.config import BenchConfig
    from edgecxr.bench.run import benchmark

    defaults = {f.__name__: inspect.signature(f).parameters["n_boot"].default
                for f in (compare, run_parity, parity_from_predictions, rank)}
    defaults["run_benchmark"] = BenchConfig().n_boot
    assert set(defaults.values()) == {PARITY_BOOTSTRAP}, defaults
    assert next(p for p in benchmark.params if p.name == "n_boot").default == PARITY_BOOTSTRAP


@pytest.mark.parametrize("option", [["--min-agreement", "nan"], ["--max-recall-drop", "-1"], ["--bootstrap", "0"],
                                    ["--qat", "--finetune-epochs", "0"], ["--limit", "0"], ["--threads", "0"]])
def test_impossible_options_are_usage_errors_before_any_work(tiny_model, kermany, tmp_path, option):
    """Exit 2 with the option named, never a failed parity gate (exit 1) or a silent default; nothing written."""
    from click.testing import CliRunner

    from edgecxr.cli import main

    out = tmp_path / "bench"
    r = CliRunner().invoke(main, ["benchmark", "--model", str(tiny_model), "--data", str(kermany), "--out", str(out),
                                  "--target", "tflite-int8", *option])
    assert r.exit_code == 2, r.output
    assert option[-2].lstrip("-") in r.output.replace("--", "") and "Traceback" not in r.output
    assert not out.exists()


def test_unknown_scaling_target_or_arch_is_refused_before_the_benchmark(tiny_model, sample, tmp_path):
    from edgecxr.bench.run import run_benchmark

    for setting, message in (({"scaling_targets": ("tflite-int4",)}, "--scaling-target tflite-int4"),
                             ({"scaling_archs": ("mobilenet_v9",)}, "mobilenet_v9")):
        with pytest.raises(ConfigError, match=message):
            run_benchmark(tiny_model, sample, tmp_path / "b", targets=["tflite-fp32"], scaling=True, **setting)
        assert not (tmp_path / "b" / "bundles").exists()  # refused before the first export
