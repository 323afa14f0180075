"""Two `edgecxr benchmark` results side by side: do the rows make the same decisions, sizes and verdicts?

    python benchmarks/compare_benchmarks.py BEFORE.json AFTER.json --out DIR

    python benchmarks/compare_benchmarks.py BEFORE.json AFTER.json --out DIR --bundles BEFORE_BUNDLES AFTER_BUNDLES

writes DIR/compare.md; exits 1 when a row's decisions (its flipped cases against the float model), its model size
or its verdict differ, or a row is missing on one side. Latency is listed, never compared (another process ran
beside each run). tf2onnx names constants with a counter that runs over the whole process, so two exports of the
same model differ in a few hundred bytes of names (two runs of the same code do too): with --bundles, an ONNX row
whose size differs counts as the same model when its weights, operators and attributes are equal."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SAME = ("passed", "agreement", "recall", "specificity", "accuracy", "roc_auc", "new_fn", "new_fp")


def _rows(path: Path) -> dict:
    return {r["target"]: r for r in json.loads(path.read_text())["rows"]}


def _flipped(row: dict) -> list:
    return sorted(json.dumps(c, sort_keys=True) for c in row.get("flipped") or [])


def onnx_same_but_names(a: Path, b: Path) -> bool:
    """The same ONNX model up to the names of its tensors and nodes: equal weights, operators and attributes."""
    import hashlib

    import onnx
    from onnx import numpy_helper

    def signature(path):
        graph = onnx.load(str(path)).graph
        weights = sorted(hashlib.sha256(numpy_helper.to_array(i).tobytes()).hexdigest() + str(i.data_type)
                         for i in graph.initializer)
        nodes = [(n.op_type, sorted((x.name, repr(onnx.helper.get_attribute_value(x))) for x in n.attribute))
                 for n in graph.node]
        return weights, nodes

    return signature(a) == signature(b)


def compare(before: dict, after: dict, bundles=None) -> tuple[list[str], list[str]]:
    lines = ["| target | verdict | agreement | recall | specificity | size MB before / after | flipped cases | "
             "p50 ms before / after | same |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    problems = [f"{t}: only in {'before' if t in before else 'after'}" for t in sorted(set(before) ^ set(after))]
    for target in [t for t in before if t in after]:
        b, a = before[target], after[target]
        diffs = [k for k in SAME if b.get(k) != a.get(k)]
        diffs += ["flipped"] if _flipped(b) != _flipped(a) else []
        if b.get("size_mb") != a.get("size_mb"):
            model = [d / target / "model.onnx" for d in bundles or ()]
            names_only = len(model) == 2 and all(m.is_file() for m in model) and onnx_same_but_names(*model)
            diffs += [] if names_only else ["size"]
            note = " (ONNX: same weights, operators and attributes; tf2onnx's constant names differ)" if names_only else ""
            b = {**b, "size_mb": f"{b.get('size_mb')}{note}"}
        problems += [f"{target}: {', '.join(diffs)} differ"] if diffs else []
        r4 = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
        lines.append(f"| {target} | {'PASSED' if a.get('passed') else 'FAILED'} | {r4(a.get('agreement'))} "
                     f"| {r4(a.get('recall'))} | {r4(a.get('specificity'))} | {r4(b.get('size_mb'))} / {r4(a.get('size_mb'))} "
                     f"| {len(a.get('flipped') or [])} | {r4(b.get('p50_ms'))} / {r4(a.get('p50_ms'))} "
                     f"| {'yes' if not diffs else 'NO: ' + ', '.join(diffs)} |")
    return lines, problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--bundles", type=Path, nargs=2, metavar=("BEFORE", "AFTER"), help="the two runs' bundles/ folders")
    args = ap.parse_args(argv)
    lines, problems = compare(_rows(args.before), _rows(args.after), args.bundles)
    renamed = sum("tf2onnx" in line for line in lines)
    verdict = ("the same decisions, sizes and verdicts" + (f" ({renamed} ONNX rows: the same model, tf2onnx's constant "
               "names differ)" if renamed else "")) if not problems else "DIFFERENT: " + "; ".join(problems)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.md").write_text(f"# {args.before.name} against {args.after.name}\n\n{verdict}\n\n"
                                         + "\n".join(lines) + "\n")
    print(verdict)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
