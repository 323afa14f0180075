"""Pruning recipes for issue 32.3: which fine-tuning keeps the dense model's clinical behaviour at 50 % sparsity.

Each recipe is `edgecxr export --target tflite-fp32 --prune S` of the same dense model: fine-tuned towards the labels
or the dense model's probabilities (`--distill`), with BatchNorm trained or frozen, with or without the dense
model's own augmentation and label smoothing. Each round of recipes has its own rule (`--round`). The recipe kept is chosen on
validation by the rule of CHANGELOG.md (smallest specificity drop among those whose recall drop is <= 0.01, else the
smallest sum of the two drops; a tie keeps the earlier); the test numbers (the bundle's export parity reference)
are reported for every recipe and not used.

    python benchmarks/prune_recipes.py --data ../shared/data/kermany-cxr-224 --work WORK --out benchmarks/results/prune-DATE
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AUGMENT = {"preset": "standard", "intensity": 0.2}  # the shipped model's own augmentation
RECIPES = {  # name -> keyword arguments of export.optimize.prune beyond --distill
    "labels": {}, "distill": {"distill": True},
    "labels-frozen-bn": {"freeze_bn": True}, "distill-frozen-bn": {"distill": True, "freeze_bn": True},
    "distill-augment": {"distill": True, "augment": AUGMENT},
    "labels-augment-smoothing": {"augment": AUGMENT, "label_smoothing": 0.1},
}
ROUNDS = {  # the recipes each round's rule compares, in its tie order (CHANGELOG.md)
    1: ["labels", "distill"],
    2: ["labels", "distill", "labels-frozen-bn", "distill-frozen-bn"],
    3: ["distill-augment", "labels-augment-smoothing"],
}
MAX_RECALL_DROP = 0.01
EXPORT = """
import json, sys
from functools import partial
from edgecxr.export import optimize
from edgecxr.training.augment import get_preset
kw = json.loads(sys.argv[1])
if "augment" in kw:
    kw["augment"] = get_preset(kw["augment"]["preset"], kw["augment"]["intensity"])
optimize.prune = partial(optimize.prune, **kw)
from edgecxr.cli import main
main(sys.argv[2:])
"""


def export(model: Path, data: Path, out: Path, sparsity: float, recipe: dict) -> None:
    extra = {k: v for k, v in recipe.items() if k != "distill"}
    args = ["export", "--model", str(model), "--target", "tflite-fp32", "--prune", str(sparsity), "--data", str(data),
            "--out", str(out), "--overwrite", *(["--distill"] if recipe.get("distill") else [])]
    cmd = [sys.executable, "-c", EXPORT, json.dumps(extra), *args] if extra else ["edgecxr", *args]
    print("$", " ".join(["python -c <export with prune(**" + json.dumps(extra) + ")>", *args] if extra else cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})


def row(name: str, manifest: dict) -> dict:
    prune, test = manifest["optimization"]["prune"], manifest["reference"]["metrics"]
    val = prune["validation"]
    return {"recipe": name, "training": prune["training"], "batchnorm": prune.get("batchnorm", "trained"),
            "threshold": prune["threshold"]["after"], "gzip_bytes": prune["gzip_bytes"], "moved": prune["moved"],
            "val": {k: {"dense": v["before"], "pruned": v["after"], "drop": v["before"] - v["after"]} for k, v in val.items()},
            "test": {k: test[k] for k in ("accuracy", "recall", "specificity", "roc_auc")}}


def choose(rows: list[dict]) -> str:
    ok = [r for r in rows if r["val"]["recall"]["drop"] <= MAX_RECALL_DROP]
    key = (lambda r: r["val"]["specificity"]["drop"]) if ok else \
        (lambda r: r["val"]["specificity"]["drop"] + r["val"]["recall"]["drop"])
    return min(ok or rows, key=key)["recipe"]  # min keeps the first of equals: the earlier recipe


def markdown(rows: list[dict], kept: str, dense_test: dict | None) -> str:
    head = ("| recipe | BatchNorm | val recall drop | val specificity drop | val ROC-AUC drop | threshold | test accuracy "
            "| test recall | test specificity | test ROC-AUC | gzip MB |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    lines = [f"| {r['recipe']}{' (kept)' if r['recipe'] == kept else ''} | {r['batchnorm']} | "
             f"{r['val']['recall']['drop']:+.4f} | {r['val']['specificity']['drop']:+.4f} | {r['val']['roc_auc']['drop']:+.4f} | "
             f"{r['threshold']:.4f} | {r['test']['accuracy']:.3f} | {r['test']['recall']:.3f} | "
             f"{r['test']['specificity']:.3f} | {r['test']['roc_auc']:.3f} | {r['gzip_bytes'] / 1e6:.2f} |" for r in rows]
    dense = (f"\nDense model on test: accuracy {dense_test['accuracy']:.3f}, recall {dense_test['recall']:.3f}, "
             f"specificity {dense_test['specificity']:.3f}, ROC-AUC {dense_test['roc_auc']:.3f}.\n") if dense_test else ""
    return head + "\n".join(lines) + "\n" + dense + f"\nKept by the validation rule: **{kept}**.\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=REPO / "edgecxr" / "default" / "model.keras")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--work", type=Path, required=True, help="one export per recipe, WORK/RECIPE (kept between runs)")
    ap.add_argument("--dense-bundle", type=Path, help="a tflite-fp32 bundle of the dense model, for its test numbers")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--round", type=int, choices=sorted(ROUNDS), default=max(ROUNDS),
                    help="which round's recipes the rule compares (default: the latest)")
    args = ap.parse_args(argv)
    rows = []
    for name in ROUNDS[args.round]:
        manifest = args.work / name / "tflite-fp32" / "manifest.json"
        if not manifest.is_file():
            export(args.model, args.data, args.work / name, args.sparsity, RECIPES[name])
        rows.append(row(name, json.loads(manifest.read_text())))
    kept = choose(rows)
    dense = json.loads((args.dense_bundle / "manifest.json").read_text())["reference"]["metrics"] if args.dense_bundle else None
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "prune_recipes.json").write_text(json.dumps({"rows": rows, "kept": kept, "dense_test": dense}, indent=1))
    (args.out / "prune_recipes.md").write_text(markdown(rows, kept, dense))
    print(markdown(rows, kept, dense))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
