"""Issue 32.4: apply the stability rule of CHANGELOG.md (session 16) to candidate models, on validation only.

Each candidate is a training run folder RUN (model.keras, val_metrics.json), its bundles (BUNDLES/tflite-int8 exists
only when the export gate passed), its `device stability` JSON on the 523 validation images and its
`edgecxr evaluate --split val` metrics.json (the shortcut probes). The shipped model's validation evaluation is the
shortcut baseline. A candidate qualifies when its tflite-int8 bundle exists, its int8 unstable share is <= 0.02, its
validation ROC-AUC, accuracy and recall are >= the shipped model's, and each shortcut probe changes no more than 0.02
more decisions than the shipped model's; the lowest unstable share wins, a tie goes to the higher ROC-AUC.

    python benchmarks/stability_candidates.py --shipped-eval EVAL/metrics.json \
        --candidate aa_ft3 RUN BUNDLES STABILITY.json EVAL/metrics.json ... --out DIR
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_UNSTABLE = 0.02
SHORTCUT_MARGIN = 0.02
PROBES = ("border", "top_band")
FLOORS = ("roc_auc", "accuracy", "recall")


def _read(path) -> dict:
    return json.loads(Path(path).read_text())


def candidate_row(name, run, bundles, stability, evaluation, shipped: dict, shipped_eval: dict) -> dict:
    val = _read(Path(run) / "val_metrics.json")
    st = _read(stability) if Path(stability).is_file() else None
    ev = _read(evaluation) if Path(evaluation).is_file() else None
    row = {"name": name, "threshold": val["threshold"], **{k: val[k] for k in FLOORS},
           "int8_bundle": (Path(bundles) / "tflite-int8" / "manifest.json").is_file(),
           "unstable_int8": st["device"]["unstable"] if st else None,
           "unstable_int8_n": st["device"]["unstable_n"] if st else None,
           "unstable_fp32": st["float"]["unstable"] if st and st.get("float") else None,
           "shortcuts": {p: ev["shortcuts"][p]["changed"] for p in PROBES} if ev else None}
    row["reasons"] = _failures(row, shipped, shipped_eval)
    row["qualifies"] = not row["reasons"]
    return row


def _failures(row: dict, shipped: dict, shipped_eval: dict) -> list[str]:
    reasons = [] if row["int8_bundle"] else ["tflite-int8 refused by the export gate"]
    if row["unstable_int8"] is None or row["unstable_int8"] > MAX_UNSTABLE:
        reasons.append("no stability run" if row["unstable_int8"] is None else
                       f"unstable {row['unstable_int8']:.4f} > {MAX_UNSTABLE}")
    reasons += [f"{k} {row[k]:.5f} < {shipped[k]:.5f}" for k in FLOORS if row[k] < shipped[k]]
    if row["shortcuts"] is None:
        reasons.append("no validation shortcut check")
    else:
        base = {p: shipped_eval["shortcuts"][p]["changed"] for p in PROBES}
        reasons += [f"shortcut {p} changes {row['shortcuts'][p]:.3f} > {base[p]:.3f} + {SHORTCUT_MARGIN}"
                    for p in PROBES if row["shortcuts"][p] > base[p] + SHORTCUT_MARGIN]
    return reasons


def choose(rows: list[dict]) -> str | None:
    ok = [r for r in rows if r["qualifies"]]
    return min(ok, key=lambda r: (r["unstable_int8"], -r["roc_auc"]))["name"] if ok else None


def markdown(rows: list[dict], shipped: dict, shipped_eval: dict, chosen) -> str:
    base = {p: shipped_eval["shortcuts"][p]["changed"] for p in PROBES}
    lines = ["| model | threshold | val ROC-AUC | val accuracy | val recall | tflite-int8 | unstable int8 | unstable fp32 "
             "| border changes | top band changes | qualifies |", "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|",
             f"| shipped (floors) | {shipped['threshold']:.4f} | {shipped['roc_auc']:.5f} | {shipped['accuracy']:.4f} | "
             f"{shipped['recall']:.4f} | passes | 23 / 523 = 0.044 | 22 / 523 = 0.042 | {base['border']:.3f} | "
             f"{base['top_band']:.3f} | |"]
    for r in rows:
        def share(v, n=None):
            return "-" if v is None else (f"{n} / 523 = {v:.3f}" if n is not None else f"{v:.3f}")
        sc = r["shortcuts"] or {}
        lines.append(f"| {r['name']} | {r['threshold']:.4f} | {r['roc_auc']:.5f} | {r['accuracy']:.4f} | {r['recall']:.4f} | "
                     f"{'passes' if r['int8_bundle'] else 'refused'} | {share(r['unstable_int8'], r['unstable_int8_n'])} | "
                     f"{share(r['unstable_fp32'])} | {share(sc.get('border'))} | {share(sc.get('top_band'))} | "
                     f"{'yes' if r['qualifies'] else 'no: ' + '; '.join(r['reasons'])} |")
    return "\n".join(lines) + f"\n\nChosen by the rule: **{chosen or 'none'}**.\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shipped", type=Path, default=REPO / "edgecxr" / "default" / "model.json")
    ap.add_argument("--shipped-eval", type=Path, required=True, help="the shipped model's evaluate --split val metrics.json")
    ap.add_argument("--candidate", nargs=5, action="append", required=True,
                    metavar=("NAME", "RUN", "BUNDLES", "STABILITY_JSON", "EVAL_JSON"))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    shipped = _read(args.shipped)["val_metrics"]
    shipped_eval = _read(args.shipped_eval)
    rows = [candidate_row(*c, shipped, shipped_eval) for c in args.candidate]
    chosen = choose(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "candidates.json").write_text(json.dumps({"rows": rows, "chosen": chosen, "shipped_val": shipped,
                                                          "shipped_shortcuts": shipped_eval["shortcuts"]}, indent=1))
    text = markdown(rows, shipped, shipped_eval, chosen)
    (args.out / "candidates.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
