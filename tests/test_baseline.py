"""`edgecxr baseline`: classic models on the CNN's split, validation thresholds, evaluate-format metrics."""
import json
import subprocess
import sys

import numpy as np
import pytest

from edgecxr.data import folders as D
from edgecxr.parity import metrics
from edgecxr.utils.errors import ConfigError, DataError, ImageError
from edgecxr.formats.modelinfo import DEFAULT_DIR
from edgecxr.training import baseline as B


@pytest.fixture(scope="module")
def run(tmp_path_factory, sample):
    """Every model on both feature kinds, on the shipped sample (128 train, 100 test real images)."""
    out = tmp_path_factory.mktemp("baseline") / "all"
    table = B.baseline(sample, out, n_boot=200, plots=False)
    return out, table


def flipped_test_copy(root, sample):
    """The sample with its test labels swapped (symlinks): train/ identical, test/NORMAL holds pneumonia."""
    root.mkdir()
    (root / "train").symlink_to(sample / "train")
    (root / "test").mkdir()
    (root / "test" / "NORMAL").symlink_to(sample / "test" / "PNEUMONIA")
    (root / "test" / "PNEUMONIA").symlink_to(sample / "test" / "NORMAL")
    return root


# -- features ----------------------------------------------------------------
def test_pixel_features_are_box_averages():
    img = np.zeros((2, 128, 128), np.uint8)
    img[:, :, 64:] = 255
    f = B.pixel_features(img)
    assert f.shape == (2, B.PIXEL_GRID ** 2) and f.dtype == np.float32
    grid = f[0].reshape(B.PIXEL_GRID, B.PIXEL_GRID)
    assert np.all(grid[:, :16] == 0) and np.all(grid[:, 16:] == 1)


def test_hog_shape_orientation_and_flat_images():
    stripes = np.zeros((3, 128, 128), np.uint8)
    stripes[:, ::8] = 200  # horizontal lines: the gradient points along y (90 degrees)
    f = B.hog_features(stripes)
    span = B.HOG_CELLS - B.HOG_BLOCK + 1
    assert f.shape == (3, span * span * B.HOG_BLOCK ** 2 * B.HOG_BINS)
    bins = f[0].reshape(-1, B.HOG_BINS)
    assert bins[:, B.HOG_BINS // 2].min() > 0.4 and np.abs(np.delete(bins, B.HOG_BINS // 2, axis=1)).max() < 1e-4
    turned = B.hog_features(np.ascontiguousarray(stripes.transpose(0, 2, 1)))[0].reshape(-1, B.HOG_BINS)
    assert turned[:, B.HOG_BINS // 2].max() < 1e-4 and turned[:, 0].min() > 0.2  # 0 degrees: split between bins 0 and 8
    flat = B.hog_features(np.full((2, 64, 64), 90, np.uint8))
    assert np.isfinite(flat).all() and not flat.any()
    assert np.all(np.linalg.norm(f.reshape(3, -1, B.HOG_BLOCK ** 2 * B.HOG_BINS), axis=-1) <= 1.0 + 1e-5)


def test_hog_is_chunk_independent():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 64, 64), dtype=np.uint8)
    assert np.allclose(B.hog_features(pixels, chunk=2), B.hog_features(pixels))


# -- the run on real images ---------------------------------------------------
def test_split_is_the_shipped_models_and_thresholds_come_from_validation(run, sample):
    out, table = run
    split = json.loads((DEFAULT_DIR / "split.json").read_text())
    sample_train = {s.rel for s in D.list_split(sample, "train")}
    assert table["n_val"] == len(sample_train & set(split["val"])) > 0
    assert table["split"].startswith("edgecxr/default/split.json applied to")
    assert table["n_train"] == len(sample_train & set(split["train"]))
    for row in table["rows"]:
        m = json.loads((out / row["folder"] / "metrics.json").read_text())
        assert m["threshold"] == row["threshold"] == m["val_metrics"]["threshold"]
        assert m["threshold_method"] == "Youden's J on validation"


def test_metrics_json_has_the_evaluate_format(run):
    from edgecxr.training.evaluate import format_metrics

    out, table = run
    assert len(table["rows"]) == len(B.MODELS) * len(B.FEATURES)
    for row in table["rows"]:
        folder = out / row["folder"]
        m = json.loads((folder / "metrics.json").read_text())
        assert m["n"] == 100 and m["split"] == "test" and m["skipped"] == []
        for name in metrics.METRIC_NAMES:
            lo, hi = m["ci"][name]
            assert 0 <= lo <= m[name] <= hi <= 1, (row["folder"], name)
        assert set(m["at_0.5"]) >= set(metrics.METRIC_NAMES)
        assert "n=100" in format_metrics(m)  # what `edgecxr evaluate` prints reads it
        saved = np.load(folder / "predictions.npz", allow_pickle=False)  # nothing pickled
        assert saved["prob"].min() >= 0 and saved["prob"].max() <= 1 and len(saved["rel"]) == 100
        assert np.isclose(metrics.roc_auc(saved["y"], saved["prob"]), m["roc_auc"])
        assert sorted(p.name for p in folder.iterdir()) == ["metrics.json", "predictions.npz"]  # no fitted model
    md = (out / "comparison.md").read_text()
    assert all(f"| {r['model']} | {r['features']} |" in md for r in table["rows"])
    assert json.loads((out / "comparison.json").read_text())["rows"] == json.loads(json.dumps(table["rows"]))


def test_a_model_beats_chance_on_real_images(run):
    _, table = run
    best = max(table["rows"], key=lambda r: r["val_roc_auc"] + r["roc_auc"])
    assert best["roc_auc_ci"][0] > 0.75 and best["recall"] + best["specificity"] > 1.4, best


def test_changing_test_labels_does_not_change_the_threshold(tmp_path, sample, run):
    out, table = run
    flipped = flipped_test_copy(tmp_path / "flipped", sample)
    other = B.baseline(flipped, tmp_path / "out", models=["logreg", "linear_svm"], feature_kinds=["pixels"], n_boot=20)
    before = {r["folder"]: r for r in table["rows"]}
    assert {p.name for p in (tmp_path / "out" / "logreg-pixels").iterdir()} == {
        "metrics.json", "predictions.npz", "roc.png", "confusion.png"}
    for row in other["rows"]:
        same = before[row["folder"]]
        assert row["threshold"] == same["threshold"] and row["val_roc_auc"] == same["val_roc_auc"]
        assert row["roc_auc"] == pytest.approx(1 - same["roc_auc"])  # the test labels did change


def test_cnn_row_from_an_evaluate_metrics_json(run, tmp_path):
    out, table = run
    row = B.load_cnn_row(out / "logreg-pixels" / "metrics.json")
    assert row["model"] == "CNN" and row["accuracy"] == table["rows"][0]["accuracy"]
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(DataError, match="not an `edgecxr evaluate` metrics.json"):
        B.load_cnn_row(bad)
    with pytest.raises(DataError, match="--cnn file not found"):
        B.load_cnn_row(tmp_path / "missing.json")
    good = json.loads((out / "logreg-pixels" / "metrics.json").read_text())
    for key, value in [("accuracy", "0.9"), ("threshold", None), ("model", 3), ("ci", {**good["ci"], "recall": 0.5})]:
        bad.write_text(json.dumps({**good, key: value}))
        with pytest.raises(DataError, match="not an `edgecxr evaluate` metrics.json"):
            B.load_cnn_row(bad)
    table = {**table, "cnn": {**row, "n": 624}}
    assert "| CNN |" in B.comparison_md(table) and "measured on 624 images" in B.comparison_md(table)


def test_bad_options(sample, tmp_path):
    with pytest.raises(ConfigError, match="valid: logreg"):
        B.parse_names("logreg,xgboost", B.MODELS, "--models")
    with pytest.raises(ConfigError, match="exclude each other"):
        B.split_samples(sample, D.DEFAULT_CLASSES, DEFAULT_DIR / "model.keras", DEFAULT_DIR / "split.json", 0.2, 0)
    train, val, how = B.split_samples(sample, D.DEFAULT_CLASSES, DEFAULT_DIR / "model.keras", None, 0.25, 3)
    assert {s.patient for s in train}.isdisjoint({s.patient for s in val}) and "seed 3" in how
    foreign = tmp_path / "split.json"
    foreign.write_text(json.dumps({"train": ["train/NORMAL/elsewhere.jpeg"], "val": []}))
    with pytest.raises(DataError, match="--val-fraction"):
        B.split_samples(sample, D.DEFAULT_CLASSES, DEFAULT_DIR / "model.keras", foreign, None, 0)


def test_cli_bad_folder_is_one_line_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    for data in (tmp_path / "missing", tmp_path / "empty"):
        proc = subprocess.run([sys.executable, "-m", "edgecxr.cli", "baseline", "--data", str(data), "--out",
                               str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"error: {data}"), proc.stderr
    assert not (tmp_path / "out").exists()


def test_mcnemar_against_the_cnn_decisions(run, sample, tmp_path):
    out, _ = run
    cnn = out / "knn-pixels" / "metrics.json"  # any evaluate-format metrics.json with predictions.npz beside it
    table = B.baseline(sample, tmp_path / "v", models=["logreg"], feature_kinds=["pixels"], cnn=cnn, n_boot=10,
                       plots=False)
    test = table["rows"][0]["mcnemar_vs_cnn"]

    def right(folder):
        saved = np.load(folder / "predictions.npz", allow_pickle=False)
        threshold = json.loads((folder / "metrics.json").read_text())["threshold"]
        return (saved["prob"] >= threshold) == saved["y"].astype(bool)

    mine, theirs = right(tmp_path / "v" / "logreg-pixels"), right(out / "knn-pixels")
    assert test["a_only_right"] == int(np.sum(mine & ~theirs)) and test["b_only_right"] == int(np.sum(~mine & theirs))
    assert test["a_only_right"] + test["b_only_right"] > 0 and 0 < test["p_value"] <= 1
    assert table["cnn"]["model"] == "CNN" and "| CNN |" in (tmp_path / "v" / "comparison.md").read_text()


def test_unreadable_test_image_is_listed_as_skipped(tmp_path, sample):
    root = tmp_path / "data"
    root.mkdir()
    (root / "train").symlink_to(sample / "train")
    for cls in ("NORMAL", "PNEUMONIA"):
        (root / "test" / cls).mkdir(parents=True)
        for p in sorted((sample / "test" / cls).iterdir())[:15]:
            (root / "test" / cls / p.name).symlink_to(p)
    (root / "test" / "NORMAL" / "broken.jpeg").write_bytes(b"not a jpeg")
    B.baseline(root, tmp_path / "out", models=["logreg"], feature_kinds=["pixels"], n_boot=10, plots=False)
    m = json.loads((tmp_path / "out" / "logreg-pixels" / "metrics.json").read_text())
    assert m["n"] == 30 and [s["file"] for s in m["skipped"]] == ["test/NORMAL/broken.jpeg"]
    with pytest.raises(ImageError, match="broken.jpeg"):
        B.baseline(root, tmp_path / "strict", models=["logreg"], feature_kinds=["pixels"], strict=True, plots=False)
    assert not (tmp_path / "strict").exists()
