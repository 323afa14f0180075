"""Issue 28 (hardening round three): each defect reproduced, refused or handled."""
import csv
import json
import shutil
import zipfile

import pytest
from click.testing import CliRunner

from edgecxr.cli import main
from edgecxr.errors import BundleError, DataError


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_a_twin_swapped_after_load_never_runs(tiny_bundles, tmp_path):
    """28.2: the model bytes are hashed and handed to the runtime in one read."""
    from edgecxr.bundle import load_bundle
    from edgecxr.devices import Classifier

    folder = tmp_path / "b"
    shutil.copytree(tiny_bundles["tflite-int8"], folder)
    clf = Classifier.load(folder)
    twin = folder / clf.bundle.manifest["twin"]["model_file"]
    twin.write_bytes((folder / "model.tflite").read_bytes())  # another valid model, unsigned
    with pytest.raises(BundleError, match="changed since the bundle was verified"):
        clf.twin()
    assert Classifier.load(load_bundle(tiny_bundles["tflite-int8"])).twin() is not None  # the untouched one opens


def test_the_main_model_swapped_between_verification_and_opening_is_refused(tiny_bundles, tmp_path):
    from edgecxr.bundle import load_bundle
    from edgecxr.devices import Classifier

    for target in ("tflite-int8", "onnx-fp32", "openvino-fp32"):
        folder = tmp_path / target
        shutil.copytree(tiny_bundles[target], folder)
        bundle = load_bundle(folder)
        model = folder / bundle.manifest["model_file"]
        data = bytearray(model.read_bytes())
        data[len(data) // 2] ^= 1  # one bit in the middle of the weights
        model.write_bytes(bytes(data))
        with pytest.raises(BundleError, match="changed since the bundle was verified"):
            Classifier.load(bundle)


def test_a_folder_among_the_images_is_one_unreadable_image(tiny_bundles, sample, tmp_path):
    """28.4: a site CSV naming a folder: the run goes on, the folder is counted unreadable."""
    from edgecxr.devices import Classifier
    from edgecxr.devices.classifier import Failure

    images = sorted((sample / "test" / "NORMAL").iterdir())[:3]
    sick = sorted((sample / "test" / "PNEUMONIA").iterdir())[:3]
    (tmp_path / "a-folder").mkdir()
    rows = [[str(p), "NORMAL"] for p in images] + [[str(p), "PNEUMONIA"] for p in sick] + \
        [[str(tmp_path / "a-folder"), "NORMAL"]]
    with open(tmp_path / "site.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["path", "label"], *rows])
    r = cli("device", "parity", tiny_bundles["tflite-int8"], "--data", tmp_path / "site.csv", "--min-coverage", "0",
            "--json", tmp_path / "p.json")
    assert r.exit_code in (0, 1), r.output
    report = json.loads((tmp_path / "p.json").read_text())
    assert [u["error"] for u in report["data"]["unreadable"]] == [f"{tmp_path / 'a-folder'}: is a folder, not an image file"]
    results = Classifier.load(tiny_bundles["tflite-int8"]).predict_batch([tmp_path / "a-folder", images[0]], strict=False)
    assert isinstance(results[0], Failure) and "is a folder" in results[0].error and not isinstance(results[1], Failure)


def test_degenerate_splits_and_classes_are_refused(kermany, tmp_path):
    """28.9"""
    r = cli("split", "--data", kermany, "--ratios", "1e-9,0.5,0.499999999", "--out", tmp_path / "s.json")
    assert r.exit_code == 2 and "train part would hold 0 images" in r.output and not (tmp_path / "s.json").exists()
    r = cli("split", "--data", kermany, "--classes", "NORMAL,NORMAL", "--out", tmp_path / "s.json")
    assert r.exit_code == 2 and "two different folder names" in r.output
    r = cli("export", "--target", "tflite-fp32", "--data", kermany, "--classes", "NORMAL,NORMAL", "--out", tmp_path / "b")
    assert r.exit_code == 2 and "two different folder names" in r.output
    assert "CSV manifest is not re-split" in cli("split", "--help").output


def test_an_uppercase_zip_is_a_bundle(tiny_bundles, tmp_path):
    """28.12: bundle.ZIP"""
    from edgecxr.bundle import load_bundle, zip_bundle

    archive = zip_bundle(tiny_bundles["tflite-fp32"], tmp_path / "bundle.ZIP")
    assert zipfile.is_zipfile(archive) and load_bundle(archive).manifest["target"] == "tflite-fp32"


def test_hostile_json_inputs_are_one_line_errors(tmp_path):
    """28.7: 100,000 nested brackets and a negative count."""
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    r = cli("baseline", "--data", tmp_path, "--out", tmp_path / "o", "--cnn", deep)
    assert r.exit_code == 2, r.output
    from edgecxr.training.baseline import load_cnn_row

    metrics = {"accuracy": 0.9, "recall": 0.9, "specificity": 0.9, "f1": 0.9, "roc_auc": 0.9, "threshold": 0.5,
               "n": -3, "ci": {k: [0.8, 0.95] for k in ("accuracy", "recall", "specificity", "f1", "roc_auc")}}
    (tmp_path / "m.json").write_text(json.dumps(metrics))
    with pytest.raises(DataError, match="n a count"):
        load_cnn_row(tmp_path / "m.json")



def test_token_files_with_a_bom_work_and_non_ascii_tokens_are_refused(tmp_path):
    """28.10"""
    from edgecxr.devices.serve import read_token
    from edgecxr.errors import ConfigError

    token = "a" * 40
    (tmp_path / "bom").write_bytes(b"\xef\xbb\xbf" + token.encode() + b"\n")
    assert read_token(tmp_path / "bom") == token
    (tmp_path / "utf").write_text("ä" * 40)
    with pytest.raises(ConfigError, match="must be ASCII"):
        read_token(tmp_path / "utf")


def test_keygen_on_a_full_disk_leaves_no_key_behind(tmp_path, monkeypatch):
    """28.11: a failed write removes the half-written key, so a retry is not blocked."""
    import os

    from edgecxr import signing
    from edgecxr.errors import ConfigError

    real_fsync = os.fsync

    def full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(ConfigError, match="No space left on device"):
        signing.keygen(tmp_path / "k")
    assert not (tmp_path / "k").exists() and not (tmp_path / "k.pub").exists()
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert signing.keygen(tmp_path / "k")[0].stat().st_size > 0


def test_explain_with_a_bundle_honours_the_trusted_key(tiny_bundles, sample, tmp_path):
    """28.12: `explain --bundle` refuses an unsigned bundle when a trusted key is given."""
    from edgecxr.signing import keygen

    _, public = keygen(tmp_path / "release")
    image = next((sample / "test" / "NORMAL").iterdir())
    r = cli("explain", image, "--bundle", tiny_bundles["tflite-fp32"], "--trusted-key", public, "--out", tmp_path / "m.png")
    assert r.exit_code == 2 and "not signed" in r.output and not (tmp_path / "m.png").exists()
