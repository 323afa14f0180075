"""Which images export uses: calibration (train split, patient-grouped, class-balanced, seeded),
validation (the model's own held-out split) and the test split for the float reference."""
from __future__ import annotations

import random
import sys
from pathlib import Path


from edgecxr.data import folders as D
from edgecxr.utils.errors import DataError

MIN_CALIBRATION = 16  # below this the int8 ranges are guesswork
DEFAULT_CALIBRATION = 300


def export_splits(data_root, classes, model_path: Path, *, split_file=None, seed: int = 0):
    """(train, val, test, where val comes from): a split file given on the command line, else the model's own
    split.json (a pooled re-split there also names the test images), else the official folders."""
    split_file = D.model_split_file(model_path, split_file)
    if split_file is not None:
        parts = [D.split_samples(data_root, name, classes, split_file) for name in ("train", "val", "test")]
        kind = "pooled re-split" if D.is_pooled(split_file) else "split file"
        return (*parts, f"{split_file} ({kind})")
    test = D.list_split(data_root, "test", classes)
    train, val, where = train_val(data_root, classes, model_path, seed=seed)
    return train, val, test, where


def train_val(data_root, classes, model_path: Path, *, seed: int = 0):
    """(train, val) of the train split: the model's own split.json when it fits the data, else a grouped 10 % split."""
    samples = D.list_split(data_root, "train", classes)
    split_file = Path(model_path).parent / "split.json"
    if split_file.is_file():
        try:
            train, val = D.apply_split(split_file, samples, subset=True)
            if not val:
                raise DataError("none of its validation images is in the data")
            return train, val, f"{split_file} (the model's own validation split)"
        except (DataError, KeyError, ValueError) as exc:
            print(f"warning: {split_file} does not fit {data_root} ({exc}); using a new patient-grouped split",
                  file=sys.stderr)
    train, val = D.grouped_split(samples, 0.1, seed)
    return train, val, f"patient-grouped 10 % of {data_root}/train (seed {seed})"


def default_calibration_count(train) -> int:
    """DEFAULT_CALIBRATION images, or as many as the train split holds half per class (said on stderr)."""
    balanced = 2 * min(sum(s.label == label for s in train) for label in (0, 1))
    if balanced >= DEFAULT_CALIBRATION:
        return DEFAULT_CALIBRATION
    if balanced >= MIN_CALIBRATION:
        print(f"note: calibration uses {balanced} train images, half per class (fewer than the usual "
              f"{DEFAULT_CALIBRATION}: all the train split has)", file=sys.stderr)
    return max(balanced, MIN_CALIBRATION)  # below MIN_CALIBRATION, calibration_samples says what to do


def calibration_samples(train, count: int, *, seed: int = 0):
    """`count` train images, half per class, at most one per patient until patients run out."""
    if count < MIN_CALIBRATION:
        raise DataError(f"--calib-count {count} is too small; int8 calibration needs at least {MIN_CALIBRATION} images")
    if len(train) < count:
        raise DataError(f"calibration needs {count} images but the train split has only {len(train)}; "
                        f"add images or lower --calib-count (minimum {MIN_CALIBRATION})")
    rng = random.Random(seed)
    chosen = []
    for label in (0, 1):
        want = count // 2 + (count % 2 if label == 1 else 0)
        by_patient: dict[str, list] = {}
        for s in train:
            if s.label == label:
                by_patient.setdefault(s.patient, []).append(s)
        groups = [sorted(v, key=lambda s: s.rel) for _, v in sorted(by_patient.items())]
        for g in groups:
            rng.shuffle(g)
        rng.shuffle(groups)
        picked, depth = [], 0
        while len(picked) < want and any(depth < len(g) for g in groups):
            picked += [g[depth] for g in groups if depth < len(g)][: want - len(picked)]
            depth += 1
        if len(picked) < want:
            raise DataError(f"calibration needs {want} images of class {label} but the train split has {len(picked)}; "
                            f"lower --calib-count")
        chosen += picked
    return sorted(chosen, key=lambda s: s.rel)


def load_inputs(samples, spec, progress: str | None = None):
    """(float32 model inputs, labels, kept samples)."""
    pixels, labels, kept, _ = D.load_pixels(samples, spec, progress=progress)
    return spec.scale_pixels(pixels), labels, kept
