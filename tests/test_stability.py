"""Input-path stability (edgecxr.devices.stability) on real images, with a stand-in model: fast, no runtime.

The stand-in's probability is the mean brightness of the model's pixels, so what a variant does to the
image is what it does to the probability, and a threshold can be put where a test needs it.
"""
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import ImageOps

from edgecxr.cli import main
from edgecxr.devices import stability as S
from edgecxr.devices.classifier import Timings
from edgecxr.data.preprocess import PreprocessSpec

IDENTITY = {"identity": lambda img: img}
INVERT = {"invert": ImageOps.invert}


class Brightness:
    """The parts of a Classifier that stability and parity use; probability = mean pixel / 255."""

    def __init__(self, threshold=0.5, spec=PreprocessSpec(size=224, equalize=False), reference=None):
        self.spec, self.threshold, self.labels = spec, threshold, ("NORMAL", "PNEUMONIA")
        self.runtime = {"name": "numpy", "version": np.__version__, "provider": "mean", "threads": 1}
        self.bundle = SimpleNamespace(path=Path("brightness"), reference=reference or {},
                                      manifest={"target": "brightness", "sha256": {}, "digest": "0"})

    def twin(self):
        return None

    def from_pixels(self, pixels):
        return pixels

    def infer(self, x):
        return float(np.mean(x) / 255), 0.0

    def predict_batch(self, paths, **_):
        return [SimpleNamespace(probability=self.infer(self.spec.to_pixels(self.spec.read(p)))[0],
                                timings=Timings(0, 0, 0)) for p in paths]


@pytest.fixture()
def test_images(sample):
    return S.image_files(sample, "test")[::10]  # 10 real test X-rays, both classes


def test_identity_never_flips_and_passes_a_zero_gate(test_images):
    r = S.measure_stability(Brightness(), test_images, variants=IDENTITY, max_unstable=0.0)
    row = r["device"]["variants"]["identity"]
    assert row == {"n": 10, "flips": 0, "flip_rate": 0.0, "mean_shift": 0.0, "max_shift": 0.0}
    assert r["device"]["unstable"] == 0 and r["passed"] is True


def test_inverting_flips_nearly_every_decision_and_fails_the_gate(test_images):
    r = S.measure_stability(Brightness(), test_images, variants=INVERT, max_unstable=0.05, show=3)
    d = r["device"]
    assert d["variants"]["invert"]["flip_rate"] >= 0.9 and d["unstable"] >= 0.9 and r["passed"] is False
    assert len(d["least_stable"]) == 3 and d["least_stable"][0]["flipped_by"] == ["invert"]
    shifts = [x["max_shift"] for x in d["least_stable"]]
    assert shifts == sorted(shifts, reverse=True)
    assert "FAIL stability" in S.format_stability(r)


def test_every_registered_variant_is_small_and_real(sample):
    """Each variant changes a real image a little: same shape, a few grey levels, not a no-op (16-bit aside)."""
    spec = PreprocessSpec(size=224, equalize=True)
    img = spec.read(sample / "test" / "NORMAL" / sorted((sample / "test" / "NORMAL").iterdir())[0].name)
    base = spec.to_pixels(img).astype(int)
    changed = {}
    for name, variant in S.VARIANTS.items():
        px = S.variant_pixels(img, spec, variant)
        assert px.shape == (224, 224) and px.dtype == np.uint8, name
        diff = np.abs(px.astype(int) - base).mean()
        assert diff < 25, (name, diff)  # ordinary variation, not a different image
        changed[name] = diff > 0
    assert all(v for k, v in changed.items() if k != "png-16bit"), changed
    kernels = [S.variant_pixels(img, spec, S.VARIANTS[k]) for k in ("resize-nearest", "resize-box")]
    assert not np.array_equal(*kernels)  # the kernel is really used on a file already at the model's size


def test_full_size_pairs_compare_original_with_downsized(kermany, fullres):
    pairs = S.match_pairs(fullres, kermany / "val")
    assert len(pairs) == 16 and all(a.name == b.name for a, b in pairs)
    r = S.measure_stability(Brightness(), pairs=pairs, float_clf=Brightness(threshold=0.3), variants=IDENTITY)
    for m in ("device", "float"):
        assert set(r[m]["variants"]) == {"full-size"} and r[m]["variants"]["full-size"]["n"] == 16
        assert r[m]["variants"]["full-size"]["mean_shift"] > 0  # the originals are other pixels


def test_pairs_without_counterparts_are_an_input_error(kermany, fullres):
    with pytest.raises(S.DataError, match="no file of"):
        S.match_pairs(fullres, kermany / "test")


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture()
def brightness_cli(monkeypatch):
    from edgecxr.devices import cli as device_cli

    monkeypatch.setattr(device_cli, "_load", lambda *a: Brightness())
    monkeypatch.setattr(S, "VARIANTS", {**IDENTITY, **INVERT})


def test_cli_gate_exit_codes_and_json(brightness_cli, sample, tmp_path):
    out = tmp_path / "st.json"
    ok = cli("device", "stability", "B", "--data", sample, "--float", "F", "--max-unstable", "1", "--json", out)
    assert ok.exit_code == 0, ok.output
    assert "invert" in ok.stdout and "PASS stability" in ok.stdout
    r = json.loads(out.read_text())
    assert r["variants"] == ["identity", "invert"] and r["data"] == {"images": 100, "pairs": 0}
    for m in ("device", "float"):
        assert {"n", "variants", "unstable", "unstable_n", "unstable_images", "least_stable", "model"} <= set(r[m])
        assert r[m]["n"] == 100
    failed = cli("device", "stability", "B", "--data", sample, "--max-unstable", "0.05")
    assert failed.exit_code == 1 and "FAIL stability" in failed.stdout
    assert cli("device", "stability", "B", "--data", sample).exit_code == 0  # no gate: a report only


@pytest.mark.parametrize("args", [["--data", "/nonexistent/folder"], ["--pairs", "/nonexistent/a", "/nonexistent/b"]])
def test_cli_bad_folder_is_one_line_and_exit_2(brightness_cli, args):
    r = cli("device", "stability", "B", *args)
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "/nonexistent/" in lines[0], r.stderr


def test_cli_json_inside_the_data_is_refused(brightness_cli, sample):
    r = cli("device", "stability", "B", "--data", sample, "--json", sample / "st.json")
    assert r.exit_code == 2 and "inside the input" in r.stderr


def test_parity_stability_adds_report_and_gate(brightness_cli, sample, tmp_path, monkeypatch):
    from edgecxr.data.folders import list_split
    from edgecxr.devices import cli as device_cli
    from edgecxr.parity.metrics import binary_metrics

    clf = Brightness()
    samples = list_split(sample, "test")
    probs = {s.rel: p.probability for s, p in zip(samples, clf.predict_batch([s.path for s in samples]))}
    labels = {s.rel: s.label for s in samples}
    metrics = binary_metrics([labels[r] for r in probs], list(probs.values()), clf.threshold)
    clf.bundle.reference = {"split": "test", "probs": probs, "labels": labels, "metrics": metrics}
    monkeypatch.setattr(device_cli, "_load", lambda *a: clf)
    out = tmp_path / "parity.json"
    r = cli("device", "parity", "B", "--data", sample, "--stability", "--max-unstable", "0.05", "--json", out,
            "--min-agreement", "0", "--max-recall-drop", "1", "--max-accuracy-drop", "1")
    assert r.exit_code == 1 and "FAIL stability" in r.stdout and "parity FAILED" in r.stdout
    rep = json.loads(out.read_text())
    assert rep["stability"]["device"]["n"] == 100 and rep["stability"]["device"]["unstable"] > 0.9
    assert [c["name"] for c in rep["checks"] if not c["passed"]] == ["stability"]
    plain = cli("device", "parity", "B", "--data", sample, "--min-agreement", "0")
    assert plain.exit_code == 0 and "stability" not in plain.stdout  # opt-in


def test_benchmark_unstable_column(brightness_cli, sample):
    from edgecxr.bench.rows import measure_unstable
    from edgecxr.bench.table import COLUMNS, format_table

    from edgecxr.data.folders import list_split

    got = measure_unstable(Brightness(), list_split(sample, "test", ("NORMAL", "PNEUMONIA")), 8)
    assert got["stability_n"] == 8 and got["unstable"] >= 0.875  # inverted: nearly every decision flips
    row = {k: 1 for k in ("size_mb", "size_gz_mb", "accuracy", "recall", "specificity", "roc_auc", "agreement",
                          "new_fn", "new_fp", "p50_ms", "p90_ms", "speedup", "n", "export_s")}
    row.update(target="tflite-int8", runtime="litert", error=None, passed=True, reused=False, unstable=0.0625)
    lines = format_table({"rows": [row], "float": {}}).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert header == list(COLUMNS) and len(cells) == len(COLUMNS)
    assert cells[header.index("unstable")] == "0.062"
    row["unstable"] = None  # a run with --stability-images 0
    assert format_table({"rows": [row], "float": {}}).splitlines()[2].split("|")[header.index("unstable") + 1].strip() == "–"
