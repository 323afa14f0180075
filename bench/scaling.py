"""How each cost grows.

* ``batch_scaling``: latency and memory at batch 1, 4, 16 for the float Keras model and for
  every bundle whose runtime can resize the batch (LiteRT ``resize_tensor_input``, OpenVINO
  ``reshape``, ONNX Runtime when the input's batch axis is dynamic). Each (model, batch) runs
  in a fresh process, so its peak RSS belongs to that model and batch alone.
* ``arch_scaling``: export time and bundle size per architecture, for untrained models built
  with ``training.models.build_model`` (size and conversion time do not depend on the
  weights), exported to a few targets with calibration on a small subset.

    python -m edgecxr.bench.scaling --data ROOT --out DIR [--arch NAME ...] [--target T ...]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BATCHES = (1, 4, 16)
ARCHS = ("mobilenet", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "resnet50")
ARCH_TARGETS = ("tflite-fp32", "tflite-int8", "onnx-fp32", "openvino-fp32")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- memory of this process --------------------------------------------------------
def _status_mb(key: str) -> float | None:
    """VmRSS / VmHWM (peak) of this process in MB, from /proc (Linux); ru_maxrss elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    if key == "VmHWM":
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2**20 if sys.platform == "darwin" else rss / 1024
    return None


# -- the probe: one model, one batch size, in its own process ---------------------------
class _Model:
    """A model opened for a fixed batch size; .run(x) with x float32 (B, H, W, C)."""

    def __init__(self, kind: str, path: str, batch: int, threads: int, precision: str):
        self.kind = kind
        if kind == "keras":
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
            from edgecxr.export.loading import load_source

            fn = load_source(path).fn
            self.runtime = f"tensorflow {tf.__version__}"
            self.run = lambda x: np.asarray(fn(x))  # noqa: E731
            self.nchw = False
        else:
            self._open_runtime(kind, path, batch, threads, precision)

    def _open_runtime(self, kind, path, batch, threads, precision):
        """A bundle model through the device's runtime layer, its batch axis resized where the runtime can."""
        from edgecxr.formats.targets import FAMILIES
        from edgecxr.runtimes import build_runtime, is_nchw, open_session, quantize_input

        if kind not in FAMILIES:
            raise ValueError(kind)
        session = open_session(path, kind, runtime=build_runtime(kind), threads=threads, precision=precision, batch=batch)
        fixed = session.input_shape[0]
        if fixed is not None and fixed != batch:
            raise _NotResizable(f"the {kind} input has a fixed batch of {fixed} (export it with a dynamic batch axis)")
        self.runtime = f"{session.runtime} {session.version}"
        q_in, dtype = session.quantization[0], session.input_dtype
        self.run = lambda x: session.run(quantize_input(x, q_in, dtype))  # noqa: E731
        self.nchw = is_nchw(session.input_shape, 3) or is_nchw(session.input_shape, 1)


class _NotResizable(Exception):
    pass


def _import_runtime(kind: str) -> None:
    import importlib

    if kind == "keras":
        importlib.import_module("tensorflow")
        importlib.import_module("edgecxr.export.loading")
    else:  # the runtime's own import, outside the timed load
        from edgecxr.runtimes import RUNTIMES, build_runtime

        importlib.import_module(RUNTIMES[build_runtime(kind)].module)


def probe(kind: str, path: str, batch: int, inputs: np.ndarray, *, threads: int, runs: int, warmup: int = 3,
          precision: str = "fp32") -> dict:
    """Latency and memory of one model at one batch size, measured in this process.

    rss_runtime_mb: after importing the runtime (what the process costs before any model);
    model_mem_mb: peak RSS minus that, i.e. the model, its compiled plan and the batch's activations.
    """
    _import_runtime(kind)
    base = _status_mb("VmRSS")
    t0 = time.perf_counter()
    model = _Model(kind, path, batch, threads, precision)
    load_s = time.perf_counter() - t0
    loaded = _status_mb("VmRSS")
    reps = int(np.ceil(batch / len(inputs)))
    x = np.ascontiguousarray(np.concatenate([inputs] * reps)[:batch].astype(np.float32))
    if model.nchw:
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    for _ in range(warmup):
        model.run(x)
    ms = []
    for _ in range(runs):
        t = time.perf_counter()
        model.run(x)
        ms.append((time.perf_counter() - t) * 1e3)
    ms = np.asarray(ms)
    peak = _status_mb("VmHWM")
    p50 = float(np.percentile(ms, 50))
    return {"batch": batch, "supported": True, "runtime": model.runtime, "runs": runs, "threads": threads,
            "p50_ms": p50, "p90_ms": float(np.percentile(ms, 90)), "per_image_ms": p50 / batch,
            "images_per_s": 1e3 * batch / p50 if p50 else None, "load_s": load_s,
            "rss_runtime_mb": base, "rss_loaded_mb": loaded, "peak_rss_mb": peak,
            "model_mem_mb": (peak - base) if peak is not None and base is not None else None}


def _probe_main(arg: str) -> None:
    a = json.loads(arg)
    inputs = np.load(a["inputs"])
    try:
        out = probe(a["kind"], a["path"], a["batch"], inputs, threads=a["threads"], runs=a["runs"],
                    warmup=a["warmup"], precision=a["precision"])
    except _NotResizable as exc:
        out = {"batch": a["batch"], "supported": False, "reason": str(exc)}
    print("EDGECXR-PROBE " + json.dumps(out), flush=True)


def run_probe(kind: str, path, batch: int, inputs_npy: Path, *, threads: int, runs: int, warmup: int = 3,
              precision: str = "fp32", timeout: float = 600) -> dict:
    """`probe` in a fresh Python process (its own peak RSS); failures come back as {"error": ...}."""
    args = json.dumps({"kind": kind, "path": str(Path(path).resolve()), "batch": batch,
                       "inputs": str(Path(inputs_npy).resolve()), "threads": threads, "runs": runs,
                       "warmup": warmup, "precision": precision})
    code = "import sys\nfrom edgecxr.bench.scaling import _probe_main\n_probe_main(sys.argv[1])\n"
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    with tempfile.TemporaryDirectory(prefix="edgecxr-probe-") as cwd:  # no source checkout on sys.path[0]
        try:
            proc = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True, cwd=cwd,
                                  env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"batch": batch, "supported": None, "error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("EDGECXR-PROBE "):
            return json.loads(line[len("EDGECXR-PROBE "):])
    last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"batch": batch, "supported": None, "error": last[:300]}


def batch_scaling(models: list[dict], inputs: np.ndarray | None = None, *, batches=BATCHES, threads: int = 2,
                  runs: int = 50, warmup: int = 3) -> list[dict]:
    """models: [{"name", "kind" (keras|tflite|onnx|openvino), "path", "precision"[, "inputs"]}] -> one entry each.

    inputs: float32 model inputs (N, H, W, C) of real images, used for models without their own "inputs".

    Every (model, batch) runs in its own process; larger batches get fewer timed runs
    (at least 5) so a batch-16 ResNet does not take minutes.
    """
    out = []
    with tempfile.TemporaryDirectory(prefix="edgecxr-scaling-") as tmp:
        for i, m in enumerate(models):
            npy = Path(tmp) / f"inputs{i}.npy"
            x = m.get("inputs") if m.get("inputs") is not None else inputs
            np.save(npy, np.asarray(x[:max(batches)], np.float32))
            rows = []
            for b in batches:
                _say(f"scaling {m['name']}: batch {b}")
                r = run_probe(m["kind"], m["path"], b, npy, threads=threads, runs=max(5, runs // b), warmup=warmup,
                              precision=m.get("precision", "fp32"))
                rows.append(r)
                if r.get("supported") is False:
                    break  # the runtime cannot change this model's batch: larger ones will not work either
            entry = {"name": m["name"], "kind": m["kind"], "precision": m.get("precision"), "batches": rows}
            ok = [r for r in rows if r.get("supported")]
            if len(ok) >= 2:
                first, last = ok[0], ok[-1]
                entry["latency_growth"] = last["p50_ms"] / first["p50_ms"]  # per call, batch 16 vs batch 1
                entry["per_image_speedup"] = first["per_image_ms"] / last["per_image_ms"]
                if first.get("model_mem_mb") is not None and last.get("model_mem_mb") is not None:
                    entry["memory_growth_mb"] = last["model_mem_mb"] - first["model_mem_mb"]
            out.append(entry)
    return out


# -- export time and size per architecture ---------------------------------------------------
def arch_scaling(data_root, out_dir, *, archs=ARCHS, targets=ARCH_TARGETS, calib_count: int = 32,
                 classes=("NORMAL", "PNEUMONIA"), size: int | None = None) -> list[dict]:
    """Build each architecture untrained, save it, export it to each target (one export call per target,
    so each time is what `edgecxr export --target T` costs). The int8 validation gate is opened wide
    (max drops 1.0): an untrained model's decisions are noise, and the time measured is the plain
    post-training quantization path, not an accuracy-recovery search."""
    from edgecxr.export.pipeline import export_model
    from edgecxr.formats.modelinfo import ModelInfo, save_info
    from edgecxr.training.models import build_model, get_entry

    out_dir = Path(out_dir)
    results = []
    for arch in archs:
        entry = get_entry(arch)
        spec = entry.spec if size is None else type(entry.spec).from_dict({**entry.spec.to_dict(), "size": size})
        row = {"arch": arch, "input": list(spec.input_shape), "targets": {}}
        try:
            t0 = time.perf_counter()
            model, _ = build_model(arch, size=spec.size, weights="none")
            folder = out_dir / "models" / arch
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / "model.keras"
            model.save(path)
            save_info(path, ModelInfo(preprocess=spec, arch=arch, threshold_method="untrained (scaling run)"))
            row.update(params=int(model.count_params()), keras_mb=path.stat().st_size / 2**20,
                       build_s=time.perf_counter() - t0)
            del model
        except Exception as exc:  # noqa: BLE001 - one architecture failing must not stop the others
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            results.append(row)
            continue
        for target in targets:
            _say(f"scaling {arch}: export {target}")
            t0 = time.perf_counter()
            try:
                bundle = export_model(path, [target], data_root, out_dir / "bundles" / arch, calib_count=calib_count,
                                      max_recall_drop=1.0, max_accuracy_drop=1.0, classes=classes, overwrite=True)[0]
                seconds = time.perf_counter() - t0
                size_info = json.loads((bundle / "manifest.json").read_text())["optimization"]["size"]
                row["targets"][target] = {"export_s": seconds, "size_mb": size_info["bytes"] / 2**20,
                                          "size_gz_mb": size_info["gzip_bytes"] / 2**20}
            except Exception as exc:  # noqa: BLE001
                row["targets"][target] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}",
                                          "export_s": time.perf_counter() - t0}
        results.append(row)
    return results


# -- Markdown ------------------------------------------------------------------------------
def _f(v, fmt=".2f"):
    return "–" if v is None else format(v, fmt)


def format_batch_scaling(entries: list[dict]) -> str:
    lines = ["| model | runtime | batch | p50 ms/call | ms/image | images/s | runtime RSS MB | peak RSS MB | model + activations MB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for e in entries:
        for r in e["batches"]:
            if r.get("supported"):
                lines.append(f"| {e['name']} | {r['runtime']} | {r['batch']} | {_f(r['p50_ms'])} | {_f(r['per_image_ms'])} | "
                             f"{_f(r['images_per_s'], '.0f')} | {_f(r['rss_runtime_mb'], '.0f')} | {_f(r['peak_rss_mb'], '.0f')} | "
                             f"{_f(r['model_mem_mb'], '.1f')} |")
            else:
                lines.append(f"| {e['name']} | – | {r['batch']} | {r.get('reason') or r.get('error')} | | | | | |")
    return "\n".join(lines)


def format_arch_scaling(rows: list[dict], targets=ARCH_TARGETS) -> str:
    head = "| architecture | input | params (M) | .keras MB | " + " | ".join(f"{t} MB (gz) / export s" for t in targets) + " |"
    lines = [head, "|---|---|---:|---:|" + "---|" * len(targets)]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['arch']} | | | | {r['error']} |" + " |" * (len(targets) - 1))
            continue
        cells = []
        for t in targets:
            c = r["targets"].get(t)
            if c is None:
                cells.append("–")
            elif c.get("error"):
                cells.append(f"error: {c['error'][:80]}")
            else:
                cells.append(f"{c['size_mb']:.2f} ({c['size_gz_mb']:.2f}) / {c['export_s']:.1f}")
        lines.append(f"| {r['arch']} | {r['input'][0]} px | {r['params'] / 1e6:.2f} | {r['keras_mb']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- command line: python -m edgecxr.bench.scaling --------------------------------------
def main(argv=None) -> int:
    import argparse
    import datetime as dt

    from edgecxr.utils.atomic import write_json_atomic, write_text_atomic

    p = argparse.ArgumentParser(prog="python -m edgecxr.bench.scaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="Kermany-layout data root")
    p.add_argument("--out", required=True, help="output folder (scaling.json, scaling.md, models/, bundles/)")
    p.add_argument("--arch", action="append", help=f"repeatable (default: {', '.join(ARCHS)})")
    p.add_argument("--target", action="append", help=f"repeatable (default: {', '.join(ARCH_TARGETS)})")
    p.add_argument("--size", type=int, help="input size override (default: each architecture's)")
    p.add_argument("--test-images", type=int, default=16, help="test images for the bundles' reference")
    p.add_argument("--train-images", type=int, default=64, help="train images (calibration + validation gate)")
    p.add_argument("--calib-count", type=int, default=32)
    p.add_argument("--batch", action="store_true", help="also time batch 1/4/16 for every exported bundle")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--runs", type=int, default=50)
    a = p.parse_args(argv)
    from edgecxr.bench.run import make_subset, machine_info

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    targets = tuple(a.target or ARCH_TARGETS)
    with tempfile.TemporaryDirectory(prefix="edgecxr-scaling-data-") as tmp:
        root = make_subset(a.data, Path(tmp) / "data", test=a.test_images, train=a.train_images)
        rows = arch_scaling(root, out, archs=tuple(a.arch or ARCHS), targets=targets, calib_count=a.calib_count,
                            size=a.size)
        result = {"architectures": rows, "machine": machine_info(), "command": " ".join(sys.argv),
                  "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        md = ["# Export cost per architecture (untrained weights)", "", format_arch_scaling(rows, targets)]
        if a.batch:
            result["batch_scaling"] = batch_scaling(_arch_batch_models(out, rows, targets, root),
                                                    threads=a.threads or _threads(), runs=a.runs)
            md += ["", "# Batch scaling", "", format_batch_scaling(result["batch_scaling"])]
    write_json_atomic(out / "scaling.json", result)
    write_text_atomic(out / "scaling.md", "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


def _threads() -> int:
    from edgecxr.runtimes import default_threads

    return default_threads()


def _arch_batch_models(out: Path, rows, targets, root):
    from edgecxr.formats.bundle import load_bundle
    from edgecxr.formats.targets import TARGETS

    from edgecxr.formats.modelinfo import load_info

    models = []
    for r in rows:
        if r.get("error"):
            continue
        keras = out / "models" / r["arch"] / "model.keras"
        x = test_inputs(root, load_info(keras).preprocess, max(BATCHES))
        models.append({"name": f"{r['arch']} keras", "kind": "keras", "path": str(keras), "precision": "fp32", "inputs": x})
        for t in targets:
            b = out / "bundles" / r["arch"] / t
            if (b / "manifest.json").is_file() and not r["targets"].get(t, {}).get("error"):
                models.append({"name": f"{r['arch']} {t}", "kind": TARGETS[t].family,
                               "path": str(load_bundle(b).model_path), "precision": TARGETS[t].precision, "inputs": x})
    return models


def test_inputs(root, spec, count: int) -> np.ndarray:
    """`count` real test images, preprocessed to float32 model inputs (both classes, spread over the split)."""
    from edgecxr.data.folders import list_split, load_pixels

    samples = list_split(root, "test")
    step = max(1, len(samples) // count)
    pixels = load_pixels(samples[::step][:count], spec)[0]
    return spec.scale_pixels(pixels).astype(np.float32)


test_inputs.__test__ = False  # not a pytest test


if __name__ == "__main__":
    sys.exit(main())
