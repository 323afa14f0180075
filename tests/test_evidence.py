"""Release evidence (issue 14): patient-level intervals, non-inferiority, calibration, acceptance criteria."""
import numpy as np
import pytest

from edgecxr.parity import metrics
from edgecxr.utils.errors import ConfigError


def _clustered(n_patients=60, per_patient=4, seed=0):
    """Patients with several images each that share label and score: the case where an image bootstrap lies."""
    rng = np.random.default_rng(seed)
    y_p = rng.integers(0, 2, n_patients)
    s_p = np.clip(y_p * 0.35 + rng.uniform(0.1, 0.6, n_patients), 0, 1)
    y, s = np.repeat(y_p, per_patient), np.repeat(s_p, per_patient)
    groups = np.repeat([f"P{i}" for i in range(n_patients)], per_patient)
    return y, s, groups


def test_patient_bootstrap_is_wider_than_the_image_bootstrap_on_clustered_images():
    y, s, groups = _clustered()
    by_image = metrics.bootstrap_ci(y, s, 0.5, n_boot=400)
    by_patient = metrics.bootstrap_ci(y, s, 0.5, n_boot=400, groups=groups)
    m = metrics.binary_metrics(y, s, 0.5)
    for name in ("accuracy", "recall", "specificity"):
        width_image = by_image[name][1] - by_image[name][0]
        width_patient = by_patient[name][1] - by_patient[name][0]
        assert by_patient[name][0] <= m[name] <= by_patient[name][1]
        assert width_patient > 1.5 * width_image, (name, width_image, width_patient)  # ~sqrt(4) = 2 for 4 images each
    # one image per patient: the patient bootstrap is the image bootstrap
    unique = [f"i{i}" for i in range(len(y))]
    w1 = metrics.patient_weights(unique, len(y), 5, np.random.default_rng(3))
    w2 = metrics.patient_weights(None, len(y), 5, np.random.default_rng(3))
    assert w1.shape == (5, len(y)) and (w1.sum(axis=1) == len(y)).all()
    assert w2.shape == w1.shape and (w1 >= 0).all() and (w1 == np.round(w1)).all()
    by_unique = metrics.bootstrap_ci(y, s, 0.5, n_boot=400, groups=unique)
    for name in ("accuracy", "recall", "specificity"):
        width_unique, width_image = by_unique[name][1] - by_unique[name][0], by_image[name][1] - by_image[name][0]
        assert abs(width_unique - width_image) < 0.35 * width_image, (name, width_unique, width_image)
    # a patient's images are always drawn together
    w = metrics.patient_weights(groups, len(y), 50, np.random.default_rng(1))
    assert (w[:, 0] == w[:, 3]).all() and (w[:, 4] == w[:, 7]).all()
    info = metrics.bootstrap_info(groups, len(y), 400, 0.95)
    assert info["unit"] == "patient" and info["patients"] == 60 and info["images"] == 240


def test_calibration_measures_ece_brier_and_slope():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.02, 0.98, 20000)
    y = (rng.uniform(size=p.size) < p).astype(int)  # calibrated by construction
    good = metrics.calibration(y, p)
    assert good["ece"] < 0.02 and good["slope"] == pytest.approx(1.0, abs=0.08) and abs(good["intercept"]) < 0.08
    assert good["brier"] == pytest.approx(np.mean((p - y) ** 2))
    sharp = 1 / (1 + np.exp(-3 * metrics.logit(p)))  # the same outcomes, over-confident probabilities
    over = metrics.calibration(y, sharp)
    assert over["slope"] == pytest.approx(1 / 3, abs=0.05) and over["ece"] > 0.08
    assert sum(b["n"] for b in over["bins"]) == len(y)
    exact = metrics.calibration([0, 1, 1], [0.2, 0.6, 1.0], bins=2)
    assert exact["brier"] == pytest.approx((0.04 + 0.16 + 0) / 3)
    assert exact["ece"] == pytest.approx((1 * 0.2 + 2 * abs(0.8 - 1)) / 3)
    separated = metrics.calibration([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert separated["slope"] is None and separated["intercept"] is None  # no finite fit: said, not invented


def _parity_set(n_pos_patients=200, images_per_pos=2, n_neg=234):
    """A test set shaped like Kermany's: pneumonia patients with two images each, normal ones with one."""
    rels, y = [], []
    for p in range(n_pos_patients):
        for k in range(images_per_pos):
            rels.append(f"test/PNEUMONIA/person{p}_bacteria_{k}.jpeg")
            y.append(1)
    rels += [f"test/NORMAL/IM-{i:04d}-0001.jpeg" for i in range(n_neg)]
    y += [0] * n_neg
    probs = np.where(np.array(y) == 1, 0.9, 0.1)
    return rels, y, probs


def _miss(probs, images):
    device = probs.copy()
    device[images] = 0.05
    return device


def test_non_inferiority_is_judged_on_the_patient_level_lower_bound():
    from edgecxr.devices.parity import compare

    rels, y, probs = _parity_set()
    checks = lambda rep: {c["name"]: c for c in rep["checks"]}  # noqa: E731
    one = compare(rels, y, probs, _miss(probs, [0]), 0.5)
    assert one["bootstrap"]["unit"] == "patient" and one["bootstrap"]["patients"] == 434
    c = checks(one)["recall_noninferiority"]
    assert c["passed"] and c["status"] == "shown" and -0.01 < c["value"] < 0, c
    assert "from 200 patients" in c["message"]
    # three new false negatives in three patients: the point drop (3/400) is inside the margin, the bound is not
    three = compare(rels, y, probs, _miss(probs, [0, 2, 4]), 0.5)
    ch = checks(three)
    assert ch["recall_drop"]["passed"] and not ch["recall_noninferiority"]["passed"]
    assert ch["recall_noninferiority"]["status"] == "not_shown" and "NOT shown" in ch["recall_noninferiority"]["message"]
    assert three["passed"] is False
    # resampling images instead of patients would have given a narrower interval for the same misses
    both_images = compare(rels, y, probs, _miss(probs, [0, 1]), 0.5)  # two images of one patient
    image_level = compare(rels, y, probs, _miss(probs, [0, 1]), 0.5, groups=rels)
    assert both_images["bootstrap"]["recall_delta"][0] < image_level["bootstrap"]["recall_delta"][0]
    assert both_images["flipped"][0]["patient"] == "P0"


def test_a_set_too_small_for_the_margin_is_said_plainly():
    from edgecxr.devices.parity import compare

    rels, y, probs = _parity_set(n_pos_patients=40, images_per_pos=2, n_neg=20)  # the demo's size
    rep = compare(rels, y, probs, probs.copy(), 0.5)
    ni = {c["name"]: c for c in rep["checks"]}["recall_noninferiority"]
    assert ni["status"] == "too_small" and ni["passed"] and ni["one_flip_bound"] < -0.01
    assert "too small" in ni["message"] and "80 pneumonia images from 40 patients" in ni["message"]
    assert rep["passed"] is True  # no flips: the point checks decide, and they pass
    missed = compare(rels, y, probs, _miss(probs, [0]), 0.5)
    assert missed["passed"] is False and not {c["name"]: c for c in missed["checks"]}["recall_drop"]["passed"]


def test_parity_reports_the_calibration_change():
    from edgecxr.devices.parity import compare, format_calibration

    rng = np.random.default_rng(0)
    fprob = rng.uniform(0.05, 0.85, 400)
    y = (rng.uniform(size=400) < fprob).astype(int)  # the float model is calibrated
    rels = [f"test/{'PNEUMONIA' if label else 'NORMAL'}/person{i}_virus_{i}.jpeg" for i, label in enumerate(y)]
    dprob = fprob + 0.12  # the device over-predicts every probability
    cal = compare(rels, y, fprob, dprob, 0.5)["calibration"]
    assert cal["change"]["brier"] == pytest.approx(cal["device"]["brier"] - cal["float"]["brier"]) and cal["change"]["brier"] > 0
    assert cal["change"]["ece"] > 0.08 and cal["change"]["intercept"] < -0.3
    line = format_calibration(cal)
    assert line.startswith("calibration float -> device: ECE") and "slope" in line


def test_criteria_come_from_the_bundle_and_loosening_is_a_deviation():
    from edgecxr.parity.criteria import check_criteria, format_criteria, resolve
    from edgecxr.parity.criteria import Tolerances

    acceptance = {"max_recall_drop": 0.02, "max_accuracy_drop": 0.01, "min_agreement": 0.98, "min_coverage": 1.0,
                  "level": 0.95, "max_unstable": None, "test_set": {"files_sha256": "ab"}}
    tol, unstable, rec = resolve(acceptance, {"max_recall_drop": None})
    assert tol == Tolerances(0.02, 0.01, 0.98, 1.0, 0.95) and unstable is None
    assert rec["source"] == "bundle" and not rec["deviations"] and rec["test_set"] == {"files_sha256": "ab"}
    tol, _, rec = resolve(acceptance, {"max_recall_drop": 0.005, "min_agreement": 0.9})
    assert tol.max_recall_drop == 0.005 and tol.min_agreement == 0.9  # both applied
    assert [t["criterion"] for t in rec["tightened"]] == ["max_recall_drop"]
    assert rec["deviations"] == [{"criterion": "min_agreement", "bundle": 0.98, "applied": 0.9,
                                  "message": "decision agreement loosened from 0.98 (the bundle's) to 0.9"}]
    assert any(line.startswith("DEVIATION") for line in format_criteria(rec))
    tol, _, rec = resolve(None, {})
    assert tol == Tolerances() and rec["source"] == "defaults" and "exported before" in rec["note"]
    with pytest.raises(ConfigError, match="unknown acceptance criteria"):
        resolve(acceptance, {"max_recal_drop": 0.1})
    assert check_criteria("m", acceptance) is None
    assert "acceptance.min_agreement" in check_criteria("m", {**acceptance, "min_agreement": 2})
    assert "acceptance.level" in check_criteria("m", {**acceptance, "level": 0.1})
    assert "acceptance.max_recall_drop" in check_criteria("m", {**acceptance, "max_recall_drop": float("nan")})
