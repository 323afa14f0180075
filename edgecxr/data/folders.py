"""Datasets: the Kermany folder layout, CSV manifests, patient IDs and patient-grouped splits."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecxr.utils.errors import DataError, ImageError
from edgecxr.data import DEFAULT_CLASSES  # noqa: F401 - its home is edgecxr.data (light for the CLI)
from edgecxr.data.images import is_image_file

SPLITS = ("train", "val", "test")
_PATIENT_PATTERNS = [
    (re.compile(r"^person(\d+)_", re.I), "P{}"),
    (re.compile(r"^NORMAL2-IM-(\d+)-", re.I), "N2-{}"),
    (re.compile(r"^IM-(\d+)-", re.I), "N-{}"),
]


@dataclass(frozen=True)
class Sample:
    path: Path  # absolute path of the image file
    rel: str  # path relative to the data root: the key used in splits and references
    label: int  # index into the class list (1 = positive class)
    patient: str


def patient_id(filename: str) -> str:
    """Patient ID from a Kermany file name; otherwise the file stem (one image per patient)."""
    for pattern, fmt in _PATIENT_PATTERNS:
        match = pattern.match(filename)
        if match:
            return fmt.format(match.group(1))
    return Path(filename).stem


def subgroup(filename: str, label: int) -> str:
    """'normal', 'bacterial', 'viral' or 'pneumonia' (unknown kind), from a Kermany file name."""
    name = filename.lower()
    if label == 0:
        return "normal"
    if "bacteria" in name:
        return "bacterial"
    if "virus" in name:
        return "viral"
    return "pneumonia"


def parse_classes(text: str | None) -> tuple[str, str]:
    classes = tuple(c.strip() for c in (text or ",".join(DEFAULT_CLASSES)).split(",") if c.strip())
    if len(classes) != 2 or classes[0] == classes[1]:
        raise DataError(f"--classes needs two different folder names, negative first (e.g. NORMAL,PNEUMONIA); "
                        f"got {text!r}")
    return classes


def list_split(root, split: str = "test", classes=DEFAULT_CLASSES) -> list[Sample]:
    """Samples of one split: ROOT/<split>/<class>/* for a folder, or the rows of a CSV manifest."""
    root = Path(root)
    if root.is_file() and root.suffix.lower() == ".csv":
        return _list_csv(root, split, classes)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found; pass a folder laid out as ROOT/{{train,val,test}}/{{{','.join(classes)}}}/ or a CSV manifest")
    split_dir = root / split
    if not split_dir.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DataError(f"{root}: no '{split}' folder (found: {', '.join(found) or 'nothing'}); expected ROOT/{split}/{{{','.join(classes)}}}/")
    return _list_classes(split_dir, root, classes)


def _list_classes(folder: Path, root: Path, classes) -> list[Sample]:
    samples = []
    for label, cls in enumerate(classes):
        class_dir = folder / cls
        if not class_dir.is_dir():
            raise DataError(f"{folder}: no class folder '{cls}'; set --classes to the two folder names (negative first)")
        files = sorted(p for p in class_dir.iterdir() if p.is_file() and is_image_file(p))
        if not files:
            raise DataError(f"{class_dir}: class folder has no images (.jpeg/.png/.dcm)")
        samples += [Sample(p.resolve(), p.relative_to(root).as_posix(), label, patient_id(p.name)) for p in files]
    return samples


UNLABELED = -1  # Sample.label of a site's image nobody labeled


def list_site(root, split: str = "test", classes=DEFAULT_CLASSES) -> list[Sample]:
    """The images device parity compares: ROOT/<split>/<class>/ or a labeled CSV (as list_split); a folder of
    the two class folders (a clinic's labeled images); a CSV with a path column only, or any folder of
    images (searched recursively): unlabeled (label UNLABELED)."""
    root = Path(root)
    if root.is_file() and root.suffix.lower() == ".csv":
        header, rows = _read_csv(root)
        if "label" in header or "path" not in header:
            return _list_csv(root, split, classes)
        csv_paths(root, rows)
        return [Sample((root.parent / r["path"]).resolve(), r["path"], UNLABELED, patient_id(Path(r["path"]).name))
                for _, r in rows]
    if not root.is_dir() or (root / split).is_dir():
        return list_split(root, split, classes)
    present = [s for s in SPLITS if (root / s).is_dir()]
    if present:  # a data root without this split: a typo, not a site's folder of unlabeled X-rays
        raise DataError(f"{root}: no '{split}' folder (it has {', '.join(present)}); pass --split "
                        f"{'test' if 'test' in present else present[0]}")
    if all((root / c).is_dir() for c in classes):
        return _list_classes(root, root, classes)
    files = sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p))
    if not files:
        raise DataError(f"{root}: no images (.jpeg/.png/.dcm) here or below, no '{split}' folder and no class folders "
                        f"{'/'.join(classes)}; pass a folder of X-rays")
    return [Sample(p.resolve(), p.relative_to(root).as_posix(), UNLABELED, patient_id(p.name)) for p in files]


_warned_no_split: set[tuple[str, str]] = set()  # (manifest, split) already warned about, to warn once


def _read_csv(manifest: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """(header, [(line number, row), ...]) of a UTF-8 CSV file (a BOM, as Excel writes it, is fine)."""
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{manifest}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8 (Excel: 'CSV UTF-8')") from None
    except OSError as exc:
        raise DataError(f"{manifest}: cannot read the CSV manifest ({exc.strerror or exc})") from None
    if "\0" in text:
        raise DataError(f"{manifest}: contains NUL bytes (UTF-16 text?); save it as UTF-8 (Excel: 'CSV UTF-8')")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    try:
        header = reader.fieldnames or []
        for row in reader:
            if None in row.values():
                raise DataError(f"{manifest}:{reader.line_num}: row has {sum(v is not None for v in row.values())} "
                                f"field(s) but the header has {len(header)}; fill in or remove the row")
            rows.append((reader.line_num, row))
    except csv.Error as exc:
        raise DataError(f"{manifest}:{reader.line_num}: not a readable CSV row ({exc}); fix the row") from None
    return header, rows


def csv_paths(manifest: Path, rows=None) -> list[Path]:
    """The resolved image paths a CSV manifest lists; a repeated image (in any split, any spelling) is refused:
    it would count twice, or sit in train and test at once."""
    rows = _read_csv(manifest)[1] if rows is None else rows
    seen: dict[Path, int] = {}
    files: dict[tuple, int] = {}  # (device, inode): a hard link is the same file under another name
    for i, row in rows:
        where = (manifest.parent / (row.get("path") or "")).resolve()
        try:
            st = where.stat()
            inode = (st.st_dev, st.st_ino) if st.st_ino else None
        except OSError:  # a missing file is reported where it is read
            inode = None
        first = seen.get(where) or (files.get(inode) if inode else None)
        if first is not None:
            raise DataError(f"{manifest}:{i}: {row.get('path')} is the same image as the row also on line {first}; "
                            "remove the duplicate row")
        seen[where] = i
        if inode:
            files[inode] = i
    return list(seen)


def _list_csv(manifest: Path, split: str, classes) -> list[Sample]:
    header, rows = _read_csv(manifest)
    if not {"path", "label"} <= set(header):
        found = ",".join(header) or "nothing"
        raise DataError(f"{manifest}: CSV manifest needs a header with columns path,label[,patient_id][,split] (found: {found})")
    csv_paths(manifest, rows)  # refuses repeated images
    if "split" in header:
        rows = [(i, r) for i, r in rows if r["split"] == split]
    elif rows and (str(manifest), split) not in _warned_no_split:
        _warned_no_split.add((str(manifest), split))
        print(f"warning: {manifest} has no split column: all {len(rows)} rows are used as the '{split}' split "
              "(add a split column with train/val/test to keep test images apart)", file=sys.stderr)
    samples = []
    for i, row in rows:
        label_text = row["label"].strip()
        if label_text in classes:
            label = classes.index(label_text)
        elif label_text in ("0", "1"):
            label = int(label_text)
        else:
            raise DataError(f"{manifest}:{i}: label {label_text!r} is neither 0/1 nor one of {list(classes)}")
        path = (manifest.parent / row["path"]).resolve()
        patient = (row.get("patient_id") or "").strip() or patient_id(path.name)
        samples.append(Sample(path, row["path"], label, patient))
    if not samples:
        raise DataError(f"{manifest}: no rows for split '{split}'")
    for label, cls in enumerate(classes):
        if not any(s.label == label for s in samples):
            raise DataError(f"{manifest}: split '{split}' has no '{cls}' rows")
    return samples


# -- patient-grouped splits ---------------------------------------------------
def _patients_by_class(samples):
    """{label: [one patient's samples, ...]}, patients sorted by ID.

    A patient's samples always stay together, even when they have both labels; such a patient is
    stratified by the majority label (a tie counts as positive). Patients with one label (all of
    Kermany) group exactly as they did when grouping was by (label, patient), so seeded splits
    of such data are unchanged.
    """
    groups = defaultdict(list)
    for s in samples:
        groups[s.patient].append(s)
    by_class = defaultdict(list)
    for patient, items in sorted(groups.items()):
        positives = sum(s.label == 1 for s in items)
        by_class[int(2 * positives >= len(items))].append(items)
    return by_class


def grouped_kfold(samples: list[Sample], k: int, seed: int = 0) -> list[list[Sample]]:
    """Split samples into k folds; each patient in one fold, classes spread evenly."""
    if k < 2:
        raise DataError(f"need at least 2 folds, got {k}")
    rng = random.Random(seed)
    folds = [[] for _ in range(k)]
    for label, patients in sorted(_patients_by_class(samples).items()):
        rng.shuffle(patients)
        patients.sort(key=len, reverse=True)  # largest first, then fill the emptiest fold
        counts = [0] * k
        for items in patients:
            target = min(range(k), key=lambda i: (counts[i], i))
            folds[target] += items
            counts[target] += len(items)
    return [sorted(f, key=lambda s: s.rel) for f in folds]


def grouped_split(samples: list[Sample], val_fraction: float = 0.1, seed: int = 0):
    """(train, val): patient-grouped, stratified by class, seeded."""
    if not 0 < val_fraction < 1:
        raise DataError(f"validation fraction must be between 0 and 1, got {val_fraction}")
    parts = grouped_partition(samples, {"val": val_fraction, "train": 1 - val_fraction}, seed)
    return parts["train"], parts["val"]


def grouped_partition(samples: list[Sample], fractions: dict, seed: int = 0) -> dict:
    """{name: samples} with about fractions[name] of each class's images, every patient in one part.

    Per class, the patients are shuffled (seeded) and dealt in order: a patient goes to the first part whose
    cumulative share of that class is not yet reached (so the last part takes the rest)."""
    rng = random.Random(seed)
    parts = {name: [] for name in fractions}
    for label, patients in sorted(_patients_by_class(samples).items()):
        rng.shuffle(patients)
        total = sum(len(p) for p in patients)
        limits, running = [], 0.0
        for name, share in fractions.items():
            running += share
            limits.append((name, running * total))
        taken = 0
        for items in patients:
            name = next((n for n, limit in limits if taken < limit), limits[-1][0])
            parts[name] += items
            taken += len(items)
    return {name: sorted(items, key=lambda s: s.rel) for name, items in parts.items()}


def pooled(root, classes=DEFAULT_CLASSES) -> list[Sample]:
    """Every image of a Kermany-layout folder's official splits together, for a re-split."""
    root = Path(root)
    if root.is_file():
        raise DataError(f"{root}: a re-split pools a data folder, not a file; pass a folder laid out as "
                        f"ROOT/{{train,val,test}}/{{{','.join(classes)}}}/")
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found; pass a folder laid out as ROOT/{{train,val,test}}/{{{','.join(classes)}}}/")
    folders = [root / split for split in SPLITS if (root / split).is_dir()]
    if not folders:
        raise DataError(f"{root}: no train, val or test folder to pool; expected ROOT/{{train,val,test}}/{{{','.join(classes)}}}/")
    return [s for folder in folders for s in _list_classes(folder, root, classes)]


def save_split(path: Path, train, val, **info) -> None:
    data = {**info, "train": [s.rel for s in train], "val": [s.rel for s in val]}
    Path(path).write_text(json.dumps(data, indent=1) + "\n")


def read_split_file(path: Path) -> dict:
    """A split file written by `edgecxr train` (train, val) or `edgecxr split` (train, val, test of pooled data)."""
    fix = "pass a split.json written by edgecxr train or edgecxr split"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"{path}: cannot read the split file ({exc.strerror or exc}); {fix}") from None
    except ValueError as exc:  # bad JSON or not UTF-8
        raise DataError(f"{path}: not a JSON split file ({exc}); {fix}") from None
    keys = ("train", "val", "test") if isinstance(data, dict) and data.get("pooled") else ("train", "val")
    if not isinstance(data, dict) or not all(
            isinstance(data.get(k), list) and all(isinstance(r, str) for r in data[k]) for k in keys):
        raise DataError(f"{path}: not a split file (needs {' and '.join(repr(k) for k in keys)} lists of file paths); {fix}")
    return data


def is_pooled(path) -> bool:
    return bool(path) and Path(path).is_file() and bool(read_split_file(path).get("pooled"))


def apply_split(path: Path, samples: list[Sample], *, subset: bool = False):
    """Re-create (train, val) from a split file written by save_split.

    subset=True accepts data holding only part of the split (every image of it in the split):
    each image keeps its side, so nothing of the model's training data moves to validation.
    """
    data = read_split_file(path)
    by_rel = {s.rel: s for s in samples}
    if subset and by_rel and set(by_rel) <= set(data["train"]) | set(data["val"]):
        return [by_rel[r] for r in data["train"] if r in by_rel], [by_rel[r] for r in data["val"] if r in by_rel]
    missing = [r for r in data["train"] + data["val"] if r not in by_rel]
    if missing:
        raise DataError(f"{path}: {len(missing)} files of the split are not in the data (first: {missing[0]}); use the data folder the model was trained on")
    return [by_rel[r] for r in data["train"]], [by_rel[r] for r in data["val"]]


def seen_in_training(model_path, samples, parts=("train", "val")) -> int:
    """How many of `samples` the model trained or chose its threshold on (`parts` of the split.json beside it; 0
    without one)."""
    own = Path(model_path).parent / "split.json"
    try:
        data = read_split_file(own) if own.is_file() else {}
    except DataError:
        return 0
    used = {rel for part in parts for rel in data.get(part, [])}
    return sum(s.rel in used for s in samples)


def model_split_file(model_path, given=None):
    """The split file a model's images follow: `given`, else the model's own split.json when it is a pooled
    re-split (its test images are not ROOT/test), else None (the official folders)."""
    own = Path(model_path).parent / "split.json"
    if given or is_pooled(own):
        return given or own
    if _info_says_pooled(model_path):
        raise DataError(f"{model_path} was trained on a pooled re-split, but its split.json is not beside it; "
                        "copy the split.json of its training run there, or pass --split-file")
    return None


def _info_says_pooled(model_path) -> bool:
    try:
        return json.loads(Path(model_path).with_suffix(".json").read_text()).get("pooled_split") is True
    except (OSError, ValueError, AttributeError):
        return False


def split_samples(root, split: str, classes=DEFAULT_CLASSES, split_file=None) -> list[Sample]:
    """The samples of `split` (train, val or test): the official folder, or the part a split file names.
    A train/validation split file (from `edgecxr train`) divides ROOT/train; a pooled one (`edgecxr split`)
    re-divides all of ROOT's images."""
    if not split_file:
        return list_split(root, split, classes)
    data = read_split_file(split_file)
    if not data.get("pooled"):
        if split == "test":
            return list_split(root, split, classes)
        return dict(zip(("train", "val"), apply_split(split_file, list_split(root, "train", classes))))[split]
    if split not in SPLITS:
        raise DataError(f"{split_file}: no split {split!r}; the split file has train, val and test")
    by_rel = {s.rel: s for s in pooled(root, classes)}
    missing = [r for r in data[split] if r not in by_rel]
    if missing:
        raise DataError(f"{split_file}: {len(missing)} files of its {split} split are not in {root} (first: {missing[0]}); "
                        "pass the data folder the split was made from")
    return [by_rel[r] for r in data[split]]


def resplit(root, ratios: tuple, *, seed: int = 0, classes=DEFAULT_CLASSES) -> dict:
    """Pool ROOT's official splits and re-split them by patient: the content of a pooled split file."""
    if len(ratios) != 3 or not all(0 < r < 1 for r in ratios) or abs(sum(ratios) - 1) > 1e-6:  # NaN fails too
        raise DataError(f"--ratios {','.join(map(str, ratios))}: need three shares train,val,test, each above 0, "
                        "that sum to 1, e.g. 0.79,0.05,0.16")
    samples = pooled(root, classes)
    train, val, test = ratios
    parts = grouped_partition(samples, {"val": val, "test": test, "train": train}, seed)
    summary = {name: _part_summary(parts[name], samples) for name in SPLITS}
    empty = [name for name in SPLITS if summary[name]["positive"] == 0 or summary[name]["negative"] == 0]
    if empty:
        raise DataError(f"--ratios {','.join(map(str, ratios))}: the {empty[0]} part would hold "
                        f"{summary[empty[0]]['images']} images and not both classes; choose larger shares")
    return {"pooled": True, "seed": seed, "ratios": list(ratios), "data": str(root), "grouped_by": "patient",
            "classes": list(classes), "summary": summary, **{name: [s.rel for s in parts[name]] for name in SPLITS}}


def _part_summary(part: list[Sample], everything: list[Sample]) -> dict:
    patients = {s.patient for s in part}
    return {"images": len(part), "image_share": len(part) / len(everything), "patients": len(patients),
            "patient_share": len(patients) / len({s.patient for s in everything}),
            "positive": sum(s.label == 1 for s in part), "negative": sum(s.label == 0 for s in part),
            "from_official": {split: sum(s.rel.startswith(split + "/") for s in part) for split in SPLITS}}


def files_hash(samples) -> str:
    """SHA-256 of the sorted relative paths (of Samples, or the paths themselves): identifies a file list in
    provenance records."""
    return hashlib.sha256("\n".join(sorted(getattr(s, "rel", s) for s in samples)).encode()).hexdigest()


# -- loading pixels ----------------------------------------------------------
def load_pixels(samples, spec, *, strict: bool = False, progress: str | None = None):
    """Decode and preprocess to uint8 pixels (N, size, size).

    Returns (pixels, labels, kept_samples, bad) where bad lists (sample, message)
    for unreadable files, which are skipped unless strict.
    """
    from tqdm import tqdm

    pixels, kept, bad = [], [], []
    for s in tqdm(samples, desc=progress, disable=progress is None, unit="img", leave=False, file=sys.stderr):
        try:
            pixels.append(spec.to_pixels(spec.read(s.path)))
            kept.append(s)
        except ImageError as exc:
            if strict:
                raise
            bad.append((s, str(exc)))
    if bad:
        print(f"warning: skipped {len(bad)} unreadable image(s), first: {bad[0][1]}", file=sys.stderr)
    if not kept:
        raise DataError("no readable images left after skipping unreadable files")
    labels = np.array([s.label for s in kept], np.int32)
    return np.stack(pixels), labels, kept, bad
