"""Latency, throughput, cold start, memory and sustained-load drift of a bundle on this device.

Every number comes from real test images (decoded and preprocessed once for
the model-call timings). ``latency_ms`` times ``Classifier.infer`` (quantize,
runtime call, dequantize, under the lock); ``bare_invoke_ms`` times the
runtime's own call (input already set, nothing else timed), alternating call by
call with the runner in the same run, so ``overhead_pct`` compares like with like.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgecxr.data.folders import list_site
from edgecxr.utils.errors import DataError, EdgecxrError

from edgecxr.devices.classifier import Classifier
from edgecxr.runtimes import runtime_notes

SAMPLE = Path(__file__).resolve().parents[1] / "edgecxr" / "sample"
if not SAMPLE.is_dir():  # installed (non-editable): the sample ships inside the edgecxr package
    import edgecxr

    SAMPLE = Path(edgecxr.__file__).parent / "sample"


def summary(ms) -> dict:
    ms = np.asarray(ms, np.float64)
    return {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()), "std": float(ms.std()),
            "min": float(ms.min()), "n": int(ms.size)}


def peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def bench_images(data=None, split: str = "test", limit: int = 64) -> list[Path]:
    """Real images to time: `limit` spread over the split of `data` (default: the shipped sample), or over a
    site's folder of X-rays (see list_site)."""
    root = Path(data) if data else SAMPLE
    samples = list_site(root, split)
    step = max(1, len(samples) // limit)
    return [s.path for s in samples[::step][:limit]]


def cpu_temperature() -> float | None:
    """°C of the first thermal zone (Raspberry Pi / Jetson), or None."""
    try:
        return int(Path("/sys/class/thermal/thermal_zone0/temp").read_text()) / 1000
    except (OSError, ValueError):
        return None


def cold_start(bundle_path, image: Path, *, runtime=None, threads=None, device=None, timeout=120) -> dict:
    """Process start to first result, in a fresh Python process that loads the bundle and classifies one image."""
    code = (
        "import sys, json, resource\n"
        "from edgecxr.devices import Classifier\n"
        "a = json.loads(sys.argv[1])\n"
        "c = Classifier.load(a['bundle'], runtime=a['runtime'], threads=a['threads'], device=a['device'])\n"
        "r = c.predict(a['image'])\n"
        "print(json.dumps({'probability': r.probability, 'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,"
        " 'tensorflow_imported': 'tensorflow' in sys.modules}), flush=True)\n"
    )
    args = json.dumps({"bundle": str(Path(bundle_path).resolve()), "image": str(Path(image).resolve()), "runtime": runtime, "threads": threads,
                       "device": device})
    # An empty working folder: `python -c` puts the cwd first on sys.path, and a source checkout
    # there would shadow the installed package.
    with tempfile.TemporaryDirectory(prefix="edgecxr-cold-") as cwd:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", code, args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=cwd)
        try:
            line = proc.stdout.readline()
            seconds = time.perf_counter() - t0
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise EdgecxrError(f"cold-start process did not finish in {timeout} s") from None
    if not line.strip():
        last = (err.strip().splitlines() or ["no output"])[-1]
        raise EdgecxrError(f"cold-start process failed: {last}")
    child = json.loads(line)
    return {"cold_start_s": seconds, "cold_start_rss_mb": child["rss_mb"],
            "cold_start_tensorflow_imported": child["tensorflow_imported"]}


def run_bench(clf: Classifier, *, data=None, split: str = "test", warmup: int = 10, runs: int = 200,
              duration: float | None = None, cold: bool = True, images: int = 64) -> dict:
    """All benchmark numbers for a loaded classifier (see the module docstring)."""
    if runs < 1 or warmup < 0:
        raise DataError("--runs must be at least 1 and --warmup at least 0")
    paths = bench_images(data, split, images)
    inputs = [clf.prepare(p)[0] for p in paths]
    for i in range(warmup):
        clf.infer(inputs[i % len(inputs)])
    clf.session.bare_loop(inputs[0], max(warmup, 1))

    # model call vs bare runtime call, alternating call by call so both see the same machine state
    runner, bare = [], []
    fixed = inputs[0]
    for i in range(runs):
        runner.append(clf.infer(inputs[i % len(inputs)])[1])
        bare.append(float(clf.session.bare_loop(fixed, 1)[0]))
    lat, bare_s = summary(runner), summary(bare)

    # end to end, one image after the other: read + decode + preprocess + model call
    e2e = []
    for i in range(min(runs, 4 * len(paths))):
        t0 = time.perf_counter()
        clf.predict(paths[i % len(paths)])
        e2e.append((time.perf_counter() - t0) * 1e3)
    # pipelined throughput: decoding in threads overlaps the model call
    t0 = time.perf_counter()
    clf.predict_batch(paths * max(1, 128 // len(paths)))
    n_batch = len(paths) * max(1, 128 // len(paths))
    pipelined = n_batch / (time.perf_counter() - t0)

    result = {
        "bundle": {"path": str(clf.bundle.path), "target": clf.bundle.manifest["target"],
                   "sha256": clf.bundle.manifest["sha256"]},
        "runtime": clf.runtime,
        "threads": clf.session.threads,
        "images": {"count": len(paths), "source": str(data or SAMPLE), "split": split},
        "warmup": warmup,
        "runs": runs,
        "latency_ms": lat,
        "bare_invoke_ms": bare_s,
        "overhead_pct": 100.0 * (lat["p50"] / bare_s["p50"] - 1.0) if bare_s["p50"] else None,
        "end_to_end_ms": summary(e2e),
        "throughput": {"model_ips": 1e3 / lat["mean"], "end_to_end_ips": 1e3 / float(np.mean(e2e)),
                       "pipelined_ips": pipelined},
    }
    if duration:
        result["sustained"] = sustained(clf, inputs, duration)
    if cold:
        result.update(cold_start(clf.bundle.path, paths[0], runtime=clf.runtime["name"], threads=clf.session.threads,
                                 device=clf.device))
    result["peak_rss_mb"] = peak_rss_mb()
    from edgecxr.utils.cpu import host_info

    result["host"] = host_info()
    return result


def sustained(clf: Classifier, inputs, duration: float, windows: int = 20) -> dict:
    """Run the model call for `duration` s in `windows` equal windows; drift = last 20 % vs first 20 % p50."""
    window_s = duration / windows
    per_window, temps = [], [cpu_temperature()]
    i = 0
    end = time.perf_counter() + duration
    while time.perf_counter() < end:
        stop = min(end, time.perf_counter() + window_s)
        ms = []
        while time.perf_counter() < stop:
            ms.append(clf.infer(inputs[i % len(inputs)])[1])
            i += 1
        if ms:
            per_window.append(ms)
    temps.append(cpu_temperature())
    p50 = [float(np.median(w)) for w in per_window]
    k = max(1, len(p50) // 5)
    first, last = float(np.median(p50[:k])), float(np.median(p50[-k:]))
    drift = 100.0 * (last / first - 1.0) if first else 0.0
    return {"seconds": duration, "calls": i, "windows": len(p50), "window_p50_ms": p50,
            "first_p50_ms": first, "last_p50_ms": last, "drift_pct": drift, "drifted": drift > 10.0,
            "latency_ms": summary([m for w in per_window for m in w]),
            "cpu_temp_c": {"start": temps[0], "end": temps[1]}}


def format_bench(r: dict) -> str:
    rt, lat, bare = r["runtime"], r["latency_ms"], r["bare_invoke_ms"]
    lines = [f"bench {r['bundle']['target']} on {rt['name']} {rt['version']} ({rt['provider']}), threads {r['threads']}, "
             f"{r['images']['count']} real images",
             *runtime_notes(rt),
             f"model call   p50 {lat['p50']:.3f}  p90 {lat['p90']:.3f}  p99 {lat['p99']:.3f}  mean {lat['mean']:.3f} ± {lat['std']:.3f} ms",
             f"bare invoke  p50 {bare['p50']:.3f}  p90 {bare['p90']:.3f}  p99 {bare['p99']:.3f} ms  (runner overhead {r['overhead_pct']:+.1f}% at p50)",
             f"end to end   p50 {r['end_to_end_ms']['p50']:.3f}  p90 {r['end_to_end_ms']['p90']:.3f} ms  (read + decode + preprocess + call)",
             f"throughput   {r['throughput']['model_ips']:.0f} model calls/s, {r['throughput']['end_to_end_ips']:.0f} images/s sequential, "
             f"{r['throughput']['pipelined_ips']:.0f} images/s pipelined"]
    if "cold_start_s" in r:
        lines.append(f"cold start   {r['cold_start_s']:.3f} s to first result (peak RSS of that process {r['cold_start_rss_mb']:.0f} MB)")
    if r.get("peak_rss_mb") is not None:
        lines.append(f"peak RSS     {r['peak_rss_mb']:.0f} MB (this benchmark process)")
    if "sustained" in r:
        s = r["sustained"]
        lines.append(f"sustained    {s['seconds']:.0f} s, {s['calls']} calls: p50 {s['first_p50_ms']:.3f} -> {s['last_p50_ms']:.3f} ms "
                     f"({s['drift_pct']:+.1f}%){'  DRIFT: throttling?' if s['drifted'] else ''}")
    cpu = r.get("host", {}).get("cpu")
    if cpu:
        lines.append(f"cpu          {cpu['model'] or cpu['machine']}, int8 path: {cpu['int8_path']}")
    if rt.get("note"):
        lines.append(f"note: {rt['note']}")
    return "\n".join(lines)
