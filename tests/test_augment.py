"""Augmentation: geometry, intensity and the acquisition path, on real X-rays."""
import numpy as np
import pytest
from PIL import Image

from edgecxr.errors import ConfigError
from edgecxr.training.augment import Augment, acquisition_path, augment_batch, get_preset


@pytest.fixture(scope="module")
def tf():
    from edgecxr.training import import_tf

    return import_tf()[0]


@pytest.fixture(scope="module")
def xrays(kermany):
    files = sorted((kermany / "test" / "NORMAL").iterdir())[:6]
    return np.stack([np.asarray(Image.open(f).convert("L"), np.float32) for f in files])


def test_no_augmentation_returns_the_images(tf, xrays):
    out = augment_batch(tf, tf.constant(xrays), get_preset("none")).numpy()
    np.testing.assert_array_equal(out, xrays)


def test_flip_only_mirrors_each_image_or_leaves_it(tf, xrays):
    tf.random.set_seed(0)
    out = augment_batch(tf, tf.constant(xrays), Augment(flip=True)).numpy()
    for original, warped in zip(xrays, out):
        same, mirrored = np.abs(warped - original).max(), np.abs(warped - original[:, ::-1]).max()
        assert min(same, mirrored) < 1e-3
    assert any(np.abs(w - o).max() > 1 for w, o in zip(out, xrays))  # six coin flips, seed 0: some mirrored


def test_rotation_keeps_the_centre_and_moves_the_corners(tf, xrays):
    tf.random.set_seed(1)
    out = augment_batch(tf, tf.constant(xrays), Augment(rotation=20)).numpy()
    centre = np.s_[:, 100:124, 100:124]
    assert np.abs(out[centre] - xrays[centre]).mean() < np.abs(out - xrays).mean()
    assert out.shape == xrays.shape


def test_acquisition_path_changes_pixels_but_not_the_picture(tf, xrays):
    tf.random.set_seed(2)
    out = acquisition_path(tf, tf.constant(xrays), 1.0).numpy()
    diff = np.abs(out - xrays)
    assert out.shape == xrays.shape and out.min() >= 0 and out.max() <= 255
    assert (diff.reshape(len(xrays), -1).mean(axis=1) > 0.2).all()  # every image went through another path
    assert diff.mean() < 12  # ... and is still the same X-ray (not a different or blank image)
    for a, b in zip(out, xrays):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.95


def test_acquisition_share_zero_leaves_images_and_share_half_changes_some(tf, xrays):
    np.testing.assert_array_equal(acquisition_path(tf, tf.constant(xrays), 0.0).numpy(), xrays)
    tf.random.set_seed(3)
    batch = np.concatenate([xrays] * 8)
    out = acquisition_path(tf, tf.constant(batch), 0.5).numpy()
    changed = (np.abs(out - batch).reshape(len(batch), -1).max(axis=1) > 0).mean()
    assert 0.2 < changed < 0.8


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_acquisition_share_outside_0_1_is_refused(share):
    with pytest.raises(ConfigError, match="--acquisition"):
        get_preset("standard", 0.0, share)


def test_acquisition_reaches_the_training_batches(tf, xrays):
    """In the tf.data graph the training pipeline builds (batch_inputs), not only eagerly."""
    from edgecxr.preprocess import PreprocessSpec
    from edgecxr.training.train import batch_inputs

    spec = PreprocessSpec(size=224, channels=1, scale=1.0, offset=0.0)
    ds = tf.data.Dataset.from_tensor_slices((xrays.astype(np.uint8), np.zeros(len(xrays), np.float32)))
    plain = next(iter(batch_inputs(tf, ds, spec, len(xrays))))[0].numpy()[..., 0]
    varied = next(iter(batch_inputs(tf, ds, spec, len(xrays), get_preset("none", 0.0, 1.0))))[0].numpy()[..., 0]
    np.testing.assert_array_equal(plain, xrays.astype(np.uint8))
    assert (np.abs(varied - plain).reshape(len(xrays), -1).mean(axis=1) > 0.2).all()


def test_training_with_acquisition_records_it(small_kermany, tmp_path):
    import json

    from edgecxr.training.train import TrainConfig, train

    run = train(TrainConfig(arch="tiny_cnn", data=str(small_kermany), epochs=1, augment="none", acquisition=1.0),
                tmp_path / "run")
    assert json.loads((run / "config.json").read_text())["acquisition"] == 1.0 and (run / "model.keras").is_file()
