"""Streamed training input: decoded in the tf.data pipeline exactly as on the device, sharded, cached, with
unreadable files skipped and reported (or stopping the run with --strict)."""
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgecxr.data import folders as D
from edgecxr.utils.errors import DataError, ImageError
from edgecxr.data.preprocess import LUNG_CROP, PreprocessSpec


@pytest.fixture(scope="module")
def tf():
    from edgecxr.training import import_tf

    return import_tf()[0]


def _folder_with_one_bad(sample, root):
    for cls in ("NORMAL", "PNEUMONIA"):
        (root / "train" / cls).mkdir(parents=True)
        for f in sorted((sample / "test" / cls).iterdir())[:5]:
            shutil.copy(f, root / "train" / cls / f.name)
    (root / "train" / "NORMAL" / "broken.jpeg").write_bytes(b"not a jpeg")
    return D.list_split(root, "train")


def _elements(ds):
    return [tuple(t.numpy() for t in e) for e in ds]


@pytest.mark.parametrize("spec", [PreprocessSpec(size=64), PreprocessSpec(size=96, crop=LUNG_CROP, equalize=True)])
def test_streamed_model_input_is_the_device_tensor(tf, spec, kermany, fullres):
    """pixel_dataset + the training batches == spec.load_input (numpy/Pillow, the device's preprocessing)."""
    from edgecxr.training.stream import Skipped, pixel_dataset
    from edgecxr.training.train import batch_inputs

    samples = D.list_split(kermany, "test")[::90] + [D.Sample(p, p.name, 0, "x") for p in sorted((fullres / "NORMAL").iterdir())[:2]]
    elements = pixel_dataset(tf, samples, spec, Skipped())
    fed = np.concatenate([x.numpy() for x, _ in batch_inputs(tf, elements.map(lambda x, y, i: (x, y)), spec, 4)])
    device = np.stack([spec.load_input(s.path) for s in samples])
    assert fed.shape == device.shape and np.abs(fed - device).max() <= spec.scale + 1e-6


def test_unreadable_files_are_skipped_and_reported_or_stop_strict(tf, sample, tmp_path, capsys):
    from edgecxr.training.stream import Skipped, pixel_dataset

    samples = _folder_with_one_bad(sample, tmp_path / "d")
    spec = PreprocessSpec(size=32)
    skipped = Skipped()
    got = _elements(pixel_dataset(tf, samples, spec, skipped, shuffle=True, seed=3))
    assert len(got) == 10 and {int(i) for _, _, i in got} == {i for i, s in enumerate(samples) if "broken" not in s.rel}
    for pixels, label, i in got:  # the index names the image the pixels came from
        assert np.array_equal(pixels, spec.to_pixels(spec.read(samples[i].path))) and label == samples[i].label
    skipped.report()
    assert "skipped 1 unreadable image(s)" in capsys.readouterr().err and len(skipped.kept(samples)) == 10
    strict = Skipped(strict=True)
    with pytest.raises(ImageError, match="broken.jpeg"), strict.raising(tf, samples):
        _elements(pixel_dataset(tf, samples, spec, strict))
    bad = [s for s in samples if "broken" in s.rel]
    everything_bad = Skipped()
    with pytest.raises(DataError, match="no readable images"), everything_bad.raising(tf, bad):
        _elements(pixel_dataset(tf, bad, spec, everything_bad).repeat())  # stops, where it would search for ever


def test_shards_split_the_files_before_reading(tf, sample):
    from edgecxr.training.stream import Skipped, pixel_dataset

    samples = D.list_split(sample, "test")
    spec = PreprocessSpec(size=32)
    parts = [_elements(pixel_dataset(tf, samples, spec, Skipped(), shard=(2, k))) for k in range(2)]
    paths = [{samples[k::2][int(i)].path for _, _, i in part} for k, part in enumerate(parts)]
    assert not paths[0] & paths[1] and paths[0] | paths[1] == {s.path for s in samples}


def test_cache_is_read_back_without_the_files(tf, sample, tmp_path):
    """With a cache folder the second pass reads the decoded pixels back: the images may be gone by then.
    A cache left half-written by a killed run is started again (TensorFlow would refuse its lock file)."""
    from edgecxr.training.stream import Skipped, pixel_dataset

    samples = _folder_with_one_bad(sample, tmp_path / "d")
    spec = PreprocessSpec(size=32)
    code = ("import os, sys; from edgecxr.data import folders as D; from edgecxr.data.preprocess import PreprocessSpec; "
            "from edgecxr.training import import_tf; from edgecxr.training.stream import Skipped, pixel_dataset; "
            "it = iter(pixel_dataset(import_tf()[0], D.list_split(sys.argv[1], 'train'), PreprocessSpec(size=32), "
            "Skipped(), cache=sys.argv[2])); next(it); os._exit(0)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "d"), str(tmp_path / "c")], check=True, timeout=300)
    assert list((tmp_path / "c").glob("*.lockfile"))  # killed mid-way
    first = _elements(pixel_dataset(tf, samples, spec, Skipped(), cache=tmp_path / "c"))
    assert not list((tmp_path / "c").glob("*.lockfile")) and list((tmp_path / "c").glob("*.index"))
    shutil.rmtree(tmp_path / "d")
    again = _elements(pixel_dataset(tf, samples, spec, Skipped(), cache=tmp_path / "c"))
    assert sorted(int(i) for *_, i in again) == sorted(int(i) for *_, i in first) and len(again) == 10
    by_index = {int(i): p for p, _, i in first}
    assert all(np.array_equal(p, by_index[int(i)]) for p, _, i in again)
    other = Skipped()  # another preprocessing never reads that cache: it goes to the (gone) files
    with pytest.raises(DataError, match="no readable images"), other.raising(tf, samples):
        _elements(pixel_dataset(tf, samples, PreprocessSpec(size=48), other, cache=tmp_path / "c"))


def test_streamed_and_in_memory_training_see_the_same_split(sample, tmp_path):
    import json

    from edgecxr.training.train import TrainConfig, train

    runs = {}
    for name, options in {"streamed": {"cache": str(tmp_path / "cache")}, "memory": {"in_memory": True}}.items():
        out = train(TrainConfig(arch="tiny_cnn", data=str(sample), epochs=1, batch_size=16, augment="none", **options),
                    tmp_path / name)
        runs[name] = json.loads((out / "val_metrics.json").read_text())
        assert not (tmp_path / f"{name}.backup").exists()
    assert runs["streamed"]["n"] == runs["memory"]["n"] > 0
    assert any((tmp_path / "cache").iterdir())
