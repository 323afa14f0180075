"""Shared fixtures: the real data beside the checkout, the shipped sample, a tiny trained model."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EDGECXR_DATA", REPO.parent / "shared" / "data"))
KERMANY = DATA / "kermany-cxr-224"
FULLRES = DATA / "kermany-val-fullres"
SAMPLE = REPO / "edgecxr" / "sample"


@pytest.fixture(scope="session")
def kermany() -> Path:
    if not KERMANY.is_dir():
        pytest.fail(f"real data not found at {KERMANY}: put shared/ beside the checkout or set EDGECXR_DATA")
    return KERMANY


@pytest.fixture(scope="session")
def fullres() -> Path:
    return FULLRES


@pytest.fixture(scope="session")
def sample() -> Path:
    return SAMPLE


# The tiny test model (32 px, 4-8 channels, 3 epochs) has many test images near its threshold and int8 noise
# of a few percent: its int8 agreement is 0.95-0.995 depending on the target and on how it was trained (0.949
# for tflite-int8 since training streams its images). Tests that export it to int8
# check mechanics, not its quantization quality, so they use limits it meets with a clear margin on every CPU
# (the int8 kernels are CPU-independent; see export/onnx.py, export/openvino.py). The margins are also the
# non-inferiority margins of the patient-level lower bound (about -0.04 for its recall difference).
TINY_INT8_LIMITS = {"max_recall_drop": 0.08, "max_accuracy_drop": 0.08, "min_agreement": 0.9}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, kermany) -> Path:
    """A tiny CNN trained for 3 epochs on the real training split (about 15 s on 2 cores).

    Its outputs are confident enough (validation AUC ~0.95) that int8 decision agreement is meaningful.
    """
    from edgecxr.training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(TrainConfig(arch="tiny_cnn", data=str(kermany), epochs=3, augment="none", seed=1), out)
    return out


@pytest.fixture(scope="session")
def tiny_model(tiny_run) -> Path:
    return tiny_run / "model.keras"


@pytest.fixture(scope="session")
def small_kermany(tmp_path_factory, kermany) -> Path:
    """A Kermany-layout folder of symlinks to 40 real images per class of train/ and test/."""
    root = tmp_path_factory.mktemp("small") / "data"
    for split in ("train", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            (root / split / cls).mkdir(parents=True)
            for f in sorted((kermany / split / cls).iterdir())[:40]:
                (root / split / cls / f.name).symlink_to(f)
    return root
