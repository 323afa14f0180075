"""Android's path: MediaPipe's ImageClassifier against edgecxr's runner on every test image.

The tflite bundles carry standard TFLite metadata (export/tflite_metadata.py): normalization, labels and the
decision threshold as ScoreThresholdingOptions. Here MediaPipe's own ImageClassifier (Python, x86, in its own
venv) gets each test image as the contract pixels edgecxr's runner makes (the uint8 size x size grey image after
crop / equalization / resize, copied to RGB), so its resize is an identity and only the metadata's normalization
and threshold apply. Compared with the runner (LiteRT) on the same bundle: decisions (MediaPipe's thresholding
against `probability >= threshold`) and probabilities.

    python benchmarks/mediapipe_parity.py --data ../shared/data/kermany-cxr-224 \\
        --out benchmarks/results/mediapipe-parity-$(date +%F)

Exports the shipped model to tflite-fp32, tflite-fp16 and tflite-int8 (its twin is the float32 model) unless
--bundles names a folder that holds them. Writes results.json and results.md in --out.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGETS = ("tflite-fp32", "tflite-fp16", "tflite-int8")


def compare(name: str, clf, samples, pixels: np.ndarray, root: Path) -> dict:
    from edgecxr.export import tflite_metadata as M
    from edgecxr.utils.errors import ModelError

    t0 = time.perf_counter()
    runner = np.array([clf.infer(clf.from_pixels(x))[0] for x in pixels])
    runner_s = time.perf_counter() - t0
    labels = np.array([s.label for s in samples])
    model_file = str(Path(clf.bundle.model_path).resolve().relative_to(Path(root).resolve()))
    row = {"bundle": name, "model_file": model_file, "n": len(samples), "threshold": clf.threshold,
           "runner": {**clf.runtime, "seconds": round(runner_s, 2),
                      "accuracy": float(((runner >= clf.threshold) == labels).mean())}}
    shown = M.read(clf.bundle.model_path)["metadata"]
    (graph,) = shown["subgraph_metadata"]
    row["metadata"] = {"name": shown["name"], "min_parser_version": shown["min_parser_version"],
                       "input": graph["input_tensor_metadata"][0].get("process_units"),
                       "output": graph["output_tensor_metadata"][0].get("process_units")}
    t0 = time.perf_counter()
    try:
        answer = M.classify(clf.bundle.model_path, pixels, clf.positive_index)
    except ModelError as exc:
        return {**row, "mediapipe": {"refused": str(exc).replace(str(clf.bundle.model_path), row["model_file"])}}
    mp_s = time.perf_counter() - t0
    scores, positive = np.array(answer["scores"]), np.array(answer["positive"])
    decided = runner >= clf.threshold
    diff = np.abs(scores - runner)
    differing = np.flatnonzero(positive != decided)
    row["mediapipe"] = {
        "version": answer["mediapipe"], "seconds": round(mp_s, 2),
        "decisions_differing": int(len(differing)),  # MediaPipe's own thresholding (the metadata's threshold)
        "decisions_differing_from_scores": int(((scores >= clf.threshold) != decided).sum()),
        "max_abs_probability_diff": float(diff.max()), "mean_abs_probability_diff": float(diff.mean()),
        "accuracy": float((positive == labels).mean()),
        "differing_cases": [{"image": samples[i].rel, "runner": float(runner[i]), "mediapipe": float(scores[i])}
                            for i in differing],
        "closest_to_threshold": float(np.abs(runner - clf.threshold).min()),
    }
    return row


def markdown(result: dict) -> str:
    lines = [f"# MediaPipe ImageClassifier vs edgecxr's runner ({result['date']})", "",
             f"{result['n_images']} test images of `{result['data']}`, model `{result['model']}`; "
             f"MediaPipe {result['mediapipe_version']} (Python, x86, its own venv) fed the contract pixels "
             "(grey copied to RGB, model size: its resize is an identity), edgecxr's runner on the same bundle.", "",
             "| bundle | input | MediaPipe | decisions differing | max abs prob. diff | mean abs prob. diff | "
             "runner accuracy | MediaPipe accuracy |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        mp = r["mediapipe"]
        if "refused" in mp:
            lines.append(f"| {r['bundle']} | {r['input_dtype']} | refused: {mp['refused'].split(': ', 1)[-1]} | - | - | - | "
                         f"{r['runner']['accuracy']:.4f} | - |")
        else:
            lines.append(f"| {r['bundle']} | {r['input_dtype']} | ran | {mp['decisions_differing']} of {r['n']} | "
                         f"{mp['max_abs_probability_diff']:.3g} | {mp['mean_abs_probability_diff']:.3g} | "
                         f"{r['runner']['accuracy']:.4f} | {mp['accuracy']:.4f} |")
    lines += ["", f"Command: `{result['command']}`", "",
              f"Runner: {result['rows'][0]['runner']['name']} {result['rows'][0]['runner']['version']}; "
              f"CPU: {result['cpu']}; Python {result['python']}.", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="Kermany layout root (its test/ split is compared)")
    ap.add_argument("--out", required=True, type=Path, help="folder for results.json and results.md")
    ap.add_argument("--model", type=Path, default=REPO / "edgecxr" / "default" / "model.keras")
    ap.add_argument("--bundles", type=Path, help="a folder holding tflite-fp32/-fp16/-int8 bundles (default: export)")
    ap.add_argument("--keep", type=Path, help="export the bundles into this folder and keep them (default: a temporary one)")
    args = ap.parse_args()

    from edgecxr.data import folders as D
    from edgecxr.utils.cpu import cpu_info
    from edgecxr.devices.classifier import Classifier

    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="mediapipe-parity-") as work:
        root = args.bundles
        if root is None:
            from edgecxr.export import export_model

            root = args.keep or Path(work) / "bundles"
            export_model(args.model, list(TARGETS), args.data, root)
        export_s = time.time() - t0
        samples = D.list_split(args.data, "test")
        clfs = [(t, Classifier.load(root / t)) for t in TARGETS]
        clfs.append(("tflite-int8/twin (= tflite-fp32)", dict(clfs)["tflite-int8"].twin()))
        pixels = {}
        rows = []
        for name, clf in clfs:
            key = json.dumps(clf.spec.to_dict(), sort_keys=True)
            if key not in pixels:  # the runner's own decode + contract pixels (its prepare() without the LUT)
                pixels[key] = np.stack([clf.spec.to_pixels(clf.spec.read(s.path)) for s in samples])
                assert all(np.array_equal(clf.from_pixels(x), clf.prepare(s.path)[0])
                           for s, x in list(zip(samples, pixels[key]))[:20])
            row = compare(name, clf, samples, pixels[key], root)
            row["input_dtype"] = clf.bundle.manifest["input"]["dtype"]
            rows.append(row)
            print(f"{name}: {json.dumps({k: v for k, v in row['mediapipe'].items() if k != 'differing_cases'})}",
                  flush=True)
    versions = [r["mediapipe"]["version"] for r in rows if "version" in r["mediapipe"]]
    result = {"date": dt.date.today().isoformat(), "data": str(args.data), "model": str(args.model),
              "bundles": str(args.bundles) if args.bundles else "exported by this run", "export_seconds": round(export_s, 1),
              "n_images": len(samples), "mediapipe_version": versions[0] if versions else None,
              "command": " ".join([Path(sys.executable).name, *sys.argv]), "python": platform.python_version(),
              "cpu": cpu_info().get("model"), "seconds": round(time.time() - t0, 1), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
