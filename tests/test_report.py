"""Explainability (Grad-CAM, occlusion, `edgecxr explain`) and the HTML report, checked in a real browser."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgecxr.cli import main
from conftest import assert_exit_is_verdict

PNEUMONIA = "test/PNEUMONIA/person45_virus_95.jpeg"


def _run(args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


# -- Grad-CAM ------------------------------------------------------------------------------
def test_gradcam_on_tiny_model(tiny_model, sample):
    from edgecxr.formats.modelinfo import load_info
    from edgecxr.training.evaluate import load_model
    from edgecxr.training.gradcam import find_conv_layer, gradcam

    model, info = load_model(tiny_model), load_info(tiny_model)
    path = find_conv_layer(model)  # the last conv block, after its batch norm
    assert len(path) == 1 and type(model.get_layer(path[0])).__name__ in ("Conv2D", "BatchNormalization")
    x = info.preprocess.load_input(sample / PNEUMONIA)
    heat, prob = gradcam(model, x, threshold=None)
    assert heat.shape == (info.preprocess.size,) * 2
    assert heat.min() >= 0 and heat.max() <= 1 and heat.max() == pytest.approx(1.0)
    assert heat.std() > 0.01
    assert prob == pytest.approx(float(model(x[None])[0, 0]), abs=1e-5)


def test_gradcam_finds_conv_inside_nested_base():
    from edgecxr.training import import_tf
    from edgecxr.training.gradcam import find_conv_layer, gradcam

    _, keras = import_tf()
    L = keras.layers
    inner_in = keras.Input((24, 24, 3))
    y = L.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inner_in)
    y = L.Conv2D(6, 3, strides=2, padding="same", name="c_last")(y)
    base = keras.Model(inner_in, L.ReLU()(y), name="base")
    inp = keras.Input((24, 24, 3))
    z = L.GlobalAveragePooling2D()(base(L.Rescaling(2.0)(inp)))
    model = keras.Model(inp, L.Dense(1, activation="sigmoid")(z))
    path = find_conv_layer(model)  # c_last, then the ReLU ending its block, inside the nested base
    assert path[0] == "base" and len(path) == 2 and type(base.get_layer(path[1])).__name__ == "ReLU"
    x = np.random.default_rng(0).uniform(0, 1, (24, 24, 3)).astype(np.float32)
    heat, prob = gradcam(model, x, threshold=None)
    assert heat.shape == (24, 24) and 0 <= heat.min() and heat.max() <= 1
    assert prob == pytest.approx(float(model(x[None])[0, 0]), abs=1e-5)


# -- occlusion -------------------------------------------------------------------------------
def test_occlusion_finds_the_region_the_model_uses():
    from edgecxr.occlusion import normalize, occlusion_map

    x = np.full((50, 50, 3), 0.8, np.float32)
    calls = []

    def predict(batch):  # depends only on rows 30..40, columns 10..20
        calls.append(len(batch))
        return batch[:, 30:40, 10:20, :].mean(axis=(1, 2, 3))

    drop, base = occlusion_map(predict, x, fill=0.0, patch=8, stride=4)
    assert base == pytest.approx(0.8)
    assert drop.shape == (50, 50)
    r, c = np.unravel_index(np.argmax(drop), drop.shape)
    assert 30 <= r < 40 and 10 <= c < 20
    assert drop[:20, 30:].max() == 0  # far from the region nothing changes
    heat = normalize(drop)
    assert heat.max() == pytest.approx(1.0) and heat.min() >= 0
    assert max(calls) <= 32


def test_occlusion_module_needs_no_tensorflow():
    code = ("import sys, numpy as np; from edgecxr import occlusion as o; "
            "d, b = o.occlusion_map(lambda b: b.mean(axis=(1, 2, 3)), np.ones((16, 16, 1), 'f4'), fill=0.0); "
            "o.overlay(np.zeros((16, 16), 'u1'), o.normalize(d)); assert 'tensorflow' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- explain CLI -------------------------------------------------------------------------------
def _png_ok(path: Path, min_side=200):
    from PIL import Image

    img = Image.open(path)
    assert img.format == "PNG" and min(img.size) >= min_side
    arr = np.asarray(img.convert("RGB"), np.int16)
    assert (np.abs(arr[..., 0] - arr[..., 2]) > 40).sum() > 20  # a colour map, not only grey


def test_explain_gradcam_and_occlusion_cli(tiny_model, sample, tmp_path):
    out = tmp_path / "cam.png"
    result = _run(["explain", sample / PNEUMONIA, "--model", tiny_model, "--out", out])
    assert "gradcam" in result.output and out.is_file()
    _png_ok(out)
    out2 = tmp_path / "occ.png"
    _run(["explain", sample / PNEUMONIA, "--model", tiny_model, "--method", "occlusion", "--patch", "6", "--out", out2])
    _png_ok(out2)


def test_explain_says_when_the_map_is_empty(tiny_model, sample, tmp_path, monkeypatch):
    """The hostile review: a Grad-CAM map of zeros (36 of 100 sample images with the fast model) was written as an
    explanation without a word; it is still written, with a warning naming what to try."""
    from edgecxr.training import gradcam

    monkeypatch.setattr(gradcam, "gradcam", lambda model, x, **kw: (np.zeros(x.shape[:2], np.float32), 0.3))
    result = _run(["explain", sample / PNEUMONIA, "--model", tiny_model, "--out", tmp_path / "cam.png"])
    assert "the gradcam map is empty" in result.stderr and "--method occlusion" in result.stderr
    result = _run(["explain", sample / PNEUMONIA, "--model", tiny_model, "--method", "occlusion", "--patch", "6",
                   "--out", tmp_path / "occ.png"])
    assert "is empty" not in result.stderr


@pytest.fixture(scope="session")
def int8_bundle(tiny_bundles) -> Path:
    return tiny_bundles["tflite-int8"]


def test_explain_bundle_uses_occlusion_on_the_device(int8_bundle, sample, tmp_path):
    out = tmp_path / "dev.png"
    result = _run(["explain", sample / PNEUMONIA, "--bundle", int8_bundle, "--out", out])
    assert "occlusion" in result.output
    _png_ok(out)
    bad = CliRunner().invoke(main, ["explain", str(sample / PNEUMONIA), "--bundle", str(int8_bundle),
                                    "--method", "gradcam", "--out", str(tmp_path / "x.png")])
    assert bad.exit_code == 2 and "gradients" in bad.output


# -- report ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def report_dirs(tiny_run, kermany, tmp_path_factory):
    """The tiny run, its test-set evaluation, and a parity JSON naming two flipped cases."""
    root = tmp_path_factory.mktemp("report")
    run = root / "run"
    shutil.copytree(tiny_run, run)
    _run(["evaluate", "--model", run / "model.keras", "--data", kermany, "--out", run / "eval-test", "--bootstrap", "100"])
    y = np.load(run / "eval-test" / "predictions.npz")
    rel = [str(r) for r in y["rel"]]
    pos = next(r for r in rel if "PNEUMONIA" in r)
    neg = next(r for r in rel if "NORMAL" in r)
    parity = {"bundle": {"target": "tflite-int8", "path": str(root / "no-such-bundle")}, "runtime": {"name": "litert"},
              "n": len(rel), "agreement": 0.99, "passed": False, "data": {"root": str(kermany)},
              "device": {"accuracy": 0.8, "recall": 0.95, "specificity": 0.6, "roc_auc": 0.9},
              "flipped_counts": {"new_false_negative": 1, "new_false_positive": 1}, "timing": {"infer_ms_p50": 0.05},
              "flipped": [{"file": pos, "label": 1, "kind": "new_false_negative", "float_prob": 0.6, "device_prob": 0.2},
                          {"file": neg, "label": 0, "kind": "new_false_positive", "float_prob": 0.2, "device_prob": 0.7}]}
    bench = root / "bench"
    bench.mkdir()
    (bench / "parity-tflite-int8.json").write_text(json.dumps(parity))
    return run, bench


@pytest.fixture(scope="session")
def report_html(report_dirs, tmp_path_factory) -> Path:
    run, bench = report_dirs
    out = tmp_path_factory.mktemp("html") / "report.html"
    _run(["report", run, bench, "--out", out, "--gallery", "2"])
    return out


def test_report_is_one_self_contained_file(report_html):
    text = report_html.read_text()
    # nothing else written, no temp left: the page and its JSON twin
    assert sorted(report_html.parent.iterdir()) == [report_html, report_html.with_suffix(".json")]
    links = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']*)', text, re.I)
    assert links and all(l.startswith(("data:", "#")) for l in links), [l[:40] for l in links]
    assert "url(" not in text and "@import" not in text and "<script" not in text
    assert text.count("data:image/png;base64,") >= 10  # 2 x 4 curves, training curves, gallery maps
    for needle in ("Sensitivity", "Specificity", "95% CI", "ROC curve", "Calibration", "Confusion matrix",
                   "Training curves", "tflite-int8", "FAIL", "New false negative", "Grad-CAM",
                   "Missed pneumonia", "Not in this report", "bundle folder was not found",
                   "Does the model look at the lungs?", "when the top band is masked", "decisions changed"):
        assert needle in text, needle


def test_report_on_a_run_alone_says_what_is_missing(tiny_run, tmp_path):
    out = tmp_path / "r.html"
    _run(["report", tiny_run, "--out", out, "--no-maps", "--gallery", "1"])
    text = out.read_text()
    assert "Only validation numbers" in text and "test-set evaluation" in text and "parity table" in text
    bad = CliRunner().invoke(main, ["report", str(tmp_path), "--out", str(tmp_path / "x.html")])
    assert bad.exit_code != 0 and "nothing to report" in bad.output


def _chromium():
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def _screenshot(page: Path, tmp_path: Path, height: int) -> np.ndarray:
    """The page as headless Chromium draws it, 1200 px wide (skips when Chromium is not installed)."""
    browser = _chromium()
    if browser is None:
        pytest.skip("Chromium not installed (apt-get install -y chromium; .ci/extra_setup.sh does it in CI)")
    shot = tmp_path / "shot.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", f"--window-size=1200,{height}",
           page.resolve().as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=180)
    from PIL import Image

    return np.asarray(Image.open(shot).convert("RGB"), np.int16)


def test_report_renders_in_headless_chromium(report_html, tmp_path):
    img = _screenshot(report_html, tmp_path, 4000)  # the verification record comes before the curves
    assert img.shape[:2] == (4000, 1200)
    assert img.std() > 20, "screenshot is blank"
    # The curves: matplotlib's default blue line (#1f77b4) must show in the plot area below the headline.
    r, g, b = img[800:, :, 0], img[800:, :, 1], img[800:, :, 2]
    blue = (abs(r - 31) < 40) & (abs(g - 119) < 40) & (abs(b - 180) < 40)
    assert blue.sum() > 300, f"no curve colour in the screenshot ({blue.sum()} blue pixels)"


# -- the evidence record (issue 14) -------------------------------------------------------------
@pytest.fixture(scope="session")
def evidence(report_dirs, int8_bundle, sample, tmp_path_factory) -> Path:
    """The full record from JSON files given directly: evaluate metrics.json, a bundle, device parity and bench."""
    run, _ = report_dirs
    root = tmp_path_factory.mktemp("evidence")
    parity, bench = root / "parity.json", root / "bench.json"
    r = CliRunner().invoke(main, ["device", "parity", str(int8_bundle), "--data", str(sample), "--min-coverage", "0",
                                  "--json", str(parity)])
    assert_exit_is_verdict(r, parity)
    assert "DEVIATION from the bundle's criteria: coverage of the reference images loosened from 1.0" in r.output
    _run(["device", "bench", int8_bundle, "--data", sample, "--runs", 20, "--warmup", 2, "--json", bench])
    out = root / "out" / "evidence.html"
    _run(["report", run / "eval-test" / "metrics.json", int8_bundle / "manifest.json", parity, bench,
          "--out", out, "--gallery", "1", "--no-maps"])
    return out


def test_evidence_record_reads_as_a_verification_record(evidence, int8_bundle):
    text = evidence.read_text()
    rec = json.loads(evidence.with_suffix(".json").read_text())
    manifest = json.loads((int8_bundle / "manifest.json").read_text())
    for needle in ("Verdict", "Intended use and input domain", "Acceptance criteria", "Fixed at export",
                   "Data and hashes", manifest["sha256"], manifest["reference"]["files_sha256"],
                   "Device results", "bootstrap by patient", "recall_noninferiority", "Subgroups", "Calibration",
                   "Brier score", "Latency and memory on the device", "cold start s", "peak RSS MB",
                   "Runtimes and CPU", "int8 path", "DEVIATION", "resampling the", "50 normal images: the specificity "
                   "interval is wide", "Decisions that changed" if rec["parity"][0]["flipped"] else "Cases to look at"):
        assert needle in text, needle
    assert rec["criteria"]["source"] == "bundle" and rec["criteria"]["bundle"]["min_coverage"] == 1.0
    assert [d["criterion"] for d in rec["criteria"]["deviations"]] == ["min_coverage"]
    assert rec["verdict"]["passed"] == rec["parity"][0]["passed"]
    assert any("DEVIATION" in reason for reason in rec["verdict"]["reasons"])
    assert rec["results"][0]["ci_info"]["unit"] == "patient" and rec["results"][0]["data"]["root"]
    assert 0 <= rec["results"][0]["calibration"]["ece"] <= 1 and rec["results"][0]["calibration"]["brier"] > 0
    assert rec["bench"][0]["peak_rss_mb"] > 0 and rec["bench"][0]["cold_start_s"] > 0
    assert rec["bundles"][0]["acceptance"]["test_set"]["images"] == 624
    assert "50 normal images: the specificity interval is wide (one image is 2.0 points)" in rec["parity"][0]["small_samples"]


def test_report_refuses_a_json_file_it_cannot_read(tmp_path):
    odd = tmp_path / "odd.json"
    odd.write_text('{"hello": 1}')
    r = CliRunner().invoke(main, ["report", str(odd), "--out", str(tmp_path / "r.html")])
    assert r.exit_code == 2 and "odd.json: not a file `edgecxr report` reads" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "r.html").exists()


def test_evidence_page_renders_in_headless_chromium(evidence, tmp_path):
    img = _screenshot(evidence, tmp_path, 3000)
    assert img.shape[:2] == (3000, 1200) and img.std() > 20, "screenshot is blank"
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    table_head = (abs(r - 0xEE) < 4) & (abs(g - 0xF2) < 4) & (abs(b - 0xF6) < 4)  # th background: tables drew
    assert table_head.sum() > 2000, table_head.sum()
