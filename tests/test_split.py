"""`edgecxr split`: the pooled re-split by patient, and train / evaluate / export / parity on it."""
import json
from collections import Counter

import pytest
from click.testing import CliRunner

from edgecxr.data import folders as D
from edgecxr.cli import main
from tests.conftest import REPO


def test_resplit_keeps_every_patient_in_one_part(kermany):
    result = D.resplit(kermany, (0.79, 0.05, 0.16), seed=0)
    everything = D.pooled(kermany)
    owner = {}
    for part in D.SPLITS:
        for rel in result[part]:
            owner.setdefault(rel, []).append(part)
    assert sorted(owner) == sorted(s.rel for s in everything)  # every image once
    assert all(len(parts) == 1 for parts in owner.values())
    by_patient = {}
    for s in everything:
        by_patient.setdefault(s.patient, set()).update(owner[s.rel])
    assert all(len(parts) == 1 for parts in by_patient.values()), "a patient straddles two parts"
    for part, share in zip(D.SPLITS, (0.79, 0.05, 0.16)):
        summary = result["summary"][part]
        assert summary["image_share"] == pytest.approx(share, abs=0.01)
        assert summary["positive"] / summary["images"] == pytest.approx(4273 / 5856, abs=0.02)  # stratified
    # the official test images are spread over all three parts: a pooled split mixes them in
    assert all(result["summary"][p]["from_official"]["test"] > 0 for p in D.SPLITS)


def test_resplit_is_seeded(kermany):
    a, b = D.resplit(kermany, (0.8, 0.1, 0.1), seed=3), D.resplit(kermany, (0.8, 0.1, 0.1), seed=3)
    c = D.resplit(kermany, (0.8, 0.1, 0.1), seed=4)
    assert a["test"] == b["test"] and a["test"] != c["test"]


def test_grouped_split_still_gives_the_shipped_models_split(kermany):
    shipped = json.loads((REPO / "edgecxr/default/split.json").read_text())
    train, val = D.grouped_split(D.list_split(kermany, "train"), 0.1, 0)
    assert [s.rel for s in train] == shipped["train"] and [s.rel for s in val] == shipped["val"]


def test_split_command_writes_the_file_and_warns(kermany, tmp_path):
    out = tmp_path / "split.json"
    result = CliRunner().invoke(main, ["split", "--data", str(kermany), "--ratios", "0.79,0.05,0.16", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "not comparable with the official" in result.output
    assert "patients" in result.output and "from test/" in result.output
    data = json.loads(out.read_text())
    assert data["pooled"] and len(data["train"]) + len(data["val"]) + len(data["test"]) == 5856
    assert D.split_samples(kermany, "test", split_file=out)[0].rel == data["test"][0]


@pytest.mark.parametrize("ratios", ["0.8,0.1", "0.8,0.1,0.2", "a,b,c", "0.9,0,0.1", "nan,0.1,0.1", "0.8,0.2,0"])
def test_split_command_refuses_bad_ratios(kermany, tmp_path, ratios):
    result = CliRunner().invoke(main, ["split", "--data", str(kermany), "--ratios", ratios, "--out", str(tmp_path / "s.json")])
    assert result.exit_code == 2
    assert "--ratios" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "s.json").exists()


def test_split_command_refuses_a_wrong_folder_and_an_existing_file(tmp_path, kermany):
    result = CliRunner().invoke(main, ["split", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "s.json")])
    assert result.exit_code == 2 and "data folder not found" in result.output
    (tmp_path / "m.csv").write_text("path,label\n")
    result = CliRunner().invoke(main, ["split", "--data", str(tmp_path / "m.csv"), "--out", str(tmp_path / "s.json")])
    assert result.exit_code == 2 and "pools a data folder, not a file" in result.output
    (tmp_path / "s.json").write_text("{}")
    result = CliRunner().invoke(main, ["split", "--data", str(kermany), "--out", str(tmp_path / "s.json")])
    assert result.exit_code == 2 and "already exists" in result.output


def test_split_overwrite_replaces_only_a_split_file_it_wrote(tmp_path, kermany):
    notes = tmp_path / "notes.txt"
    notes.write_text("a user's notes")
    result = CliRunner().invoke(main, ["split", "--data", str(kermany), "--out", str(notes), "--overwrite"])
    assert result.exit_code == 2 and "not a split file of `edgecxr split`" in result.output
    assert notes.read_text() == "a user's notes"
    out = tmp_path / "s.json"
    for seed in ("0", "1"):  # its own file is replaced
        result = CliRunner().invoke(main, ["split", "--data", str(kermany), "--out", str(out), "--seed", seed, "--overwrite"])
        assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["seed"] == 1


def test_train_export_and_parity_on_a_pooled_split(tmp_path, small_kermany, capsys):
    from edgecxr.devices.classifier import Classifier
    from edgecxr.devices.parity import run_parity
    from edgecxr.export import export_model
    from edgecxr.export.calibration import export_splits
    from edgecxr.training.train import TrainConfig, train

    root = small_kermany
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps(D.resplit(root, (0.6, 0.2, 0.2), seed=0)))
    chosen = json.loads(split_file.read_text())
    run = train(TrainConfig(arch="tiny_cnn", data=str(root), epochs=1, augment="none", split_file=str(split_file)),
                tmp_path / "run")
    saved = json.loads((run / "split.json").read_text())
    assert saved["pooled"] and saved["test"] == chosen["test"] and saved["val"] == chosen["val"]
    train_s, val_s, test_s, where = export_splits(root, D.DEFAULT_CLASSES, run / "model.keras")
    assert [s.rel for s in test_s] == chosen["test"] and "pooled" in where
    assert Counter(s.rel.split("/")[0] for s in test_s).keys() == {"train", "test"}  # from both official folders
    bundle = export_model(run / "model.keras", ["tflite-fp32"], root, tmp_path / "bundles")[0]
    reference = json.loads((bundle / "manifest.json").read_text())["reference"]
    assert reference["pooled"] and sorted(reference["probs"]) == sorted(chosen["test"])
    report = run_parity(Classifier.load(bundle), root, n_boot=50)
    assert report["passed"] and report["data"]["compared"] == len(chosen["test"])
    from edgecxr.training.evaluate import evaluate

    result = evaluate(run / "model.keras", root, "test", tmp_path / "eval", split_file=split_file, shortcuts=False,
                      n_boot=50)
    assert result["n"] == len(chosen["test"]) and result["split_file"] == str(split_file)
    assert "training or validation images of this model" not in capsys.readouterr().err
    other = tmp_path / "other.json"  # another seed's split: its test part holds images this model trained on
    other.write_text(json.dumps(D.resplit(root, (0.6, 0.2, 0.2), seed=7)))
    evaluate(run / "model.keras", root, "test", tmp_path / "eval-other", split_file=other, shortcuts=False, n_boot=50)
    assert "test images are training or validation images of this model" in capsys.readouterr().err

    import shutil

    from edgecxr.utils.errors import DataError

    copy = tmp_path / "copy"  # the model without its split.json would be scored on test/, mostly its own train images
    copy.mkdir()
    for name in ("model.keras", "model.json"):
        shutil.copy(run / name, copy / name)
    assert json.loads((copy / "model.json").read_text())["pooled_split"] is True
    with pytest.raises(DataError, match="trained on a pooled re-split, but its split.json is not beside it"):
        evaluate(copy / "model.keras", root, "test", tmp_path / "eval-copy", shortcuts=False, n_boot=50)
    assert not (tmp_path / "eval-copy").exists()
    assert export_splits(root, D.DEFAULT_CLASSES, copy / "model.keras", split_file=split_file)[2] == test_s

    from edgecxr.utils.errors import ConfigError
    from edgecxr.bench.run import run_benchmark

    with pytest.raises(ConfigError, match="pooled"):  # a --limit subset of test/ would not hold its test images
        run_benchmark(run / "model.keras", root, tmp_path / "bench-limit", targets=["tflite-fp32"], limit=8)
    bench = run_benchmark(run / "model.keras", root, tmp_path / "bench", targets=["tflite-fp32"], runs=2, warmup=0,
                          n_boot=50, stability_images=4)
    (row,) = bench["rows"]
    assert row["passed"] and row["n"] == len(chosen["test"]) == bench["data_info"]["images"]
    assert bench["data_info"]["split_file"] == str(run / "split.json")
    assert "pooled re-split" in (tmp_path / "bench" / "benchmark.md").read_text()


def test_folds_and_a_split_file_are_refused(tmp_path):
    from edgecxr.utils.errors import ConfigError
    from edgecxr.training.train import TrainConfig

    with pytest.raises(ConfigError, match="--folds"):
        TrainConfig(data="x", folds=3, split_file=str(tmp_path / "s.json")).validate()
