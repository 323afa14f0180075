"""TensorRT parity of ONNX bundles: edgecxr's parity report (agreement, flipped cases, the bundle's criteria)
and p50 latency for each way an NVIDIA GPU can run them. Called by tensorrt_parity.sh.

    python benchmarks/gpu/tensorrt_parity.py cpu --bundles B --data D --out O   # everywhere (CI too)
    python benchmarks/gpu/tensorrt_parity.py gpu --bundles B --data D --out O   # needs an NVIDIA GPU

cpu: the static TensorRT check of every onnx-* bundle in B, and device parity with ONNX Runtime on the CPU
     (the baseline the GPU rows are read against).
gpu: TensorRT engines built from the bundles' ONNX files with the TensorRT Python API through polygraphy
     (onnx-fp32 -> fp32 and fp16 engines, onnx-int8-trt -> an int8 engine from its Q/DQ pairs), and ONNX
     Runtime's CUDA and TensorRT providers (what `edgecxr device parity --device ...` runs on a Jetson).
Each row: O/<row>.json (the full parity report), O/<row>.txt (as `device parity` prints it), and one line
of O/summary.md and O/summary.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from devices.parity import format_report, run_parity  # noqa: E402
from edgecxr.formats import trt_check  # noqa: E402
from edgecxr.utils.atomic import write_json_atomic  # noqa: E402
from edgecxr.formats.bundle import load_bundle  # noqa: E402
from edgecxr.devices import Classifier  # noqa: E402
from edgecxr.runtimes import Session  # noqa: E402

LATENCY_RUNS = 200


class TrtEngineSession(Session):
    """A TensorRT engine built from ONNX bytes by polygraphy, behind edgecxr's Session interface."""

    def __init__(self, onnx_bytes: bytes, precision: str, input_shape):
        import tensorrt as trt
        from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxBytes, TrtRunner

        flags = {"fp16": precision in ("fp16", "int8"), "int8": precision == "int8"}
        started = time.perf_counter()
        build = EngineFromNetwork(NetworkFromOnnxBytes(onnx_bytes), config=CreateConfig(**flags))
        self._runner = TrtRunner(build)
        self._runner.activate()
        self.build_s = time.perf_counter() - started
        self._name = self._runner.get_input_metadata().keys().__iter__().__next__()
        self.runtime, self.version, self.threads = "tensorrt", trt.__version__, None
        self.provider = f"TensorRT engine ({precision}), built by polygraphy in {self.build_s:.0f} s"
        self.input_dtype, self.input_shape = np.dtype(np.float32), tuple(input_shape)

    def run(self, x):
        return next(iter(self._runner.infer({self._name: np.ascontiguousarray(x)}).values()))

    def specs(self):
        raise NotImplementedError("a TensorRT engine is never written into a bundle")

    def close(self):
        self._runner.deactivate()


def _bundles(folder: Path) -> dict:
    return {b.name: b for b in sorted(folder.iterdir()) if (b / "manifest.json").is_file() and b.name.startswith("onnx-")}


def _latency_ms(clf: Classifier, image: Path) -> float:
    x, *_ = clf.prepare(image)
    for _ in range(10):
        clf.session.run(x)
    times = []
    for _ in range(LATENCY_RUNS):
        t0 = time.perf_counter()
        clf.session.run(x)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))


def _row(name: str, clf: Classifier, data: Path, out: Path, extra: dict | None = None) -> dict:
    report = run_parity(clf, data, split="test")
    report["row"] = name
    text = format_report(report)
    (out / f"{name}.txt").write_text(text + "\n")
    write_json_atomic(out / f"{name}.json", report)
    first = next(iter(sorted((data / "test").rglob("*.jpeg")) or sorted((data / "test").rglob("*.*"))))
    row = {"row": name, "runtime": clf.runtime["name"], "provider": clf.runtime["provider"],
           "images": report["n"], "agreement": report["agreement"], "flipped": len(report.get("flipped", [])),
           "passed": report["passed"], "p50_ms": _latency_ms(clf, first), **(extra or {})}
    print(f"{name}: {row['provider']}: agreement {row['agreement']:.4f}, {row['flipped']} flipped, "
          f"parity {'PASSED' if row['passed'] else 'FAILED'}, p50 {row['p50_ms']:.2f} ms", flush=True)
    return row


def cpu_part(bundles: dict, data: Path, out: Path) -> list[dict]:
    rows = []
    for name, folder in bundles.items():
        model = trt_check.load(folder)
        errors = [p.line() for p in trt_check.check_model(model) if p.error]
        verdict = "no quantization" if not trt_check.quantized(model) else ("clean" if not errors else f"{len(errors)} errors")
        print(f"{name}: TensorRT static check: {verdict}", flush=True)
        clf = Classifier.load(folder, runtime="onnxruntime", device="cpu")
        rows.append(_row(f"{name}.onnxruntime-cpu", clf, data, out, {"tensorrt_check": verdict}))
    return rows


def gpu_part(bundles: dict, data: Path, out: Path) -> list[dict]:
    import onnxruntime as ort

    rows = []
    engines = {"onnx-fp32": ("fp32", "fp16"), "onnx-int8-trt": ("int8",)}
    for name, folder in bundles.items():
        bundle = load_bundle(folder)
        for precision in engines.get(name, ()):
            shape = [1, *bundle.manifest["input"]["shape"][1:]]
            session = TrtEngineSession(bundle.model_source(), precision, shape)
            rows.append(_row(f"{name}.tensorrt-{precision}", Classifier(bundle, session), data, out,
                             {"engine_build_s": round(session.build_s, 1)}))
            session.close()
        providers = ort.get_available_providers()
        for device in ("cuda", "tensorrt", "tensorrt-fp16"):
            wanted = "CUDAExecutionProvider" if device == "cuda" else "TensorrtExecutionProvider"
            if wanted not in providers or (device == "tensorrt-fp16" and name != "onnx-fp32"):
                continue
            started = time.perf_counter()
            clf = Classifier.load(folder, runtime="onnxruntime", device=device)
            rows.append(_row(f"{name}.onnxruntime-{device}", clf, data, out,
                             {"session_s": round(time.perf_counter() - started, 1)}))
    return rows


def write_summary(rows: list[dict], out: Path, part: str) -> None:
    path = out / "summary.json"
    previous = json.loads(path.read_text())["rows"] if path.is_file() else []
    rows = [r for r in previous if r["row"] not in {n["row"] for n in rows}] + rows
    host = {"machine": platform.machine(), "python": platform.python_version(), "part": part,
            "date": time.strftime("%Y-%m-%d")}
    write_json_atomic(path, {"host": host, "rows": rows})
    lines = ["| row | runtime / provider | images | agreement | flipped | parity | p50 ms |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['row']} | {r['provider']} | {r['images']} | {r['agreement']:.4f} | {r['flipped']} | "
              f"{'PASSED' if r['passed'] else 'FAILED'} | {r['p50_ms']:.2f} |" for r in rows]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["cpu", "gpu"])
    parser.add_argument("--bundles", type=Path, required=True, help="folder of bundles (onnx-fp32, onnx-int8-trt, ...)")
    parser.add_argument("--data", type=Path, required=True, help="Kermany root whose test split is compared")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    bundles = _bundles(args.bundles)
    if not bundles:
        print(f"error: no onnx-* bundle in {args.bundles}; export onnx-fp32 and onnx-int8-trt first", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    rows = (cpu_part if args.part == "cpu" else gpu_part)(bundles, args.data, args.out)
    write_summary(rows, args.out, args.part)
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
