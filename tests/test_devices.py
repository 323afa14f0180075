"""Device stage: the classifier, parity, bench, JUnit, integrity and bad input, on real images, without TensorFlow."""
import json
import shutil
import struct
import subprocess
import sys
import threading
import zlib
from importlib.metadata import version
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgecxr.formats import bundle as B
from edgecxr.cli import main
from edgecxr.utils.errors import BundleError, ConfigError, ImageError
from conftest import TINY_INT8_LIMITS, assert_exit_is_verdict



@pytest.fixture(scope="session")
def bundles(tiny_bundles) -> dict:
    return tiny_bundles


@pytest.fixture(scope="session")
def int8_io_bundle(bundles, tiny_model, kermany, tmp_path_factory) -> Path:
    """A full-integer TFLite bundle with int8 input and output tensors (the export stage may keep float I/O
    when its accuracy control reverts layers), to exercise quantize / dequantize on the device."""
    import os

    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf
    import tf_keras

    from edgecxr.data.folders import list_split, load_pixels

    src = bundles["tflite-int8"]
    manifest = json.loads((src / B.MANIFEST).read_text())
    spec = B.load_bundle(src).spec
    train = list_split(kermany, "train")[::50]
    x = spec.scale_pixels(load_pixels(train, spec)[0])
    conv = tf.lite.TFLiteConverter.from_keras_model(tf_keras.models.load_model(tiny_model))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([x[i:i + 1]] for i in range(len(x)))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    folder = tmp_path_factory.mktemp("int8io") / "tflite-int8"
    folder.mkdir()
    (folder / "model.tflite").write_bytes(conv.convert())
    it = tf.lite.Interpreter(model_path=str(folder / "model.tflite"))
    for key, d in (("input", it.get_input_details()[0]), ("output", it.get_output_details()[0])):
        scale, zero = d["quantization"]
        manifest[key].update(dtype="int8", quantization={"scale": float(scale), "zero_point": int(zero)})
    for key in ("format", "version", "files", "sha256", "digest"):
        manifest.pop(key)
    manifest["twin"] = None  # this folder holds only the model
    B.finalize(folder, manifest)
    return folder


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_classifier_matches_reference_on_real_images(bundles, sample):
    from edgecxr.devices import Classifier

    clf = Classifier.load(bundles["tflite-fp32"])
    ref = clf.bundle.reference["probs"]
    paths = sorted((sample / "test").rglob("*.jpeg"))
    assert len(paths) == 100
    for path in paths:
        r = clf.predict(path)
        rel = path.relative_to(sample).as_posix()
        assert r.probability == pytest.approx(ref[rel], abs=1e-4)
        assert r.label == (clf.labels[1] if r.probability >= clf.threshold else clf.labels[0])
        assert r.threshold == clf.threshold and r.timings.infer_ms > 0 and r.timings.total_ms >= r.timings.infer_ms
    assert set(clf.runtime) >= {"name", "version", "provider", "threads"}
    assert clf.runtime["name"] == "litert"


def test_provider_is_the_delegate_that_really_ran(bundles):
    """The report names XNNPACK only when the interpreter really holds an XNNPACK partition; without it
    (LiteRT on a CPU it cannot identify, as under qemu) it says so in one line instead."""
    import functools

    from ai_edge_litert import interpreter as litert

    from edgecxr.runtimes import runtime_notes
    from edgecxr.runtimes.tflite import TFLiteSession

    model = bundles["tflite-int8"] / "model.tflite"
    with_xnnpack = TFLiteSession(litert.Interpreter, model, runtime="litert", version="x",
                                 provider="XNNPACK (CPU)", threads=1)
    assert with_xnnpack.provider == "XNNPACK (CPU)" and runtime_notes(with_xnnpack.describe()) == []
    builtin_only = functools.partial(
        litert.Interpreter, experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    without = TFLiteSession(builtin_only, model, runtime="litert", version="x", provider="XNNPACK (CPU)", threads=1)
    assert without.provider == "builtin CPU kernels"
    [note] = runtime_notes(without.describe())
    assert note.startswith("note: XNNPACK was not applied")


def test_predict_accepts_bytes_pil_and_arrays(bundles, sample):
    from PIL import Image

    from edgecxr.devices import Classifier

    clf = Classifier.load(bundles["tflite-int8"], threads=1)
    path = sample / "test" / "PNEUMONIA" / "person45_virus_95.jpeg"
    p = clf.predict(path).probability
    assert clf.predict(path.read_bytes()).probability == p
    assert clf.predict(Image.open(path)).probability == p  # not loaded yet: decoded as the path is
    assert clf.predict(clf.spec.load_input(path)).probability == p  # a preprocessed float input
    loaded = Image.open(path)
    loaded.load()  # decoded pixels are taken as given (no reduced-scale decode): the same as an array of them
    assert clf.predict(np.asarray(loaded.convert("L"))).probability == clf.predict(loaded).probability
    with pytest.raises(ConfigError):
        clf.predict(np.zeros((3, 3), np.float32))


def test_device_preprocessing_equals_the_spec_on_real_images(bundles, int8_io_bundle, sample):
    """The lookup-table fast path gives exactly the tensor of the training-time spec (and its quantization)."""
    from edgecxr.devices import Classifier

    fp32 = Classifier.load(bundles["tflite-fp32"])
    int8 = Classifier.load(int8_io_bundle)
    assert int8.to_model_input(np.zeros(int8.spec.input_shape, np.float32)).dtype == np.int8
    for path in sorted((sample / "test").rglob("*.jpeg"))[::5]:
        x = fp32.spec.load_input(path)
        np.testing.assert_array_equal(fp32.prepare(path)[0], x[None])
        np.testing.assert_array_equal(int8.prepare(path)[0], int8.to_model_input(x))


def test_int8_io_quantizes_and_dequantizes(int8_io_bundle, kermany):
    """int8 in and out: the probabilities stay close to the float reference on the real test images."""
    from edgecxr.devices import Classifier
    from edgecxr.devices.parity import run_parity

    clf = Classifier.load(int8_io_bundle)
    assert clf.session.input_dtype == np.int8
    rep = run_parity(clf, kermany, n_boot=100)
    assert rep["n"] == 624
    assert rep["prob_abs_diff"]["mean"] < 0.05
    assert rep["device"]["roc_auc"] > rep["float"]["roc_auc"] - 0.03


@pytest.mark.parametrize("target", ["onnx-fp32", "openvino-fp32"])
def test_other_runtimes_match_reference(bundles, sample, target):
    from edgecxr.devices import Classifier

    clf = Classifier.load(bundles[target], threads=1)
    assert clf.runtime["name"] == {"onnx-fp32": "onnxruntime", "openvino-fp32": "openvino"}[target]
    ref = clf.bundle.reference["probs"]
    for path in sorted((sample / "test").rglob("*.jpeg"))[::8]:
        assert clf.predict(path).probability == pytest.approx(ref[path.relative_to(sample).as_posix()], abs=1e-4)


def test_shared_classifier_is_thread_safe(bundles, sample):
    from edgecxr.devices import Classifier

    clf = Classifier.load(bundles["tflite-int8"])
    paths = sorted((sample / "test").rglob("*.jpeg"))
    expected = [clf.predict(p).probability for p in paths]
    got = {}

    def work(k):
        got[k] = [clf.predict(p).probability for p in paths]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert all(v == expected for v in got.values())
    assert [r.probability for r in clf.predict_batch(paths, workers=3)] == expected


def test_runtime_choice_errors(bundles):
    from edgecxr.devices import Classifier

    with pytest.raises(ConfigError, match="valid"):
        Classifier.load(bundles["tflite-int8"], runtime="nope")
    with pytest.raises(ConfigError, match="onnx"):
        Classifier.load(bundles["onnx-fp32"], runtime="litert")
    r = cli("device", "runtimes")
    assert r.exit_code == 0 and "litert" in r.output


# -- parity ----------------------------------------------------------------------
def test_parity_passes_writes_json_and_junit(bundles, kermany, tmp_path):
    out, xml = tmp_path / "parity.json", tmp_path / "parity.xml"
    r = cli("device", "parity", bundles["tflite-fp32"], "--data", kermany, "--json", out, "--junit", xml)
    assert r.exit_code == 0, r.output
    assert "parity PASSED" in r.output
    rep = json.loads(out.read_text())
    assert rep["passed"] is True and rep["n"] == 624 and rep["agreement"] == 1.0
    for side in ("float", "device"):
        assert set(rep[side]) >= {"accuracy", "recall", "specificity", "precision", "f1", "roc_auc", "n"}
    assert set(rep["delta"]) == {"accuracy", "recall", "specificity", "precision", "f1", "roc_auc"}
    assert set(rep["mcnemar"]) >= {"p_value", "a_only_right", "b_only_right"}
    assert len(rep["bootstrap"]["recall_delta"]) == 2 and len(rep["bootstrap"]["accuracy_delta"]) == 2
    assert rep["flipped"] == []
    assert set(rep["subgroups"]) == {"normal", "bacterial", "viral"}
    assert sum(s["n"] for s in rep["subgroups"].values()) == 624
    assert rep["runtime"]["name"] == "litert" and rep["runtime"]["version"]
    assert rep["data"]["same_files_as_reference"] is True
    assert rep["timing"]["seconds"] < 60
    suite = ET.parse(xml).getroot().find("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["recall_drop", "accuracy_drop", "agreement", "recall_noninferiority",
                                              "accuracy_noninferiority", "not_degenerate", "reference_metrics", "coverage"]
    assert suite.get("failures") == "0" and not any(c.find("failure") is not None for c in cases)


def test_bundle_fixes_its_acceptance_criteria_and_parity_applies_them(bundles, kermany, tmp_path):
    """Export writes the criteria (with the test set's hash, runtime and CPU); parity applies them by default,
    applies a tighter command line, records a looser one as a deviation, and says when a bundle has none."""
    folder = bundles["tflite-fp32"]
    manifest = json.loads((folder / B.MANIFEST).read_text())
    acc = manifest["acceptance"]
    limits = (TINY_INT8_LIMITS["max_recall_drop"], TINY_INT8_LIMITS["max_accuracy_drop"], TINY_INT8_LIMITS["min_agreement"])
    assert (acc["max_recall_drop"], acc["max_accuracy_drop"], acc["min_agreement"], acc["level"]) == (*limits, 0.95)
    assert acc["test_set"]["images"] == 624 and acc["test_set"]["files_sha256"] == manifest["reference"]["files_sha256"]
    assert acc["verified_on"]["runtime"]["name"] == "litert" and acc["verified_on"]["runtime"]["version"]
    assert acc["verified_on"]["cpu"]["int8_path"]
    out = tmp_path / "p.json"
    r = cli("device", "parity", folder, "--data", kermany, "--json", out)
    assert r.exit_code == 0, r.output
    assert "acceptance criteria (from the bundle): recall margin 0.08" in r.output and "DEVIATION" not in r.output
    assert "PASS recall_noninferiority" in r.output and "by patient" in r.output
    rep = json.loads(out.read_text())
    assert rep["criteria"]["source"] == "bundle" and rep["criteria"]["deviations"] == []
    assert rep["bootstrap"]["unit"] == "patient" and rep["bootstrap"]["patients"] < 624
    assert rep["calibration"]["change"]["brier"] == pytest.approx(0, abs=1e-6)  # float32 = float
    r = cli("device", "parity", folder, "--data", kermany, "--min-agreement", "0.85", "--max-recall-drop", "0.005",
            "--json", out)
    assert r.exit_code == 0, r.output
    assert "DEVIATION from the bundle's criteria: decision agreement loosened from 0.9 (the bundle's) to 0.85" in r.output
    assert "tightened on the command line: recall non-inferiority margin 0.08 -> 0.005" in r.output
    crit = json.loads(out.read_text())["criteria"]
    assert [d["criterion"] for d in crit["deviations"]] == ["min_agreement"] and crit["applied"]["max_recall_drop"] == 0.005
    old = tmp_path / "old"  # a bundle exported before the criteria: still readable, the defaults, said so
    shutil.copytree(folder, old)
    for key in ("format", "version", "files", "sha256", "digest", "acceptance"):
        manifest.pop(key)
    shutil.rmtree(old / "twin", ignore_errors=True)
    manifest["twin"] = None
    B.finalize(old, manifest)
    r = cli("device", "parity", old, "--data", kermany)
    assert r.exit_code == 0, r.output
    assert "acceptance criteria (defaults)" in r.output and "records no acceptance criteria" in r.output
    bad = json.loads((old / B.MANIFEST).read_text())
    for key in ("format", "version", "files", "sha256", "digest"):
        bad.pop(key)
    bad["acceptance"] = {**acc, "min_agreement": 1.5}
    with pytest.raises(BundleError, match="acceptance.min_agreement"):
        B.finalize(old, bad)


def test_parity_on_the_sample_subset(bundles, sample):
    r = cli("device", "parity", bundles["onnx-fp32"], "--data", sample, "--min-coverage", "0.16")
    assert r.exit_code == 0, r.output
    assert "compared 100 of the 624 reference images" in r.output
    assert "PASS coverage: compared 100 of 624 reference images (16.0 %)" in r.output


def test_parity_stability_measures_the_device_model_and_its_float_twin(bundles, sample, tmp_path):
    out = tmp_path / "parity.json"
    r = cli("device", "parity", bundles["tflite-int8"], "--data", sample / "test" / "NORMAL", "--reference", "twin",
            "--min-agreement", "0", "--max-recall-drop", "1", "--stability", "--max-unstable", "1", "--json", out)
    st = assert_exit_is_verdict(r, out)["stability"]
    assert st["device"]["n"] == st["float"]["n"] == 50
    assert st["device"]["model"]["target"] == "tflite-int8" and st["float"]["model"]["target"] == "tflite-fp32"
    assert "PASS stability" in r.output and "jpeg-q70" in r.output


def test_parity_on_part_of_the_reference_fails_on_coverage(bundles, kermany, tmp_path):
    """Two readable reference images (and one unreadable, skipped) of 624: a failure unless --min-coverage allows it."""
    data = tmp_path / "part"
    normal = sorted((kermany / "test" / "NORMAL").iterdir())[:1]
    pneumonia = sorted((kermany / "test" / "PNEUMONIA").iterdir())[:2]
    for src in normal + pneumonia:
        (data / "test" / src.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, data / "test" / src.parent.name / src.name)
    broken = data / "test" / "PNEUMONIA" / pneumonia[1].name
    broken.write_bytes(broken.read_bytes()[:200])  # a reference image that cannot be read
    out, xml = tmp_path / "p.json", tmp_path / "p.xml"
    r = cli("device", "parity", bundles["tflite-fp32"], "--data", data, "--json", out, "--junit", xml)
    assert r.exit_code == 1, r.output
    assert ("FAIL coverage: compared 2 of 624 reference images (0.3 %), below --min-coverage 1.0: "
            "pass the full data root the bundle was exported with") in r.output
    assert "parity FAILED" in r.output and "1 unreadable image(s) skipped" in r.output
    rep = json.loads(out.read_text())
    assert rep["passed"] is False and rep["data"]["reference_coverage"] == pytest.approx(2 / 624)
    assert [c["name"] for c in rep["checks"] if not c["passed"]] == ["coverage"]
    assert rep["tolerances"]["min_coverage"] == 1.0
    failed = [c.get("name") for c in ET.parse(xml).getroot().iter("testcase") if c.find("failure") is not None]
    assert failed == ["coverage"]

    r = cli("device", "parity", bundles["tflite-fp32"], "--data", data, "--min-coverage", "0.003")
    assert r.exit_code == 0, r.output
    assert "PASS coverage" in r.output and "parity PASSED" in r.output
    bad = cli("device", "parity", bundles["tflite-fp32"], "--data", data, "--min-coverage", "1.5")
    assert bad.exit_code == 2


def test_compare_checks_coverage_only_when_the_reference_size_is_given():
    from edgecxr.devices.parity import Tolerances, compare

    rels = ["test/NORMAL/IM-0001-0001.jpeg", "test/PNEUMONIA/person1_bacteria_1.jpeg"]
    args = (rels, [0, 1], [0.1, 0.9], [0.1, 0.9], 0.5)
    assert [c["name"] for c in compare(*args, n_boot=50)["checks"]] == [
        "recall_drop", "accuracy_drop", "agreement", "recall_noninferiority", "accuracy_noninferiority", "not_degenerate"]
    rep = compare(*args, n_boot=50, reference_images=4)
    assert rep["passed"] is False and rep["checks"][-1]["name"] == "coverage" and rep["checks"][-1]["value"] == 0.5
    assert "compared 2 of 4 reference images (50.0 %), below --min-coverage 1.0" in rep["checks"][-1]["message"]
    assert compare(*args, Tolerances(min_coverage=0.5), n_boot=50, reference_images=4)["passed"] is True
    assert compare(*args, n_boot=50, reference_images=2)["passed"] is True


def test_unwritable_outputs_are_refused_before_the_run(bundles, sample, tmp_path):
    args = ["device", "parity", bundles["onnx-fp32"], "--data", sample, "--min-coverage", "0"]
    r = cli(*args, "--json", tmp_path)  # an existing folder
    assert r.exit_code == 2 and r.stdout == "", r.output
    assert r.stderr.strip().splitlines() == [f"error: --json {tmp_path}: is a folder; pass a file path"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    r = cli(*args, "--junit", afile / "parity.xml")
    assert r.exit_code == 2 and r.stdout == "" and "is a file, not a folder" in r.stderr
    r = cli(*args, "--json", tmp_path / "same", "--junit", tmp_path / "same")
    assert r.exit_code == 2 and "the same file" in r.stderr
    r = cli("device", "bench", bundles["onnx-fp32"], "--runs", 1, "--warmup", 0, "--no-cold-start", "--json", tmp_path)
    assert r.exit_code == 2 and r.stdout == "" and "is a folder" in r.stderr


def test_os_error_while_writing_is_one_line_and_exit_2(bundles, sample, tmp_path, monkeypatch):
    """A crash (here: disk full while writing the JUnit file) must not look like a parity failure (exit 1)."""
    import errno

    from edgecxr.devices import junit

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path.parent / f".{path.name}.tmp-1-abc"))

    monkeypatch.setattr(junit, "write_bytes_atomic", full)
    xml = tmp_path / "parity.xml"
    r = cli("device", "parity", bundles["onnx-fp32"], "--data", sample, "--min-coverage", "0", "--junit", xml)
    assert r.exit_code == 2, r.output
    assert r.stderr.strip().splitlines() == [
        f"error: cannot write {xml}: No space left on device; the disk is full; free some space or choose another path"]
    assert "Traceback" not in r.output


def test_os_error_message_names_the_users_file(tmp_path):
    from edgecxr.cli import os_error_message

    exc = IsADirectoryError(21, "Is a directory", str(tmp_path / ".r.json.tmp-9-x"), None, str(tmp_path / "r.json"))
    assert os_error_message(exc) == f"cannot write/read {tmp_path / 'r.json'}: Is a directory; it is a folder; pass a file path"
    assert os_error_message(PermissionError(13, "Permission denied", "/x/out.json")).startswith(
        "cannot write/read /x/out.json: Permission denied; check its permissions")


def test_parity_fails_with_exit_1_and_lists_new_false_negatives_first(bundles, kermany, tmp_path):
    """Perturb the float reference so some device decisions flip, re-finalize: parity must fail."""
    from edgecxr.devices import Classifier

    src = bundles["tflite-fp32"]
    clf = Classifier.load(src)
    manifest = json.loads((src / B.MANIFEST).read_text())
    ref, t = manifest["reference"], clf.threshold
    device = {rel: clf.predict(kermany / rel).probability for rel in ref["probs"]}
    pos_missed = [r for r in ref["probs"] if ref["labels"][r] == 1 and device[r] < t][:3]
    neg_kept = [r for r in ref["probs"] if ref["labels"][r] == 0 and device[r] < t][:15]
    if not pos_missed:  # the tiny model catches every pneumonia: make one
        pos_missed = [r for r in ref["probs"] if ref["labels"][r] == 1][:1]
        ref["probs"][pos_missed[0]] = 0.0
    for rel in pos_missed + neg_kept:
        ref["probs"][rel] = 0.999  # the float model said pneumonia, the device does not
    bad = tmp_path / "perturbed"
    shutil.copytree(src, bad)
    for key in ("format", "version", "files", "sha256", "digest"):
        manifest.pop(key)
    B.finalize(bad, manifest)
    out, xml = tmp_path / "p.json", tmp_path / "p.xml"
    r = cli("device", "parity", bad, "--data", kermany, "--json", out, "--junit", xml, "--max-recall-drop", "0.001",
            "--min-agreement", "0.98")  # tighter than the tiny bundle's own 0.9
    assert r.exit_code == 1, r.output
    assert "parity FAILED" in r.output
    rep = json.loads(out.read_text())
    assert rep["passed"] is False
    assert rep["flipped"][0]["kind"] == "new_false_negative"
    kinds = [f["kind"] for f in rep["flipped"]]
    assert kinds == sorted(kinds, key=["new_false_negative", "new_false_positive", "fixed_false_negative",
                                      "fixed_false_positive"].index)
    failed = [c.get("name") for c in ET.parse(xml).getroot().iter("testcase") if c.find("failure") is not None]
    assert "recall_drop" in failed and "agreement" in failed


def test_parity_impossible_tolerance_is_a_usage_error_not_a_failed_gate(bundles, sample):
    r = cli("device", "parity", bundles["onnx-fp32"], "--data", sample, "--min-agreement", "1.01", "--min-coverage", "0")
    assert r.exit_code == 2 and "not a share from 0 to 1" in r.output


def test_small_sets_allow_one_flipped_decision_but_never_a_new_false_negative():
    from edgecxr.devices.parity import Tolerances, compare

    rels = [f"test/NORMAL/IM-{i:04d}-0001.jpeg" for i in range(20)] + \
           [f"test/PNEUMONIA/person{i}_bacteria_{i}.jpeg" for i in range(20)]
    y = [0] * 20 + [1] * 20
    float_p = [0.1] * 20 + [0.9] * 20
    new_fp = list(float_p)
    new_fp[0] = 0.6
    rep = compare(rels, y, float_p, new_fp, 0.5, n_boot=50)
    assert rep["passed"] is True and rep["agreement"] == pytest.approx(0.975)
    assert "allowed 0.025 = one decision of 40" in rep["checks"][1]["message"]
    two_fp = list(new_fp)
    two_fp[1] = 0.6
    assert compare(rels, y, float_p, two_fp, 0.5, n_boot=50)["passed"] is False
    new_fn = list(float_p)
    new_fn[20] = 0.4
    rep = compare(rels, y, float_p, new_fn, 0.5, n_boot=50)
    assert rep["passed"] is False and not rep["checks"][0]["passed"]  # recall keeps its limit
    strict = Tolerances(max_accuracy_drop=0.0, min_agreement=1.0)  # an explicit "no flips" is kept
    assert compare(rels, y, float_p, new_fp, 0.5, strict, n_boot=50)["passed"] is False
    big = compare(rels * 4, y * 4, float_p * 4, new_fp * 4, 0.5, n_boot=50)  # 160 images: 4 flips = 2.5 % fails
    assert big["passed"] is False and "one decision" not in big["checks"][1]["message"]


def test_compare_subgroups_flips_and_statistics():
    from edgecxr.devices.parity import compare

    rels = ["test/PNEUMONIA/person1_bacteria_1.jpeg", "test/PNEUMONIA/person2_virus_2.jpeg",
            "test/PNEUMONIA/person3_virus_3.jpeg", "test/NORMAL/IM-0001-0001.jpeg", "test/NORMAL/IM-0002-0001.jpeg"]
    y = [1, 1, 1, 0, 0]
    float_p = [0.9, 0.8, 0.3, 0.2, 0.7]
    device_p = [0.9, 0.4, 0.6, 0.6, 0.7]  # viral 2 -> new FN, viral 3 -> fixed FN, normal 1 -> new FP
    rep = compare(rels, y, float_p, device_p, 0.5, n_boot=200)
    assert [f["kind"] for f in rep["flipped"]] == ["new_false_negative", "new_false_positive", "fixed_false_negative"]
    assert rep["flipped"][0]["file"] == rels[1] and rep["flipped"][0]["subgroup"] == "viral"
    assert rep["subgroups"]["viral"] == {"n": 2, "float_accuracy": 0.5, "device_accuracy": 0.5, "delta_accuracy": 0.0,
                                         "agreement": 0.0, "flipped": 2, "new_false_negatives": 1}
    assert rep["subgroups"]["bacterial"]["flipped"] == 0 and rep["subgroups"]["normal"]["n"] == 2
    assert rep["agreement"] == pytest.approx(0.4)
    assert rep["mcnemar"]["a_only_right"] == 2 and rep["mcnemar"]["b_only_right"] == 1
    lo, hi = rep["bootstrap"]["recall_delta"]
    assert lo <= 0 <= hi
    assert rep["passed"] is False


# -- bench -------------------------------------------------------------------------
def test_bench_reports_every_number(bundles, sample, tmp_path):
    out = tmp_path / "bench.json"
    r = cli("device", "bench", bundles["tflite-int8"], "--data", sample, "--warmup", 3, "--runs", 40,
            "--duration", 1, "--threads", 1, "--json", out)
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    for key in ("p50", "p90", "p99", "mean", "std"):
        assert rep["latency_ms"][key] > 0 and rep["bare_invoke_ms"][key] > 0 and rep["end_to_end_ms"][key] > 0
    assert rep["end_to_end_ms"]["p50"] >= rep["latency_ms"]["p50"]
    assert rep["throughput"]["model_ips"] > 0 and rep["throughput"]["end_to_end_ips"] > 0
    assert 0 < rep["cold_start_s"] < 30 and rep["cold_start_tensorflow_imported"] is False
    assert rep["peak_rss_mb"] > 0 and rep["threads"] == 1
    assert rep["runtime"]["name"] == "litert" and rep["runtime"]["version"] == version("ai-edge-litert")
    assert "overhead_pct" in rep
    s = rep["sustained"]
    assert s["windows"] >= 5 and "drift_pct" in s and s["first_p50_ms"] > 0


# -- integrity -----------------------------------------------------------------------
def _copy(src, tmp_path, name="b"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def test_tampered_model_file_is_refused_before_running(bundles, sample, tmp_path):
    b = _copy(bundles["tflite-int8"], tmp_path)
    data = bytearray((b / "model.tflite").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (b / "model.tflite").write_bytes(bytes(data))
    r = cli("device", "run", b, sample / "test" / "NORMAL" / "IM-0009-0001.jpeg")
    assert r.exit_code == 2
    assert "SHA-256" in r.stderr and "Traceback" not in r.output
    assert r.stdout == ""  # nothing ran


def test_edited_or_incomplete_manifest_is_refused(bundles, tmp_path):
    from edgecxr.devices import Classifier

    b = _copy(bundles["tflite-int8"], tmp_path, "edited")
    m = json.loads((b / B.MANIFEST).read_text())
    m["threshold"] = 0.01
    (b / B.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="digest"):
        Classifier.load(b)
    m = json.loads((bundles["tflite-int8"] / B.MANIFEST).read_text())
    m["version"] = 99
    c = _copy(bundles["tflite-int8"], tmp_path, "future")
    (c / B.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="version 99"):
        Classifier.load(c)
    d = _copy(bundles["tflite-int8"], tmp_path, "missing")
    (d / "model.tflite").unlink()
    r = cli("device", "parity", d, "--data", tmp_path)
    assert r.exit_code == 2 and "missing" in r.stderr


# -- bad input -------------------------------------------------------------------------
def _huge_png() -> bytes:
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture()
def bad_files(tmp_path, sample):
    good = sample / "test" / "NORMAL" / "IM-0009-0001.jpeg"
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(good, folder / "good.jpeg")
    files = {
        "truncated.jpeg": good.read_bytes()[:2000],
        "empty.png": b"",
        "notes.jpeg": b"this is a text file, not an image\n",
        "huge.png": _huge_png(),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize("name,expect", [("truncated.jpeg", "truncated"), ("empty.png", "empty"),
                                         ("notes.jpeg", "not a readable image"), ("huge.png", "pixel limit")])
def test_bad_single_file_gives_one_line_and_nonzero_exit(bundles, bad_files, name, expect):
    r = cli("device", "run", bundles["tflite-int8"], bad_files / name)
    assert r.exit_code != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], r.stderr
    assert "Traceback" not in r.output


def test_folder_run_keeps_good_files_and_lists_bad_ones(bundles, bad_files):
    r = cli("device", "run", bundles["tflite-int8"], bad_files, "--format", "json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert [Path(x["source"]).name for x in rep["results"]] == ["good.jpeg"]
    assert len(rep["failures"]) == 4
    assert "4 of 5 file(s) could not be read" in r.stderr
    strict = cli("device", "run", bundles["tflite-int8"], bad_files, "--strict")
    assert strict.exit_code != 0 and strict.stderr.startswith("error: ")
    (bad_files / "good.jpeg").unlink()  # a folder in which nothing can be classified is not a success
    none = cli("device", "run", bundles["tflite-int8"], bad_files)
    assert none.exit_code == 2 and "4 of 4 file(s) could not be read" in none.stderr
    assert cli("device", "run", bundles["tflite-int8"], bad_files, "--workers", "100000").exit_code == 2


def test_run_table_and_csv(bundles, sample):
    folder = sample / "test" / "PNEUMONIA"
    r = cli("device", "run", bundles["tflite-int8"], folder, "--format", "csv")
    assert r.exit_code == 0
    rows = r.stdout.strip().splitlines()
    assert rows[0].startswith("file,probability,label,threshold") and len(rows) == 1 + len(list(folder.iterdir()))
    table = cli("device", "run", bundles["tflite-int8"], folder / "person45_virus_95.jpeg")
    assert table.exit_code == 0 and "PNEUMONIA" in table.stdout and "litert" in table.stdout


def test_predict_batch_collects_failures(bundles, bad_files):
    from edgecxr.devices import Classifier, Failure

    clf = Classifier.load(bundles["tflite-int8"])
    paths = sorted(bad_files.iterdir())
    results = clf.predict_batch(paths, strict=False)
    assert sum(isinstance(r, Failure) for r in results) == 4
    with pytest.raises(ImageError):
        clf.predict_batch(paths)


def test_predict_batch_decodes_at_most_a_window_ahead(bundles, sample):
    """A slow model must not let decoded inputs pile up: at most 2 * workers are decoded ahead of it."""
    import time

    from edgecxr.devices import Classifier

    clf = Classifier.load(bundles["tflite-int8"], threads=1)
    n = len(list((sample / "test").rglob("*.jpeg")))
    paths = sorted((sample / "test").rglob("*.jpeg")) * 3
    expected = [clf.predict(p).probability for p in paths[:n]] * 3
    prepare, infer = clf.prepare, clf.infer
    lock = threading.Lock()
    count = {"started": 0, "inferred": 0, "ahead": 0}

    def counted_prepare(item):
        with lock:
            count["started"] += 1
            count["ahead"] = max(count["ahead"], count["started"] - count["inferred"])
        return prepare(item)

    def slow_infer(x):
        time.sleep(0.003)  # the model is the bottleneck
        with lock:
            count["inferred"] += 1
        return infer(x)

    clf.prepare, clf.infer = counted_prepare, slow_infer
    results = clf.predict_batch(iter(paths), workers=2)
    assert [r.probability for r in results] == expected
    assert [r.source for r in results] == [str(p) for p in paths]
    assert count["started"] == len(paths) and 1 <= count["ahead"] <= 4


# -- no TensorFlow ---------------------------------------------------------------------
def test_device_commands_never_import_tensorflow(bundles, sample, tmp_path):
    code = (
        "import sys\n"
        "from edgecxr.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:], standalone_mode=False)\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        "else:\n"
        "    code = 0\n"
        "print('EXIT', code, 'TF', 'tensorflow' in sys.modules, 'KERAS', 'tf_keras' in sys.modules or 'keras' in sys.modules)\n"
    )
    commands = [
        ["device", "parity", bundles["tflite-int8"], "--data", sample, "--min-agreement", "0", "--min-coverage", "0",
         "--max-recall-drop", "1", "--max-accuracy-drop", "1"],  # the imports are tested here, not the verdict
        ["device", "run", bundles["tflite-int8"], sample / "test" / "NORMAL"],
        ["device", "stability", bundles["tflite-int8"], "--data", sample / "test" / "NORMAL", "--float", bundles["tflite-fp32"]],
        ["device", "parity", bundles["onnx-fp32"], "--data", sample, "--min-coverage", "0"],
        ["device", "bench", bundles["openvino-fp32"], "--runs", "5", "--warmup", "1", "--no-cold-start"],
    ]
    for args in commands:
        p = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300)
        last = p.stdout.strip().splitlines()[-1]
        assert last == "EXIT 0 TF False KERAS False", (args, p.stdout[-2000:], p.stderr[-2000:])


# -- site acceptance: the float twin ---------------------------------------------------
def test_int8_bundle_carries_a_float_twin_that_is_the_fp32_model(bundles, kermany):
    from edgecxr.devices import Classifier

    int8 = Classifier.load(bundles["tflite-int8"])
    assert Classifier.load(bundles["tflite-fp32"]).bundle.manifest.get("twin") is None  # fp32 is its own reference
    twin = int8.twin()
    assert twin.bundle.target.name == "tflite-fp32" and twin.session.input_dtype == np.float32
    fp32 = Classifier.load(bundles["tflite-fp32"])
    paths = sorted((kermany / "test" / "PNEUMONIA").iterdir())[:5]
    for path in paths:
        assert twin.predict(path).probability == pytest.approx(fp32.predict(path).probability, abs=1e-5)
    assert int8.bundle.manifest["twin"]["reference_max_abs_diff"] < 1e-3


def test_site_parity_recomputes_the_float_reference_with_the_twin(bundles, fullres, tmp_path):
    """A clinic's labeled folder (class folders, full-size originals the bundle has no reference for): the twin
    computes the float side on the device, the report says so and holds each image's hash."""
    out = tmp_path / "site.json"
    r = cli("device", "parity", bundles["tflite-int8"], "--data", fullres, "--json", out)
    rep = assert_exit_is_verdict(r, out)
    assert "reference: recomputed here by the bundle's float32 twin (tflite-fp32)" in r.output
    assert rep["reference"]["source"] == "twin" and rep["n"] == 16 and rep["data"]["labeled"]
    assert {c["file"] for c in rep["cases"]} == {p.relative_to(fullres).as_posix() for p in fullres.rglob("*.jpeg")}
    assert all(len(c["sha256"]) == 64 for c in rep["cases"]) and "recall" in rep["float"]


def test_site_parity_without_labels(bundles, fullres, tmp_path):
    folder = tmp_path / "unlabeled"
    folder.mkdir()
    for p in fullres.rglob("*.jpeg"):
        shutil.copy(p, folder / p.name)
    r = cli("device", "parity", bundles["tflite-int8"], "--data", folder, "--json", tmp_path / "u.json")
    rep = assert_exit_is_verdict(r, tmp_path / "u.json")
    assert rep["labeled"] is False and rep["n"] == 16 and {c["name"] for c in rep["checks"]} == {"positives_lost", "agreement", "coverage"}
    assert "unlabeled images: the float model calls" in r.output
    (tmp_path / "list.csv").write_text("path\n" + "".join(f"unlabeled/{p.name}\n" for p in sorted(folder.iterdir())))
    r = cli("device", "parity", bundles["tflite-int8"], "--data", tmp_path / "list.csv", "--json", tmp_path / "c.json")
    assert_exit_is_verdict(r, tmp_path / "c.json")
    strip = lambda cases: sorted((c["sha256"], c["float_prob"], c["device_prob"]) for c in cases)  # noqa: E731
    assert strip(json.loads((tmp_path / "c.json").read_text())["cases"]) == strip(rep["cases"])


def test_twin_reference_needs_a_twin_and_the_default_data_keeps_the_stored_reference(bundles, sample):
    r = cli("device", "parity", bundles["tflite-fp32"], "--data", sample, "--reference", "twin")
    assert r.exit_code == 2 and "has no float twin" in r.output
    r = cli("device", "parity", bundles["tflite-int8"], "--data", sample, "--min-coverage", "0")
    assert "reference: float probabilities stored at export (test split)" in r.output


def test_compare_unlabeled_holds_lost_positives_to_the_recall_limit():
    from edgecxr.devices.parity import compare_unlabeled

    rels = [f"{i}.png" for i in range(200)]
    fprob = np.linspace(0.01, 0.99, 200)
    same = compare_unlabeled(rels, fprob, fprob + 0.001, 0.5)
    assert same["passed"] and same["agreement"] == 1.0
    lost = fprob.copy()
    lost[[150, 160]] = 0.1  # two images the float model calls positive become negative
    rep = compare_unlabeled(rels, fprob, lost, 0.5)
    check = {c["name"]: c for c in rep["checks"]}
    assert not check["positives_lost"]["passed"] and check["positives_lost"]["value"] == pytest.approx(2 / 100)
    assert check["agreement"]["passed"] and rep["flipped_counts"] == {"new_negative": 2, "new_positive": 0}


def test_openvino_kernel_failure_is_one_error_at_load(monkeypatch):
    """OpenVINO's ARM int8 convolutions fail on their first call on CPUs without dot-product instructions (a
    Raspberry Pi 4): the session runs once at load, so that is one clear error, not a failure per image."""
    from edgecxr.utils import cpu
    from edgecxr.runtimes.openvino import OpenVinoSession
    from edgecxr.utils.errors import ModelError

    class Failing:
        def infer(self, feed):
            raise RuntimeError("Exception from src/plugins/intel_cpu/src/node.cpp:823:\n[CPU] Convolution node with "
                               "name 'block_1_expand' object is not initialized")

    session = OpenVinoSession.__new__(OpenVinoSession)
    session.request, session.input_shape, session.input_dtype = Failing(), (1, 8, 8, 3), np.dtype(np.uint8)
    session.version, session.provider = "2026.4.1", "CPU (ARM)"
    monkeypatch.setattr(cpu, "cpu_info", lambda: {"int8_path": "ARM NEON without dot product"})
    with pytest.raises(ModelError, match="need the dot-product instructions .* use the tflite-int8 or onnx-int8"):
        session._first_call("model.xml")
    monkeypatch.setattr(cpu, "cpu_info", lambda: {"int8_path": "x86 AVX2 without VNNI"})
    with pytest.raises(ModelError, match=r"cannot run this model on CPU \(ARM\) \(\[CPU\] Convolution node"):
        session._first_call("model.xml")


def test_attack_findings_on_parity_are_closed(bundles, sample, fullres, tmp_path):
    """One extra image does not switch a reference run to the twin (and off its coverage check); unreadable
    images fail the twin run's coverage; a CSV listing an image twice is refused; tolerances must be shares
    (NaN too); an output may not overwrite an image a CSV lists or a symlink points at."""
    data = tmp_path / "data"
    shutil.copytree(sample / "test", data / "test")
    extra = next(fullres.rglob("*.jpeg"))
    shutil.copy(extra, data / "test" / "NORMAL" / "extra.jpeg")
    r = cli("device", "parity", bundles["tflite-int8"], "--data", data, "--json", tmp_path / "p.json")
    rep = json.loads((tmp_path / "p.json").read_text())
    assert r.exit_code == 1 and rep["reference"]["source"] == "bundle"
    assert [c["name"] for c in rep["checks"] if not c["passed"]] == ["coverage"]

    site = tmp_path / "site"
    site.mkdir()
    for p in sorted(fullres.rglob("*.jpeg"))[:4]:
        shutil.copy(p, site / p.name)
    for i in range(4):
        (site / f"bad{i}.jpeg").write_bytes(b"\xff\xd8 not a jpeg")
    r = cli("device", "parity", bundles["tflite-int8"], "--data", site)
    assert r.exit_code == 1 and "FAIL coverage: compared 4 of 8 images listed" in r.output

    names = sorted(p.name for p in site.glob("*.jpeg") if not p.name.startswith("bad"))
    (tmp_path / "dup.csv").write_text(f"path\nsite/{names[0]}\nsite/./{names[0]}\n")
    r = cli("device", "parity", bundles["tflite-int8"], "--data", tmp_path / "dup.csv")
    assert r.exit_code == 2 and "same image as the row also on line 2" in r.output

    for value in ("nan", "-1", "2"):
        r = cli("device", "parity", bundles["tflite-int8"], "--data", sample, "--min-agreement", value)
        assert r.exit_code == 2 and "share from 0 to 1" in r.output or "not a share" in r.output, r.output

    (tmp_path / "list.csv").write_text(f"path\nsite/{names[1]}\n")
    target = site / names[1]
    before = target.read_bytes()
    r = cli("device", "parity", bundles["tflite-int8"], "--data", tmp_path / "list.csv", "--json", target)
    assert r.exit_code == 2 and "is the input" in r.output and target.read_bytes() == before
    links = tmp_path / "links"
    links.mkdir()
    (links / "a.jpeg").symlink_to(target)
    r = cli("device", "parity", bundles["tflite-int8"], "--data", links, "--json", target)
    assert r.exit_code == 2 and "through" in r.output and target.read_bytes() == before


def test_a_twin_that_is_the_model_itself_is_refused(bundles, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundles["tflite-int8"], copy)
    manifest = json.loads((copy / B.MANIFEST).read_text())
    manifest["twin"] = {**manifest["twin"], "model_file": "model.tflite"}
    for key in ("format", "version", "files", "sha256", "digest"):
        manifest.pop(key)
    shutil.rmtree(copy / "twin")
    B.finalize(copy, manifest)
    with pytest.raises(BundleError, match="twin"):
        B.load_bundle(copy)


def test_edited_quantization_is_refused(int8_io_bundle, tmp_path):
    """A manifest whose int8 scale or zero point is not the model file's (digest recomputed) is refused at load;
    a zero point outside the dtype's range is refused by the manifest check itself."""
    from edgecxr.devices import Classifier
    from edgecxr.utils.errors import ModelError

    def edited(name, **quant):
        copy = tmp_path / name
        shutil.copytree(int8_io_bundle, copy)
        manifest = json.loads((copy / B.MANIFEST).read_text())
        manifest["input"]["quantization"].update(quant)
        for key in ("format", "version", "files", "sha256", "digest"):
            manifest.pop(key)
        B.finalize(copy, manifest)
        return copy

    zero = json.loads((int8_io_bundle / B.MANIFEST).read_text())["input"]["quantization"]["zero_point"]
    with pytest.raises(ModelError, match="quantization .* is not the model's"):
        Classifier.load(edited("zp", zero_point=zero + 3 if zero < 100 else zero - 3))
    with pytest.raises(BundleError, match="zero_point: an integer in -128..127"):
        B.load_bundle(edited("range", zero_point=10**30))
    Classifier.load(int8_io_bundle)  # the unedited bundle still loads


def test_a_split_the_data_root_lacks_is_named_not_read_as_a_sites_folder(bundles, sample):
    """--split tset on a data root once ran parity on every train and test image as unlabeled X-rays and passed."""
    for split in ("tset", "val"):  # the sample has train/ and test/ only
        r = cli("device", "parity", bundles["tflite-int8"], "--data", sample, "--split", split)
        assert r.exit_code == 2, r.output
        assert f"no '{split}' folder (it has train, test); pass --split test" in r.output
