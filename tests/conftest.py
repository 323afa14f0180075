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
TINY_CALIBRATION = 100


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
def tiny_bundles(tiny_model, kermany, tmp_path_factory) -> dict:
    """Every target of the tiny model, exported once for the session (reference: the 624 real test images).

    Shared by every test file: read them in place, copy a bundle before changing it."""
    from edgecxr.export import export_model

    out = tmp_path_factory.mktemp("tiny-bundles")
    folders = export_model(tiny_model, ["all"], kermany, out, calib_count=TINY_CALIBRATION, **TINY_INT8_LIMITS)
    return {p.name: p for p in folders}


@pytest.fixture(scope="session")
def shipped_int8(tmp_path_factory, sample) -> Path:
    """The shipped model's tflite-int8 bundle from the shipped sample, as `edgecxr demo` exports it (~80 s)."""
    from edgecxr.export import export_model

    out = tmp_path_factory.mktemp("shipped")
    return export_model(REPO / "edgecxr" / "default" / "model.keras", ["tflite-int8"], sample, out, calib_count=96)[0]


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


# The fast lane (`pytest -m "not slow"`, under two minutes on 2 cores) leaves out the tests that need every
# exported target of the tiny model and those that took 3 s or more in a full run on 2 cores
# (`pytest --durations=80`); CI runs everything.
SLOW_FIXTURES = {"tiny_bundles", "bench", "shipped_int8"}
SLOW_TESTS = {
    "test_pruning_preserving_qat_keeps_the_zeros_in_the_int8_file", "test_demo_runs_end_to_end_and_parity_passes",
    "test_distilled_qat_keeps_the_float_models_outputs_where_label_qat_moves_them",
    "test_recovery_ladder_exhausted_names_every_attempt_and_writes_no_bundle",
    "test_recovery_ladder_keeps_the_worst_layers_float_when_post_training_int8_misses",
    "test_external_keras3_softmax_model_keeps_its_decisions", "test_prune_reaches_sparsity_and_rechooses_the_threshold",
    "test_export_gate_refusal_exits_1", "test_ray_equals_single_process", "test_evaluate_a_keras3_model",
    "test_train_export_and_parity_on_a_pooled_split", "test_shipped_and_keras3_models_pass_the_walk",
    "test_kfold_cross_validation", "test_evaluate_shards_merged_equal_the_single_run",
    "test_cache_is_read_back_without_the_files", "test_streamed_and_in_memory_training_see_the_same_split",
    "test_training_with_acquisition_records_it", "test_train_with_weight_averaging",
    "test_train_with_mixup_and_label_smoothing", "test_interrupted_export_leaves_no_bundle",
    "test_device_commands_never_import_tensorflow", "test_weights_path_route", "test_real_server_on_loopback",
    "test_evaluate_writes_metrics_and_plots", "test_batch_scaling_resizes_every_runtime",
    "test_failed_run_leaves_nothing", "test_resplit_is_seeded", "test_choose_ranks_passing_bundles_by_latency",
    "test_resnet_head",
}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or item.name.split("[")[0] in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


def assert_exit_is_verdict(result, report_path) -> dict:
    """A parity command's exit code is its report's verdict: 0 passed, 1 failed (never just "0 or 1")."""
    import json

    report = json.loads(Path(report_path).read_text())
    assert result.exit_code == (0 if report["passed"] else 1), (report["passed"], result.output)
    return report
