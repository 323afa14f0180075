"""Peak memory and images/s of one training epoch's input pipeline: streamed from disk vs loaded into memory.

    python benchmarks/streaming.py [--data ../shared/data/kermany-cxr-224] [--arch mobilenet_v2] [--epochs 2]
                                   [--out benchmarks/results/streaming-DATE]

For the training split and for the same split listed four times (four symlinks per image in a folder under
/tmp, removed afterwards: the CSV reader refuses repeated rows), each input path runs in a fresh process:

  streamed   files decoded in the tf.data pipeline, in parallel (the default of `edgecxr train`)
  cached     streamed, with --cache (epoch 1 decodes and writes the cache, later epochs read it)
  in-memory  every image decoded into one array first (--in-memory; the path before streaming)

The pipeline is exactly what `edgecxr train` feeds model.fit: the architecture's PreprocessSpec, the
'standard' augmentation, shuffled batches of 32, class weights. Each epoch is iterated to the end (no model:
this measures the input side). Every file is read once beforehand, so all paths start with the files in the
page cache (the first path measured would otherwise pay the cold reads). Reported per epoch: seconds and images/s (in-memory epoch 1 includes loading
the array), the process's peak RSS and its peak anonymous memory (RSS without mapped file pages, which the
kernel can drop: TensorFlow maps a cache file it reads). Writes results.json and README.md in --out.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "kermany-cxr-224"
MODES = ("streamed", "cached", "in-memory")


def measure(data: str, mode: str, arch: str, epochs: int, cache: str | None) -> dict:
    """One input path in this process: per-epoch seconds and images/s, and the peak RSS."""
    import numpy as np

    from edgecxr.data import folders as D
    from edgecxr.training import import_tf
    from edgecxr.training.augment import get_preset
    from edgecxr.training.stream import Inputs
    from edgecxr.training.train import TrainConfig, batch_inputs, class_weights

    tf, _ = import_tf()
    spec = TrainConfig(arch=arch).spec()
    samples = D.list_split(data, "train")
    labels = np.array([s.label for s in samples])
    inputs = Inputs(tf, spec, seed=0, cache=cache if mode == "cached" else None, in_memory=mode == "in-memory")
    rss_start = _peak_rss_mb()
    sampler = AnonSampler()
    sampler.start()
    epochs_out = []
    start = time.perf_counter()
    elements = inputs.elements(samples, "train", shuffle=True)
    ds = batch_inputs(tf, elements.map(lambda x, y, i: (x, y)), spec, 32, get_preset("standard"),
                      weights=class_weights(labels), with_weights=True)
    for _ in range(epochs):
        seen = 0
        for x, y, w in ds:
            seen += int(x.shape[0])
        seconds = time.perf_counter() - start
        epochs_out.append({"images": seen, "seconds": round(seconds, 2), "images_per_s": round(seen / seconds, 1)})
        start = time.perf_counter()
    sampler.stop.set()
    sampler.join()
    return {"mode": mode, "files": len(samples), "size": spec.size, "epochs": epochs_out,
            "peak_rss_mb": round(_peak_rss_mb()), "peak_anon_mb": round(sampler.peak["RssAnon"] / 1024),
            "peak_file_mb": round(sampler.peak["RssFile"] / 1024), "rss_before_pipeline_mb": round(rss_start)}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


class AnonSampler(threading.Thread):
    """Peak RssAnon (the process's own memory) and RssFile (mapped file pages, such as a read cache file:
    page cache the kernel can drop) from /proc/self/status, sampled every 0.1 s."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.peak = {"RssAnon": 0, "RssFile": 0}

    def run(self):
        while not self.stop.wait(0.1):
            for line in Path("/proc/self/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in self.peak:
                    self.peak[key] = max(self.peak[key], int(value.split()[0]))


def warm_page_cache(data: Path) -> None:
    """Read every training file once, so that every input path meets the files in the OS page cache (the first
    one measured would otherwise pay the cold reads for all)."""
    for f in sorted((data / "train").rglob("*")):
        if f.is_file():
            f.read_bytes()


def four_times(data: Path, folder: Path) -> Path:
    """ROOT/train/CLASS/copyK-NAME -> the real file, K = 0..3: each training image listed four times."""
    for cls_dir in sorted((data / "train").iterdir()):
        target = folder / "train" / cls_dir.name
        target.mkdir(parents=True)
        for f in sorted(cls_dir.iterdir()):
            for k in range(4):
                (target / f"copy{k}-{f.name}").symlink_to(f)
    return folder


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--arch", default="mobilenet_v2")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results" / f"streaming-{dt.date.today():%Y-%m-%d}")
    parser.add_argument("--one", nargs=2, metavar=("DATA", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], args.arch, args.epochs, args.cache)))
        return
    results = []
    warm_page_cache(args.data)
    with tempfile.TemporaryDirectory(prefix="edgecxr-streaming-") as tmp:
        sets = {"train": args.data, "train x4": four_times(args.data, Path(tmp) / "x4")}
        for name, root in sets.items():
            for mode in MODES:
                cache = Path(tmp) / f"cache-{len(results)}"
                cmd = [sys.executable, __file__, "--one", str(root), mode, "--arch", args.arch,
                       "--epochs", str(args.epochs), "--cache", str(cache)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode:
                    raise SystemExit(f"{name} {mode} failed:\n{proc.stderr[-3000:]}")
                row = {"set": name, **json.loads(proc.stdout.strip().splitlines()[-1])}
                shutil.rmtree(cache, ignore_errors=True)
                results.append(row)
                print(_line(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join(["python", "benchmarks/streaming.py", *sys.argv[1:]]), "date": str(dt.date.today()),
            "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "arch": args.arch, "epochs": args.epochs}
    (args.out / "results.json").write_text(json.dumps({**meta, "results": results}, indent=2) + "\n")
    (args.out / "README.md").write_text(_markdown(meta, results))
    print(f"written to {args.out}")


def _line(row) -> str:
    per_epoch = "  ".join(f"epoch {i + 1}: {e['seconds']:.1f} s {e['images_per_s']:.0f} img/s"
                          for i, e in enumerate(row["epochs"]))
    return (f"{row['set']:9s} {row['mode']:10s} {row['files']:6d} files  peak RSS {row['peak_rss_mb']:6d} MB "
            f"(anonymous {row['peak_anon_mb']:6d} MB)  {per_epoch}")


def _markdown(meta, results) -> str:
    epochs = range(meta["epochs"])
    head = "| set | input | files | peak RSS MB | peak anonymous MB | " + " | ".join(f"epoch {i + 1} s | epoch {i + 1} img/s" for i in epochs)
    lines = [f"# Streamed training input ({meta['date']})", "", f"Command: `{meta['command']}`", "",
             f"Host {meta['host']}, {meta['cpus']} CPUs (shared with other jobs), Python {meta['python']}, "
             f"{meta['arch']} preprocessing, 'standard' augmentation, batches of 32.", "",
             head + " |", "|" + "---|" * (5 + 2 * meta["epochs"])]
    for r in results:
        cells = " | ".join(f"{e['seconds']:.1f} | {e['images_per_s']:.0f}" for e in r["epochs"])
        lines.append(f"| {r['set']} | {r['mode']} | {r['files']} | {r['peak_rss_mb']} | {r['peak_anon_mb']} | {cells} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
