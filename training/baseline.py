"""`edgecxr baseline`: the classic machine-learning models of the published pneumonia studies (logistic
regression, linear SVM, k-nearest neighbours, random forest) on simple features of the preprocessed images,
with the CNN's patient-grouped validation split, validation-chosen threshold and test metrics.

Features are computed from the model's PreprocessSpec (by default the shipped model's: histogram
equalization) at a small size: downsampled pixels and a histogram of oriented gradients (HOG, numpy below).
Fitted models are never saved: a pickled scikit-learn model runs code when it is loaded.
"""
from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

import click
import numpy as np

from edgecxr.options import CLASSES, STRICT, data_option, overwrite_option
from edgecxr.data import folders as D
from edgecxr.parity import metrics
from edgecxr.utils.atomic import atomic_dir, check_writable
from edgecxr.utils.errors import ConfigError, DataError, ModelError, require
from edgecxr.formats.modelinfo import DEFAULT_DIR, default_model_path, info_path, load_info

MODELS = ("logreg", "linear_svm", "knn", "random_forest")
FEATURES = ("pixels", "hog")
MODEL_NAMES = {"logreg": "logistic regression", "linear_svm": "linear SVM (Platt sigmoid fitted on validation)",
               "knn": "k-nearest neighbours", "random_forest": "random forest"}
PIXEL_GRID = 32  # pixel features: the preprocessed image averaged down to 32 x 32
HOG_CELLS, HOG_BINS, HOG_BLOCK = 8, 9, 2  # 8 x 8 cells, 9 unsigned orientations, 2 x 2-cell blocks (L2-Hys)


def parse_names(text: str, valid: tuple[str, ...], flag: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        raise ConfigError(f"{flag} {text!r}: unknown name(s) {unknown or '(none given)'}; valid: {','.join(valid)}")
    return list(dict.fromkeys(names))


# -- features ----------------------------------------------------------------
def pixel_features(pixels: np.ndarray, grid: int = PIXEL_GRID) -> np.ndarray:
    """uint8 (N, S, S) -> float32 (N, grid*grid) in 0..1: each image box-averaged to grid x grid."""
    from PIL import Image

    out = np.empty((len(pixels), grid * grid), np.float32)
    for i, p in enumerate(pixels):
        small = Image.fromarray(p).resize((grid, grid), Image.Resampling.BOX)
        out[i] = np.asarray(small, np.float32).ravel() / 255.0
    return out


def hog_features(pixels: np.ndarray, cells: int = HOG_CELLS, bins: int = HOG_BINS, block: int = HOG_BLOCK,
                 chunk: int = 256, progress: str | None = None) -> np.ndarray:
    """uint8 (N, S, S) -> float32 (N, (cells-block+1)^2 * block^2 * bins): Dalal-Triggs HOG with unsigned
    orientations, bilinear voting between neighbouring orientation bins, L2-Hys block normalisation."""
    from tqdm import tqdm

    if pixels.shape[1] < 2 * cells or pixels.shape[2] < 2 * cells:
        raise ConfigError(f"HOG needs images of at least {2 * cells} px, got {pixels.shape[1]}; raise --size")
    starts = tqdm(range(0, len(pixels), chunk), desc=progress, disable=progress is None, unit="chunk", leave=False,
                  file=sys.stderr)
    parts = [_hog_chunk(pixels[i:i + chunk], cells, bins, block) for i in starts]
    return np.concatenate(parts) if parts else np.zeros((0, (cells - block + 1) ** 2 * block ** 2 * bins), np.float32)


def _hog_chunk(pixels, cells, bins, block):
    x = pixels.astype(np.float32) / 255.0
    gx, gy = np.zeros_like(x), np.zeros_like(x)
    gx[:, :, 1:-1] = x[:, :, 2:] - x[:, :, :-2]
    gy[:, 1:-1, :] = x[:, 2:, :] - x[:, :-2, :]
    magnitude = np.hypot(gx, gy)
    position = (np.arctan2(gy, gx) % np.pi) / (np.pi / bins) - 0.5  # in bin units, bin centres at integers
    low = np.floor(position)
    upper_share = position - low
    low = low.astype(np.int64) % bins
    high = (low + 1) % bins
    n, h, w = x.shape
    ch, cw = h // cells, w // cells
    hist = np.empty((n, cells, cells, bins), np.float32)
    for b in range(bins):
        vote = magnitude * ((low == b) * (1 - upper_share) + (high == b) * upper_share)
        hist[..., b] = vote[:, :ch * cells, :cw * cells].reshape(n, cells, ch, cells, cw).sum(axis=(2, 4))
    span = cells - block + 1
    blocks = np.stack([hist[:, i:i + span, j:j + span] for i in range(block) for j in range(block)], axis=3)
    blocks = blocks.reshape(n, span, span, -1)
    blocks = blocks / np.sqrt((blocks ** 2).sum(-1, keepdims=True) + 1e-6)
    blocks = np.minimum(blocks, 0.2)
    blocks = blocks / np.sqrt((blocks ** 2).sum(-1, keepdims=True) + 1e-6)
    return blocks.reshape(n, -1).astype(np.float32)


def features(pixels: np.ndarray, kind: str, progress: str | None = None) -> np.ndarray:
    return pixel_features(pixels) if kind == "pixels" else hog_features(pixels, progress=progress)


def describe_features(kind: str, size: int) -> str:
    if kind == "pixels":
        return f"pixels {PIXEL_GRID}x{PIXEL_GRID} (from {size} px)"
    return f"HOG {HOG_CELLS}x{HOG_CELLS} cells, {HOG_BINS} bins ({size} px)"


# -- models ------------------------------------------------------------------
def make_model(name: str, seed: int):
    """An unfitted scikit-learn estimator; fixed, conventional settings (nothing is tuned on test)."""
    require("sklearn", "train")
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    if name == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(C=0.01, class_weight="balanced", max_iter=2000))
    if name == "linear_svm":
        return make_pipeline(StandardScaler(), LinearSVC(C=0.001, class_weight="balanced", random_state=seed,
                                                         max_iter=5000))
    if name == "knn":
        return make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=15, n_jobs=2))
    if name == "random_forest":
        return RandomForestClassifier(n_estimators=300, min_samples_leaf=2, class_weight="balanced",
                                      n_jobs=2, random_state=seed)
    raise ConfigError(f"unknown baseline model {name!r}; valid: {','.join(MODELS)}")


def fit_scores(name: str, x_train, y_train, x_val, y_val, x_test, seed: int = 0):
    """Fit on train only; (validation probabilities, test probabilities, fit seconds).

    Probabilities are predict_proba's positive column; the linear SVM's decision values are mapped through
    a sigmoid whose slope and offset are fitted on validation (Platt scaling, monotone: ranks unchanged)."""
    model = make_model(name, seed)
    start = time.perf_counter()
    model.fit(x_train, y_train)
    seconds = time.perf_counter() - start
    if name != "linear_svm":
        return model.predict_proba(x_val)[:, 1], model.predict_proba(x_test)[:, 1], seconds
    d_val, d_test = model.decision_function(x_val), model.decision_function(x_test)
    return platt(d_val, y_val, d_val), platt(d_val, y_val, d_test), seconds


def platt(d_fit, y_fit, d) -> np.ndarray:
    """sigmoid(a * d + b) with a, b fitted by logistic regression on (d_fit, y_fit)."""
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1e6, max_iter=1000).fit(np.asarray(d_fit).reshape(-1, 1), y_fit)
    return lr.predict_proba(np.asarray(d).reshape(-1, 1))[:, 1]


# -- data --------------------------------------------------------------------
def split_samples(data_root, classes, model_path: Path, split_file: Path | None, val_fraction: float | None,
                  seed: int):
    """(train, val, description): the model's split.json by default, --split-file, or a fresh grouped split."""
    samples = D.list_split(data_root, "train", classes)
    if split_file is not None and val_fraction is not None:
        raise ConfigError("--split-file and --val-fraction exclude each other: reuse a split or make a new one")
    if val_fraction is not None:
        train, val = D.grouped_split(samples, val_fraction, seed)
        how = f"patient-grouped {val_fraction:g} of {data_root}/train (seed {seed})"
    else:
        split_file = Path(split_file) if split_file else Path(model_path).parent / "split.json"
        if not split_file.is_file():
            raise DataError(f"{split_file}: split file not found; pass --split-file PATH or --val-fraction 0.1")
        if D.is_pooled(split_file):  # `edgecxr split`: train, val and test of the pooled images
            train, val = (D.split_samples(data_root, part, classes, split_file) for part in ("train", "val"))
            return train, val, f"{shown(split_file)} (pooled re-split of {data_root}; not the official test split)"
        try:
            train, val = D.apply_split(split_file, samples, subset=True)
        except DataError as exc:
            raise DataError(f"{exc}, or pass --val-fraction 0.1 for a new patient-grouped split") from None
        how = f"{shown(split_file)} applied to {data_root}/train"
    for part, name in ((train, "training"), (val, "validation")):
        if len({s.label for s in part}) < 2:
            raise DataError(f"{data_root}/train: the {name} part of the split ({how}) lacks one class "
                            f"({len(part)} images); add images or pass --val-fraction")
    return train, val, how


def shown(path: Path) -> str:
    """A path for the record: a file shipped in the package as edgecxr/..., others as given."""
    package = DEFAULT_DIR.parent.resolve()
    resolved = Path(path).resolve()
    return f"edgecxr/{resolved.relative_to(package).as_posix()}" if resolved.is_relative_to(package) else str(path)


def load_sets(data_root, classes, spec, train_s, val_s, strict: bool, split_file=None):
    """{'train'|'val'|'test': (pixels, labels, kept samples)} preprocessed with spec, and 'skipped': the
    unreadable test images as `edgecxr evaluate` lists them. The test images: a pooled split file's, else test/."""
    test_s = D.split_samples(data_root, "test", classes, split_file if D.is_pooled(split_file) else None)
    out = {}
    for name, samples in (("train", train_s), ("val", val_s), ("test", test_s)):
        pixels, labels, kept, bad = D.load_pixels(samples, spec, strict=strict, progress=f"loading {name}")
        out[name] = (pixels, labels, kept)
    out["skipped"] = [{"file": s.rel, "error": e} for s, e in bad]  # those of the last one loaded: test
    return out


def model_spec(model_path: Path | None, size: int):
    """(model path, PreprocessSpec at `size` px): the model's preprocessing (crop, equalize...) at a small size."""
    model_path = Path(model_path) if model_path else default_model_path()
    info = load_info(model_path)
    if info is None:
        raise ModelError(f"{model_path}: no {info_path(model_path).name} beside it; pass an edgecxr model "
                         "(its preprocess settings are what the baselines use)")
    return model_path, dataclasses.replace(info.preprocess, size=size)


# -- the command -------------------------------------------------------------
def baseline(data_root: Path, out: Path, *, model_path: Path | None = None, models=MODELS, feature_kinds=FEATURES,
             size: int = 128, split_file: Path | None = None, val_fraction: float | None = None, seed: int = 0,
             classes=D.DEFAULT_CLASSES, strict: bool = False, n_boot: int = 1000, cnn: Path | None = None,
             overwrite: bool = False, plots: bool = True, command: str = "") -> dict:
    """Fit every model on every feature kind; write OUT/<model>-<features>/metrics.json and OUT/comparison.*."""
    from tqdm import tqdm

    data_root, out = Path(data_root), Path(out)
    check_writable(out, overwrite=overwrite, inputs=(data_root, model_path, split_file, cnn))
    model_path, spec = model_spec(model_path, size)
    cnn_row = load_cnn_row(Path(cnn)) if cnn else None
    train_s, val_s, how = split_samples(data_root, classes, model_path, split_file, val_fraction, seed)
    pooled = None if val_fraction is not None else D.model_split_file(model_path, split_file)
    sets = load_sets(data_root, classes, spec, train_s, val_s, strict, pooled)
    if cnn_row and cnn_row["n"] != len(sets["test"][1]):
        print(f"warning: the CNN row ({cnn}) was measured on {cnn_row['n']} images, the baselines on "
              f"{len(sets['test'][1])}: not the same test set", file=sys.stderr)
    rows = []
    jobs = [(m, f) for f in feature_kinds for m in models]
    with atomic_dir(out, overwrite=overwrite) as tmp, tqdm(total=len(jobs), desc="baselines", unit="model",
                                                           file=sys.stderr) as bar:
        for kind in feature_kinds:
            x = {name: features(sets[name][0], kind, f"{kind} features ({name})") for name in ("train", "val", "test")}
            for name in models:
                bar.set_postfix_str(f"{name} on {kind} {x['train'].shape}")
                result = evaluate_one(name, kind, x, sets, seed, n_boot, spec, how, size)
                key = f"{name}-{kind}"
                row = {**row_of(name, result), "features": describe_features(kind, size), "folder": key}
                row["mcnemar_vs_cnn"] = versus_cnn(cnn, sets["test"], result) if cnn else None
                rows.append(row)
                write_result(tmp / key, result, sets["test"], plots=plots)
                bar.update()
        table = {"command": command, "data": str(data_root), "split": how, "preprocess": spec.to_dict(),
                 "threshold_method": metrics.threshold_rule(None), "n_train": len(sets["train"][1]),
                 "n_val": len(sets["val"][1]), "n_test": len(sets["test"][1]), "seed": seed, "rows": rows,
                 "cnn": cnn_row}
        (tmp / "comparison.json").write_text(json.dumps(table, indent=2) + "\n")
        (tmp / "comparison.md").write_text(comparison_md(table))
    return table


def evaluate_one(name, kind, x, sets, seed, n_boot, spec, how, size) -> dict:
    """Fit one model; threshold by Youden's J on validation; test metrics in `edgecxr evaluate`'s format."""
    y_train, y_val, y_test = sets["train"][1], sets["val"][1], sets["test"][1]
    p_val, p_test, seconds = fit_scores(name, x["train"], y_train, x["val"], y_val, x["test"], seed)
    thr = metrics.choose_threshold(y_val, p_val)
    result = metrics.binary_metrics(y_test, p_test, thr)
    patients = [s.patient for s in sets["test"][2]]  # intervals by patient, as `edgecxr evaluate`'s
    result["ci"] = metrics.bootstrap_ci(y_test, p_test, thr, n_boot=n_boot, groups=patients)
    result["ci_info"] = metrics.bootstrap_info(patients, len(y_test), n_boot, 0.95)
    result["at_0.5"] = metrics.binary_metrics(y_test, p_test, 0.5)
    result.update(threshold_method=metrics.threshold_rule(None), split="test",
                  model=f"{name} ({MODEL_NAMES[name]}) on {describe_features(kind, size)}",
                  skipped=sets["skipped"], val_metrics=metrics.binary_metrics(y_val, p_val, thr), features=kind,
                  n_features=int(x["train"].shape[1]), fit_seconds=round(seconds, 2), split_source=how,
                  preprocess=spec.to_dict(), probability="predict_proba" if name != "linear_svm"
                  else "sigmoid of the decision function, Platt-fitted on validation")
    result["test_probs"] = p_test  # popped by write_result
    return result


def write_result(folder: Path, result: dict, test_set, *, plots: bool = True) -> None:
    """metrics.json, predictions.npz and (plots) the ROC and confusion PNGs of one model."""
    folder.mkdir()
    probs = result.pop("test_probs")
    _, labels, kept = test_set
    (folder / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    np.savez_compressed(folder / "predictions.npz", y=labels, prob=probs, rel=np.array([s.rel for s in kept]))
    if plots:
        from edgecxr import plots as P

        P.roc_png(labels, probs, folder / "roc.png", result["threshold"], title=f"ROC (test): {folder.name}")
        P.confusion_png(result["confusion"], D.DEFAULT_CLASSES, folder / "confusion.png")


def row_of(name: str, m: dict) -> dict:
    """One line of the comparison: validation AUC, test metrics with 95% intervals, fit time."""
    row = {"model": name, "features": m.get("features", ""), "n": m["n"], "val_roc_auc": m.get("val_metrics", {}).get("roc_auc"),
           "threshold": m["threshold"], "fit_seconds": m.get("fit_seconds")}
    for key in ("accuracy", "recall", "specificity", "f1", "roc_auc"):
        row[key] = m[key]
        row[f"{key}_ci"] = m["ci"][key]
    return row


def versus_cnn(cnn_metrics: Path, test_set, result: dict) -> dict | None:
    """Exact McNemar test of this model's test decisions against the CNN's (from the predictions.npz that
    `edgecxr evaluate` writes beside its metrics.json); None when that file is missing or holds other images."""
    path = Path(cnn_metrics).parent / "predictions.npz"
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as saved:
        cnn_pred = dict(zip(saved["rel"].tolist(), saved["prob"].tolist()))
    _, labels, kept = test_set
    if set(cnn_pred) != {s.rel for s in kept}:
        return None
    threshold = json.loads(Path(cnn_metrics).read_text(encoding="utf-8"))["threshold"]
    cnn = np.array([cnn_pred[s.rel] >= threshold for s in kept])
    return metrics.mcnemar(labels, result["test_probs"] >= result["threshold"], cnn)


def load_cnn_row(path: Path) -> dict:
    """The comparison row of an `edgecxr evaluate` metrics.json (validation AUC and fit time from its model.json)."""
    if not Path(path).is_file():
        raise DataError(f"{path}: --cnn file not found; run `edgecxr evaluate --out EVAL ...` and pass EVAL/metrics.json")
    try:
        m = json.loads(Path(path).read_text(encoding="utf-8"))
        row = row_of("CNN", m)
        _check_numbers(row, m)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise DataError(f"{path}: not an `edgecxr evaluate` metrics.json ({type(exc).__name__}: {exc}); "
                        "pass --cnn EVAL/metrics.json") from None
    info = load_info(Path(m["model"])) if m.get("model") and info_path(Path(m["model"])).is_file() else None
    if info is not None:
        row["features"] = f"{info.arch} CNN on {info.preprocess.size} px"
        row["val_roc_auc"] = info.val_metrics.get("roc_auc")
        row["fit_seconds"] = info.val_metrics.get("train_seconds")
    row["source"] = str(path)
    return row


def _check_numbers(row: dict, m: dict) -> None:
    """Every value the table prints is a share (intervals two of them), the threshold one, the model a path."""
    def share(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1  # NaN fails

    for key in ("accuracy", "recall", "specificity", "f1", "roc_auc"):
        ci = row[f"{key}_ci"]
        if not (share(row[key]) and isinstance(ci, list) and len(ci) == 2 and all(map(share, ci))):
            raise ValueError(f"{key} must be a share with a two-share interval in ci.{key}")
    if not (share(row["threshold"]) and isinstance(row["n"], int) and not isinstance(row["n"], bool) and row["n"] > 0) \
            or not isinstance(m.get("model", ""), str):
        raise ValueError("threshold must be a share, n a count and model a path")


def _ci(row, key) -> str:
    lo, hi = row[f"{key}_ci"]
    return f"{row[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def _num(value, fmt) -> str:
    return "—" if value is None else format(value, fmt)


def _pvalue(test: dict | None) -> str:
    if not test:
        return "—"
    p = test["p_value"]
    return f"{p:.2g} ({test['a_only_right']} vs {test['b_only_right']})"


def comparison_md(table: dict) -> str:
    head = ("| model | features | val ROC-AUC | threshold | test accuracy | test recall | test specificity | "
            "test F1 | test ROC-AUC | fit s | McNemar p vs CNN |")
    lines = [f"# Classic baselines vs the CNN ({table['n_test']} test images)", "",
             f"Split: {table['split']} ({table['n_train']} train / {table['n_val']} validation images). "
             f"Thresholds: {table['threshold_method']}. 95 % bootstrap intervals in brackets. McNemar: exact test "
             "of the test decisions against the CNN's (images only this model got right vs only the CNN).", "",
             head, "|" + "---|" * 11]
    rows = table["rows"] + ([table["cnn"]] if table.get("cnn") else [])
    for r in rows:
        lines.append(f"| {r['model']} | {r['features']} | {_num(r['val_roc_auc'], '.3f')} | {r['threshold']:.3f} | "
                     + " | ".join(_ci(r, k) for k in ("accuracy", "recall", "specificity", "f1", "roc_auc"))
                     + f" | {_num(r['fit_seconds'], '.1f')} | {_pvalue(r.get('mcnemar_vs_cnn'))} |")
    cnn = table.get("cnn")
    if cnn and cnn["n"] != table["n_test"]:
        lines += ["", f"Note: the CNN row was measured on {cnn['n']} images, not on these {table['n_test']}."]
    if table.get("command"):
        lines += ["", f"Command: `{table['command']}`"]
    return "\n".join(lines) + "\n"


def format_table(table: dict) -> str:
    """A short text summary for the terminal."""
    rows = table["rows"] + ([table["cnn"]] if table.get("cnn") else [])
    lines = [f"{'model':26s} {'val AUC':>7s} {'acc':>6s} {'recall':>6s} {'spec':>6s} {'F1':>6s} {'AUC':>6s} {'fit s':>7s}"]
    for r in rows:
        lines.append(f"{r['model']:26s} {_num(r['val_roc_auc'], '7.3f')} {r['accuracy']:6.3f} {r['recall']:6.3f} "
                     f"{r['specificity']:6.3f} {r['f1']:6.3f} {r['roc_auc']:6.3f} {_num(r['fit_seconds'], '7.1f')}")
    return "\n".join(lines)


# -- CLI ---------------------------------------------------------------------
def invoked_command() -> str:
    """The command line as typed (for the record), when this process is `edgecxr baseline ...`."""
    args = sys.argv[1:]
    return "edgecxr " + shlex.join(args) if args[:1] == ["baseline"] else ""


@click.command("baseline")
@data_option("Kermany-layout folder ROOT/{train,test}/{NORMAL,PNEUMONIA} or a CSV manifest.", name="data_root")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Folder to create: one sub-folder per model (metrics.json, predictions, ROC) and comparison.md/json.")
@click.option("--model", "model_path", type=click.Path(path_type=Path),
              help="Model whose preprocessing (and split.json) the baselines share; default: the shipped model.")
@click.option("--models", "model_names", default=",".join(MODELS), show_default=True, help="Comma-separated models.")
@click.option("--features", "feature_names", default=",".join(FEATURES), show_default=True,
              help="Comma-separated feature kinds: pixels (32x32 downsampled), hog.")
@click.option("--size", default=128, show_default=True, type=click.IntRange(16, 512),
              help="Preprocessed image size in pixels (the model's crop/equalization, resized to this).")
@click.option("--split-file", type=click.Path(path_type=Path),
              help="split.json of a training run (default: the one beside --model).")
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Make a new patient-grouped split with this validation share instead of a split file.")
@click.option("--seed", default=0, show_default=True, help="Seed of the models (and of a new split).")
@click.option("--bootstrap", default=1000, show_default=True, type=click.IntRange(min=1),
              help="Bootstrap resamples for the intervals.")
@click.option("--cnn", type=click.Path(path_type=Path),
              help="metrics.json of `edgecxr evaluate` on the same test split: added as the CNN row.")
@CLASSES
@STRICT
@click.option("--plots/--no-plots", default=True, show_default=True, help="ROC and confusion PNGs per model.")
@overwrite_option("Replace an existing output folder.")
def baseline_command(data_root, out, model_path, model_names, feature_names, size, split_file, val_fraction, seed,
                     bootstrap, cnn, classes, strict, plots, overwrite):
    """Classic baselines (logistic regression, linear SVM, kNN, random forest on pixel and HOG features) on the
    CNN's split: thresholds by Youden's J on validation, test metrics with 95% CIs, one comparison table.

    Example: edgecxr baseline --data ../shared/data/kermany-cxr-224 --out baselines --cnn eval/metrics.json
    """
    table = baseline(data_root, out, model_path=model_path, models=parse_names(model_names, MODELS, "--models"),
                     feature_kinds=parse_names(feature_names, FEATURES, "--features"), size=size,
                     split_file=split_file, val_fraction=val_fraction, seed=seed, classes=D.parse_classes(classes),
                     strict=strict, n_boot=bootstrap, cnn=cnn, overwrite=overwrite, plots=plots,
                     command=invoked_command())
    click.echo(format_table(table))
    click.echo(f"written to {out}/comparison.md")
