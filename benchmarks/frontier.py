"""Issue 32's frontier: smaller models measured the same way as the shipped one, and the fast model chosen by the
rule written in CHANGELOG.md before their numbers existed (validation numbers only; test numbers reported, never used).

    python benchmarks/frontier.py --run edgecxr/default --run /work/runs/frontier/mnv3s_160 ... \
        --data ../shared/data/kermany-cxr-224 --work /work/runs/frontier-work --out benchmarks/results/frontier-DATE

Per model (the first --run is the reference, the shipped model): multiply-adds and parameters (counted from the
Keras layers), test metrics at the validation threshold with 95 % intervals (`edgecxr evaluate`), bundles of
TARGETS from the same data (`edgecxr export`; a target its gate refuses is left out), parity and p50 latency of
each on this CPU (`edgecxr device choose`: the fastest passing target is the model's), and the input-path
stability of that bundle (`edgecxr device parity --stability`). Latency: every passing bundle of every model is
timed again in one `device choose` run at the end (the sample's images, 500 calls each), so that no model is
timed while another job shares the CPU; the speed-up is against the reference's tflite-int8 in that run. Every
step is the CLI a user runs; a step already done in --work is reused.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SPEEDUP, MIN_AUC, MIN_RECALL = 3.0, 0.96, 0.96  # the choice rule (CHANGELOG.md, 2026-12-07)
TARGETS = ("tflite-int8", "tflite-fp32", "onnx-int8", "openvino-int8", "openvino-fp32")


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
    bundles = folder / "bundles"
    if not (bundles / ".exported").is_file():
        _cli("export", "--model", model, *[a for t in TARGETS for a in ("--target", t)], "--data", data,
             "--out", bundles, "--overwrite")
        (bundles / ".exported").write_text("")
    if not (folder / "choose.json").is_file():
        _cli("device", "choose", bundles, "--data", data, "--runs", 300, "--json", folder / "choose.json")
    choice = json.loads((folder / "choose.json").read_text())
    best = choice.get("choice") or {}
    if best and not (folder / "parity.json").is_file():
        _cli("device", "parity", best["bundle"], "--data", data, "--stability", "--json", folder / "parity.json")
    parity = json.loads((folder / "parity.json").read_text()) if (folder / "parity.json").is_file() else None
    test = json.loads((folder / "eval" / "metrics.json").read_text())
    val = info["val_metrics"]
    int8 = bundles / "tflite-int8" / "model.tflite"
    rows = {r["target"]: r for r in choice["rows"]}
    return {"model": name, "run": str(run), "arch": info.get("arch"), "size": info["preprocess"]["size"],
            **count_macs(model), "threshold": info["threshold"],
            "val": {k: val[k] for k in ("roc_auc", "recall", "specificity", "accuracy")},
            "test": {k: test[k] for k in ("roc_auc", "recall", "specificity", "accuracy")},
            "test_ci": {k: test["ci"][k] for k in ("roc_auc", "recall", "specificity", "accuracy") if k in test.get("ci", {})},
            "int8_kb": int8.stat().st_size / 1024 if int8.is_file() else None,
            "targets": {t: {k: r.get(k) for k in ("parity", "agreement", "p50_ms", "size_mb", "error", "bundle")}
                        for t, r in rows.items()},
            "fastest": best.get("target"), "parity": bool(best), "agreement": best.get("agreement"),
            "unstable": _unstable((parity or {}).get("stability") or {}), "p50_ms": best.get("p50_ms"),
            "tflite_int8_p50_ms": (rows.get("tflite-int8") or {}).get("p50_ms")}


def _unstable(stability: dict):
    """The share of images whose decision flips under some ordinary input-path variation (device stability)."""
    return (stability.get("device") or {}).get("unstable")


def time_together(rows: list[dict], work: Path) -> None:
    """Every passing bundle of every model timed in one `device choose` run on a quiet machine (the per-model runs
    may have shared the CPU with a training): each model's fastest passing target and p50 come from here."""
    bundles = [t["bundle"] for r in rows for t in r["targets"].values() if t.get("parity")]
    out = work / "latency.json"
    if not out.is_file():
        _cli("device", "choose", *bundles, "--data", REPO / "edgecxr" / "sample", "--min-coverage", 0, "--runs", 500,
             "--json", out)
    timed = {row["bundle"]: row for row in json.loads(out.read_text())["rows"] if row.get("p50_ms")}
    for r in rows:
        mine = {t: timed[v["bundle"]] for t, v in r["targets"].items() if v.get("bundle") in timed}
        fastest = min(mine, key=lambda t: mine[t]["p50_ms"], default=None)
        r["fastest"], r["p50_ms"] = fastest, mine[fastest]["p50_ms"] if fastest else None
        r["tflite_int8_p50_ms"] = (mine.get("tflite-int8") or {}).get("p50_ms")
        r["latency"] = {t: v["p50_ms"] for t, v in mine.items()}


def choose(rows: list[dict]) -> dict:
    """The rule of CHANGELOG.md: at least SPEEDUP x faster than the shipped tflite-int8 and keeping parity, validation
    ROC-AUC >= MIN_AUC and recall >= MIN_RECALL; the highest validation ROC-AUC among those."""
    ref = rows[0]
    base = ref["tflite_int8_p50_ms"]
    fits = [r for r in rows[1:] if r["parity"] and r["p50_ms"] and base / r["p50_ms"] >= SPEEDUP
            and r["val"]["roc_auc"] >= MIN_AUC and r["val"]["recall"] >= MIN_RECALL]
    best = max(fits, key=lambda r: r["val"]["roc_auc"], default=None)
    return {"rule": f">= {SPEEDUP:g}x faster (p50, fastest passing target) than {ref['model']}'s tflite-int8, parity passed, validation ROC-AUC >= {MIN_AUC} "
                    f"and recall >= {MIN_RECALL}; highest validation ROC-AUC", "fast_model": best["model"] if best else None}


def markdown(rows: list[dict], choice: dict) -> str:
    base = rows[0]["tflite_int8_p50_ms"]
    head = ("| model | arch | px | MMACs | params (M) | tflite-int8 KB | fastest passing target | p50 ms | speed-up | "
            "val AUC | val recall | test accuracy | test recall | test specificity | test ROC-AUC | unstable |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def ci(r, k):
        lo_hi = r["test_ci"].get(k)
        return f"{r['test'][k]:.3f} [{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]" if lo_hi else f"{r['test'][k]:.3f}"

    for r in rows:
        speed = f"{base / r['p50_ms']:.1f}x" if r["p50_ms"] and base else "-"
        size = "refused" if r["int8_kb"] is None else f"{r['int8_kb']:.0f}"
        p50 = "-" if r["p50_ms"] is None else f"{r['p50_ms']:.2f}"
        lines.append(f"| {r['model']} | {r['arch']} | {r['size']} | {r['macs_m']:.0f} | {r['params_m']:.2f} | "
                     f"{size} | {r['fastest'] or 'none passes'} | {p50} | {speed} | "
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
    time_together(rows, args.work)
    choice = choose(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "frontier.json").write_text(json.dumps({"rows": rows, "choice": choice}, indent=1))
    (args.out / "frontier.md").write_text(markdown(rows, choice))
    print(markdown(rows, choice))
    return 0


if __name__ == "__main__":
    sys.exit(main())
