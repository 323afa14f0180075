"""`edgecxr device web BUNDLE --out SITE`: a bundle as a static web app that classifies in the browser.

The site is a folder of plain files: index.html and its JavaScript (the input contract re-written in JS, with
JPEG, PNG and DICOM decoders of its own), config.json (everything the page needs from the manifest), the model
file and the WebAssembly runtime: LiteRT.js (@litertjs/core) for .tflite bundles, ONNX Runtime Web for .onnx
bundles. The runtimes come from npm at build time: `npm ci` of the runtime's committed package-lock.json
(devices/webapp/npm/RUNTIME/) into a cache (~/.cache/edgecxr-web, or $EDGECXR_WEB_CACHE), then copied into
SITE/vendor/: the page never loads anything from elsewhere (its content security policy allows this site only).
files.json lists every file with its SHA-256; a service worker keeps an offline copy where the browser allows
one (https or localhost).

    edgecxr device web bundles/tflite-int8 --out site/
    edgecxr serve bundles/tflite-int8 --app site/          # http://127.0.0.1:8080/app/
    python -m http.server -d site/ 8000                    # any static server works (no WebAssembly threads)

Also here: serving a site (Starlette routes with the headers the page needs; used by `edgecxr serve --app`),
driving it in headless Chromium (Playwright with the system's chromium), and turning the page's results into
edgecxr's parity report and `edgecxr device conform` submission.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from edgecxr.utils.atomic import sha256_file
from edgecxr.utils.errors import BundleError, ConfigError, MissingDependencyError

WEB = Path(__file__).parent / "webapp"
APP_FILES = ("index.html", "app.js", "contract.js", "jpeg.js", "png.js", "dicom.js", "runtime.js", "style.css", "sw.js")
CACHE_ENV = "EDGECXR_WEB_CACHE"
FORMAT = "edgecxr-web"
VERSION = 1


@dataclass(frozen=True)
class WebRuntime:
    name: str  # as the page and reports name it
    lock: str  # its folder under devices/webapp/npm/ (package.json + package-lock.json)
    package: str  # npm package
    files: tuple  # (path under node_modules, path under SITE/vendor)
    packages: tuple  # npm packages whose files are vendored (listed in vendor/NOTICE.txt)
    importmap: dict | None = None  # bare specifiers the runtime's modules import


RUNTIMES = {  # the browser runtimes; which family each runs: the format table's `web` (edgecxr.formats.targets)
    "litert.js": WebRuntime(
        "litert.js", "litert", "@litertjs/core",
        (("@litertjs/core/dist/index.js", "litert/index.js"),
         ("@litertjs/wasm-utils/dist/index.js", "litert/wasm-utils.js"),
         ("@litertjs/core/wasm/litert_wasm_internal.js", "litert/litert_wasm_internal.js"),
         ("@litertjs/core/wasm/litert_wasm_internal.wasm", "litert/litert_wasm_internal.wasm"),
         ("@litertjs/core/wasm/litert_wasm_compat_internal.js", "litert/litert_wasm_compat_internal.js"),
         ("@litertjs/core/wasm/litert_wasm_compat_internal.wasm", "litert/litert_wasm_compat_internal.wasm"),
         ("@litertjs/core/wasm/litert_wasm_threaded_internal.js", "litert/litert_wasm_threaded_internal.js"),
         ("@litertjs/core/wasm/litert_wasm_threaded_internal.wasm", "litert/litert_wasm_threaded_internal.wasm")),
        ("@litertjs/core", "@litertjs/wasm-utils"), {"@litertjs/wasm-utils": "./vendor/litert/wasm-utils.js"}),
    "onnxruntime-web": WebRuntime(
        "onnxruntime-web", "ort", "onnxruntime-web",
        (("onnxruntime-web/dist/ort.wasm.min.mjs", "ort/ort.wasm.min.mjs"),
         ("onnxruntime-web/dist/ort-wasm-simd-threaded.mjs", "ort/ort-wasm-simd-threaded.mjs"),
         ("onnxruntime-web/dist/ort-wasm-simd-threaded.wasm", "ort/ort-wasm-simd-threaded.wasm")),
        ("onnxruntime-web",)),
}
# The bundle a folder of bundles is built from, first found first: measured in headless Chromium
# (benchmarks/results/web-parity-2026-12-07): the lightest page and the fastest model call, and the same
# probabilities as the native runtime; ONNX Runtime Web's int8 path is slower than its float one.
PREFERENCE = ("tflite-int8", "tflite-fp32", "onnx-fp32", "onnx-int8")
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".mjs": "text/javascript; charset=utf-8", ".wasm": "application/wasm", ".css": "text/css; charset=utf-8",
               ".json": "application/json", ".webmanifest": "application/manifest+json", ".tflite": "application/octet-stream",
               ".onnx": "application/octet-stream", ".txt": "text/plain; charset=utf-8", "": "text/plain; charset=utf-8"}


# -- the npm runtime, installed once from its lockfile -------------------------------------------------------
def _lockdir(runtime: WebRuntime) -> Path:
    return WEB / "npm" / runtime.lock


def lock_hash(runtime: WebRuntime) -> str:
    d = _lockdir(runtime)
    return hashlib.sha256((d / "package.json").read_bytes() + (d / "package-lock.json").read_bytes()).hexdigest()


def cache_root(cache: Path | None = None) -> Path:
    return Path(cache or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "edgecxr-web")


def node_modules(runtime: WebRuntime, cache: Path | None = None, *, install: bool = True) -> Path:
    """node_modules of the runtime's committed lockfile: CACHE/<runtime>-<lock hash>/node_modules, installed by
    `npm ci` when absent (once; later builds need no network)."""
    folder = cache_root(cache) / f"{runtime.lock}-{lock_hash(runtime)[:16]}"
    if (folder / ".complete").is_file():
        return folder / "node_modules"
    if not install:
        raise MissingDependencyError(f"{runtime.name} is not installed in {folder}; run `edgecxr device web` once "
                                     "with npm and its registry reachable (it runs npm ci of the committed lockfile)")
    npm = shutil.which("npm")
    if npm is None:
        raise MissingDependencyError(f"npm is not installed: it installs {runtime.name} once from edgecxr's lockfile "
                                     "(apt-get install npm, or Node.js 18+ from nodejs.org)")
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy2(_lockdir(runtime) / name, tmp / name)
    cmd = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--omit=dev", "--loglevel=error"]
    try:
        subprocess.run(cmd, cwd=tmp, check=True, capture_output=True, text=True, timeout=900)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        detail = (exc.stderr or exc.stdout or "").strip().splitlines()
        raise MissingDependencyError(f"npm ci of {runtime.name} failed ({detail[-1] if detail else exc}); check that "
                                     "the npm registry is reachable (npm config get registry)") from None
    except subprocess.TimeoutExpired:
        shutil.rmtree(tmp, ignore_errors=True)
        raise MissingDependencyError(f"npm ci of {runtime.name} took more than 15 minutes; check the network") from None
    (tmp / ".complete").write_text("npm ci of the lockfile finished\n")
    if folder.exists():  # a half-done earlier install
        shutil.rmtree(folder)
    os.rename(tmp, folder)
    return folder / "node_modules"


def _installed_version(nm: Path, package: str) -> str:
    return json.loads((nm / package / "package.json").read_text())["version"]


def _locked(runtime: WebRuntime, package: str) -> dict:
    return json.loads((_lockdir(runtime) / "package-lock.json").read_text())["packages"][f"node_modules/{package}"]


# -- building a site -------------------------------------------------------------------------------------------
def importmap(runtime: WebRuntime) -> str | None:
    """The page's <script type="importmap"> content (the CSP allows exactly it, by hash)."""
    return json.dumps({"imports": runtime.importmap}) if runtime.importmap else None


def csp(imports: str | None) -> str:
    """The page's content security policy: scripts, WebAssembly, workers and connections from this site only
    (and the import map, by its hash)."""
    script = "'self' 'wasm-unsafe-eval'"
    if imports:
        import base64

        script += " 'sha256-" + base64.b64encode(hashlib.sha256(imports.encode()).digest()).decode() + "'"
    return (f"default-src 'self'; script-src {script}; style-src 'self'; img-src 'self' blob: data:; "
            "connect-src 'self'; worker-src 'self' blob:; object-src 'none'; base-uri 'none'; form-action 'none'")


def page_config(bundle, runtime: WebRuntime, version: str) -> dict:
    """config.json: what the page reads from the bundle (no reference predictions, no paths)."""
    from edgecxr import __version__
    from edgecxr.data.domain import MIN_RANGE, describe_domain
    from edgecxr.data.domain import INTENDED_USE
    from edgecxr.runtimes import is_nchw

    m = bundle.manifest
    steps = (m.get("input_contract") or {}).get("steps")
    if not steps:
        raise BundleError(f"{bundle.path}: the manifest has no input_contract (exported by an older edgecxr); "
                          "re-export the bundle")
    spec = bundle.spec
    shape = [1 if (d is None or d < 1) else int(d) for d in m["input"]["shape"]]
    return {
        "format": FORMAT, "version": VERSION, "edgecxr": __version__, "built": time.strftime("%Y-%m-%d"),
        "bundle": {"target": m["target"], "model_file": "model/" + Path(m["model_file"]).name,
                   "model_sha256": m["sha256"], "digest": m["digest"], "created": m.get("created")},
        "runtime": {"name": runtime.name, "package": runtime.package, "version": version},
        "preprocess": m["preprocess"], "draft_size": spec.draft_size, "nchw": is_nchw(m["input"]["shape"], spec.channels),
        "input": m["input"], "input_shape": shape, "output": m["output"],
        "input_table": steps["input"]["table"], "quantized_table": steps["quantized"].get("table"),
        "threshold": float(m["threshold"]), "labels": list(m["labels"]),
        "domain": bundle.domain, "min_range": MIN_RANGE, "domain_text": describe_domain(bundle.domain),
        "intended_use": INTENDED_USE,
    }


def build_site(bundle_path, out, *, cache: Path | None = None, trusted_key=None, overwrite: bool = False) -> dict:
    """Write the site for a bundle into `out` (atomically); returns files.json's content."""
    from edgecxr.formats.bundle import load_bundle
    from edgecxr.formats.targets import FAMILIES
    from edgecxr.utils.atomic import atomic_dir

    bundle = load_bundle(bundle_path, trusted_key=trusted_key)
    family = FAMILIES[bundle.target.family]
    if not family.web:
        web = sorted(f.name for f in FAMILIES.values() if f.web)
        raise ConfigError(f"{bundle.manifest['target']}: no browser runtime runs {family.name} models; build the page "
                          f"from a {' or '.join(web)} bundle (e.g. edgecxr export --target tflite-int8)")
    runtime = RUNTIMES[family.web]
    nm = node_modules(runtime, cache)
    version = _installed_version(nm, runtime.package)
    if version != _locked(runtime, runtime.package)["version"]:
        raise MissingDependencyError(f"{nm}: {runtime.package} {version} is not the locked version; delete the cache")
    with atomic_dir(Path(out), overwrite=overwrite) as tmp:
        imports = importmap(runtime)
        html = (WEB / "app" / "index.html").read_text()
        tag = f'<script type="importmap">{imports}</script>' if imports else ""
        (tmp / "index.html").write_text(html.replace("{{CSP}}", csp(imports)).replace("{{IMPORTMAP}}", tag))
        for name in APP_FILES:
            if name not in ("index.html", "sw.js"):
                shutil.copy2(WEB / "app" / name, tmp / name)
        (tmp / "model").mkdir()
        shutil.copy2(bundle.model_path, tmp / "model" / bundle.model_path.name)
        for src, dst in runtime.files:
            target = tmp / "vendor" / dst
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(nm / src, target)
        (tmp / "vendor" / "NOTICE.txt").write_text(_notice(runtime, nm))
        cfg = page_config(bundle, runtime, version)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
        (tmp / "app.webmanifest").write_text(json.dumps({
            "name": "edgecxr chest X-ray classifier", "short_name": "edgecxr", "start_url": "./", "scope": "./",
            "display": "standalone", "background_color": "#fafbfc", "theme_color": "#1f3a5f"}, indent=1) + "\n")
        files = sorted(p for p in tmp.rglob("*") if p.is_file() and not p.name.startswith("."))
        listed = [{"path": p.relative_to(tmp).as_posix(), "bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in files]
        site = hashlib.sha256(json.dumps(listed, sort_keys=True).encode()).hexdigest()
        (tmp / "sw.js").write_text((WEB / "app" / "sw.js").read_text().replace("{{SITE_SHA256}}", site))
        sw = tmp / "sw.js"
        listed.append({"path": "sw.js", "bytes": sw.stat().st_size, "sha256": sha256_file(sw)})
        index = {"format": FORMAT, "version": VERSION, "site_sha256": site, "bundle": cfg["bundle"],
                 "runtime": cfg["runtime"], "bytes": sum(f["bytes"] for f in listed), "files": listed}
        (tmp / "files.json").write_text(json.dumps(index, indent=1) + "\n")
    return index


def _notice(runtime: WebRuntime, nm: Path) -> str:
    lines = ["Third-party software vendored into this site by `edgecxr device web` (npm ci of edgecxr's lockfile):", ""]
    for package in runtime.packages:
        meta = json.loads((nm / package / "package.json").read_text())
        lines.append(f"{package} {meta['version']}  license {meta.get('license', '?')}  "
                     f"integrity {_locked(runtime, package).get('integrity', '?')}")
    return "\n".join(lines) + "\n"


def pick_bundle(path) -> Path:
    """BUNDLE itself, or for a folder of bundles (edgecxr export --out) the first of PREFERENCE it holds."""
    path = Path(path)
    if (path / "manifest.json").is_file() or path.suffix == ".zip" or not path.is_dir():
        return path
    for target in PREFERENCE:
        if (path / target / "manifest.json").is_file():
            return path / target
    raise ConfigError(f"{path}: no bundle for the browser here (looked for {', '.join(PREFERENCE)}); "
                      "export one: edgecxr export --target tflite-int8 ...")


# -- reading and serving a site ------------------------------------------------------------------------------
@dataclass
class Site:
    path: Path
    index: dict  # files.json
    config: dict

    @property
    def files(self) -> dict[str, Path]:
        """Every file the site serves: those files.json lists, and files.json."""
        return {**{f["path"]: self.path / f["path"] for f in self.index["files"]}, "files.json": self.path / "files.json"}


def load_site(path, *, verify: bool = True) -> Site:
    """A site written by build_site, every listed file checked against its SHA-256 (verify)."""
    path = Path(path)
    try:
        index = json.loads((path / "files.json").read_text())
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a site written by `edgecxr device web` ({exc})") from None
    if index.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a site written by `edgecxr device web` (files.json has no format {FORMAT})")
    for f in index["files"]:
        p = path / f["path"]
        if ".." in Path(f["path"]).parts or not p.is_file():
            raise ConfigError(f"{path}: {f['path']} is missing; rebuild the site")
        if verify and sha256_file(p) != f["sha256"]:
            raise ConfigError(f"{path}: {f['path']} does not match its SHA-256 in files.json (changed since the "
                              "build); rebuild the site with edgecxr device web")
    return Site(path, index, config)


def site_headers(site: Site) -> dict:
    """Headers of every response of the site: cross-origin isolation (WebAssembly threads), the page's CSP,
    no sniffing, no referrer, revalidation (the service worker keeps the offline copy)."""
    runtime = next(r for r in RUNTIMES.values() if r.name == site.config["runtime"]["name"])
    return {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
            "Cross-Origin-Resource-Policy": "same-origin",
            "Content-Security-Policy": csp(importmap(runtime)) + "; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


def site_routes(site: Site, prefix: str = "/app", on_query_token=None) -> list:
    """Starlette routes serving exactly the site's listed files under `prefix` (GET and HEAD).

    on_query_token: (request, response) -> response, called for `PREFIX/?token=...` (edgecxr serve sets a
    cookie there and redirects to the bare address)."""
    from starlette.responses import FileResponse, PlainTextResponse, RedirectResponse
    from starlette.routing import Route

    from starlette.responses import Response

    files, headers = site.files, site_headers(site)
    etags = {f["path"]: f'"{f["sha256"]}"' for f in site.index["files"]}  # content hashes: a 304 when unchanged

    async def page(request):
        rel = request.path_params.get("path", "") or "index.html"
        if on_query_token is not None and "token" in request.query_params:
            return on_query_token(request, RedirectResponse(f"{prefix}/", status_code=303, headers={"Cache-Control": "no-store"}))
        if rel not in files:
            return PlainTextResponse("not found", status_code=404, headers=headers)
        tag = {"ETag": etags[rel]} if rel in etags else {}
        if tag and tag["ETag"] in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers={**headers, **tag})
        media = MEDIA_TYPES.get(Path(rel).suffix, "application/octet-stream")
        extra = {"Service-Worker-Allowed": f"{prefix}/"} if rel == "sw.js" else {}
        return FileResponse(files[rel], media_type=media, headers={**headers, **extra, **tag})

    async def bare(request):
        return RedirectResponse(f"{prefix}/", status_code=308)

    return [Route(prefix, bare, methods=["GET", "HEAD"]), Route(prefix + "/", page, methods=["GET", "HEAD"]),
            Route(prefix + "/{path:path}", page, methods=["GET", "HEAD"])]


@contextlib.contextmanager
def serve_site(site_dir, host: str = "127.0.0.1", port: int = 0, prefix: str = "/app", wrap=None):
    """Serve a site on host:port (0: any free port) in a background thread; yields its URL (PREFIX/).
    wrap: ASGI app -> ASGI app (e.g. a byte counter)."""
    from starlette.applications import Starlette

    app = Starlette(routes=site_routes(load_site(site_dir), prefix))
    with run_server(wrap(app) if wrap else app, host, port) as base:
        yield f"{base}{prefix}/"


@contextlib.contextmanager
def run_server(app, host: str = "127.0.0.1", port: int = 0):
    """Run an ASGI app with uvicorn in a background thread; yields http://HOST:PORT."""
    import socket
    import threading

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline and thread.is_alive():
        time.sleep(0.05)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


# -- headless Chromium ---------------------------------------------------------------------------------------
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_PLAYWRIGHT = {"pw": None, "users": 0}


def chromium_path() -> str | None:
    """The system's Chromium (Debian: apt-get install chromium); $EDGECXR_CHROMIUM wins."""
    given = os.environ.get("EDGECXR_CHROMIUM")
    if given:
        return given
    return next((shutil.which(n) for n in CHROMIUM_NAMES if shutil.which(n)), None)


class Browser:
    """A page of the site in headless Chromium, driven through Playwright (the system's browser: Playwright's own
    download is not needed). Usage: with Browser(url) as b: b.classify_files(paths)."""

    def __init__(self, url: str, *, threads: int | None = None, timeout_s: float = 300, profile: Path | None = None):
        """threads: the model's WebAssembly threads (None: the page's default, half the CPUs, at most 4)."""
        self.url = url if threads is None else url + ("&" if "?" in url else "?") + f"threads={int(threads)}"
        self.timeout_ms = timeout_s * 1000
        self.profile = profile
        self.console: list[str] = []
        self.ready: dict = {}
        self._browser = self.context = None

    def __enter__(self):
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            raise MissingDependencyError("playwright is not installed: pip install playwright (it drives the system's "
                                         "chromium; no browser download needed)") from None
        exe = chromium_path()
        if exe is None:
            raise MissingDependencyError("Chromium is not installed (apt-get install chromium)")
        if _PLAYWRIGHT["users"] == 0:  # one Playwright per process: a second sync instance refuses to start
            _PLAYWRIGHT["pw"] = sync_playwright().start()
        _PLAYWRIGHT["users"] += 1
        self._pw = _PLAYWRIGHT["pw"]
        args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--no-first-run"]
        try:
            if self.profile is not None:
                self.context = self._pw.chromium.launch_persistent_context(str(self.profile), executable_path=exe,
                                                                           headless=True, args=args)
                self._browser = None
            else:
                self._browser = self._pw.chromium.launch(executable_path=exe, headless=True, args=args)
                self.context = self._browser.new_context()
            self.page = self.context.new_page()
            self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"[:500]))
            self.page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"[:500]))
            self.open(self.url)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def open(self, url: str | None = None, *, reload: bool = False) -> dict:
        """Open (or reload) the page and wait until its model is ready; returns what the page reports."""
        t0 = time.perf_counter()
        if reload:
            self.page.reload(wait_until="load", timeout=self.timeout_ms)
        else:
            self.page.goto(url or self.url, wait_until="load", timeout=self.timeout_ms)
        self.ready = self.page.evaluate("async () => await window.edgecxr.ready")
        self.ready["wall_s"] = time.perf_counter() - t0
        self.ready["version"] = self.context.browser.version if self.context.browser else None
        return self.ready

    def offline_copy(self) -> dict:
        """Wait until the service worker holds the offline copy; what it reports ({files, added})."""
        self._wait("window.edgecxr.offline !== null || !window.isSecureContext")
        return self.page.evaluate("window.edgecxr.offline")

    def __exit__(self, *exc):
        for thing in (self.context, self._browser):
            if thing is not None:
                with contextlib.suppress(Exception):
                    thing.close()
        _PLAYWRIGHT["users"] -= 1
        if _PLAYWRIGHT["users"] == 0:
            _PLAYWRIGHT["pw"].stop()
            _PLAYWRIGHT["pw"] = None

    def classify_files(self, paths, chunk: int = 50) -> list[dict]:
        """Pick the files with the page's own file input (as a user does), in chunks; the page's results in order."""
        paths = [str(p) for p in paths]
        picker = self.page.locator("#picker")
        start = self.page.evaluate("window.edgecxr.results.length")
        for i in range(0, len(paths), chunk):
            part = paths[i:i + chunk]
            self._wait("!document.getElementById('picker').disabled")
            picker.set_input_files(part)
            self._wait(f"window.edgecxr.results.length >= {start + i + len(part)}")
        return self.page.evaluate(f"window.edgecxr.results.slice({start})")

    def _wait(self, condition: str) -> None:
        """Poll a condition (Playwright's wait_for_function evaluates strings, which the page's CSP forbids)."""
        deadline = time.monotonic() + self.timeout_ms / 1000
        while not self.page.evaluate(condition):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page did not reach {condition!r} within {self.timeout_ms / 1000:.0f} s; "
                                   f"console: {self.console[-3:]}")
            time.sleep(0.05)

    def stages(self, path, which=True) -> dict:
        """What the page computes for one file through its test hook: the result, with every stage (which=True)
        or the named ones as numpy arrays under "stages"."""
        import base64

        import numpy as np

        data = base64.b64encode(Path(path).read_bytes()).decode()
        r = self.page.evaluate("""async ([b64, name, which]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            try {
              const r = await window.edgecxr.classify(bytes, name, {stages: which});
              delete r.preview; return r;
            } catch (e) { return {name, error: e.message || String(e)}; } }""", [data, Path(path).name, which])
        if "error" in r:
            return r
        arrays = {k: np.frombuffer(base64.b64decode(v["b64"]), v["dtype"]).reshape(v["shape"])
                  for k, v in r.pop("stages").items()}
        return {**r, "stages": arrays}


# -- the page's results in edgecxr's checks ------------------------------------------------------------------
class _PageClassifier:
    """What parity's context reads from a Classifier, for a model that ran in the browser."""

    def __init__(self, bundle, runtime: dict):
        self.bundle, self.threshold = bundle, bundle.threshold
        self.runtime = runtime


def browser_runtime(ready: dict) -> dict:
    rt = ready.get("runtime", {})
    browser = f"Chromium {ready.get('version')}" if ready.get("version") else "a browser"
    return {"name": rt.get("name", "?"), "version": rt.get("version", "?"),
            "provider": f"WebAssembly ({rt.get('accelerator', 'wasm')}) in {browser}",
            "threads": rt.get("threads"), "note": None if rt.get("cross_origin_isolated") else
            "the page was not cross-origin isolated: WebAssembly ran on one thread"}


def parity_report(bundle_path, data, results: list[dict], *, runtime: dict, split: str = "test", tolerances=None,
                  seconds: float | None = None) -> dict:
    """edgecxr's parity report (devices.parity) of the page's results for the images of `data` (the same
    images, in list_site order), against the float reference stored in the bundle."""
    from edgecxr.parity import shards
    from edgecxr.formats.bundle import load_bundle
    from edgecxr.utils.cpu import host_info
    from edgecxr.data.folders import list_site
    from edgecxr.devices.parity import parity_context, parity_from_predictions

    bundle = load_bundle(bundle_path)
    samples = list_site(data, split)
    if len(results) != len(samples):
        raise ConfigError(f"{len(results)} results for {len(samples)} images of {data}")
    clf = _PageClassifier(bundle, runtime)
    context = parity_context(clf, samples, split, "bundle", data)
    ref = bundle.reference["probs"]
    records = []
    for i, (s, r) in enumerate(zip(samples, results)):
        if Path(r["name"]).name != s.path.name:
            raise ConfigError(f"result {i} is for {r['name']}, not {s.path.name}: pass the results in list order")
        if s.rel not in ref:
            records.append({"index": i, "file": s.rel, "not_in_reference": True})
        elif r.get("error"):
            records.append({"index": i, "file": s.rel, "error": r["error"]})
        else:
            t = r["timings"]
            records.append({"index": i, "file": s.rel, "sha256": sha256_file(s.path), "label": s.label,
                            "patient": s.patient, "float_prob": float(ref[s.rel]), "device_prob": float(r["probability"]),
                            "decode_ms": t["decode_ms"], "preprocess_ms": t["preprocess_ms"], "infer_ms": t["infer_ms"]})
    seconds = seconds if seconds is not None else sum(r.get("timings", {}).get("total_ms", 0) for r in results) / 1e3
    doc = shards.document("parity", context, samples, (1, 1), records, seconds, host_info())
    return parity_from_predictions(doc, tolerances)


def conform_submission(stages_by_image: dict[str, dict]) -> dict:
    """{IMAGE: {STAGE: nested list or number}}: the .json layout `edgecxr device conform` reads (images the page
    refused are left out: conform then reports them missing)."""
    import numpy as np

    return {image: {k: np.asarray(v).tolist() for k, v in st.items()}
            for image, st in stages_by_image.items() if "error" not in st}


def page_conformance(browser: Browser, bundle_path) -> dict[str, dict]:
    """The page's stages for each conformance image of the bundle: {IMAGE: {STAGE: array or number}} (an image the
    page refused gets {"error": message})."""
    manifest = json.loads((Path(bundle_path) / "manifest.json").read_text())
    out = {}
    for entry in (manifest.get("conformance") or {}).get("images", []):
        r = browser.stages(Path(bundle_path) / entry["file"])
        out[entry["id"]] = r["stages"] if "stages" in r else {"error": r["error"]}
    return out
