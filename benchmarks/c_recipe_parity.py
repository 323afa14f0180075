"""The C recipe (examples/c/recipe.c: libjpeg + ONNX Runtime's C API) against `edgecxr device run` on the same
ONNX bundles: decisions, probabilities and, stage by stage, the pixels.

On the 624 test images (kermany-cxr-224/test) and the 16 full-size originals (kermany-val-fullres), for each bundle:
  - decisions and probabilities of the C binary (one process for every file) against `edgecxr device run
    BUNDLE FILES --format json` (decisions: its `positive`);
  - the C recipe's decoded and resized arrays (its --out stages) against edgecxr's runner in process
    (Classifier: spec.read = decoded, spec.to_pixels = resized): bit-exact count and largest difference;
  - wall time of each (informative only: `device run` decodes on up to 4 threads, the C binary on one).

    python benchmarks/c_recipe_parity.py --out benchmarks/results/c-recipe-parity-DATE     # exports onnx-fp32
    python benchmarks/c_recipe_parity.py --bundle B1 --bundle B2 --out ...                # and onnx-int8 itself
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 64  # images per C run whose stage files exist at once (the 624 x 0.75 MB of arrays are not kept)


def build(out: Path) -> Path:
    done = subprocess.run(["bash", str(ROOT / "examples" / "c" / "build.sh"), str(out)], capture_output=True,
                          text=True, env={**os.environ, "PYTHON": sys.executable})
    if done.returncode != 0:
        raise SystemExit(f"build failed:\n{done.stdout}{done.stderr}")
    return out / "recipe"


def export_bundles(out: Path) -> list[Path]:
    cmd = [sys.executable, "-m", "edgecxr.cli", "export", "--target", "onnx-fp32", "--target", "onnx-int8",
           "--data", str(ROOT / "edgecxr" / "sample"), "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True)
    return [out / "onnx-fp32", out / "onnx-int8"]


def parse_lines(text: str) -> dict[str, tuple[float, int]]:
    out = {}
    for line in text.splitlines():
        path, prob, decision = line.rsplit("\t", 2)
        out[path] = (float(prob), int(decision))
    return out


def run_c(recipe: Path, bundle: Path, files: list[Path], stages: Path | None) -> tuple[dict, float, str]:
    cmd = [str(recipe), str(bundle)] + (["--out", str(stages)] if stages else []) + [str(f) for f in files]
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    return parse_lines(done.stdout), time.perf_counter() - t, done.stderr


def run_edgecxr(bundle: Path, files: list[Path]) -> tuple[dict, float, dict]:
    cmd = [sys.executable, "-m", "edgecxr.cli", "device", "run", str(bundle), *map(str, files), "--format", "json"]
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    report = json.loads(done.stdout)
    return {r["source"]: (float(r["probability"]), int(r["positive"])) for r in report["results"]}, wall, report


def measure(recipe: Path, bundle: Path, groups: dict[str, list[Path]]) -> dict:
    from edgecxr.devices.classifier import Classifier

    clf = Classifier.load(bundle)
    files = [f for g in groups.values() for f in g]
    c_results, c_wall, c_err = run_c(recipe, bundle, files, None)
    e_results, e_wall, e_report = run_edgecxr(bundle, files)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for group, group_files in groups.items():
            for start in range(0, len(group_files), CHUNK):
                chunk = group_files[start:start + CHUNK]
                stages = Path(tmp) / "stages"
                run_c(recipe, bundle, chunk, stages)
                for f in chunk:
                    img = clf.spec.read(f)
                    decoded, resized = np.asarray(img), clf.spec.to_pixels(img)
                    mine = {s: np.load(stages / f.name / f"{s}.npy") for s in ("decoded", "resized")}
                    c, e = c_results.get(str(f)), e_results.get(str(f))
                    rows.append({
                        "group": group, "file": f.name,
                        "c_probability": c and c[0], "c_decision": c and c[1],
                        "edgecxr_probability": e and e[0], "edgecxr_decision": e and e[1],
                        "decoded_exact": bool(mine["decoded"].shape == decoded.shape and
                                              np.array_equal(mine["decoded"], decoded)),
                        "decoded_max_abs": int(np.abs(mine["decoded"].astype(int) - decoded).max())
                        if mine["decoded"].shape == decoded.shape else None,
                        "resized_exact": bool(np.array_equal(mine["resized"], resized)),
                        "resized_max_abs": int(np.abs(mine["resized"].astype(int) - resized).max())})
                shutil.rmtree(stages)
    return {"bundle": str(bundle), "target": clf.bundle.manifest["target"], "threshold": clf.threshold,
            "edgecxr_runtime": e_report["runtime"], "c_wall_s": round(c_wall, 2), "edgecxr_wall_s": round(e_wall, 2),
            "c_stderr": c_err[-2000:], "edgecxr_failures": e_report.get("failures"), "rows": rows,
            "summary": summarize(rows)}


def summarize(rows: list[dict]) -> dict:
    out = {}
    for group in dict.fromkeys(r["group"] for r in rows):
        rs = [r for r in rows if r["group"] == group]
        both = [r for r in rs if r["c_probability"] is not None and r["edgecxr_probability"] is not None]
        # as float32 (the model's output type): the C binary prints 9 significant digits, which round-trip one
        dp = np.array([abs(float(np.float32(r["c_probability"])) - float(np.float32(r["edgecxr_probability"])))
                       for r in both]) if both else np.zeros(0)
        out[group] = {
            "images": len(rs), "compared": len(both),
            "c_missing": sum(r["c_probability"] is None for r in rs),
            "edgecxr_missing": sum(r["edgecxr_probability"] is None for r in rs),
            "decisions_equal": sum(r["c_decision"] == r["edgecxr_decision"] for r in both),
            "decisions_differing": [r["file"] for r in both if r["c_decision"] != r["edgecxr_decision"]],
            "same_float32_probability": int((dp == 0).sum()),
            "max_abs_prob_diff": float(dp.max()) if dp.size else None,
            "decoded_exact": sum(r["decoded_exact"] for r in rs),
            "decoded_max_abs": max((r["decoded_max_abs"] or 0) for r in rs),
            "resized_exact": sum(r["resized_exact"] for r in rs),
            "resized_max_abs": max(r["resized_max_abs"] for r in rs)}
    return out


def to_markdown(results: list[dict], meta: dict) -> str:
    lines = ["# C recipe (libjpeg + ONNX Runtime C API) against `edgecxr device run`", "",
             f"Command: `{meta['command']}`", "",
             f"Machine: {meta['machine']}; libjpeg-turbo {meta['libjpeg']}; onnxruntime {meta['onnxruntime']} "
             f"(C API via the wheel's libonnxruntime.so); {meta['created']}", "",
             "| bundle | images | decisions equal | probability max abs diff (float32) | same float32 | decoded bit-exact | "
             "resized bit-exact | C wall s | device run wall s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for group, g in r["summary"].items():
            lines.append(f"| {r['target']} | {group} | {g['decisions_equal']} of {g['compared']} | "
                         f"{g['max_abs_prob_diff']:.3g} | {g['same_float32_probability']} | "
                         f"{g['decoded_exact']} of {g['images']} (max {g['decoded_max_abs']}) | "
                         f"{g['resized_exact']} of {g['images']} (max {g['resized_max_abs']}) | "
                         f"{r['c_wall_s'] if group == next(iter(r['summary'])) else ''} | "
                         f"{r['edgecxr_wall_s'] if group == next(iter(r['summary'])) else ''} |")
    lines += ["", "Wall times cover all the images of a bundle in one process each (the C binary decodes on one "
              "thread; `device run` on up to 4 and starts Python); informative only.",
              "Probabilities: the C binary prints 9 significant digits, which a float32 (the model's output) "
              "round-trips: 'same float32' counts identical model outputs."]
    flips = [(r["target"], f) for r in results for g in r["summary"].values() for f in g["decisions_differing"]]
    lines += ["", f"Decisions differing: {', '.join(f'{t}: {f}' for t, f in flips) if flips else 'none'}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, action="append", help="ONNX bundle (repeatable); default: export "
                    "onnx-fp32 and onnx-int8 of the shipped model from edgecxr/sample into a temporary folder")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / f"c-recipe-parity-{dt.date.today()}")
    args = ap.parse_args()
    groups = {"test-624": sorted((args.data / "kermany-cxr-224" / "test").glob("*/*.jpeg")),
              "originals-16": sorted((args.data / "kermany-val-fullres").glob("*/*.jpeg"))}
    with tempfile.TemporaryDirectory() as tmp:
        recipe = build(Path(tmp) / "build")
        bundles = args.bundle or export_bundles(Path(tmp) / "bundles")
        results = [measure(recipe, b, groups) for b in bundles]
    import onnxruntime

    libjpeg = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "libjpeg62-turbo-dev"], capture_output=True,
                             text=True).stdout or "?"
    meta = {"command": "python benchmarks/c_recipe_parity.py"
                       + "".join(f" --bundle {b}" for b in (args.bundle or [])) + f" --out {args.out}",
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
            "libjpeg": libjpeg, "onnxruntime": onnxruntime.__version__,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({**meta, "bundles": results}, indent=1) + "\n")
    (args.out / "results.md").write_text(to_markdown(results, meta))
    print(to_markdown(results, meta))


if __name__ == "__main__":
    main()
