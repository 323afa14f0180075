"""Issue 32's frontier: smaller models measured the same way as the shipped one, and the fast model chosen by the
rule written in NOTES.md before their numbers existed (validation numbers only; test numbers reported, never used).

    python benchmarks/frontier.py --run edgecxr/default --run /work/runs/frontier/mnv3s_160 ... \
        --data ../shared/data/kermany-cxr-224 --work /work/runs/frontier-work --out benchmarks/results/frontier-DATE

Per model (the first --run is the reference, the shipped model): multiply-adds and parameters (counted from the
Keras layers), test metrics at the validation threshold with 95 % intervals (`edgecxr evaluate`), a tflite-int8
bundle from the same data (`edgecxr export`), device parity on the 624 test images with the input-path
stability check (`edgecxr device parity --stability`), and p50 latency on this CPU (`edgecxr device bench`).
Every step is the CLI a user runs; a step already done in --work is reused.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SPEEDUP, MIN_AUC, MIN_RECALL = 3.0, 0.96, 0.96  # the choice rule (NOTES.md, 2026-12-07)


def _cli(*args) -> None:
    cmd = [sys.executable, "-m", "edgecxr.cli", *map(str, args)]
    print("$ edgecxr " + " ".join(map(str, args)), flush=True)
    done = subprocess.run(cmd, cwd=REPO)
    if done.returncode not in (0, 1):  # 1: a gate said no, which the table reports
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}")


def count_macs(model_path: Path) -> dict:
    """Multiply-adds of one image and parameters, from the layers' shapes (convolutions and dense layers)."""
    from edgecxr.training.evaluate import load_model

    model = load_model(model_path)
    macs = 0

    def walk(layers):
        nonlocal macs
        for layer in layers:
            if hasattr(layer, "layers"):
                walk(layer.layers)
                continue
            kind = type(layer).__name__
            if kind not in ("Conv2D", "DepthwiseConv2D", "Dense"):
                continue
            out = layer.output.shape
            kernel = layer.get_weights()[0].shape
            if kind == "Dense":
                macs += kernel[0] * kernel[1]
            else:  # (kh, kw, in, out) or depthwise (kh, kw, in, multiplier): per output pixel
                macs += out[1] * out[2] * kernel[0] * kernel[1] * kernel[2] * kernel[3]

    walk(model.layers)
    return {"macs_m": macs / 1e6, "params_m": model.count_params() / 1e6}


def measure(run: Path, data: Path, work: Path) -> dict:
    model = run / "model.keras"
    name = run.name if run.name != "default" else "shipped"
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    info = json.loads((run / "model.json").read_text())
    if not (folder / "eval" / "metrics.json").is_file():
        _cli("evaluate", "--model", model, "--data", data, "--split", "test", "--out", folder / "eval", "--no-shortcuts",
             "--overwrite")
    bundle = folder / "bundles" / "tflite-int8"
    if not (bundle / "manifest.json").is_file():
        _cli("export", "--model", model, "--target", "tflite-int8", "--data", data, "--out", folder / "bundles", "--overwrite")
    if not (folder / "parity.json").is_file() and bundle.is_dir():
        _cli("device", "parity", bundle, "--data", data, "--stability", "--json", folder / "parity.json")
    if not (folder / "bench.json").is_file() and bundle.is_dir():
        _cli("device", "bench", bundle, "--data", data, "--runs", 300, "--no-cold-start", "--json", folder / "bench.json")
    test = json.loads((folder / "eval" / "metrics.json").read_text())
    parity = json.loads((folder / "parity.json").read_text()) if (folder / "parity.json").is_file() else None
    bench = json.loads((folder / "bench.json").read_text()) if (folder / "bench.json").is_file() else None
    val = info["val_metrics"]
    stability = (parity or {}).get("stability") or {}
    return {"model": name, "run": str(run), "arch": info.get("arch"), "size": info["preprocess"]["size"],
            **count_macs(model), "threshold": info["threshold"],
            "val": {k: val[k] for k in ("roc_auc", "recall", "specificity", "accuracy")},
            "test": {k: test[k] for k in ("roc_auc", "recall", "specificity", "accuracy")},
            "test_ci": {k: test["ci"][k] for k in ("roc_auc", "recall", "specificity", "accuracy") if k in test.get("ci", {})},
            "int8_kb": (bundle / "model.tflite").stat().st_size / 1024 if (bundle / "model.tflite").is_file() else None,
            "parity": parity["passed"] if parity else None, "agreement": parity["agreement"] if parity else None,
            "unstable": _unstable(stability), "p50_ms": bench["latency_ms"]["p50"] if bench else None}


def _unstable(stability: dict):
    """The share of images whose decision flips under some ordinary input-path variation (device stability)."""
    return (stability.get("device") or {}).get("unstable")


def choose(rows: list[dict]) -> dict:
    """The rule of NOTES.md: at least SPEEDUP x faster than the shipped tflite-int8 and keeping parity, validation
    ROC-AUC >= MIN_AUC and recall >= MIN_RECALL; the highest validation ROC-AUC among those."""
    ref = rows[0]
    fits = [r for r in rows[1:] if r["parity"] and r["p50_ms"] and ref["p50_ms"] / r["p50_ms"] >= SPEEDUP
            and r["val"]["roc_auc"] >= MIN_AUC and r["val"]["recall"] >= MIN_RECALL]
    best = max(fits, key=lambda r: r["val"]["roc_auc"], default=None)
    return {"rule": f">= {SPEEDUP:g}x faster than {ref['model']} (p50), parity passed, validation ROC-AUC >= {MIN_AUC} "
                    f"and recall >= {MIN_RECALL}; highest validation ROC-AUC", "fast_model": best["model"] if best else None}


def markdown(rows: list[dict], choice: dict) -> str:
    ref = rows[0]
    head = ("| model | arch | px | MMACs | params (M) | int8 KB | p50 ms | speed-up | parity | val AUC | val recall | "
            "test accuracy | test recall | test specificity | test ROC-AUC | unstable |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def ci(r, k):
        lo_hi = r["test_ci"].get(k)
        return f"{r['test'][k]:.3f} [{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]" if lo_hi else f"{r['test'][k]:.3f}"

    for r in rows:
        speed = f"{ref['p50_ms'] / r['p50_ms']:.1f}x" if r["p50_ms"] and ref["p50_ms"] else "-"
        lines.append(f"| {r['model']} | {r['arch']} | {r['size']} | {r['macs_m']:.0f} | {r['params_m']:.2f} | "
                     f"{r['int8_kb']:.0f} | {r['p50_ms']:.2f} | {speed} | {'pass' if r['parity'] else 'FAIL'} | "
                     f"{r['val']['roc_auc']:.3f} | {r['val']['recall']:.3f} | {ci(r, 'accuracy')} | {ci(r, 'recall')} | "
                     f"{ci(r, 'specificity')} | {ci(r, 'roc_auc')} | "
                     f"{'-' if r['unstable'] is None else format(r['unstable'], '.3f')} |")
    lines += ["", f"Choice rule (written before these numbers): {choice['rule']}.",
              f"Fast model: **{choice['fast_model'] or 'none qualifies'}**."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, action="append", required=True, help="a run folder (model.keras, model.json); the first is the reference")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True, help="bundles, evaluations and reports (not committed)")
    parser.add_argument("--out", type=Path, required=True, help="frontier.json and frontier.md")
    args = parser.parse_args(argv)
    rows = [measure(run, args.data, args.work) for run in args.run]
    choice = choose(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "frontier.json").write_text(json.dumps({"rows": rows, "choice": choice}, indent=1))
    (args.out / "frontier.md").write_text(markdown(rows, choice))
    print(markdown(rows, choice))
    return 0


if __name__ == "__main__":
    sys.exit(main())
