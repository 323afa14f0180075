"""Does a pruned model run faster on this CPU? XNNPACK's sparse inference against the dense model (issue 32.3).

Latency does not depend on what the weights learned, only on where the zeros are, so the pruned variants are made by
magnitude pruning the model's kernels without fine-tuning: every Conv2D/DepthwiseConv2D/Dense kernel to the
sparsity, as `edgecxr export --prune` does, or only the 1x1 convolutions (the layers XNNPACK's sparse path
computes, tfmot's PruneForLatencyOnXNNPack policy). Each is converted twice, plain and with
`tf.lite.Optimize.EXPERIMENTAL_SPARSITY` (sparse tensors in the flatbuffer), and timed in LiteRT's interpreter
(XNNPACK, 2 threads; default flags and `experimental_default_delegate_latest_features`) in interleaved
rounds; outputs of the sparse encoding are checked against the plain one.

    python benchmarks/sparse_xnnpack.py --model edgecxr/default/model.keras --out benchmarks/results/sparse-xnnpack-DATE
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
PRUNABLE = ("Conv2D", "DepthwiseConv2D", "Dense")


def magnitude_prune(model, sparsity: float, only_1x1: bool) -> dict:
    """Zero the smallest |w| of each prunable kernel (per layer, like tfmot's prune_low_magnitude); returns the
    zero share over the pruned kernels."""
    zeros = total = 0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind not in PRUNABLE or not layer.get_weights():
            continue
        weights = layer.get_weights()
        kernel = weights[0]
        if only_1x1 and (kind != "Conv2D" or kernel.shape[:2] != (1, 1)):
            continue
        k = int(round(sparsity * kernel.size))
        if k:
            cut = np.partition(np.abs(kernel).ravel(), k - 1)[k - 1]
            kernel = np.where(np.abs(kernel) <= cut, 0, kernel).astype(kernel.dtype)
        layer.set_weights([kernel, *weights[1:]])
        zeros, total = zeros + int((kernel == 0).sum()), total + kernel.size
    return {"pruned_kernel_zero_share": zeros / max(total, 1), "pruned_weights": total}


def convert(model, sparse: bool) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if sparse:
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    return converter.convert()


def interpreter(content: bytes, latest: bool = False):
    """latest: LiteRT's experimental_default_delegate_latest_features (XNNPACK's flag-protected features)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=content, num_threads=2, experimental_default_delegate_latest_features=latest)
    it.allocate_tensors()
    return it


def run(it, x) -> np.ndarray:
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"]).copy()


def time_all(models: dict, x, rounds: int, calls: int) -> dict:
    """Median ms per call, rounds interleaved across models so that a busy moment hits every model alike."""
    its = {(name, latest): interpreter(content, latest) for name, content in models.items() for latest in (False, True)}
    for it in its.values():
        for _ in range(20):
            run(it, x)
    ms = {name: [] for name in its}
    for _ in range(rounds):
        for name, it in its.items():
            for _ in range(calls):
                t0 = time.perf_counter()
                run(it, x)
                ms[name].append((time.perf_counter() - t0) * 1e3)
    return {name: {"p50_ms": float(np.median(v)), "p90_ms": float(np.percentile(v, 90)), "calls": len(v)}
            for name, v in ms.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("edgecxr/default/model.keras"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--calls", type=int, default=25)
    args = ap.parse_args(argv)
    from edgecxr.formats.kerasfile import load_keras

    variants = {"dense": None, "all-layers 0.5": (0.5, False), "1x1 0.5": (0.5, True), "1x1 0.75": (0.75, True),
                "1x1 0.9": (0.9, True)}
    models, facts = {}, {}
    for name, plan in variants.items():
        model, _ = load_keras(args.model)
        facts[name] = magnitude_prune(model, *plan) if plan else {}
        for sparse in ((False,) if plan is None else (False, True)):
            key = f"{name}{' sparse-encoded' if sparse else ''}"
            models[key] = convert(model, sparse)
            facts[key] = {**facts[name], "bytes": len(models[key]), "gzip_bytes": len(gzip.compress(models[key]))}
    size = interpreter(models["dense"]).get_input_details()[0]["shape"]
    x = np.random.default_rng(0).uniform(-1, 1, size).astype(np.float32)
    for name, plan in variants.items():  # the sparse encoding must compute what the plain one does
        if plan:
            a, b = run(interpreter(models[name]), x), run(interpreter(models[f"{name} sparse-encoded"]), x)
            facts[f"{name} sparse-encoded"]["max_abs_diff_vs_plain"] = float(np.abs(a - b).max())
    timing = time_all(models, x, args.rounds, args.calls)
    base = timing[("dense", False)]["p50_ms"]
    rows = [{"variant": k, "delegate": "latest features" if latest else "default", **facts[k], **t,
             "speedup_vs_dense": base / t["p50_ms"]} for (k, latest), t in timing.items()]
    args.out.mkdir(parents=True, exist_ok=True)
    from ai_edge_litert import __version__ as litert

    meta = {"model": str(args.model), "cpu": platform.processor() or platform.machine(), "litert": litert,
            "threads": 2, "rounds": args.rounds, "calls_per_round": args.calls}
    (args.out / "sparse_xnnpack.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = ["| variant | XNNPACK | zero share of pruned kernels | size KB | gzip KB | p50 ms | p90 ms | speed-up vs dense |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['variant']} | {r['delegate']} | {r.get('pruned_kernel_zero_share', 0):.3f} | {r['bytes'] / 1024:.0f} | "
              f"{r['gzip_bytes'] / 1024:.0f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['speedup_vs_dense']:.2f}x |"
              for r in rows]
    (args.out / "sparse_xnnpack.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
