"""Augmentation: geometry, intensity and the acquisition path, on real X-rays."""
import numpy as np
import pytest
from PIL import Image

from edgecxr.utils.errors import ConfigError
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


def _blobs(count: int, row: float = 60.0, col: float = 160.0, size: int = 224) -> np.ndarray:
    """`count` images with one bright Gaussian spot (sigma 3 px) at (row, col) on black."""
    y, x = np.mgrid[0:size, 0:size]
    spot = 255 * np.exp(-((y - row) ** 2 + (x - col) ** 2) / 18.0)
    return np.repeat(spot[None].astype(np.float32), count, axis=0)


def _offsets(images: np.ndarray) -> np.ndarray:
    """(row, col) of each image's brightness centroid, relative to the image centre."""
    y, x = np.mgrid[0:images.shape[1], 0:images.shape[2]]
    mass = images.sum(axis=(1, 2))
    centre = (images.shape[1] - 1) / 2
    return np.stack([(images * y).sum(axis=(1, 2)) / mass, (images * x).sum(axis=(1, 2)) / mass], 1) - centre


def test_shift_moves_a_spot_by_at_most_the_shift_and_keeps_its_shape(tf):
    tf.random.set_seed(2)
    spots = _blobs(16)
    out = augment_batch(tf, tf.constant(spots), Augment(shift=0.1)).numpy()
    moved = _offsets(out) - _offsets(spots)
    assert np.abs(moved).max() <= 0.1 * 224 + 0.5
    assert np.abs(moved).max() > 5  # sixteen random shifts of up to 22 px: some move far
    np.testing.assert_allclose(out.sum(axis=(1, 2)), spots.sum(axis=(1, 2)), rtol=0.01)


def test_zoom_scales_the_distance_from_the_centre_within_its_range(tf):
    tf.random.set_seed(3)
    spots = _blobs(16)
    out = augment_batch(tf, tf.constant(spots), Augment(zoom=0.3)).numpy()
    scale = _offsets(out) / _offsets(spots)  # per axis: zoom is about the centre
    assert scale.min() >= 0.7 - 0.02 and scale.max() <= 1.3 + 0.02
    assert scale.max() - scale.min() > 0.2


def test_rotation_keeps_a_spots_distance_from_the_centre_and_turns_it_at_most_the_angle(tf):
    tf.random.set_seed(4)
    spots = _blobs(16)
    before, after = _offsets(spots), _offsets(augment_batch(tf, tf.constant(spots), Augment(rotation=20)).numpy())
    np.testing.assert_allclose(np.hypot(*after.T), np.hypot(*before.T), atol=0.5)
    turned = np.degrees(np.abs(np.arctan2(after[:, 0], after[:, 1]) - np.arctan2(before[:, 0], before[:, 1])))
    assert turned.max() <= 20 + 0.5 and turned.max() > 5


def test_shear_leaves_the_centre_row_and_slants_the_others(tf):
    tf.random.set_seed(5)
    centre_row, upper = _blobs(8, row=111.5, col=60.0), _blobs(8, row=40.0, col=111.5)
    out = augment_batch(tf, tf.constant(np.concatenate([centre_row, upper])), Augment(shear=0.2)).numpy()
    moved = _offsets(out) - _offsets(np.concatenate([centre_row, upper]))
    np.testing.assert_allclose(moved[:8], 0, atol=0.5)  # a point on the centre row does not move
    assert np.abs(moved[8:, 0]).max() < 0.5  # shear moves points along their row
    assert np.abs(moved[8:, 1]).max() <= 0.2 * 71.5 + 0.5 and np.abs(moved[8:, 1]).max() > 2


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
    from edgecxr.data.preprocess import PreprocessSpec
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
