"""Load test of `edgecxr serve` on loopback: N concurrent clients for a bounded time, plus a client that hangs up mid-upload.

    python benchmarks/serve_load.py BUNDLE [--clients 8] [--seconds 30] [--data ../shared/data/kermany-cxr-224]

Starts `edgecxr serve BUNDLE` on 127.0.0.1 (a free port) in a subprocess, posts the real test
images (raw image/jpeg, every 4th request as multipart) from N client threads for --seconds,
while one more client repeatedly announces a body, sends half of it and closes the socket.
Every answer is checked (status 200, probability equal to the first answer for that image).
Reports throughput, latency p50/p90/p99/max, per-window throughput (drift), failed and lost
requests (sent but never answered), and the server's own counters; writes
benchmarks/results/serve_load_<date>_<host>.json and .md. Exit 1 if any request failed or was lost.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "kermany-cxr-224"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundle: Path, port: int, extra: list, log: Path, timeout: float = 120.0) -> subprocess.Popen:
    import httpx

    out = open(log, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "edgecxr.cli", "serve", str(bundle), "--host", "127.0.0.1",
                             "--port", str(port), *extra], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not answer /healthz in time")


class Client(threading.Thread):
    def __init__(self, k: int, url: str, images: list, stop: threading.Event, start_at: float):
        super().__init__(daemon=True)
        self.k, self.url, self.images, self.stop, self.start_at = k, url, images, stop, start_at
        self.records = []  # (t_done since start, latency_s, ok)
        self.sent = self.answered = 0
        self.failures = []
        self.first_prob: dict = {}

    def run(self):
        import httpx

        i = self.k * 37
        with httpx.Client(base_url=self.url, timeout=60) as c:
            while not self.stop.is_set():
                name, data = self.images[i % len(self.images)]
                i += 1
                self.sent += 1
                t0 = time.perf_counter()
                try:
                    if i % 4 == 0:
                        r = c.post("/v1/classify", files={"file": (name, data, "image/jpeg")})
                    else:
                        r = c.post("/v1/classify", content=data, headers={"Content-Type": "image/jpeg"})
                except httpx.HTTPError as exc:
                    self.failures.append({"image": name, "error": repr(exc)})
                    continue
                latency = time.perf_counter() - t0
                self.answered += 1
                ok = r.status_code == 200
                if ok:
                    p = r.json()["probability"]
                    ok = abs(self.first_prob.setdefault(name, p) - p) < 1e-9
                if not ok:
                    self.failures.append({"image": name, "status": r.status_code, "body": r.text[:300]})
                self.records.append((time.perf_counter() - self.start_at, latency, ok))


class Disconnecter(threading.Thread):
    """Announces a full image, sends half of it (or only the headers) and closes the socket, again and again."""

    def __init__(self, port: int, data: bytes, stop: threading.Event, pause: float):
        super().__init__(daemon=True)
        self.port, self.data, self.stop, self.pause = port, data, stop, pause
        self.count = 0
        self.errors = []

    def run(self):
        while not self.stop.is_set():
            half = self.data[: len(self.data) // 2] if self.count % 3 else b""
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                    s.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                              + f"Content-Length: {len(self.data)}\r\n\r\n".encode() + half)
                self.count += 1
            except OSError as exc:
                self.errors.append(repr(exc))
            self.stop.wait(self.pause)


def percentiles(values) -> dict:
    v = np.asarray(values) * 1e3
    if v.size == 0:
        return {}
    return {"p50_ms": float(np.percentile(v, 50)), "p90_ms": float(np.percentile(v, 90)),
            "p99_ms": float(np.percentile(v, 99)), "max_ms": float(v.max()), "mean_ms": float(v.mean())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=2.0, help="Seconds of load before measuring starts.")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Kermany-layout root; its test/ images are posted.")
    ap.add_argument("--workers", type=int, help="Server decode threads (edgecxr serve --workers).")
    ap.add_argument("--threads", type=int, help="Runtime threads (edgecxr serve --threads).")
    ap.add_argument("--disconnect-pause", type=float, default=0.25, help="Seconds between mid-upload hang-ups.")
    ap.add_argument("--window", type=float, default=5.0, help="Window (s) of the throughput-over-time table.")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)

    import httpx

    sys.path.insert(0, str(REPO))
    from edgecxr.utils.atomic import write_json_atomic, write_text_atomic
    from edgecxr.data.images import is_image_file

    files = sorted(p for p in (args.data / "test").rglob("*") if p.is_file() and is_image_file(p))
    if not files:
        raise SystemExit(f"no test images under {args.data / 'test'}")
    images = [(p.name, p.read_bytes()) for p in files]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    extra = [*(["--workers", str(args.workers)] if args.workers else []),
             *(["--threads", str(args.threads)] if args.threads else [])]
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / f".serve_load_server_{os.getpid()}.log"
    proc = start_server(args.bundle, port, extra, log)
    try:
        stop, warm_stop = threading.Event(), threading.Event()
        # Warm-up: the same clients' path, not measured.
        warm = [Client(k, url, images, warm_stop, time.perf_counter()) for k in range(args.clients)]
        for c in warm:
            c.start()
        time.sleep(args.warmup)
        warm_stop.set()
        for c in warm:
            c.join(60)
        warm_failures = sum(len(c.failures) for c in warm)
        health0 = httpx.get(f"{url}/healthz", timeout=10).json()
        start = time.perf_counter()
        clients = [Client(k, url, images, stop, start) for k in range(args.clients)]
        big = max(images, key=lambda x: len(x[1]))[1]
        hangup = Disconnecter(port, big, stop, args.disconnect_pause)
        load0 = os.getloadavg()
        for c in clients:
            c.start()
        hangup.start()
        time.sleep(args.seconds)
        stop.set()
        for c in clients:
            c.join(120)
        hangup.join(30)
        elapsed = time.perf_counter() - start
        still_running = sum(c.is_alive() for c in clients)
        health1 = httpx.get(f"{url}/healthz", timeout=10).json()
        server_alive = proc.poll() is None
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    server_log = log.read_text(errors="replace")
    log.unlink(missing_ok=True)

    records = [r for c in clients for r in c.records]
    ok = [r for r in records if r[2]]
    sent = sum(c.sent for c in clients)
    answered = sum(c.answered for c in clients)
    failures = [f for c in clients for f in c.failures]
    lost = sent - answered - sum(1 for f in failures if "error" in f)  # sent but neither answered nor errored
    classified = health1["counts"]["classified"] - health0["counts"]["classified"]
    windows = []
    for w0 in np.arange(0, elapsed, args.window):
        inside = [r for r in ok if w0 <= r[0] < w0 + args.window]
        span = min(args.window, elapsed - w0)
        windows.append({"from_s": float(w0), "requests": len(inside), "throughput_rps": len(inside) / span if span > 0 else 0.0,
                        **{k: v for k, v in percentiles([r[1] for r in inside]).items() if k in ("p50_ms", "p99_ms")}})
    result = {
        "benchmark": "serve_load",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "loadavg_at_start": [round(x, 2) for x in load0]},
        "bundle": str(args.bundle), "target": health0["target"], "model_sha256": health0["model_sha256"],
        "runtime": health0["runtime"], "server_workers": health0["workers"],
        "clients": args.clients, "seconds": round(elapsed, 3), "warmup_seconds": args.warmup,
        "images": {"count": len(images), "source": str(args.data / "test"),
                   "mean_bytes": int(np.mean([len(d) for _, d in images]))},
        "requests": {"sent": sent, "answered": answered, "ok": len(ok), "failed": len(failures), "lost": lost,
                     "still_running_clients": still_running, "server_classified": classified,
                     "warmup_failed": warm_failures},
        "throughput_rps": len(ok) / elapsed,
        "latency": percentiles([r[1] for r in ok]),
        "windows": windows,
        "disconnecting_client": {"hangups": hangup.count, "socket_errors": len(hangup.errors),
                                 "server_counted_disconnects": health1["counts"]["disconnected"] - health0["counts"]["disconnected"]},
        "server": {"alive_at_end": server_alive, "errors_500": health1["counts"]["errors"],
                   "traceback_in_log": "Traceback" in server_log},
        "failures": failures[:20],
    }
    result["passed"] = bool(len(failures) == 0 and lost == 0 and still_running == 0 and server_alive
                            and classified == len(ok) and result["server"]["errors_500"] == 0
                            and not result["server"]["traceback_in_log"] and warm_failures == 0)

    stamp = dt.datetime.now().strftime("%Y%m%d")
    base = args.out / f"serve_load_{stamp}_{socket.gethostname()}"
    write_json_atomic(base.with_suffix(".json"), result)
    write_text_atomic(base.with_suffix(".md"), markdown(result))
    print(markdown(result))
    print(f"written {base}.json and .md")
    return 0 if result["passed"] else 1


def markdown(r: dict) -> str:
    q, lat, rt = r["requests"], r["latency"], r["runtime"]
    lines = [
        f"# edgecxr serve load test ({r['date']}, {r['host']})",
        "",
        f"Bundle `{r['target']}` (model sha256 `{r['model_sha256'][:16]}...`) on {rt['name']} {rt['version']} "
        f"({rt['provider']}, {rt.get('threads')} threads), {r['server_workers']} server decode threads; "
        f"{r['machine']['cpus']} CPUs, load average at start {r['machine']['loadavg_at_start']}.",
        f"{r['clients']} concurrent loopback clients for {r['seconds']:.1f} s (after {r['warmup_seconds']:g} s warm-up), "
        f"posting the {r['images']['count']} real test images (mean {r['images']['mean_bytes']:,} bytes; raw body, "
        f"every 4th as multipart), while one more client hung up mid-upload {r['disconnecting_client']['hangups']} times.",
        "",
        "| clients | seconds | requests ok | failed | lost | throughput (req/s) | p50 ms | p90 ms | p99 ms | max ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {r['clients']} | {r['seconds']:.1f} | {q['ok']} | {q['failed']} | {q['lost']} | {r['throughput_rps']:.1f} | "
        f"{lat.get('p50_ms', float('nan')):.1f} | {lat.get('p90_ms', float('nan')):.1f} | "
        f"{lat.get('p99_ms', float('nan')):.1f} | {lat.get('max_ms', float('nan')):.1f} |",
        "",
        "Throughput over time (sustained load, not one burst):",
        "",
        "| from s | requests | req/s | p50 ms | p99 ms |",
        "|---:|---:|---:|---:|---:|",
        *[f"| {w['from_s']:.0f} | {w['requests']} | {w['throughput_rps']:.1f} | {w.get('p50_ms', float('nan')):.1f} | "
          f"{w.get('p99_ms', float('nan')):.1f} |" for w in r["windows"]],
        "",
        f"Server counted {q['server_classified']} classifications (clients saw {q['ok']} OK answers) and "
        f"{r['disconnecting_client']['server_counted_disconnects']} mid-upload disconnects; "
        f"500 errors: {r['server']['errors_500']}; server alive at end: {r['server']['alive_at_end']}.",
        "",
        f"**{'PASSED' if r['passed'] else 'FAILED'}**: {q['failed']} failed, {q['lost']} lost requests.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
