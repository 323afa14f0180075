"""End to end on full-size X-rays against the model call alone (issue 17: at most 2x for tflite-int8).

For each full-size JPEG, `rounds` times: read + decode + preprocess + model call, once with the reduced-scale
JPEG decode the device uses (PreprocessSpec.read) and once decoding every pixel (as before it), and the model
call alone on the same input; then a folder run (`predict_batch`, 2 decoding threads) per image. Medians over
every call; nothing else should run on the machine.

    python benchmarks/fullres_latency.py BUNDLE --data ../shared/data/kermany-val-fullres --out benchmarks/results/x.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def measure(clf, paths, rounds: int) -> dict:
    from edgecxr.data.images import read_image

    spec, clock = clf.spec, time.perf_counter
    decoders = {"reduced_decode": spec.read, "full_decode": read_image}
    ms = {name: [] for name in [*decoders, "model_call"]}
    for _ in range(rounds):
        for path in paths:
            for name, read in decoders.items():
                t0 = clock()
                x = clf.from_pixels(spec.to_pixels(read(path)))
                clf.infer(x)
                ms[name].append((clock() - t0) * 1e3)
            t0 = clock()
            clf.infer(x)
            ms["model_call"].append((clock() - t0) * 1e3)
    p50 = {name: float(np.median(v)) for name, v in ms.items()}
    batch = []  # a folder run: decoding in worker threads overlaps the model calls
    for _ in range(rounds):
        t0 = clock()
        clf.predict_batch(paths, workers=2)
        batch.append((clock() - t0) * 1e3 / len(paths))
    p50["folder_run_per_image"] = float(np.median(batch))
    return {"p50_ms": p50, "ratio_to_model_call": {k: p50[k] / p50["model_call"]
                                                    for k in (*decoders, "folder_run_per_image")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--data", required=True, help="folder of full-size JPEGs (searched recursively)")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from edgecxr.utils.cpu import cpu_info
    from edgecxr.devices import Classifier

    clf = Classifier.load(args.bundle, threads=args.threads)
    paths = sorted(Path(args.data).rglob("*.jpeg")) + sorted(Path(args.data).rglob("*.jpg"))
    if not paths:
        raise SystemExit(f"{args.data}: no JPEG files")
    for path in paths:  # warm-up: file cache, runtime
        clf.predict(path)
    result = {"bundle": args.bundle, "target": clf.bundle.manifest["target"], "runtime": clf.runtime,
              "images": len(paths), "rounds": args.rounds, "cpu": cpu_info(), **measure(clf, paths, args.rounds)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    p, r = result["p50_ms"], result["ratio_to_model_call"]
    print(f"{result['target']} on {clf.runtime['name']} ({clf.runtime['provider']}), {len(paths)} full-size JPEGs x {args.rounds}")
    print(f"model call alone       p50 {p['model_call']:.2f} ms")
    print(f"end to end, reduced    p50 {p['reduced_decode']:.2f} ms  ({r['reduced_decode']:.2f}x the model call)")
    print(f"end to end, full       p50 {p['full_decode']:.2f} ms  ({r['full_decode']:.2f}x the model call)")
    print(f"folder run, per image  p50 {p['folder_run_per_image']:.2f} ms  ({r['folder_run_per_image']:.2f}x the model call; "
          "decoding overlaps the model)")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
