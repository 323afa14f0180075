"""Field parity: the CPU a result came from, int8 that decides the same on every CPU, an export gate that
device parity keeps, `--target all` that finishes, and choosing the target on the device.

Nothing here asserts an outcome that holds only on some instruction sets: CPU features are compared
with the kernel's own list of the same CPU, and int8 arithmetic is checked for the property that makes
it CPU-independent (no 16-bit pair sum can saturate), not for a probability measured on one machine.
"""
import json
import platform
from pathlib import Path

import numpy as np
import pytest

from edgecxr.utils.cpu import X86_BITS, cpu_info, int8_path, path_note
from edgecxr.utils.errors import ExportIncomplete, ModelError


def test_cpu_features_agree_with_the_kernels_list():
    info = cpu_info()
    assert info["machine"] == platform.machine() and info["int8_path"]
    cpuinfo = Path("/proc/cpuinfo")
    if info["source"] != "cpuid" or not cpuinfo.is_file():
        pytest.skip(f"features read from {info['source']}")
    flags = {w for line in cpuinfo.read_text().splitlines() if line.startswith("flags") for w in line.split(":", 1)[1].split()}
    # The kernel names these flags as we do (an emulator would show the host's here and its own CPUID to us).
    # Basic ones match exactly; newer ones (amx, avx_vnni) an older kernel may not list though the CPU has them.
    ours, listed = set(info["features"]), {n for n in X86_BITS if n in flags}
    basic = {"sse4_2", "avx", "fma", "avx2"}
    assert ours & basic == listed & basic and listed <= ours


def test_int8_path_names_the_kernel_family():
    assert int8_path("x86_64", ["avx2", "fma"]) == "x86 AVX2 without VNNI"
    assert int8_path("x86_64", ["avx2", "avx512bw", "avx512_vnni"]) == "x86 AVX-512 VNNI"
    assert int8_path("x86_64", ["avx2", "avx_vnni"]) == "x86 AVX-VNNI"
    assert int8_path("aarch64", ["asimd"]) == "ARM NEON without dot product"
    assert int8_path("aarch64", ["asimd", "asimddp", "i8mm"]) == "ARM i8mm"


def test_parity_says_when_the_cpu_path_differs():
    here = {"int8_path": "x86 AVX2 without VNNI"}
    assert "not known in advance" in path_note({"int8_path": "x86 AVX-512 VNNI"}, here)
    assert "the same as on the machine that exported" in path_note(dict(here), here)
    assert path_note(None, here) is None


def test_predicted_agreement_counts_images_near_the_threshold():
    from edgecxr.export.accuracy import predicted_agreement

    rng = np.random.default_rng(0)
    val_f = rng.uniform(0.05, 0.95, 500)
    z = np.log(val_f / (1 - val_f)) + rng.normal(0, 0.1, 500)  # int8 noise of 0.1 in logit
    val_q = 1 / (1 + np.exp(-z))
    far = np.r_[np.full(50, 0.02), np.full(50, 0.98)]
    assert predicted_agreement(val_q, val_f, far, 0.5)["lower"] == 1.0
    at = predicted_agreement(val_q, val_f, np.full(100, 0.5), 0.5)  # on the threshold: about half move below it
    assert 0.35 < at["expected"] < 0.65 and at["lower"] < at["expected"]
    near = predicted_agreement(val_q, val_f, np.r_[np.full(90, 0.02), np.full(10, 0.49)], 0.5)
    assert 0.90 < near["expected"] < 0.99 and 0 < near["expected_flips"] < 10  # 10 images within 0.04 logit


def test_gate_refuses_int8_whose_noise_would_flip_the_test_images():
    from edgecxr.export.accuracy import Gate

    y = np.r_[np.zeros(300), np.ones(300)].astype(int)
    rng = np.random.default_rng(1)
    val_f = np.where(y == 1, rng.uniform(0.7, 0.99, 600), rng.uniform(0.01, 0.3, 600))
    val_q = np.clip(val_f + rng.normal(0, 0.02, 600), 0, 1)  # no validation image is near 0.5: agreement 1.0
    crowded = np.r_[np.full(40, 0.49), np.full(40, 0.51), rng.uniform(0.01, 0.99, 520)]  # test images on the threshold
    gate = Gate(np.zeros((600, 1)), y, val_f, 0.5, "sigmoid", 0, 0.01, 0.01, "synthetic", 0.98,
                reference_float_probs=crowded)
    report = gate.check(val_q, "post-training quantization")
    assert report["decision_agreement"] == 1.0
    assert report["predicted_reference_agreement"] < 0.98 and not report["passed"]
    with pytest.raises(ModelError, match="predicted test agreement"):
        gate.fail("tflite-int8", report)


def test_small_validation_split_is_said_in_the_report():
    from edgecxr.export.accuracy import Gate

    gate = Gate(np.zeros((4, 1)), np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]), 0.5, "sigmoid", 0,
                0.01, 0.01, "tiny", 0.98)
    report = gate.check(np.array([[0.1], [0.2], [0.8], [0.9]]), "ptq")
    assert report["passed"] and "only 4 images" in report["small_validation"]


def test_onnx_int8_weights_cannot_saturate_16_bit_pair_sums(tiny_model, sample, tmp_path):
    """u8 activations x s8 weights: on x86 without VNNI two products are added in int16 with saturation.
    7-bit weights keep 2 * 255 * 64 = 32640 below 32767, on every CPU: check the file, not one CPU's output."""
    import onnx
    from onnx import numpy_helper

    from edgecxr.export import export_model

    # the file's weights are checked here, not the tiny model's agreement: no limit can refuse it
    [folder] = export_model(tiny_model, ["onnx-int8"], sample, tmp_path, calib_count=24, min_agreement=0.0,
                            max_recall_drop=1.0, max_accuracy_drop=1.0)
    model = onnx.load(str(folder / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weights = [inits[n.input[0]] for n in model.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].dtype == np.int8
               and inits[n.input[0]].ndim == 4]
    assert weights, "no int8 conv weights found"
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= 64
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["verified_on"]["cpu"]["int8_path"] == cpu_info()["int8_path"]
    assert manifest["optimization"]["export_parity"]["passed"] is True


def test_target_all_goes_on_past_a_refused_target(tiny_model, sample, tmp_path, monkeypatch):
    from edgecxr.export import build as build_mod
    from edgecxr.export import export_model

    real = build_mod.build

    def refuse_tflite(target, ctx, folder):
        if target.name == "tflite-fp32":
            raise ModelError("tflite-fp32: refused on purpose")
        return real(target, ctx, folder)

    monkeypatch.setattr(build_mod, "build", refuse_tflite)
    with pytest.raises(ExportIncomplete) as caught:
        export_model(tiny_model, ["tflite-fp32", "onnx-fp32"], sample, tmp_path, calib_count=24)
    assert [p.name for p in caught.value.written] == ["onnx-fp32"]
    assert list(caught.value.refused) == ["tflite-fp32"] and "on purpose" in caught.value.refused["tflite-fp32"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx-fp32"]  # nothing half-written


def test_export_refuses_a_bundle_that_would_fail_device_parity(tiny_model, sample, tmp_path, monkeypatch):
    """At export, device parity's own check runs on the reference test images: a model file whose answers
    differ from the float model's is refused there, not written for the device to fail."""
    from edgecxr.export import export_model
    from edgecxr.export.float_runs import Runner

    real = Runner.__call__
    monkeypatch.setattr(Runner, "__call__", lambda self, x: 1.0 - real(self, x))
    with pytest.raises(ModelError, match="would fail `edgecxr device parity`"):
        export_model(tiny_model, ["tflite-fp32"], sample, tmp_path, calib_count=24)
    assert not (tmp_path / "tflite-fp32").exists()


def test_choose_ranks_passing_bundles_by_latency(tiny_model, sample, tmp_path):
    from click.testing import CliRunner

    from edgecxr.cli import main
    from edgecxr.export import export_model

    export_model(tiny_model, ["tflite-fp32", "onnx-fp32"], sample, tmp_path / "b", calib_count=24)
    (tmp_path / "b" / "not-a-bundle").mkdir()
    r = CliRunner().invoke(main, ["device", "choose", str(tmp_path / "b"), "--data", str(sample), "--runs", "5",
                                  "--json", str(tmp_path / "choice.json")])
    assert r.exit_code == 0, r.output
    assert "ship " in r.output and "keep parity on this CPU" in r.output
    lines = [l for l in r.output.splitlines() if l.strip().startswith(("1 ", "2 "))]
    assert len(lines) == 2
    choice = json.loads((tmp_path / "choice.json").read_text())
    assert choice["choice"]["p50_ms"] == min(row["p50_ms"] for row in choice["rows"])
    assert choice["host"]["cpu"]["int8_path"] == cpu_info()["int8_path"]


def test_choose_judges_each_bundle_as_device_parity_does(tiny_bundles, kermany):
    """The tiny int8 bundles carry looser acceptance criteria (agreement 0.90): `device choose` must apply them,
    as `device parity` does, not fixed defaults, and draw the same bootstrap."""
    from edgecxr.devices.choose import rank
    from edgecxr.devices.classifier import Classifier
    from edgecxr.devices.parity import run_parity

    paths = [tiny_bundles[t] for t in ("tflite-int8", "onnx-int8", "openvino-int8")]
    result = rank(paths, kermany, runs=2, warmup=0)
    for row, path in zip(result["rows"], paths):
        report = run_parity(Classifier.load(path), kermany)
        assert (row["parity"], row["agreement"]) == (report["passed"], report["agreement"]), row
    tight = rank(paths[:1], kermany, tolerances={"min_agreement": 1.0}, runs=2, warmup=0)
    if result["rows"][0]["agreement"] < 1.0:  # a criterion given on the command line still applies
        assert tight["rows"][0]["parity"] is False and "agreement" in tight["rows"][0]["failed"]
    else:
        assert tight["rows"][0]["parity"] is True


def test_choose_on_a_sites_unlabeled_folder_and_a_loosened_criterion(tiny_bundles, sample, tmp_path):
    """A site's own X-rays: compared with the bundle's float twin (unlabeled), timed on the same folder."""
    import shutil

    from click.testing import CliRunner

    from edgecxr.cli import main

    site = tmp_path / "site"
    site.mkdir()
    for f in sorted((sample / "test" / "PNEUMONIA").iterdir())[:6]:
        shutil.copy(f, site / f.name)
    r = CliRunner().invoke(main, ["device", "choose", str(tiny_bundles["onnx-int8"]), "--data", str(site), "--runs", "3",
                                  "--min-agreement", "0.5"])
    assert r.exit_code == 0, r.output
    assert "ship onnx-int8" in r.output
    assert "DEVIATION: " in r.output and "0.5" in r.output  # loosening the bundle's 0.98 is said, as parity says it


def test_saturated_validation_predicts_nothing_instead_of_refusing():
    """A confident model: nearly every validation image at 0 or 1, where int8 clips at the output grid.
    Their logit differences are clipping, not noise; with too few others the prediction is skipped."""
    from edgecxr.export.accuracy import Gate, predicted_agreement

    y = np.r_[np.zeros(100), np.ones(100)].astype(int)
    val_f = np.where(y == 1, 1 - 1e-7, 1e-7)
    val_q = np.where(y == 1, 255 / 256, 1 / 256)
    assert predicted_agreement(val_q, val_f, np.full(100, 0.3), 0.5) is None
    gate = Gate(np.zeros((200, 1)), y, val_f, 0.5, "sigmoid", 0, 0.01, 0.01, "synthetic", 0.98,
                reference_float_probs=np.full(100, 0.3))
    report = gate.check(val_q, "ptq")
    assert report["passed"] and "predicted_reference_agreement" not in report


def test_an_exact_agreement_limit_is_measurable_on_any_split():
    from edgecxr.export.accuracy import Gate

    gate = Gate(np.zeros((523, 1)), np.zeros(523, int), np.full(523, 0.1), 0.5, "sigmoid", 0, 0.01, 0.01, "v", 1.0)
    assert gate.too_small is None


def test_threshold_outside_zero_one_is_refused(tiny_model, sample, tmp_path):
    from edgecxr.utils.errors import ConfigError
    from edgecxr.export import ModelOverrides, export_model

    for bad in (0.0, 1.0, 1.5, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="--threshold"):
            export_model(tiny_model, ["tflite-fp32"], sample, tmp_path / "o", overrides=ModelOverrides(threshold=bad))
    assert not (tmp_path / "o").exists()


def test_choose_ranks_a_bundle_named_twice_once(tmp_path):
    from edgecxr.devices.choose import find_bundles

    b = tmp_path / "bundles" / "tflite-int8"
    b.mkdir(parents=True)
    (b / "manifest.json").write_text("{}")
    assert find_bundles([tmp_path / "bundles", b, tmp_path / "bundles" / ".." / "bundles" / "tflite-int8"]) == [tmp_path / "bundles" / "tflite-int8"]


def test_choose_table_tells_two_copies_of_one_target_apart():
    from edgecxr.devices.choose import format_choice

    def row(path, rank, p50):
        return {"bundle": path, "target": "tflite-int8", "runtime": "litert 2.3.0", "size_mb": 2.6, "parity": True,
                "agreement": 1.0, "new_fn": 0, "recall": 0.98, "specificity": 0.83, "p50_ms": p50, "p90_ms": p50,
                "rank": rank, "model": "mobilenet_v2"}

    rows = [row("site-a/tflite-int8", 1, 1.0), row("site-b/tflite-int8", 2, 1.2)]
    text = format_choice({"rows": rows, "choice": rows[0], "constraints": None,
                          "host": {"cpu": {"model": "cpu", "machine": "x86_64", "int8_path": "vnni"}}})
    table = [line for line in text.splitlines() if line.lstrip().startswith(("1 ", "2 "))]
    assert "site-a/tflite-int8" in table[0] and "site-b/tflite-int8" in table[1]
    assert "ship tflite-int8 (site-a/tflite-int8) here" in text


def test_choose_across_models_with_a_latency_budget_and_clinical_floors(tiny_model, shipped_int8, sample, tmp_path):
    """Issue 32: bundles of two models (the shipped MobileNetV2 and a tiny CNN): the most accurate one that keeps
    parity and fits names itself; a floor or a budget nothing meets names none (exit 1) and says why."""
    from click.testing import CliRunner

    from edgecxr.cli import main
    from edgecxr.devices.choose import rank
    from edgecxr.export import export_model

    [tiny] = export_model(tiny_model, ["tflite-int8"], sample, tmp_path / "tiny", calib_count=24, min_agreement=0.0,
                          max_recall_drop=1.0, max_accuracy_drop=1.0)
    paths = [tiny, shipped_int8]
    result = rank(paths, sample, runs=3, warmup=0, floors={"recall": 0.0}, tolerances={"min_agreement": 0.0,
                  "max_recall_drop": 1.0, "max_accuracy_drop": 1.0})
    rows = [r for r in result["rows"] if r.get("parity")]
    assert len(rows) == 2 and len({r["model"] for r in rows}) == 2
    best = max(rows, key=lambda r: (r["accuracy"], r["roc_auc"]))
    assert result["choice"]["bundle"] == best["bundle"] and result["constraints"] == {"max_ms": None, "min_recall": 0.0}
    top = max(r["recall"] for r in rows)
    r = CliRunner().invoke(main, ["device", "choose", str(tiny), str(shipped_int8), "--data", str(sample), "--runs", "3",
                                  "--min-agreement", "0", "--max-recall-drop", "1", "--max-accuracy-drop", "1",
                                  "--min-recall", str(min(1.0, top + 0.001)) if top < 1 else "1", "--max-ms", "0.0001"])
    assert r.exit_code == 1 and "no bundle keeps parity on this device and fits p50 <= 0.0001 ms" in r.output, r.output
    header = next(line for line in r.output.splitlines() if line.strip().startswith("rank"))
    assert "does not fit: p50" in r.output and header.endswith("model")
    r = CliRunner().invoke(main, ["device", "choose", str(tiny), str(shipped_int8), "--data", str(sample), "--runs", "3",
                                  "--min-agreement", "0", "--max-recall-drop", "1", "--max-accuracy-drop", "1",
                                  "--max-ms", "100000", "--min-recall", "0"])
    assert r.exit_code == 0 and "the most accurate of the bundles that keep parity and fit p50 <= 100000 ms" in r.output
    assert best["model"] in r.output.splitlines()[-1]
    r = CliRunner().invoke(main, ["device", "choose", str(tiny), "--data", str(sample), "--max-ms", "nan"])
    assert r.exit_code == 2 and "--max-ms nan" in r.output
    site = tmp_path / "site"  # unlabeled images: no clinical numbers, a budget still chooses
    site.mkdir()
    for f in sorted((sample / "test" / "PNEUMONIA").iterdir())[:6]:
        (site / f.name).write_bytes(f.read_bytes())
    r = CliRunner().invoke(main, ["device", "choose", str(shipped_int8), "--data", str(site), "--runs", "3",
                                  "--max-ms", "100000"])
    assert r.exit_code == 0 and "no clinical numbers (unlabeled images)" in r.output, r.output


def test_choose_refuses_a_tampered_bundle_or_an_empty_folder_among_good_ones(tiny_bundles, sample, tmp_path):
    """The hostile review: a tampered or malformed bundle, or a folder without bundles, beside good ones was a
    "skipped" row (or ignored) and choose still named a bundle with exit 0; with floors that can change what ships."""
    import shutil

    from click.testing import CliRunner

    from edgecxr.cli import main

    good = tiny_bundles["onnx-fp32"]
    tampered = tmp_path / "tampered"
    shutil.copytree(good, tampered)
    manifest = json.loads((tampered / "manifest.json").read_text())
    manifest["threshold"] = 0.01
    (tampered / "manifest.json").write_text(json.dumps(manifest))
    broken = tmp_path / "broken"
    shutil.copytree(good, broken)
    (broken / "manifest.json").write_text("{not json")
    (tmp_path / "empty").mkdir()
    for bad in (tampered, broken, tmp_path / "empty"):
        r = CliRunner().invoke(main, ["device", "choose", str(good), str(bad), "--data", str(sample), "--runs", "2"])
        errors = [line for line in r.output.splitlines() if line.startswith("error: ")]
        assert r.exit_code == 2 and len(errors) == 1 and str(bad) in errors[0], r.output
        assert "ship " not in r.output


def test_choose_probes_the_json_folder_before_the_work(tiny_bundles, sample):
    """The hostile review: --json /proc/x.json passed the permission checks and failed after every parity run."""
    from click.testing import CliRunner

    from edgecxr.cli import main

    r = CliRunner().invoke(main, ["device", "choose", str(tiny_bundles["onnx-fp32"]), "--data", str(sample),
                                  "--json", "/proc/edgecxr-choice.json"])
    assert r.exit_code == 2 and "cannot write to /proc" in r.output and "parity and latency" not in r.output, r.output
