"""Core: image reading, data layout and splits, preprocessing spec, metrics."""
import io
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgecxr.data import folders as D
from edgecxr.parity import metrics
from edgecxr.utils.errors import ConfigError, DataError, ImageError
from edgecxr.data.images import decode_image, read_image
from edgecxr.data.preprocess import LUNG_CROP, PreprocessSpec


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


# -- images --------------------------------------------------------------------
def test_kermany_jpeg_reads_as_identical_gray(kermany):
    path = next((kermany / "test" / "NORMAL").iterdir())
    gray = np.asarray(read_image(path))
    rgb = np.asarray(Image.open(path).convert("RGB"))
    assert gray.shape == (224, 224) and gray.dtype == np.uint8
    assert np.abs(gray.astype(int) - rgb[..., 0].astype(int)).max() <= 1


def test_modes_decode_to_gray():
    base = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (16, 1))
    sixteen = Image.fromarray(base.astype(np.uint16) * 257)
    assert np.array_equal(np.asarray(decode_image(_png(sixteen))), np.asarray(Image.fromarray(base).point(lambda v: round(v * 255 / 252))))
    rgba = Image.fromarray(np.dstack([base] * 3 + [np.full_like(base, 255)]), "RGBA")
    assert np.array_equal(np.asarray(decode_image(_png(rgba))), base)
    palette = Image.fromarray(base).convert("P")
    palette.info["transparency"] = 0
    assert decode_image(_png(palette, transparency=0)).mode == "L"
    cmyk = io.BytesIO()
    Image.fromarray(np.dstack([base] * 3)).convert("CMYK").save(cmyk, "JPEG")
    assert decode_image(cmyk.getvalue()).size == (64, 16)


@pytest.mark.parametrize("payload, message", [
    (b"", "empty"),
    (b"hello, this is text", "not a readable image"),
])
def test_bad_bytes_are_one_line_errors(payload, message):
    with pytest.raises(ImageError, match=message) as exc:
        decode_image(payload, "x.jpeg")
    assert "\n" not in str(exc.value)


def test_truncated_jpeg(kermany):
    data = next((kermany / "test" / "NORMAL").iterdir()).read_bytes()
    with pytest.raises(ImageError, match="x.jpeg"):
        decode_image(data[: len(data) // 3], "x.jpeg")


def test_decompression_bomb_header_is_refused():
    png = _png(Image.new("L", (1, 1)))
    bomb = bytearray(png)
    bomb[16:24] = (100000).to_bytes(4, "big") + (100000).to_bytes(4, "big")  # IHDR width, height
    bomb[29:33] = zlib.crc32(bytes(bomb[12:29])).to_bytes(4, "big")  # valid chunk CRC
    with pytest.raises(ImageError, match="limit"):
        decode_image(bytes(bomb), "bomb.png")


def _dicom(tmp_path: Path, pixels: np.ndarray, photometric="MONOCHROME2", with_pixels=True, **extra) -> Path:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = FileDataset(str(tmp_path / "x.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    for key, value in extra.items():
        setattr(ds, key, value)
    if with_pixels:
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    path = tmp_path / f"{photometric}{with_pixels}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_monochrome_and_rescale(tmp_path):
    ramp = np.tile(np.arange(0, 4000, 250, dtype=np.uint16), (8, 1))
    mono2 = np.asarray(read_image(_dicom(tmp_path, ramp, RescaleSlope=2, RescaleIntercept=-100)))
    mono1 = np.asarray(read_image(_dicom(tmp_path, ramp, "MONOCHROME1")))
    assert mono2[0, 0] == 0 and mono2[0, -1] == 255
    assert np.array_equal(mono1, 255 - mono2)


def test_dicom_window_is_applied(tmp_path):
    ramp = np.tile(np.arange(0, 4000, 250, dtype=np.uint16), (8, 1))
    windowed = np.asarray(read_image(_dicom(tmp_path, ramp, WindowCenter=1000, WindowWidth=500)))
    assert windowed[0, 0] == 0 and windowed[0, -1] == 255 and (windowed[0] == 255).sum() > 8


def test_dicom_without_pixels(tmp_path):
    with pytest.raises(ImageError, match="no pixel data"):
        read_image(_dicom(tmp_path, np.zeros((4, 4)), with_pixels=False))


# -- data ------------------------------------------------------------------------
def test_patient_ids_and_subgroups():
    assert D.patient_id("person1000_bacteria_2931.jpeg") == D.patient_id("person1000_virus_1681.jpeg") == "P1000"
    assert D.patient_id("IM-0115-0001.jpeg") == "N-0115"
    assert D.patient_id("NORMAL2-IM-0115-0001.jpeg") == "N2-0115"
    assert D.subgroup("person1_virus_6.jpeg", 1) == "viral"
    assert D.subgroup("person1_bacteria_1.jpeg", 1) == "bacterial"


def test_list_split_counts(kermany):
    test = D.list_split(kermany, "test")
    assert len(test) == 624 and sum(s.label for s in test) == 390
    assert test[0].rel.startswith("test/NORMAL/")


def test_layout_errors(tmp_path, kermany):
    with pytest.raises(DataError, match="not found"):
        D.list_split(tmp_path / "nope")
    with pytest.raises(DataError, match="no 'test' folder"):
        D.list_split(tmp_path)
    (tmp_path / "test" / "NORMAL").mkdir(parents=True)
    (tmp_path / "test" / "PNEUMONIA").mkdir()
    with pytest.raises(DataError, match="has no images"):
        D.list_split(tmp_path)
    with pytest.raises(DataError, match="no class folder 'CAT'"):
        D.list_split(kermany, "test", ("NORMAL", "CAT"))


def test_grouped_split_keeps_patients_apart(kermany):
    samples = D.list_split(kermany, "train")
    train, val = D.grouped_split(samples, 0.1, seed=3)
    assert not {s.patient for s in train} & {s.patient for s in val}
    assert len(train) + len(val) == len(samples)
    for label in (0, 1):
        share = sum(s.label == label for s in val) / sum(s.label == label for s in samples)
        assert 0.09 < share < 0.12
    assert D.grouped_split(samples, 0.1, seed=3) == (train, val)
    assert D.grouped_split(samples, 0.1, seed=4)[1] != val


def test_split_file_roundtrip(tmp_path, kermany):
    samples = D.list_split(kermany, "train")
    train, val = D.grouped_split(samples, 0.2, seed=0)
    D.save_split(tmp_path / "split.json", train, val, seed=0)
    assert D.apply_split(tmp_path / "split.json", samples) == (train, val)


def test_kfold_groups(kermany):
    samples = D.list_split(kermany, "train")
    folds = D.grouped_kfold(samples, 5, seed=0)
    assert sum(len(f) for f in folds) == len(samples)
    patients = [{s.patient for s in f} for f in folds]
    assert all(not (patients[i] & patients[j]) for i in range(5) for j in range(i + 1, 5))
    assert max(len(f) for f in folds) - min(len(f) for f in folds) < 60


def test_csv_manifest(tmp_path, sample):
    rows = ["path,label,patient_id,split"]
    for s in D.list_split(sample, "test"):
        rows.append(f"{Path(sample, s.rel).as_posix()},{'PNEUMONIA' if s.label else 'NORMAL'},,test")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    got = D.list_split(tmp_path / "m.csv", "test")
    assert len(got) == 100 and sum(s.label for s in got) == 50
    (tmp_path / "bad.csv").write_text("file,y\na.png,1\n")
    with pytest.raises(DataError, match="path,label"):
        D.list_split(tmp_path / "bad.csv")


def _one_line_error(call, match: str) -> str:
    with pytest.raises(DataError, match=match) as info:
        call()
    assert "\n" not in str(info.value)
    return str(info.value)


def test_mixed_label_patients_stay_on_one_side(tmp_path):
    """A patient with NORMAL and PNEUMONIA images is never in both train and validation, nor in two folds."""
    rows = ["path,label,patient_id"]
    for p in range(60):
        if p % 4 == 0:
            labels = [p // 4 % 2] * 2  # a single-label patient
        else:
            labels = [0, 1] + [p % 2] * (p % 3)  # mixed: a tie, or a majority of either class
        rows += [f"img/p{p}_{i}.png,{label},pat{p}" for i, label in enumerate(labels)]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    samples = D.list_split(tmp_path / "m.csv", "train")
    labels_of = {}
    for s in samples:
        labels_of.setdefault(s.patient, set()).add(s.label)
    assert sum(len(v) == 2 for v in labels_of.values()) >= 30  # the case under test is really there
    for seed in range(5):
        for fraction in (0.1, 0.3, 0.5):
            train, val = D.grouped_split(samples, fraction, seed)
            assert len(train) + len(val) == len(samples) and val
            assert not {s.patient for s in train} & {s.patient for s in val}, (seed, fraction)
        for k in (2, 3, 5):
            folds = D.grouped_kfold(samples, k, seed)
            assert sorted(s.rel for f in folds for s in f) == sorted(s.rel for s in samples)
            owners = {}
            for i, fold in enumerate(folds):
                for s in fold:
                    assert owners.setdefault(s.patient, i) == i, (seed, k, s.patient)
    # stratified by the patient's majority label (ties positive): both classes still reach validation
    train, val = D.grouped_split(samples, 0.3, 0)
    assert {s.label for s in val} == {0, 1}


def test_csv_short_row_is_one_line_error(tmp_path):
    (tmp_path / "m.csv").write_text("path,label,split\na.png,1,test\n\nb.png\nc.png,0,test\n")
    msg = _one_line_error(lambda: D.list_split(tmp_path / "m.csv", "test"), r"m\.csv:4: row has 1 field\(s\) but the header has 3")
    assert "fill in or remove" in msg


@pytest.mark.parametrize("encoding, name", [("utf-16", "bé.png"), ("utf-16-le", "b.png"), ("latin-1", "bé.png")])
def test_csv_not_utf8_is_one_line_error(tmp_path, encoding, name):
    (tmp_path / "m.csv").write_text(f"path,label,split\n{name},1,test\nc.png,0,test\n", encoding=encoding)
    _one_line_error(lambda: D.list_split(tmp_path / "m.csv", "test"), r"m\.csv: .*save it as UTF-8")


def test_csv_with_bom_reads(tmp_path):
    (tmp_path / "m.csv").write_text("path,label,split\na.png,PNEUMONIA,test\nb.png,NORMAL,test\n", encoding="utf-8-sig")
    got = D.list_split(tmp_path / "m.csv", "test")
    assert [(s.rel, s.label) for s in got] == [("a.png", 1), ("b.png", 0)]


def test_csv_without_split_column_warns_once(tmp_path, capsys):
    (tmp_path / "m.csv").write_text("path,label\n" + "".join(f"p{i}.png,{i % 2}\n" for i in range(20)))
    assert len(D.list_split(tmp_path / "m.csv", "test")) == 20
    assert len(D.list_split(tmp_path / "m.csv", "test")) == 20
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no split column: all 20 rows are used as the 'test' split" in err[0]
    assert err[0].startswith("warning: ") and "m.csv" in err[0]
    # training from a split-less CSV still works: validation is carved out of the 'train' rows
    train, val = D.grouped_split(D.list_split(tmp_path / "m.csv", "train"), 0.2, 0)
    assert len(train) + len(val) == 20 and val
    assert "as the 'train' split" in capsys.readouterr().err


@pytest.mark.parametrize("text, match", [
    ("{not json", "not a JSON split file"),
    ('{"seed": 0}', "needs 'train' and 'val' lists"),
    ('["train/a.png"]', "needs 'train' and 'val' lists"),
    ('{"train": "x", "val": []}', "needs 'train' and 'val' lists"),
    (None, "cannot read the split file"),
])
def test_bad_split_file_is_one_line_error(tmp_path, text, match):
    path = tmp_path / "split.json"
    if text is not None:
        path.write_text(text)
    msg = _one_line_error(lambda: D.apply_split(path, []), match)
    assert str(path) in msg and "pass a split.json written by edgecxr train" in msg


def test_export_falls_back_from_a_bad_split_file(tmp_path, capsys):
    from edgecxr.export.calibration import train_val

    (tmp_path / "m.csv").write_text("path,label,patient_id\n" + "".join(f"p{i}.png,{i % 2},{i}\n" for i in range(40)))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "split.json").write_text('{"seed": 0}')
    train, val, source = train_val(tmp_path / "m.csv", D.DEFAULT_CLASSES, tmp_path / "run" / "model.keras")
    assert len(train) + len(val) == 40 and "patient-grouped" in source
    assert "does not fit" in capsys.readouterr().err


def test_load_pixels_skips_bad_files(tmp_path, sample):
    root = tmp_path / "d"
    for cls in ("NORMAL", "PNEUMONIA"):
        (root / "test" / cls).mkdir(parents=True)
        for f in list((sample / "test" / cls).iterdir())[:3]:
            (root / "test" / cls / f.name).write_bytes(f.read_bytes())
    (root / "test" / "NORMAL" / "broken.jpeg").write_bytes(b"not a jpeg")
    samples = D.list_split(root, "test")
    pixels, labels, kept, bad = D.load_pixels(samples, PreprocessSpec(size=64))
    assert pixels.shape == (6, 64, 64) and len(bad) == 1 and "broken.jpeg" in bad[0][1]
    with pytest.raises(ImageError):
        D.load_pixels(samples, PreprocessSpec(size=64), strict=True)


# -- preprocessing ------------------------------------------------------------------
def test_spec_json_roundtrip(tmp_path):
    spec = PreprocessSpec(size=150, crop=LUNG_CROP, equalize=True, scale=1 / 255, offset=0.0)
    spec.save(tmp_path / "p.json")
    assert PreprocessSpec.load(tmp_path / "p.json") == spec
    with pytest.raises(ConfigError, match="unknown preprocess keys"):
        PreprocessSpec.from_dict({**spec.to_dict(), "mean": 3})
    with pytest.raises(ConfigError):
        PreprocessSpec(channels=2)


def test_lung_crop_region(fullres):
    path = next((fullres / "NORMAL").iterdir())
    img = read_image(path)
    spec = PreprocessSpec(size=64, crop=LUNG_CROP)
    w, h = img.size
    manual = img.crop((round(0.2 * w), round(0.15 * h), round(0.8 * w), round(0.9 * h))).resize((64, 64), Image.Resampling.BILINEAR)
    assert np.array_equal(spec.to_pixels(img), np.asarray(manual))


@pytest.mark.parametrize("spec", [PreprocessSpec(), PreprocessSpec(size=150, crop=LUNG_CROP, equalize=True)])
def test_large_jpegs_decode_at_reduced_scale_and_small_ones_do_not(spec, kermany, fullres):
    """spec.read decodes a full-size JPEG at 1/2..1/8 scale but never below what crop + resize need; the 224 px
    files the model was made with decode exactly as before; the model input from the reduced decode is closer
    to the full decode's than the data set's own 224 px version of the same X-ray is."""
    for path in sorted((kermany / "test" / "NORMAL").iterdir())[:5]:
        assert np.array_equal(np.asarray(spec.read(path)), np.asarray(read_image(path)))
    for path in sorted(fullres.rglob("*.jpeg")):
        full, reduced = read_image(path), spec.read(path)
        assert reduced.size[0] < full.size[0] and min(reduced.size) >= spec.draft_size
        target = spec.to_pixels(full).astype(int)
        small = read_image(kermany / "val" / path.parent.name / path.name)
        assert np.abs(spec.to_pixels(reduced) - target).mean() < np.abs(spec.to_pixels(small) - target).mean()


@pytest.mark.parametrize("spec", [
    PreprocessSpec(),
    PreprocessSpec(size=150, scale=1 / 255, offset=0.0, crop=LUNG_CROP),
    PreprocessSpec(size=96, equalize=True),
])
def test_training_pipeline_matches_device_preprocessing(spec, kermany, fullres):
    """What the training input pipeline feeds the model == the device's numpy/Pillow tensor."""
    from edgecxr.training import import_tf
    from edgecxr.training.train import make_dataset

    tf, _ = import_tf()
    samples = D.list_split(kermany, "test")[::60] + [D.Sample(p, p.name, 0, "x") for p in sorted((fullres / "NORMAL").iterdir())[:3]]
    pixels, labels, kept, _ = D.load_pixels(samples, spec)
    fed = np.concatenate([x.numpy() for x, _ in make_dataset(tf, pixels, labels, spec, 4)])
    device = np.stack([spec.load_input(s.path) for s in kept])
    assert fed.shape == device.shape == (len(kept), *spec.input_shape)
    assert np.abs(fed - device).max() <= spec.scale * 1.0 + 1e-6  # at most one grey level


# -- metrics -------------------------------------------------------------------------
@pytest.fixture
def scored():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    scores = np.clip(y * 0.3 + rng.normal(0.4, 0.25, 300), 0, 1).round(2)  # rounded: ties
    return y, scores


def test_metrics_match_sklearn(scored):
    from sklearn import metrics as sk

    y, s = scored
    m = metrics.binary_metrics(y, s, 0.55)
    pred = s >= 0.55
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(sk.precision_score(y, pred))
    assert m["recall"] == pytest.approx(sk.recall_score(y, pred))
    assert m["specificity"] == pytest.approx(sk.recall_score(1 - y, ~pred))
    assert m["f1"] == pytest.approx(sk.f1_score(y, pred))
    assert m["roc_auc"] == pytest.approx(sk.roc_auc_score(y, s))
    assert m["pr_auc"] == pytest.approx(sk.average_precision_score(y, s))
    tn, fp, fn, tp = sk.confusion_matrix(y, pred).ravel()
    assert m["confusion"] == {"tp": tp, "fp": fp, "tn": tn, "fn": fn}


def test_roc_curve_matches_sklearn(scored):
    from sklearn import metrics as sk

    y, s = scored
    fpr, tpr, thr = metrics.roc_curve(y, s)
    sk_fpr, sk_tpr, _ = sk.roc_curve(y, s, drop_intermediate=False)
    assert np.allclose(fpr, sk_fpr) and np.allclose(tpr, sk_tpr)


def test_threshold_choice(scored):
    y, s = scored
    fpr, tpr, thr = metrics.roc_curve(y, s)
    youden = metrics.choose_threshold(y, s)
    best = thr[np.argmax(tpr - fpr)]
    below = np.max(np.asarray(s)[np.asarray(s) < best])
    assert youden == pytest.approx((best + below) / 2)  # halfway to the next lower score: the same decisions
    assert np.array_equal(np.asarray(s) >= youden, np.asarray(s) >= best) and youden not in set(np.asarray(s).tolist())
    a = 0.3
    b = float(np.nextafter(a, 0))  # adjacent floats: no middle, the chosen score itself
    assert metrics.choose_threshold([0, 1], [b, a]) == a
    t95 = metrics.choose_threshold(y, s, target_recall=0.95)
    assert metrics.binary_metrics(y, s, t95)["recall"] >= 0.95
    assert metrics.binary_metrics(y, s, t95 + 0.011)["recall"] < 0.95


def test_bootstrap_ci_brackets_point(scored):
    y, s = scored
    m = metrics.binary_metrics(y, s, 0.5)
    ci = metrics.bootstrap_ci(y, s, 0.5, n_boot=200)
    for name in metrics.METRIC_NAMES:
        assert ci[name][0] <= m[name] <= ci[name][1]
        assert ci[name][1] - ci[name][0] < 0.25


def test_mcnemar_exact():
    y = np.ones(20, int)
    a = np.ones(20, int)
    b = a.copy()
    b[:6] = 0  # b wrong on 6 cases a gets right
    result = metrics.mcnemar(y, a, b)
    assert result["a_only_right"] == 6 and result["b_only_right"] == 0
    assert result["p_value"] == pytest.approx(2 * 0.5**6)
    assert metrics.mcnemar(y, a, a)["p_value"] == 1.0


def test_split_file_applies_to_a_subset_of_its_images(tmp_path, kermany):
    """The shipped sample is a subset of the training data: every image keeps its side of the model's split."""
    from edgecxr.data import folders as D

    samples = D.list_split(kermany, "train")
    train, val = D.grouped_split(samples, 0.1, 0)
    D.save_split(tmp_path / "split.json", train, val, seed=0, val_fraction=0.1, data=str(kermany), grouped_by="patient")
    part = train[:10] + val[:3]
    sub_train, sub_val = D.apply_split(tmp_path / "split.json", part, subset=True)
    assert [s.rel for s in sub_train] == [s.rel for s in train[:10]] and [s.rel for s in sub_val] == [s.rel for s in val[:3]]
    with pytest.raises(DataError, match="not in the data"):
        D.apply_split(tmp_path / "split.json", part)  # without subset=True the whole split must be there
    stranger = D.Sample(part[0].path, "train/NORMAL/not-in-split.jpeg", 0, "x")
    with pytest.raises(DataError, match="not in the data"):
        D.apply_split(tmp_path / "split.json", part + [stranger], subset=True)


def test_threshold_rule_round_trip():
    assert metrics.rule_target_recall(metrics.threshold_rule(0.95)) == 0.95
    assert metrics.rule_target_recall(metrics.threshold_rule(None)) is None
    assert metrics.rule_target_recall("given on the command line") is None


def test_dash_h_is_help_everywhere():
    from click.testing import CliRunner

    from edgecxr.cli import main

    for args in (["-h"], ["device", "-h"], ["device", "parity", "-h"], ["export", "-h"], ["evaluate", "-h"]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0 and r.output.startswith("Usage: ") and "Options:" in r.output, (args, r.output[:200])


def test_training_curves_of_one_epoch_are_not_empty():
    """After one epoch each panel shows a train and a validation point (a line needs two epochs)."""
    pytest.importorskip("matplotlib")
    from edgecxr import plots

    fig = plots.history_figure({"loss": [0.5], "val_loss": [0.6], "auc": [0.8], "val_auc": [0.9]})
    for ax in fig.axes:
        assert len(ax.lines) == 2 and all(line.get_marker() not in (None, "None", "") for line in ax.lines)
    assert [ax.get_title() for ax in fig.axes] == ["loss", "auc"]


def test_a_stage_that_does_not_import_says_why(monkeypatch):
    """A broken or missing stage stays in `edgecxr --help`, marked unavailable, and running it names the
    module and the error (it used to vanish from the command list)."""
    from click.testing import CliRunner

    from edgecxr import cli

    monkeypatch.setitem(cli.LAZY_COMMANDS, "export", "edgecxr.no_such_stage:export")
    r = CliRunner().invoke(cli.main, ["-h"])
    assert r.exit_code == 0 and "export     (unavailable: ModuleNotFoundError)" in r.output
    r = CliRunner().invoke(cli.main, ["export", "--target", "tflite-int8"])
    assert r.exit_code == 2
    assert r.output.strip() == ("error: export is unavailable: edgecxr.no_such_stage does not import (ModuleNotFoundError: "
                                "No module named 'edgecxr.no_such_stage'); install the stage's extra "
                                "(pip install 'edgecxr[all]')")


def test_every_command_has_an_example_in_its_help():
    from click.testing import CliRunner

    from edgecxr.cli import main

    commands = ["train", "evaluate", "models", "export", "benchmark", "baseline", "split", "keygen", "report",
                "explain", "serve", "demo", "device run", "device bench", "device parity", "device choose",
                "device merge", "device stability", "device runtimes"]
    missing = []
    for command in commands:
        r = CliRunner().invoke(main, [*command.split(), "-h"])
        assert r.exit_code == 0, (command, r.output)
        if "Example" not in r.output or f"edgecxr {command}" not in r.output:
            missing.append(command)
    assert not missing, f"no example in the help of: {', '.join(missing)}"


def test_output_kinds_and_layout_rules():
    """One place for output kinds (the export gate and the device both use to_prob) and one NCHW rule."""
    from edgecxr.formats.modelinfo import to_prob
    from edgecxr.runtimes import dequantize, is_nchw, quantize_input

    assert to_prob(np.array([[0.8]]), "sigmoid", 0).tolist() == [0.8]
    assert to_prob(np.array([[0.0]]), "logits", 0).tolist() == [0.5]  # one logit: its sigmoid
    assert to_prob(np.array([[0.3, 0.7]]), "softmax", 1).tolist() == [0.7]
    two = to_prob(np.array([[1.0, 3.0]]), "logits", 1)[0]  # two logits: softmax of the positive one
    assert abs(two - np.exp(3) / (np.exp(1) + np.exp(3))) < 1e-12
    assert is_nchw((1, 3, 224, 224), 3) and not is_nchw((1, 224, 224, 3), 3) and not is_nchw((1, 3, 3, 3), 3)
    assert is_nchw((None, 1, 64, 64), 1) and not is_nchw((None, 64, 64, 1), 1)
    assert dequantize(np.array([[-128, 127]], np.int8), (1 / 256, -128)).tolist() == [[0.0, 255 / 256]]
    assert quantize_input(np.array([0.5, -2.0], np.float32), (1 / 128, 0), np.int8).tolist() == [64, -128]


def test_native_output_is_captured_and_replayed_on_failure(capfd, monkeypatch):
    """What C++ code writes to fd 1/2 inside the block is hidden, shown when the block fails or with --verbose."""
    import os

    from edgecxr.utils.quiet import native_output_captured

    monkeypatch.delenv("EDGECXR_VERBOSE", raising=False)
    with native_output_captured():
        os.write(2, b"absl chatter\n")
        os.write(1, b"fully_quantize: 0\n")
    assert capfd.readouterr() == ("", "")
    with pytest.raises(RuntimeError), native_output_captured():
        os.write(2, b"the converter's reason\n")
        raise RuntimeError("conversion failed")
    assert "the converter's reason" in capfd.readouterr().err
    monkeypatch.setenv("EDGECXR_VERBOSE", "1")
    with native_output_captured():
        os.write(2, b"verbose line\n")
    assert "verbose line" in capfd.readouterr().err


def test_stages_import_down_the_pipeline_only(tmp_path, monkeypatch):
    """training imports nothing from export/devices/reports, devices nothing from training/export/reports; the
    exceptions are named (the demo, the benchmark); and the checker sees an upward import when one is added."""
    import shutil

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from import_graph import FOLDERS, REPO, against_the_pipeline, stage_imports

    edges = stage_imports()
    assert against_the_pipeline(edges) == []
    assert not [e for e in edges if e[0] == "training" and e[1] != "core"]
    assert not [e for e in edges if e[0] == "devices" and e[1] != "core"]
    for folder in FOLDERS.values():
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("sample", "default", "__pycache__"))
    (tmp_path / "training" / "sneaky.py").write_text("def f():\n    from edgecxr.devices.classifier import Classifier\n")
    assert against_the_pipeline(stage_imports(tmp_path)) == [("training", "devices", "training/sneaky.py", 2)]
