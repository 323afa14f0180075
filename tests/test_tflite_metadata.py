"""Standard TFLite metadata in the tflite bundles (export/tflite_metadata.py), and Android's path: MediaPipe's
own ImageClassifier, fed the contract pixels, decides like edgecxr's runner.

MediaPipe runs in its own venv (its absl-py pin conflicts with the export extra's): the slow tests use the one
export builds under ~/.cache/edgecxr-mediapipe, or $EDGECXR_MEDIAPIPE_PYTHON."""
import json
import math
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgecxr.utils.errors import MissingDependencyError, ModelError
from edgecxr.export import tflite_metadata as M
from edgecxr.formats.modelinfo import ModelInfo
from edgecxr.data.preprocess import PreprocessSpec

REPO = Path(__file__).resolve().parents[1]
INFO = ModelInfo(PreprocessSpec(equalize=True), threshold=0.1687015444)


# -- what is written (no MediaPipe needed) --------------------------------------------------------------------
def test_plan_states_normalization_labels_and_threshold():
    p = M.plan(INFO.preprocess, INFO, "tflite-fp32")
    assert p["mean"] == [pytest.approx(127.5)] and p["std"] == [pytest.approx(127.5)]  # x = pixel / 127.5 - 1
    assert p["labels"] == ["PNEUMONIA"] and p["positive_index"] == 0 and p["color_space"] == "RGB"
    t = p["score_threshold"]
    assert t >= INFO.threshold and np.float32(t) == t and np.nextafter(np.float32(t), np.float32(0)) < INFO.threshold
    for words in ("PNEUMONIA when the probability of output column 0 is >=", "else NORMAL", "histogram equalization",
                  "bilinear resize to 224x224", "(x - 127.5) / 127.5"):
        assert words in p["description"], words
    assert "twin" not in p["description"]
    assert "twin/" in M.plan(INFO.preprocess, INFO, "tflite-int8", int8_input=True)["description"]


def test_plan_names_every_column_and_thresholds_what_mediapipe_scores():
    two = M.plan(INFO.preprocess, replace(INFO, output="softmax", positive_index=1), "t", out_dim=2)
    assert two["labels"] == ["NORMAL", "PNEUMONIA"] and two["score_threshold"] == M.float32_at_or_above(INFO.threshold)
    logit = M.plan(INFO.preprocess, replace(INFO, output="logits"), "t", out_dim=1)
    assert logit["score_threshold"] == pytest.approx(math.log(INFO.threshold / (1 - INFO.threshold)), abs=1e-6)
    logits = M.plan(INFO.preprocess, replace(INFO, output="logits", positive_index=0), "t", out_dim=2)
    assert logits["labels"] == ["PNEUMONIA", "NORMAL"] and logits["score_threshold"] is None
    assert "softmax probability of output column 0 is >= 0.1687" in logits["description"]
    gray = PreprocessSpec(channels=1, scale=1 / 255, offset=0.0, crop=(0.15, 0.9, 0.2, 0.8))
    one = M.plan(gray, replace(INFO, preprocess=gray), "t")
    assert one["color_space"] == "GRAYSCALE" and one["mean"] == [0.0] and one["std"] == [pytest.approx(255.0)]
    assert "lung crop rows 0.15-0.9, columns 0.2-0.8" in one["description"]


def test_float32_threshold_keeps_edgecxrs_rule_for_every_float32_score():
    rng = np.random.default_rng(0)
    for t in rng.uniform(0.01, 0.99, 200):
        t32 = np.float32(M.float32_at_or_above(float(t)))
        near = np.float32(t) + np.arange(-3, 4, dtype=np.float32) * np.spacing(np.float32(t))  # the neighbours of t
        scores = np.concatenate([near, rng.uniform(0, 1, 100).astype(np.float32)])
        assert np.array_equal(scores >= t32, scores.astype(np.float64) >= t)


def test_missing_mediapipe_is_one_line_naming_pip_install(monkeypatch, tmp_path):
    monkeypatch.setenv(M.PYTHON_ENV, str(tmp_path / "no-python"))
    with pytest.raises(MissingDependencyError) as err:
        M.mediapipe_python()
    message = str(err.value)
    assert "\n" not in message and "pip install 'mediapipe>=1.2,<2'" in message and M.SWITCH_ENV in message
    monkeypatch.setenv(M.PYTHON_ENV, sys.executable)  # this venv: TensorFlow, no MediaPipe
    if __import__("importlib").util.find_spec("mediapipe") is None:
        with pytest.raises(MissingDependencyError, match="has no mediapipe"):
            M.read(tmp_path / "any.tflite")


def test_switched_off_leaves_the_file_as_converted(monkeypatch, tmp_path):
    monkeypatch.setenv(M.SWITCH_ENV, "0")
    monkeypatch.setenv(M.PYTHON_ENV, str(tmp_path / "no-python"))  # never asked for
    model = tmp_path / "model.tflite"
    model.write_bytes(b"converted")
    assert M.write(model, INFO.preprocess, INFO, "tflite-fp32") is None and model.read_bytes() == b"converted"


def test_the_extra_is_the_requirement_and_stays_out_of_the_export_venv():
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["mediapipe"] == [M.MEDIAPIPE_REQUIREMENT]
    assert not any("mediapipe" in req for name, reqs in extras.items() if name != "mediapipe" for req in reqs)


# -- the shipped model's bundle, MediaPipe in its venv (slow: the export takes ~80 s) ---------------------------
@pytest.mark.slow
def test_tflite_bundle_and_twin_carry_standard_metadata(shipped_int8):
    manifest = json.loads((shipped_int8 / "manifest.json").read_text())
    threshold = M.float32_at_or_above(manifest["threshold"])
    models = {"tflite-int8": shipped_int8 / "model.tflite", "tflite-fp32": shipped_int8 / "twin" / "model.tflite"}
    for target, model in models.items():
        shown = M.read(model)
        md = shown["metadata"]
        assert md["name"] == f"edgecxr {target}" and md["min_parser_version"] == "1.0.0"
        assert f"{threshold:.9g}" in md["description"] and "else NORMAL" in md["description"]
        (graph,) = md["subgraph_metadata"]
        (image,), (score,) = graph["input_tensor_metadata"], graph["output_tensor_metadata"]
        assert image["content"]["content_properties"]["color_space"] == "RGB"
        (norm,) = image["process_units"]
        assert norm["options_type"] == "NormalizationOptions" and norm["options"] == {"mean": [127.5], "std": [127.5]}
        (thresholding,) = score["process_units"]
        assert thresholding["options_type"] == "ScoreThresholdingOptions"
        assert thresholding["options"]["global_score_threshold"] == pytest.approx(threshold, rel=1e-5)  # JSON: 6 digits
        assert [f["type"] for f in score["associated_files"]] == ["TENSOR_AXIS_LABELS"]
        assert shown["files"] == {"labels.txt": "PNEUMONIA"}  # one sigmoid column: P(PNEUMONIA), positive_index 0
        with zipfile.ZipFile(model) as zf:  # reproducible bytes: the appended labels are stamped 1980-01-01
            assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    assert manifest["input"]["dtype"] == "int8" and manifest["input"]["quantization"]["scale"] > 0


def _contract_pixels(clf, paths):
    """The uint8 (size, size) grey images edgecxr's runner makes (checked: they give its model input exactly)."""
    pixels = np.stack([clf.spec.to_pixels(clf.spec.read(p)) for p in paths])
    for p, x in zip(paths[:10], pixels):
        assert np.array_equal(clf.from_pixels(x), clf.prepare(p)[0])
    return pixels


@pytest.mark.slow
def test_mediapipe_image_classifier_decides_like_edgecxrs_runner_on_the_sample(shipped_int8, sample):
    from edgecxr.devices.classifier import Classifier

    fp32 = Classifier.load(shipped_int8).twin()  # the tflite-fp32 model, as its own bundle would hold it
    paths = sorted((sample / "test").glob("*/*.jpeg"))
    assert len(paths) == 100
    pixels = _contract_pixels(fp32, paths)
    runner = np.array([fp32.infer(fp32.from_pixels(x))[0] for x in pixels])
    answer = M.classify(fp32.bundle.model_path, pixels)
    assert len(answer["scores"]) == len(answer["positive"]) == 100
    assert np.array_equal(np.array(answer["positive"]), runner >= fp32.threshold)  # MediaPipe thresholds itself
    assert np.abs(np.array(answer["scores"]) - runner).max() <= 1e-5  # measured: 0 (bit-identical)
    assert 0 < int((runner >= fp32.threshold).sum()) < 100


@pytest.mark.slow
def test_mediapipe_image_classifier_and_the_int8_model(shipped_int8, sample):
    """MediaPipe (1.2.3) takes uint8 or float32 input only: it refuses tflite-int8 (docs/devices.md, Android). Should a
    later release take it, it must decide like edgecxr's int8 runner."""
    from edgecxr.devices.classifier import Classifier

    int8 = Classifier.load(shipped_int8)
    paths = sorted((sample / "test").glob("*/*.jpeg"))[::10]
    pixels = _contract_pixels(int8, paths)
    try:
        answer = M.classify(int8.bundle.model_path, pixels)
    except ModelError as exc:
        assert "INT8" in str(exc) and "uint8/float32" in str(exc), exc
        return
    runner = np.array([int8.infer(int8.from_pixels(x))[0] for x in pixels])
    assert np.array_equal(np.array(answer["positive"]), runner >= int8.threshold)
