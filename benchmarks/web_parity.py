"""The web app (`edgecxr device web`) in headless Chromium on the test images: parity with the float reference,
flipped cases, latency per image in the browser, first load time and page weight; and, with --compare, the
browser runtimes (LiteRT.js, ONNX Runtime Web) side by side on other bundles.

    python benchmarks/web_parity.py --bundle runs/full/tflite-int8 --data /work/shared/data/kermany-cxr-224 \
        --compare sample-bundles/tflite-int8 sample-bundles/tflite-fp32 sample-bundles/onnx-fp32 \
        --compare-data edgecxr/sample --interleave --out benchmarks/results/web-parity-DATE

Everything runs on this machine: the site is served on 127.0.0.1 (with the cross-origin isolation headers of
`edgecxr serve --app`, so WebAssembly threads are available), the page is driven through its own file input.
Page weight is what the server sent: until the model is ready, and until the offline copy is complete.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


class ByteCounter:
    """ASGI wrapper: bytes of response bodies per path."""

    def __init__(self, app):
        self.app, self.bytes = app, {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]

        async def counted(message):
            if message["type"] == "http.response.body":
                self.bytes[path] = self.bytes.get(path, 0) + len(message.get("body", b""))
            await send(message)

        return await self.app(scope, receive, counted)

    def take(self) -> dict:
        out, self.bytes = self.bytes, {}
        return out


def _ms(values) -> dict:
    a = np.asarray(values, float)
    return {"p50": float(np.median(a)), "p90": float(np.percentile(a, 90)), "mean": float(a.mean()), "n": int(a.size)}


def _native(bundle: Path, samples) -> np.ndarray:
    from edgecxr.devices.classifier import Classifier

    clf = Classifier.load(bundle)
    return np.array([clf.predict(s.path).probability for s in samples]), clf.runtime


def measure(bundle: Path, data: Path, *, conformance: bool, other_threads: int | None, flips_shown: int = 20) -> dict:
    """other_threads: also classify every image with the model on this many WebAssembly threads."""
    from edgecxr.data.folders import list_site
    from edgecxr.devices.parity import format_report
    from edgecxr.devices.web import (Browser, browser_runtime, build_site, conform_submission, page_conformance,
                                     parity_report, serve_site)

    samples = list_site(data, "test")
    out: dict = {"bundle": str(bundle), "data": str(data), "images": len(samples)}
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        t0 = time.perf_counter()
        index = build_site(bundle, site)
        out["site"] = {"build_s": time.perf_counter() - t0, "files": len(index["files"]), "bytes": index["bytes"],
                       "runtime": index["runtime"], "bundle": index["bundle"],
                       "model_bytes": sum(f["bytes"] for f in index["files"] if f["path"].startswith("model/"))}
        counter: list[ByteCounter] = []

        def wrap(app):
            counter.append(ByteCounter(app))
            return counter[0]

        with serve_site(site, wrap=wrap) as url:
            with Browser(url, profile=Path(tmp) / "profile") as b:  # a fresh profile: a first visit
                first = dict(b.ready)
                to_ready = counter[0].take()
                offline = b.offline_copy()
                to_offline = counter[0].take()
                warm = b.open(reload=True)  # the second visit: from the service worker's copy
                counter[0].take()
                t0 = time.perf_counter()
                results = b.classify_files([s.path for s in samples])
                wall = time.perf_counter() - t0
                conf = page_conformance(b, bundle) if conformance else None
                version = b.ready.get("version")
            out["load"] = {
                "first_visit_model_ready_s": first["since_navigation_ms"] / 1e3, "first_visit_wall_s": first["wall_s"],
                "runtime_init_and_compile_s": first["load_ms"] / 1e3,
                "second_visit_model_ready_s": warm["since_navigation_ms"] / 1e3,
                "page_weight_to_ready_mb": sum(to_ready.values()) / 1e6,
                "page_weight_with_offline_copy_mb": (sum(to_ready.values()) + sum(to_offline.values())) / 1e6,
                "fetched_to_ready": {k: v for k, v in sorted(to_ready.items(), key=lambda kv: -kv[1])},
                "offline_copy": offline}
            out["browser"] = {"chromium": version, **first["runtime"]}
            out["latency_ms"] = {"total": _ms([r["timings"]["total_ms"] for r in results]),
                                 "infer": _ms([r["timings"]["infer_ms"] for r in results]),
                                 "decode": _ms([r["timings"]["decode_ms"] for r in results]),
                                 "preprocess": _ms([r["timings"]["preprocess_ms"] for r in results]),
                                 "threads": first["runtime"]["threads"], "images_per_s": len(results) / wall}
            report = parity_report(bundle, data, results, runtime=browser_runtime(b.ready), seconds=wall)
            if other_threads:
                with Browser(url, threads=other_threads) as b1:
                    other = b1.classify_files([s.path for s in samples])
                out["latency_ms_other_threads"] = {"total": _ms([r["timings"]["total_ms"] for r in other]),
                                                   "infer": _ms([r["timings"]["infer_ms"] for r in other]),
                                                   "threads": b1.ready["runtime"]["threads"]}
                out["other_threads_same_probabilities"] = bool(
                    np.array_equal([r["probability"] for r in other], [r["probability"] for r in results]))
    out["parity"] = {"passed": report["passed"], "agreement": report["agreement"],
                     "float": report["float"], "device": report["device"], "n_flipped": len(report["flipped"]),
                     "flipped": report["flipped"][:flips_shown], "checks": report["checks"],
                     "criteria": report["criteria"]["applied"]}
    out["parity_text"] = format_report(report)
    native, native_rt = _native(bundle, samples)
    mine = np.array([r["probability"] for r in results])
    thr = report["threshold"]
    out["vs_native"] = {"runtime": native_rt, "identical_probabilities": int((mine == native).sum()),
                        "max_abs_diff": float(np.abs(mine - native).max()),
                        "decisions_differ": int(((mine >= thr) != (native >= thr)).sum())}
    if conf is not None:
        sub = Path(tempfile.mkstemp(suffix=".json")[1])
        sub.write_text(json.dumps(conform_submission(conf)))
        jr = sub.with_suffix(".report.json")
        edgecxr = Path(sys.executable).with_name("edgecxr")
        r = subprocess.run([str(edgecxr), "device", "conform", str(bundle), str(sub), "--json", str(jr)],
                           capture_output=True, text=True)
        out["conform"] = {"exit_code": r.returncode, "text": r.stdout.strip(),
                          "exact_decoded": {i: bool(np.array_equal(s["decoded"], np.load(
                              bundle / "conformance" / "golden" / f"{Path(i).stem}.npz")["decoded"])) for i, s in conf.items()
                              if "decoded" in s}}
        sub.unlink(missing_ok=True)
        jr.unlink(missing_ok=True)
    return out


def interleaved(bundles, data: Path, rounds: int = 5, per_round: int = 20, threads: int = 1) -> dict:
    """Model latency of several bundles under the same machine load: one page per bundle open at once, batches of
    images given to each in turn (the order reversed every other round); p10/p50/p90 of the model call per bundle."""
    import contextlib

    from edgecxr.data.folders import list_site
    from edgecxr.devices.web import Browser, build_site, serve_site

    paths = [s.path for s in list_site(data, "test")]
    times: dict[str, list] = {str(b): [] for b in bundles}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        pages = {}
        for i, b in enumerate(bundles):
            build_site(b, Path(tmp) / str(i))
            pages[str(b)] = stack.enter_context(Browser(stack.enter_context(serve_site(Path(tmp) / str(i))), threads=threads))
        for r in range(rounds):
            batch = paths[(r * per_round) % len(paths):][:per_round]
            for b in (list(pages) if r % 2 == 0 else list(pages)[::-1]):
                times[b] += [x["timings"]["infer_ms"] for x in pages[b].classify_files(batch)]
    return {b: {**{f"p{q}": float(np.percentile(t, q)) for q in (10, 50, 90)}, "n": len(t), "threads": threads}
            for b, t in times.items()}


def _row(name: str, m: dict) -> str:
    lat, load = m["latency_ms"], m["load"]
    alt = m.get("latency_ms_other_threads", {})
    one = alt.get("infer", {}).get("p50")
    return (f"| {name} | {m['site']['runtime']['name']} {m['site']['runtime']['version']} | "
            f"{m['site']['model_bytes'] / 1e6:.1f} | {load['page_weight_to_ready_mb']:.1f} | "
            f"{load['first_visit_model_ready_s']:.2f} | {lat['infer']['p50']:.0f} ({lat['threads']} thr) | "
            f"{'%.0f (%d thr)' % (one, alt['threads']) if one else '-'} | {lat['total']['p50']:.0f} | {m['parity']['agreement']:.4f} | "
            f"{m['parity']['n_flipped']} | {m['vs_native']['identical_probabilities']}/{m['images']} "
            f"(max {m['vs_native']['max_abs_diff']:.1e}) | {'PASS' if m['parity']['passed'] else 'FAIL'} |")


HEAD = ("| bundle | runtime | model MB | page weight to ready MB | first load s | model p50 ms (page default) | model p50 ms, all CPUs | "
        "per image p50 ms | agreement | flipped | = native | parity |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--compare", type=Path, nargs="*", default=[], help="More bundles, measured on --compare-data")
    ap.add_argument("--compare-data", type=Path, default=ROOT / "edgecxr" / "sample")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--interleave", action="store_true", help="Also time the --compare bundles' model calls in turns, "
                    "under the same load (one thread each)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    from edgecxr.utils.cpu import host_info

    record = {"date": time.strftime("%Y-%m-%d %H:%M"), "host": host_info(), "cpus": os.cpu_count(),
              "load_average_start": os.getloadavg(), "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "python": platform.python_version()}
    print(f"main: {args.bundle} on {args.data}", flush=True)
    record["main"] = measure(args.bundle, args.data, conformance=True, other_threads=os.cpu_count())
    print(record["main"]["parity_text"], flush=True)
    record["compare"] = {}
    for b in args.compare:
        print(f"compare: {b} on {args.compare_data}", flush=True)
        record["compare"][str(b)] = measure(b, args.compare_data, conformance=False, other_threads=os.cpu_count())
    if args.interleave and args.compare:
        print("interleaved model latency of the --compare bundles", flush=True)
        record["interleaved"] = interleaved(args.compare, args.compare_data)
    record["load_average_end"] = os.getloadavg()
    (args.out / "results.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    m = record["main"]
    lines = [f"# The web app in headless Chromium ({record['date']})", "",
             f"`{record['command']}`", "",
             f"Host: {record['host']['cpu'].get('model', '?')} ({record['cpus']} CPUs, shared: load average "
             f"{record['load_average_start'][0]:.1f} at the start, {record['load_average_end'][0]:.1f} at the end), "
             f"Chromium {m['browser']['chromium']}, headless, no GPU. Latencies are medians per image measured inside "
             "the page (performance.now()); on a shared 2-CPU machine treat them as ratios.", "",
             f"## {m['images']} test images, `{m['bundle']}`", "", HEAD, _row(Path(m["bundle"]).name, m), "",
             f"- parity (bundle's acceptance criteria): **{'PASSED' if m['parity']['passed'] else 'FAILED'}**, agreement "
             f"{m['parity']['agreement']:.4f}, {m['parity']['n_flipped']} flipped: " +
             ", ".join(f"{f['file']} ({f['kind']}, float {f['float_prob']:.3f} -> page {f['device_prob']:.3f})"
                       for f in m["parity"]["flipped"]),
             f"- against edgecxr's native runtime ({m['vs_native']['runtime']['name']} {m['vs_native']['runtime']['version']}) "
             f"on the same images: {m['vs_native']['identical_probabilities']} of {m['images']} probabilities identical, "
             f"max |dp| {m['vs_native']['max_abs_diff']:.2e}, {m['vs_native']['decisions_differ']} decisions differ",
             f"- first visit (empty profile): model ready {m['load']['first_visit_model_ready_s']:.2f} s after navigation "
             f"(runtime init + compile {m['load']['runtime_init_and_compile_s']:.2f} s); second visit (service worker copy) "
             f"{m['load']['second_visit_model_ready_s']:.2f} s",
             f"- page weight: {m['load']['page_weight_to_ready_mb']:.2f} MB sent until the model was ready, "
             f"{m['load']['page_weight_with_offline_copy_mb']:.2f} MB with the offline copy; site folder "
             f"{m['site']['bytes'] / 1e6:.1f} MB (every WebAssembly build of the runtime; a browser loads one)",
             f"- latency per image: total p50 {m['latency_ms']['total']['p50']:.1f} ms (decode "
             f"{m['latency_ms']['decode']['p50']:.1f}, preprocess {m['latency_ms']['preprocess']['p50']:.1f}, model "
             f"{m['latency_ms']['infer']['p50']:.1f}) with the page's default of {m['latency_ms']['threads']} WebAssembly "
             f"thread(s); model p50 {m['latency_ms_other_threads']['infer']['p50']:.1f} ms on "
             f"{m['latency_ms_other_threads']['threads']} threads (same probabilities: {m['other_threads_same_probabilities']})",
             f"- `edgecxr device conform` on the page's stage arrays: exit {m['conform']['exit_code']}; decoded stage "
             f"bit-exact on {sum(m['conform']['exact_decoded'].values())} of {len(m['conform']['exact_decoded'])} images", ""]
    if record["compare"]:
        lines += [f"## Runtimes on `{args.compare_data}` ({next(iter(record['compare'].values()))['images']} test images)",
                  "", HEAD, *[_row(Path(k).name, v) for k, v in record["compare"].items()], ""]
    if record.get("interleaved"):
        lines += ["Model call under the same load (the pages open at once, batches of 20 images to each in turn, one "
                  "WebAssembly thread each):", "", "| bundle | p10 ms | p50 ms | p90 ms | calls |", "|---|---|---|---|---|",
                  *[f"| {Path(k).name} | {v['p10']:.1f} | {v['p50']:.1f} | {v['p90']:.1f} | {v['n']} |"
                    for k, v in record["interleaved"].items()], ""]
    lines += ["## Parity report (main)", "", "```", m["parity_text"], "```", "", "## Conformance (main)", "", "```",
              m["conform"]["text"], "```", ""]
    (args.out / "README.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
