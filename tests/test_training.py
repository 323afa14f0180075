"""Training stage: registry, weights, a real one-epoch run, evaluation, CLI errors."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from edgecxr.utils.errors import ConfigError, EdgecxrError, ModelError


def test_registry_has_the_issue_architectures():
    from edgecxr.training.models import MODELS

    wanted = {"mobilenet", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "resnet50", "cxr_cnn"}
    assert wanted <= set(MODELS)
    assert MODELS["cxr_cnn"].spec.size == 150
    assert any(m.tiny for m in MODELS.values())


@pytest.mark.parametrize("name", ["tiny_cnn", "tiny_mobilenet_v2", "cxr_cnn"])
def test_models_build_with_one_sigmoid(name):
    from edgecxr.training.models import build_model

    model, _ = build_model(name)
    assert model.output_shape == (None, 1)
    assert model.layers[-1].activation.__name__ == "sigmoid"


def test_resnet_head():
    from edgecxr.training.models import build_model

    model, base = build_model("resnet50", size=64)
    dense = [l for l in model.layers[len(base.layers):] if type(l).__name__ == "Dense"]
    assert [d.units for d in dense] == [128, 1]


def test_bn_momentum_from_scratch():
    from edgecxr.training.models import build_model

    model, _ = build_model("tiny_mobilenet_v2", bn_momentum=0.9)
    moms = {l.momentum for l in model.layers if type(l).__name__ == "BatchNormalization"}
    assert moms == {0.9}


def test_unknown_arch_and_option():
    from edgecxr.training.models import build_model

    with pytest.raises(ConfigError, match="valid: .*mobilenet_v2"):
        build_model("vgg99")
    with pytest.raises(ConfigError, match="no option"):
        build_model("tiny_cnn", alpha=0.5)


def test_weights_path_route(tmp_path):
    from edgecxr.training.models import build_model

    first, _ = build_model("tiny_mobilenet_v2")
    first.save_weights(tmp_path / "w.h5")
    second, _ = build_model("tiny_mobilenet_v2", weights=str(tmp_path / "w.h5"))
    for a, b in zip(first.get_weights(), second.get_weights()):
        assert np.array_equal(a, b)
    with pytest.raises(ModelError, match="not found"):
        build_model("tiny_mobilenet_v2", weights=str(tmp_path / "missing.h5"))
    with pytest.raises(ModelError, match="fits neither"):
        build_model("tiny_cnn", weights=str(tmp_path / "w.h5"))
    _, base = build_model("tiny_mobilenet_v2")
    base.save_weights(tmp_path / "base.h5")
    build_model("tiny_mobilenet_v2", weights=str(tmp_path / "base.h5"))  # the base alone loads for fine-tuning
    with pytest.raises(ModelError, match="not a whole"):  # --epochs 0 / --head-epochs 0 would keep a random head
        build_model("tiny_mobilenet_v2", weights=str(tmp_path / "base.h5"), whole=True)


def test_imagenet_download_refused_is_clear(monkeypatch):
    from edgecxr.training import import_tf
    from edgecxr.training.models import build_model

    _, keras = import_tf()

    def refuse(*a, **k):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(keras.utils, "get_file", refuse)
    import tf_keras.src.applications.mobilenet_v2 as mv2

    monkeypatch.setattr(mv2.data_utils, "get_file", refuse)
    with pytest.raises(ModelError, match="--weights PATH"):
        build_model("mobilenet_v2", weights="imagenet")


def test_tiny_training_run(tiny_run):
    for name in ("model.keras", "model.json", "preprocess.json", "split.json", "config.json",
                 "history.csv", "training_curves.png", "val_metrics.json"):
        assert (tiny_run / name).is_file(), name
    info = json.loads((tiny_run / "model.json").read_text())
    val = json.loads((tiny_run / "val_metrics.json").read_text())
    assert info["threshold"] == val["threshold"] and 0 < info["threshold"] < 1
    assert val["roc_auc"] > 0.8  # 3 epochs of a 4k-parameter CNN already learn the task
    rows = (tiny_run / "history.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3 and "val_loss" in rows[0]
    split = json.loads((tiny_run / "split.json").read_text())
    assert len(split["val"]) > 400 and not set(split["train"]) & set(split["val"])


def test_evaluate_writes_metrics_and_plots(tiny_model, sample, tmp_path):
    from edgecxr.training.evaluate import evaluate

    evaluate(tiny_model, sample, "test", tmp_path / "ev", n_boot=100)
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    for key in ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc", "pr_auc", "threshold", "n", "confusion", "ci"):
        assert key in saved
    assert saved["n"] == 100 and saved["threshold"] == json.loads(tiny_model.with_suffix(".json").read_text())["threshold"]
    assert saved["ci"]["accuracy"][0] <= saved["accuracy"] <= saved["ci"]["accuracy"][1]
    for png in ("roc.png", "pr.png", "confusion.png"):
        assert (tmp_path / "ev" / png).stat().st_size > 5000
    sc = saved["shortcuts"]  # on by default; Grad-CAM on all 100 images (the subset is 100)
    for name in ("border", "top_band"):
        assert 0 <= sc[name]["changed"] <= 1 and 0 <= sc[name]["roc_auc"] <= 1 and sc[name]["masked_pixels"] > 0
    assert sc["gradcam_in_lung"]["of"] == 100 and sc["gradcam_in_lung"]["images"] == "all"
    assert "shortcuts" not in evaluate(tiny_model, sample, "test", tmp_path / "ev2", n_boot=10, shortcuts=False)
    with pytest.raises(EdgecxrError, match="--overwrite"):  # refused before the model runs
        evaluate(tiny_model, sample, "test", tmp_path / "ev", n_boot=100)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "edgecxr.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_bad_inputs_one_line(tmp_path, kermany):
    cases = [
        ("train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r"), "--arch", "tiny_cnn"),
        ("train", "--data", str(kermany), "--out", str(tmp_path / "r"), "--arch", "vgg99"),
        ("train", "--data", str(kermany), "--out", str(tmp_path / "r"), "--arch", "tiny_cnn", "--classes", "NORMAL,CAT"),
        ("train", "--data", str(kermany), "--out", str(tmp_path / "r"), "--arch", "tiny_cnn", "--target-recall", "95"),
        ("demo", "--out", str(tmp_path / "r"), "--target", "all"),
    ]
    for args in cases:
        proc = _cli(*args)
        assert proc.returncode == 2, proc.stderr
        errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "r").exists()


def test_failed_run_leaves_nothing(tmp_path, sample):
    """A run that fails mid-way (here: no readable validation images) leaves no run folder."""
    from edgecxr.utils.errors import DataError
    from edgecxr.training.train import TrainConfig, train

    root = tmp_path / "data"
    for cls in ("NORMAL", "PNEUMONIA"):
        (root / "train" / cls).mkdir(parents=True)
        for i in range(4):
            (root / "train" / cls / f"IM-{i:04d}-0001.jpeg").write_bytes(b"garbage")
    with pytest.raises(DataError, match="no readable images"):
        train(TrainConfig(arch="tiny_cnn", data=str(root), epochs=1), tmp_path / "run")
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run.tmp-*"))


def test_kfold_cross_validation(tmp_path, sample):
    """--folds K trains one model per patient-grouped fold and reports each fold, the mean and the spread."""
    from edgecxr.training.train import TrainConfig, train

    train(TrainConfig(arch="tiny_cnn", data=str(sample), epochs=1, folds=2, batch_size=8, augment="none"), tmp_path / "cv")
    cv = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert len(cv["folds"]) == 2 and sum(f["n"] for f in cv["folds"]) == 128
    acc = [f["accuracy"] for f in cv["folds"]]
    assert cv["summary"]["accuracy"]["mean"] == pytest.approx(np.mean(acc))
    assert cv["summary"]["accuracy"]["std"] == pytest.approx(np.std(acc))
    assert (tmp_path / "cv" / "history_fold2.csv").is_file() and not (tmp_path / "cv" / "model.keras").exists()


def test_weight_averaging_loads_the_mean_of_the_last_epochs():
    from edgecxr.training import import_tf
    from edgecxr.training.train import _weight_averager

    _, keras = import_tf()
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    averager = _weight_averager(keras, epochs=4, last=2)
    averager.set_model(model)
    for epoch, value in enumerate([10.0, 20.0, 1.0, 3.0]):
        model.set_weights([np.full((2, 1), value), np.full((1,), value)])
        averager.on_epoch_end(epoch)
    averager.on_train_end()
    np.testing.assert_allclose(model.get_weights()[0], 2.0)  # mean of the last two epochs only

    stopped = _weight_averager(keras, epochs=4, last=2)
    stopped.set_model(model)
    stopped.on_epoch_end(2)
    model.set_weights([np.full((2, 1), 7.0), np.full((1,), 7.0)])  # EarlyStopping restored its best epoch
    model.stop_training = True
    stopped.on_train_end()
    np.testing.assert_allclose(model.get_weights()[0], 7.0)


def test_target_recall_out_of_range():
    from edgecxr.parity import metrics
    from edgecxr.training.train import TrainConfig

    with pytest.raises(ConfigError, match="--target-recall 95"):
        TrainConfig(arch="tiny_cnn", data="x", target_recall=95).validate()
    with pytest.raises(ConfigError, match="between 0 and 1"):
        metrics.choose_threshold([0, 1], [0.2, 0.8], target_recall=1.5)


def test_recalibrate_bn_measures_plain_inputs(sample):
    """After recalibration a BatchNorm layer right after the input holds the mean and variance of the scaled pixels."""
    from edgecxr.data import folders as D
    from edgecxr.data.preprocess import PreprocessSpec
    from edgecxr.training import import_tf
    from edgecxr.training.train import recalibrate_bn

    tf, keras = import_tf()
    spec = PreprocessSpec(size=32, channels=1, scale=1 / 255, offset=0.0)
    pixels, _, _, _ = D.load_pixels(D.list_split(sample, "train"), spec)
    model = keras.Sequential([keras.Input((32, 32, 1)), keras.layers.BatchNormalization(momentum=0.99)])
    assert recalibrate_bn(tf, keras, model, pixels, spec, batch_size=7) == 1
    scaled = pixels.astype(np.float64) / 255
    bn = model.layers[0]
    assert float(bn.moving_mean.numpy()[0]) == pytest.approx(scaled.mean(), rel=1e-4)
    assert float(bn.moving_variance.numpy()[0]) == pytest.approx(scaled.var(), rel=0.05)
    assert bn.momentum == 0.99


def assert_val_metrics_are_the_saved_models(out, data):
    """val_metrics.json must be what the saved model.keras scores on the run's own validation images
    (so the written model is the one that was evaluated: the averaged one with --swa)."""
    from edgecxr.data import folders as D
    from edgecxr.parity import metrics
    from edgecxr.formats.modelinfo import load_info
    from edgecxr.training import import_tf
    from edgecxr.training.evaluate import load_model
    from edgecxr.training.train import predict_probs

    tf, _ = import_tf()
    saved = json.loads((out / "val_metrics.json").read_text())
    info = load_info(out / "model.keras")
    val = D.split_samples(data, "val", D.DEFAULT_CLASSES, out / "split.json")
    pixels, labels, _, _ = D.load_pixels(val, info.preprocess)
    probs = predict_probs(tf, load_model(out / "model.keras"), pixels, info.preprocess)
    again = metrics.binary_metrics(labels, probs, saved["threshold"])
    assert saved["n"] == len(val) > 0
    assert again["roc_auc"] == pytest.approx(saved["roc_auc"], abs=1e-6)
    assert again["accuracy"] == pytest.approx(saved["accuracy"], abs=1e-9)


def test_train_with_weight_averaging(tmp_path, sample):
    from edgecxr.training.train import TrainConfig, train

    with pytest.raises(ConfigError, match="--swa 3"):
        TrainConfig(arch="tiny_cnn", data=str(sample), epochs=2, swa=3).validate()
    out = train(TrainConfig(arch="tiny_cnn", data=str(sample), epochs=2, swa=2, batch_size=8, augment="none"), tmp_path / "r")
    assert json.loads((out / "config.json").read_text())["swa"] == 2
    assert_val_metrics_are_the_saved_models(out, sample)


def test_mixup_blends_images_labels_and_class_weights_alike():
    from edgecxr.data.preprocess import PreprocessSpec
    from edgecxr.training import import_tf
    from edgecxr.training.train import make_dataset

    tf, _ = import_tf()
    tf.random.set_seed(0)
    labels = np.array([0, 1] * 32)
    pixels = np.repeat((labels * 255).astype(np.uint8)[:, None, None], 8, axis=1).repeat(8, axis=2)
    spec = PreprocessSpec(size=8, channels=1, scale=1 / 255, offset=0.0)
    weights = {0: 2.0, 1: 0.5}
    x, y, w = next(iter(make_dataset(tf, pixels, labels, spec, 64, mixup=0.4, weights=weights)))
    x, y, w = x.numpy(), y.numpy(), w.numpy()
    assert np.allclose(x.reshape(64, -1).mean(axis=1), y, atol=1e-5)  # each image carries its own mixed label
    assert np.allclose(w, y * 0.5 + (1 - y) * 2.0, atol=1e-6)
    assert ((y > 0.05) & (y < 0.95)).sum() > 5  # some pairs really are blended
    plain = next(iter(make_dataset(tf, pixels, labels, spec, 64)))
    assert len(plain) == 2 and set(np.unique(plain[1].numpy())) == {0.0, 1.0}


def test_train_with_mixup_and_label_smoothing(tmp_path, sample):
    from edgecxr.training.train import TrainConfig, train

    with pytest.raises(ConfigError, match="--mixup -1"):
        TrainConfig(arch="tiny_cnn", data=str(sample), mixup=-1).validate()
    with pytest.raises(ConfigError, match="--label-smoothing 0.7"):
        TrainConfig(arch="tiny_cnn", data=str(sample), label_smoothing=0.7).validate()
    out = train(TrainConfig(arch="tiny_cnn", data=str(sample), epochs=1, batch_size=8, augment="none",
                            mixup=0.2, label_smoothing=0.1), tmp_path / "r")
    config = json.loads((out / "config.json").read_text())
    assert config["mixup"] == 0.2 and config["label_smoothing"] == 0.1
    assert_val_metrics_are_the_saved_models(out, sample)


def test_demo_runs_end_to_end_and_parity_passes(tmp_path):
    """README command 1: the shipped model on the shipped sample -> metrics, a tflite-int8 bundle with its float
    twin, device parity passed (exit 0)."""
    proc = subprocess.run([sys.executable, "-m", "edgecxr.cli", "demo", "--out", str(tmp_path / "demo")],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "parity PASSED" in proc.stdout
    report = json.loads((tmp_path / "demo" / "parity.json").read_text())
    assert report["passed"] and report["n"] == 100 and report["reference"]["source"] == "bundle"
    # the product's promise, on a real-size model's int8 bundle (the tiny test model only meets looser limits)
    assert report["criteria"]["applied"]["min_agreement"] == 0.98 and report["agreement"] >= 0.98
    assert (tmp_path / "demo" / "bundles" / "tflite-int8" / "twin" / "model.tflite").is_file()


def test_distilled_targets_mix_labels_and_the_teachers_probabilities_per_shard():
    import tensorflow as tf

    from edgecxr.training.train import _distilled

    soft = np.array([0.1, 0.9, 0.3, 0.7, 0.5, 0.2], np.float32)  # the teacher on samples 0..5
    labels = np.array([0, 1, 1, 0, 1, 0], np.float32)
    for shard in ((1, 0), (2, 1), (3, 2)):
        count, first = shard
        part = np.arange(first, 6, count)
        ds = tf.data.Dataset.from_tensor_slices((np.zeros((len(part), 2, 2), np.uint8), labels[part],
                                                 np.arange(len(part), dtype=np.int64)))
        got = np.array([float(y) for _, y in _distilled(tf, ds, soft, shard, 0.25)])
        assert np.allclose(got, 0.75 * labels[part] + 0.25 * soft[part]), shard


def test_train_with_a_teacher(tmp_path, sample, tiny_model):
    from edgecxr.training.train import TrainConfig, teacher_probs, train

    with pytest.raises(ConfigError, match="--distill 0"):
        TrainConfig(arch="tiny_cnn", data=str(sample), teacher=str(tiny_model), distill=0).validate()
    with pytest.raises(ConfigError, match="no such model file"):
        TrainConfig(arch="tiny_cnn", data=str(sample), teacher=str(tmp_path / "none.keras")).validate()
    out = train(TrainConfig(arch="tiny_cnn", data=str(sample), epochs=1, batch_size=8, augment="none",
                            teacher=str(tiny_model), distill=0.5), tmp_path / "r")
    config = json.loads((out / "config.json").read_text())
    assert config["teacher"] == str(tiny_model) and config["distill"] == 0.5
    import tensorflow as tf

    from edgecxr.data import folders as D
    from edgecxr.devices import Classifier  # noqa: F401  (the device stage stays importable beside training)

    samples = D.list_split(sample, "train", D.DEFAULT_CLASSES)[:8]
    soft = teacher_probs(tf, tiny_model, samples)
    assert soft.shape == (8,) and np.all((soft >= 0) & (soft <= 1)) and not np.array_equal(soft, [s.label for s in samples])
    lonely = tmp_path / "copy.keras"
    lonely.write_bytes(tiny_model.read_bytes())  # no model.json beside it
    with pytest.raises(ConfigError, match="no model.json beside it"):
        teacher_probs(tf, lonely, samples)


def _teacher(folder, *, size: int = 32, out: int = 1, activation="sigmoid", info: dict):
    """A small tf_keras model with the model.json given (which may disagree with the model)."""
    import tf_keras as keras

    folder.mkdir(parents=True)
    inp = keras.Input((size, size, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(inp))
    keras.Model(inp, keras.layers.Dense(out, activation=activation, bias_initializer="ones")(x)).save(folder / "model.keras")
    spec = {"size": 32, "channels": 3, "crop": None, "equalize": False, "scale": 1 / 255, "offset": 0.0,
            "interpolation": "bilinear"}
    (folder / "model.json").write_text(json.dumps({"preprocess": spec, "labels": ["NORMAL", "PNEUMONIA"],
                                                   "threshold": 0.5, "output": "sigmoid", "positive_index": 0, **info}))
    return folder / "model.keras"


@pytest.mark.parametrize("case, expect", [
    ("logits-declared-sigmoid", "declares probabilities"),
    ("three-classes", "two-class"),
    ("positive-index-out-of-range", "two-class"),
    ("input-size-disagrees", "takes input"),
])
def test_a_teacher_that_cannot_give_probabilities_is_refused(tmp_path, sample, case, expect):
    """--teacher: outputs its declared kind cannot produce, more than two classes, an index past the outputs, an
    input size its model.json does not state: one line, exit 2, before any training."""
    made = {"logits-declared-sigmoid": dict(activation=None, info={}),
            "three-classes": dict(out=3, activation="softmax", info={"output": "softmax", "positive_index": 1}),
            "positive-index-out-of-range": dict(out=2, activation="softmax", info={"output": "softmax", "positive_index": 5}),
            "input-size-disagrees": dict(size=64, info={})}[case]
    teacher = _teacher(tmp_path / "t", **made)
    r = _cli("train", "--arch", "tiny_cnn", "--data", str(sample), "--epochs", "1", "--out", str(tmp_path / "r"),
             "--teacher", str(teacher))
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert r.returncode == 2 and len(errors) == 1 and expect in errors[0] and "--teacher" in errors[0], r.stderr[-2000:]
    assert not (tmp_path / "r").exists()


def test_distill_without_a_teacher_is_refused(tmp_path, sample):
    r = _cli("train", "--arch", "tiny_cnn", "--data", str(sample), "--epochs", "1", "--out", str(tmp_path / "r"),
             "--distill", "0.7")
    assert r.returncode == 2 and "add --teacher" in r.stderr and not (tmp_path / "r").exists()


def test_a_single_logit_teacher_passes_the_shape_check(tmp_path):
    """output "logits" with one output is a binary model (sigmoid applied by edgecxr): not refused as non-binary."""
    from edgecxr.formats.modelinfo import load_info
    from edgecxr.training.evaluate import load_model
    from edgecxr.training.train import check_teacher

    path = _teacher(tmp_path / "t", activation=None, info={"output": "logits"})
    check_teacher(load_model(path), load_info(path), path)


def _shift_pair(sample, size=64):
    """A real X-ray at size x size and the same image moved by one pixel, as model inputs in -1..1."""
    from PIL import Image

    img = Image.open(sorted((sample / "train").rglob("*.jpeg"))[0]).convert("L").resize((size + 8, size + 8))
    a = np.asarray(img, np.float32) / 127.5 - 1
    return (np.repeat(a[None, :size, :size, None], 3, -1), np.repeat(a[None, 1:size + 1, 1:size + 1, None], 3, -1))


def test_antialias_blurs_every_stride_two_convolution_and_features_hold_under_a_shift(sample):
    from edgecxr.training import import_tf
    from edgecxr.training.models import antialias, build_model

    _, keras = import_tf()
    keras.utils.set_random_seed(0)
    model, base = build_model("tiny_mobilenet_v2", size=64)
    convs = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)

    def strided(m):
        return [la.name for la in m.layers if isinstance(la, convs) and tuple(la.strides) == (2, 2)]

    aa = antialias(keras, model)
    blurs = [aa.get_layer(name) for name in strided(aa)]
    assert len(strided(model)) == 5 and all(b.name.endswith("_blur") and not b.trainable for b in blurs) and len(blurs) == 5
    assert all(np.allclose(b.get_weights()[0].sum(axis=(0, 1)), 1) for b in blurs)  # a low-pass filter keeps the mean
    for layer in (la for la in model.layers if la.weights):  # the padding before a strided conv is gone
        for old, new in zip(layer.get_weights(), aa.get_layer(layer.name).get_weights(), strict=True):
            np.testing.assert_array_equal(old, new)
    x, moved = _shift_pair(sample)

    def change(m):  # relative change of the pooled features under a one-pixel shift
        features = keras.Model(m.input, m.get_layer(base.layers[-1].name).output)
        a, b = features(x).numpy(), features(moved).numpy()
        return float(np.linalg.norm(b - a) / np.linalg.norm(a))

    assert aa(x).shape == model(x).shape
    assert change(aa) < change(model) / 2  # measured: 0.04 vs 0.27


def test_train_antialias_from_weights_reestimates_batchnorm(tmp_path, sample):
    from edgecxr.training.evaluate import load_model
    from edgecxr.training.train import TrainConfig, train

    plain = train(TrainConfig(arch="tiny_mobilenet_v2", data=str(sample), epochs=1, batch_size=16, augment="none"),
                  tmp_path / "plain")
    with pytest.raises(ConfigError, match="--epochs 0 only with --weights"):
        TrainConfig(arch="tiny_mobilenet_v2", data=str(sample), epochs=0).validate()
    out = train(TrainConfig(arch="tiny_mobilenet_v2", data=str(sample), epochs=0, batch_size=16, augment="none",
                            weights=str(plain / "model.keras"), antialias=True,
                            split_file=str(plain / "split.json")), tmp_path / "aa")  # no training: BatchNorm only
    assert json.loads((out / "config.json").read_text())["antialias"] is True
    assert json.loads((out / "val_metrics.json").read_text())["epochs_run"] == 0
    from edgecxr.reports.report import build_report

    build_report([out], tmp_path / "report.html")
    assert "the run trained no epoch" in (tmp_path / "report.html").read_text()
    before, after = load_model(plain / "model.keras"), load_model(out / "model.keras")  # loads without trusting code
    assert sum(layer.name.endswith("_blur") for layer in after.layers) == 5
    # the BatchNorm after the first blur sees blurred activations: its statistics were measured again
    bn = after.get_layer("block_1_expand_BN")
    assert not np.allclose(bn.moving_variance.numpy(), before.get_layer("block_1_expand_BN").moving_variance.numpy())
    assert_val_metrics_are_the_saved_models(out, sample)
    # an anti-aliased model loads as --weights, and fine-tuning every layer leaves the blur a blur
    again = train(TrainConfig(arch="tiny_mobilenet_v2", data=str(sample), epochs=1, batch_size=16, augment="none",
                              weights=str(out / "model.keras"), antialias=True, head_epochs=0, finetune_layers=1000,
                              lr=1e-2, split_file=str(plain / "split.json")), tmp_path / "again")
    tuned = load_model(again / "model.keras")
    for name in (la.name for la in after.layers if la.name.endswith("_blur")):
        np.testing.assert_array_equal(tuned.get_layer(name).get_weights()[0], after.get_layer(name).get_weights()[0])
    assert not np.allclose(tuned.get_layer("prob").get_weights()[0], after.get_layer("prob").get_weights()[0])


def test_antialias_rewrites_every_registry_family_it_can_and_refuses_what_it_cannot():
    from edgecxr.training import import_tf
    from edgecxr.training.models import antialias, build_model

    _, keras = import_tf()
    for arch, blurs in (("mobilenet_v3_small", 5), ("resnet50", 7)):  # hard-swish TF-op layers; strided shortcuts
        model, _ = build_model(arch, size=64, antialias=True)
        assert sum(la.name.endswith("_blur") for la in model.layers) == blurs and model(np.zeros((1, 64, 64, 3))).shape == (1, 1)
    inner, _ = build_model("tiny_mobilenet_v2", size=48)
    outer = keras.Sequential([keras.Input((48, 48, 3)), inner])
    with pytest.raises(ModelError, match="nested model"):
        antialias(keras, keras.Model(outer.input, outer.output))


def test_epochs_zero_and_head_epochs_zero_need_a_whole_model(tmp_path, sample, tiny_model):
    from edgecxr.training.train import TrainConfig

    for settings, message in (({"weights": "imagenet", "arch": "mobilenet_v2"}, "--epochs 0 only with --weights PATH"),
                              ({"weights": str(tiny_model), "folds": 3}, "--folds"),
                              ({"weights": str(tiny_model), "teacher": str(tiny_model)}, "--teacher")):
        with pytest.raises(ConfigError, match=message):
            TrainConfig(**{"arch": "tiny_cnn", "data": str(sample), "epochs": 0, **settings}).validate()
    with pytest.raises(ConfigError, match="ImageNet weights have none"):
        TrainConfig(arch="mobilenet_v2", data=str(sample), weights="imagenet", head_epochs=0).validate()


@pytest.mark.parametrize("field, value, flag", [
    ("lr", float("nan"), "--lr"), ("lr", 0.0, "--lr"), ("lr", -1e-3, "--lr"), ("bn_momentum", 1.0, "--bn-momentum"),
    ("bn_momentum", float("nan"), "--bn-momentum"), ("val_fraction", 0.0, "--val-fraction"),
    ("val_fraction", float("inf"), "--val-fraction"), ("patience", -1, "--patience"), ("folds", -2, "--folds"),
    ("folds", 1, "--folds 1"), ("head_epochs", -1, "--head-epochs"), ("intensity", float("nan"), "--intensity"),
    ("mixup", float("nan"), "--mixup"), ("alpha", 0.0, "--alpha"), ("lr", "fast", "--lr"),
    ("consistency", float("nan"), "--consistency")])
def test_numbers_that_would_train_a_nan_model_are_refused_before_training(sample, field, value, flag):
    from edgecxr.training.train import TrainConfig

    with pytest.raises(ConfigError, match=flag):
        TrainConfig(arch="tiny_cnn", data=str(sample), **{field: value}).validate()
    TrainConfig(arch="tiny_cnn", data=str(sample), bn_momentum=0.0, patience=0, head_epochs=0, folds=0).validate()


def test_a_validation_fraction_with_a_split_file_is_refused_not_recorded(sample, tmp_path):
    from edgecxr.training.train import TrainConfig

    split = tmp_path / "split.json"
    split.write_text("{}")
    with pytest.raises(ConfigError, match="--val-fraction 0.3 is not used with --split-file"):
        TrainConfig(arch="tiny_cnn", data=str(sample), split_file=str(split), val_fraction=0.3).validate()
    TrainConfig(arch="tiny_cnn", data=str(sample), val_fraction=0.3).validate()


def test_a_teacher_that_trained_on_the_students_validation_images_is_named(tmp_path, capsys):
    from types import SimpleNamespace

    from edgecxr.training.train import _warn_teacher_trained_on

    teacher = tmp_path / "teacher" / "model.keras"
    teacher.parent.mkdir()
    (teacher.parent / "split.json").write_text(json.dumps({"train": ["train/NORMAL/a.jpeg", "train/NORMAL/b.jpeg"],
                                                           "val": ["train/NORMAL/c.jpeg"]}))
    val = [SimpleNamespace(rel=r) for r in ("train/NORMAL/a.jpeg", "train/NORMAL/c.jpeg", "train/NORMAL/d.jpeg")]
    assert _warn_teacher_trained_on(teacher, val) == 1
    assert "1 of the 3 validation images are training images of the teacher" in capsys.readouterr().err
    (teacher.parent / "split.json").unlink()
    assert _warn_teacher_trained_on(teacher, val) == 0  # no split beside it: nothing to say


def test_nudge_magnifies_about_the_centre_then_moves_within_its_bounds():
    from edgecxr.training import import_tf
    from edgecxr.training.augment import nudge

    tf, _ = import_tf()
    tf.random.set_seed(0)
    n, c = 200, 99.5
    image = np.zeros((1, n, n, 3), np.float32)
    image[0, :, :, 0] = np.arange(n)[None, :]  # ramps in x and y tell each draw's magnification and shift
    image[0, :, :, 1] = np.arange(n)[:, None]
    image[0, 59:61, 149:151, 2] = 1  # a dot away from the centre, where the magnification moves it
    np.testing.assert_allclose(nudge(tf, image, shift=0, zoom=0).numpy(), image, atol=1e-4)
    zooms, shifts = [], []
    for moved in (nudge(tf, image).numpy()[0] for _ in range(20)):
        inner = slice(30, 170)  # away from the repeated edges
        u = [1 / np.diff(moved[100, inner, 0]).mean(), 1 / np.diff(moved[inner, 100, 1]).mean()]
        t = [u[0] * (c - moved[100, 99:101, 0].mean()), u[1] * (c - moved[99:101, 100, 1].mean())]
        ys, xs = np.nonzero(moved[..., 2] > 0.1)
        dot = np.average(xs, weights=moved[ys, xs, 2]), np.average(ys, weights=moved[ys, xs, 2])
        np.testing.assert_allclose(dot, [c + u[0] * (149.5 - c) + t[0], c + u[1] * (59.5 - c) + t[1]], atol=0.3)
        zooms += u
        shifts += t
    assert 1 - 1e-3 <= min(zooms) and max(zooms) <= 1.06 + 1e-3 and max(zooms) > 1.03  # magnified, up to 6 %
    assert max(abs(np.array(shifts))) <= 0.02 * n + 0.05 and max(abs(np.array(shifts))) > 0.01 * n  # moved, up to 2 %


def test_consistency_training_adds_the_logit_penalty_and_saves_the_plain_model(tmp_path, sample, monkeypatch):
    import edgecxr.training.train as train_module
    from edgecxr.training import import_tf
    from edgecxr.training.evaluate import load_model
    from edgecxr.training.models import build_model
    from edgecxr.training.train import TrainConfig, consistent, train

    tf, keras = import_tf()
    keras.utils.set_random_seed(0)
    model, _ = build_model("tiny_cnn", size=64)  # it has dropout, which the penalty must not see
    assert any(isinstance(la, keras.layers.Dropout) for la in model.layers)
    x = np.concatenate(_shift_pair(sample))
    wrapped = consistent(tf, keras, model, 10.0)
    np.testing.assert_array_equal(wrapped(x).numpy(), model(x).numpy())
    assert not wrapped.losses  # the penalty is a training loss only
    with tf.GradientTape() as tape:
        wrapped(x, training=True)
        penalty = tf.add_n(wrapped.losses)
    grads = tape.gradient(penalty, model.trainable_weights)
    assert len(wrapped.losses) == 1 and float(penalty) > 0
    assert any(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)  # it trains the model
    monkeypatch.setattr(train_module, "nudge", lambda tf, images: images)
    wrapped(x, training=True)
    assert float(wrapped.losses[0]) == 0  # the same image: no penalty, whatever dropout draws
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="--consistency -1"):
        TrainConfig(data=str(sample), consistency=-1).validate()
    common = dict(arch="tiny_cnn", data=str(sample), epochs=1, batch_size=16, augment="none", seed=3)
    plain = train(TrainConfig(**common), tmp_path / "plain")
    out = train(TrainConfig(**common, consistency=1000.0, split_file=str(plain / "split.json")), tmp_path / "cons")
    assert json.loads((out / "config.json").read_text())["consistency"] == 1000.0
    first_loss = {run: float(next(csv.DictReader((run / "history.csv").open()))["loss"]) for run in (plain, out)}
    assert first_loss[out] > first_loss[plain]  # the same first weights and batches, plus the penalty
    saved = load_model(out / "model.keras")
    assert not saved.name.endswith("_consistent") and saved.output_shape == (None, 1)
    assert_val_metrics_are_the_saved_models(out, sample)
