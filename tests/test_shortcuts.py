"""Shortcut check (`edgecxr evaluate`): stand-in models that look only at the top band or only at the lungs."""
import numpy as np
import pytest

from edgecxr.data.preprocess import LUNG_CROP, PreprocessSpec

SIZE = 32
SPEC = PreprocessSpec(size=SIZE)  # input = pixel / 127.5 - 1, so a masked pixel (0) is -1


def _stand_in(box):
    """A CNN that sees only `box` (fractions): crop + zero pad, 1x1 conv (ReLU), mean, sigmoid.

    p >= 0.5 when the mean of relu(x) over the box is above 0.25 (pixels about 160 and brighter).
    """
    from edgecxr.training import import_tf

    _, keras = import_tf()
    top, bottom, left, right = (round(v * SIZE) for v in box)
    cut = ((top, SIZE - bottom), (left, SIZE - right))
    area = (bottom - top) * (right - left) / SIZE**2
    inp = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.ZeroPadding2D(cut)(keras.layers.Cropping2D(cut)(inp))
    x = keras.layers.Conv2D(1, 1, activation="relu", use_bias=False, kernel_initializer=keras.initializers.Constant(1 / 3))(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(1, activation="sigmoid", kernel_initializer=keras.initializers.Constant(20 / area),
                             bias_initializer=keras.initializers.Constant(-5.0))(x)
    return keras.Model(inp, out)


@pytest.fixture(scope="module")
def images():
    """Lungs and top band of independent brightness; the label is in the lungs."""
    rng = np.random.default_rng(0)
    lung, band = rng.integers(0, 256, 60), rng.integers(0, 256, 60)
    pixels = np.repeat(lung.astype(np.uint8)[:, None, None], SIZE, 1).repeat(SIZE, 2)
    pixels[:, :round(0.15 * SIZE)] = band[:, None, None]
    return pixels, (lung >= 160).astype(int)


def _check(model, pixels, labels):
    from edgecxr.training import import_tf
    from edgecxr.training.shortcuts import shortcut_check
    from edgecxr.training.train import predict_probs

    tf, _ = import_tf()
    probs = predict_probs(tf, model, pixels, SPEC, 32)
    return probs, shortcut_check(model, SPEC, pixels, labels, probs, 0.5, cam_images=40)


def test_a_top_band_model_is_caught(images):
    pixels, labels = images
    probs, sc = _check(_stand_in((0.0, 0.15, 0.0, 1.0)), pixels, labels)
    positive = probs >= 0.5
    assert 0.2 < positive.mean() < 0.8
    assert sc["top_band"]["changed"] == pytest.approx(positive.mean())  # black band: every positive decision flips
    assert sc["top_band"]["n_changed"] == positive.sum() and sc["top_band"]["recall"] == 0
    assert sc["border"]["changed"] == sc["top_band"]["changed"]  # the band is outside the lung box too
    cam = sc["gradcam_in_lung"]
    assert cam["n"] > 5 and cam["mean"] < 0.05 and cam["of"] == len(pixels) and "seeded" in cam["images"]
    assert cam["lung_area"] == pytest.approx(24 * 20 / SIZE**2)
    assert sc["fill"] == {"pixel": 0, "model_input": -1.0}


def test_a_lung_model_ignores_the_border(images):
    from edgecxr.training.shortcuts import format_shortcuts, reading

    pixels, labels = images
    probs, sc = _check(_stand_in(LUNG_CROP), pixels, labels)
    assert sc["border"]["changed"] == 0 and sc["top_band"]["changed"] == 0
    assert sc["border"]["mean_abs_shift"] < 1e-6
    assert sc["border"]["roc_auc"] == pytest.approx(1.0) and sc["border"]["accuracy"] == pytest.approx(1.0)
    assert sc["gradcam_in_lung"]["mean"] > 0.99
    assert reading(sc).startswith("Decisions barely depend on the top band: 0.0 % change")
    assert len(format_shortcuts(sc).splitlines()) == 2


def test_regions_follow_the_crop():
    from edgecxr.training.shortcuts import mask_pixels, regions

    plain = regions(SPEC)
    assert plain["top_band"][:5].all() and not plain["top_band"][5:].any()
    assert plain["lung"].sum() == 24 * 20 and not (plain["lung"] & plain["border"]).any()
    cropped = regions(PreprocessSpec(size=SIZE, crop=LUNG_CROP))  # the input is the lung box: nothing to mask
    assert cropped["lung"].all() and not cropped["border"].any() and not cropped["top_band"].any()
    px = np.full((2, SIZE, SIZE), 200, np.uint8)
    masked = mask_pixels(px, plain["top_band"])
    assert (masked[:, :5] == 0).all() and (masked[:, 5:] == 200).all() and (px == 200).all()


def test_gradcam_batch_equals_one_at_a_time(images):
    from edgecxr.training.gradcam import gradcam, gradcam_batch

    model, xs = _stand_in(LUNG_CROP), SPEC.scale_pixels(images[0][:6])
    maps, probs = gradcam_batch(model, xs, threshold=0.5)
    for i in range(6):
        one, p = gradcam(model, xs[i], threshold=0.5)
        assert np.allclose(one, maps[i], atol=1e-5) and p == pytest.approx(probs[i], abs=1e-6)
