"""How far an integrator's own input path moves a bundle's decisions, against edgecxr's runner.

On the 624 test images, the 16 full-size originals and the conformance fixtures, through the same bundle:
  - the numpy reference of the input contract (edgecxr.data.conformance.run_pipeline): bit-exact count, largest
    difference of the resized pixels and of the model's input tensor, decisions;
  - Pillow's own equalize + resize (edgecxr's runner before the contract): the same;
  - the OpenCV recipe of docs/integrators.md (examples/opencv_recipe.py) on the bare LiteRT interpreter;
  - OpenCV written from `"equalize": true` alone (cv2.equalizeHist + INTER_LINEAR / INTER_AREA / INTER_CUBIC);
  - for scale: the bundle's float32 twin against the int8 model on the runner's inputs.

    python benchmarks/integrator_parity.py --bundle runs/full/tflite-int8 --out benchmarks/results/integrator-parity-DATE
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _recipe():
    spec = importlib.util.spec_from_file_location("opencv_recipe", ROOT / "examples" / "opencv_recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _naive_opencv(path, size, interpolation):
    """An integrator who read `"equalize": true` and `"interpolation": "bilinear"` and used OpenCV's own."""
    import cv2

    gray = cv2.equalizeHist(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))
    return gray if gray.shape == (size, size) else cv2.resize(gray, (size, size), interpolation=interpolation)


def _pillow_pixels(img, spec):
    from PIL import Image, ImageOps

    img = ImageOps.equalize(img)
    if img.size != (spec.size, spec.size):
        img = img.resize((spec.size, spec.size), Image.Resampling.BILINEAR)
    return np.asarray(img)


def measure(bundle_dir: Path, files: dict[str, list[Path]]) -> dict:
    import cv2

    from edgecxr.data import conformance as K
    from edgecxr.devices.classifier import Classifier

    clf = Classifier.load(bundle_dir)
    twin = clf.twin()
    io_ = K.ModelIO(clf.spec, clf.bundle.manifest["input"], clf.bundle.manifest["output"], clf.threshold,
                    lambda: clf.session)
    recipe = _recipe()
    manifest = clf.bundle.manifest
    paths = [p for group in files.values() for p in group]
    recipe_probs = {str(p): float(s["probability"]) for p, s in recipe.classify(bundle_dir, paths)}
    rows = []
    for group, group_files in files.items():
        for path in group_files:
            img = clf.spec.read(path)
            pixels = clf.spec.to_pixels(img)
            tensor = clf.from_pixels(pixels)
            p_runner, _ = clf.infer(tensor)
            ref = K.run_pipeline(K.Case(path.name, path.read_bytes(), ""), io_)
            pil = _pillow_pixels(img, clf.spec)
            row = {"group": group, "file": path.name, "runner": p_runner,
                   "reference": float(ref["probability"]),
                   "reference_pixels_exact": bool(np.array_equal(ref["resized"], pixels)),
                   "reference_tensor_exact": bool(np.array_equal(ref.get("quantized", ref["input"]), tensor)),
                   "reference_pixels_max_abs": int(np.abs(ref["resized"].astype(int) - pixels).max()),
                   "pillow_pixels_exact": bool(np.array_equal(pil, pixels)),
                   "pillow_pixels_max_abs": int(np.abs(pil.astype(int) - pixels).max()),
                   "pillow": clf.infer(clf.from_pixels(pil))[0],
                   "opencv_recipe": recipe_probs[str(path)],
                   "float_twin": twin.infer(twin.from_pixels(pixels))[0] if twin else None}
            if not str(path).endswith((".dcm", ".png")) and "exif" not in path.name:
                for name, flag in (("linear", cv2.INTER_LINEAR), ("area", cv2.INTER_AREA), ("cubic", cv2.INTER_CUBIC)):
                    row[f"opencv_equalizehist_{name}"] = clf.infer(clf.from_pixels(
                        _naive_opencv(path, clf.spec.size, flag)))[0]
            rows.append(row)
    return {"bundle": str(bundle_dir), "target": manifest["target"], "threshold": clf.threshold,
            "runtime": clf.runtime, "rows": rows, "summary": summarize(rows, clf.threshold)}


def summarize(rows: list[dict], threshold: float) -> dict:
    out = {}
    paths = ["reference", "pillow", "opencv_recipe", "opencv_equalizehist_linear", "opencv_equalizehist_area",
             "opencv_equalizehist_cubic", "float_twin"]
    for group in sorted({r["group"] for r in rows}):
        rs = [r for r in rows if r["group"] == group]
        base = np.array([r["runner"] for r in rs])
        g = {"images": len(rs),
             "reference_pixels_exact": sum(r["reference_pixels_exact"] for r in rs),
             "reference_tensor_exact": sum(r["reference_tensor_exact"] for r in rs),
             "reference_pixels_max_abs": max(r["reference_pixels_max_abs"] for r in rs),
             "pillow_pixels_exact": sum(r["pillow_pixels_exact"] for r in rs),
             "pillow_pixels_max_abs": max(r["pillow_pixels_max_abs"] for r in rs)}
        for name in paths:
            have = [(b, r[name]) for b, r in zip(base, rs) if r.get(name) is not None]
            if not have:
                continue
            b, p = np.array(have).T
            g[name] = {"images": len(have), "decisions_differing": int(((b >= threshold) != (p >= threshold)).sum()),
                       "max_abs_prob_diff": float(np.abs(b - p).max())}
        out[group] = g
    return out


def to_markdown(result: dict, command: str) -> str:
    lines = [f"# Integrator input paths against edgecxr's runner ({result['target']}, threshold "
             f"{result['threshold']:.4f}, {result['runtime']['name']} {result['runtime']['version']})", "",
             f"Command: `{command}`", "",
             "| input path | " + " | ".join(result["summary"]) + " |", "|---|" + "---:|" * len(result["summary"])]
    names = {"reference": "numpy reference of the contract", "pillow": "Pillow equalize + resize (the runner before)",
             "opencv_recipe": "OpenCV recipe (docs/integrators.md), bare LiteRT",
             "opencv_equalizehist_linear": "OpenCV equalizeHist + INTER_LINEAR",
             "opencv_equalizehist_area": "OpenCV equalizeHist + INTER_AREA",
             "opencv_equalizehist_cubic": "OpenCV equalizeHist + INTER_CUBIC",
             "float_twin": "(for scale) float32 twin vs int8, same inputs"}
    for key, label in names.items():
        cells = []
        for g in result["summary"].values():
            v = g.get(key)
            cells.append("–" if v is None else f"{v['decisions_differing']} of {v['images']} (max dp {v['max_abs_prob_diff']:.3f})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Bit-exact pixels (resized stage) and model input tensors:", ""]
    for group, g in result["summary"].items():
        lines.append(f"- {group}: numpy reference {g['reference_pixels_exact']}/{g['images']} pixels and "
                     f"{g['reference_tensor_exact']}/{g['images']} tensors bit-exact (largest difference "
                     f"{g['reference_pixels_max_abs']}); Pillow's equalize + resize {g['pillow_pixels_exact']}/"
                     f"{g['images']} bit-exact (largest {g['pillow_pixels_max_abs']})")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / f"integrator-parity-{dt.date.today()}")
    args = ap.parse_args()
    files = {"test-624": sorted((args.data / "kermany-cxr-224" / "test").glob("*/*.jpeg")),
             "originals-16": sorted((args.data / "kermany-val-fullres").glob("*/*.jpeg")),
             "fixtures": sorted((ROOT / "edgecxr" / "conformance_images").iterdir())}
    result = measure(args.bundle, files)
    result["created"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    command = f"python benchmarks/integrator_parity.py --bundle {args.bundle} --out {args.out}"
    (args.out / "results.md").write_text(to_markdown(result, command))
    print(to_markdown(result, command))


if __name__ == "__main__":
    main()
