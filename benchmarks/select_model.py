"""Pick the default model among training runs by VALIDATION ROC-AUC only, then report every
run's validation and test numbers (test is looked at after the choice is fixed).

    python benchmarks/select_model.py --data ../shared/data/kermany-cxr-224 runs/a runs/b ...
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/attempts.json"))
    args = ap.parse_args(argv)
    runs = [r for r in args.runs if (r / "val_metrics.json").exists()]
    val = {r: json.loads((r / "val_metrics.json").read_text()) for r in runs}
    chosen = max(runs, key=lambda r: (val[r]["roc_auc"], val[r]["accuracy"]))
    print(f"chosen by validation ROC-AUC: {chosen} ({val[chosen]['roc_auc']:.4f})", file=sys.stderr)
    from edgecxr.training.evaluate import evaluate

    rows = []
    for r in runs:
        test = evaluate(r / "model.keras", args.data, "test", r / "eval_test", overwrite=True)
        config = json.loads((r / "config.json").read_text())
        rows.append({"run": r.name, "chosen": r == chosen, "config": config, "val": val[r],
                     "test": {k: test[k] for k in ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc",
                                                    "pr_auc", "threshold", "n", "confusion", "ci", "at_0.5")}})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"selection": "max validation ROC-AUC (ties: validation accuracy)",
                                    "chosen": chosen.name, "rows": rows}, indent=2) + "\n")
    print(f"{'run':32s} {'val acc':>8s} {'val auc':>8s} | {'test acc':>8s} {'recall':>7s} {'spec':>7s} {'auc':>7s}")
    for row in rows:
        v, t = row["val"], row["test"]
        print(f"{row['run'] + (' *' if row['chosen'] else ''):32s} {v['accuracy']:8.4f} {v['roc_auc']:8.4f} | "
              f"{t['accuracy']:8.4f} {t['recall']:7.4f} {t['specificity']:7.4f} {t['roc_auc']:7.4f}")


if __name__ == "__main__":
    main()
