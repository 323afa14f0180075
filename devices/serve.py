"""`edgecxr serve BUNDLE`: a small local HTTP service for integrators (Starlette + uvicorn, no TensorFlow).

    POST /v1/classify   the image as the raw body (Content-Type image/*, application/dicom or
                        application/octet-stream) or as multipart/form-data field ``file``
                        -> 200 {"probability", "label", "threshold", "model_sha256", "target",
                                "runtime": {"name", "version", "provider", ...}, "timings": {... ms}}
    GET  /healthz       -> 200 {"status": "ok", "target", "model_sha256", "runtime", ...}
    GET  /app/          with --app SITE: the web app of `edgecxr device web` (built from this bundle), which
                        classifies inside the browser: no image reaches this service. Same Host check and
                        token (opened once as /app/?token=TOKEN, then an HttpOnly cookie for /app only).

Every error is JSON ``{"error": "<one line>"}``: 400 malformed request, 401 missing or wrong token,
404/405 wrong route, 408 upload too slow, 413 body above --max-bytes, 415 not an image content type,
421 Host header not allowed, 422 unreadable image (corrupt, truncated, above the pixel limit, DICOM
without a codec) or one outside the bundle's input domain (edgecxr.data.domain: blank, tiny, an MR/CT
DICOM...), 500 unexpected (logged), 503 more than --max-connections requests in progress.

Binds to 127.0.0.1 by default. Optional bearer-token authentication (--token-file or
EDGECXR_SERVE_TOKEN; /healthz then says only "ok" to callers without the token); the Host header is
checked against --allowed-host (default: localhost names and the bind address) so a web page cannot
reach it through DNS rebinding. No TLS: put it behind a TLS reverse proxy before exposing it (docs/devices.md).
A connection that has not sent complete request headers within --header-timeout is closed; an upload
that averages less than --min-upload-rate after its first 2 s gets 408; --max-connections counts only
requests whose body has arrived. So idle or slow clients never hold the request limit; on SIGTERM,
requests still in progress after 5 s are cancelled.

Concurrency: decoding and preprocessing run in a pool of --workers threads; the model call
is serialized (the runtime interpreters are not re-entrant) by the Classifier's lock and the
service's own. A client that disconnects mid-upload only ends its own request.

    from edgecxr.devices.classifier import Classifier
    from edgecxr.devices.serve import create_app
    app = create_app(Classifier.load("bundles/tflite-int8"), max_bytes=20 * 2**20)
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import os
import re
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click

from edgecxr.options import threads_option
from edgecxr.utils.atomic import read_small
from edgecxr.formats.targets import device_help, runtime_help
from edgecxr.utils.errors import ConfigError, EdgecxrError, require

DEFAULT_MAX_BYTES = 32 * 2**20
# an upload must keep an average of at least MIN_UPLOAD_RATE bytes/s once UPLOAD_GRACE seconds have passed: a client
# trickling bytes is cut off in seconds instead of holding memory and a slot until --read-timeout
DEFAULT_MIN_UPLOAD_RATE = 16 * 2**10
UPLOAD_GRACE = 2.0
SHUTDOWN_GRACE = 5  # seconds uvicorn waits for requests in progress on SIGTERM before cancelling them
# images above edgecxr.data.images.BIG_DECODE_PIXELS (header) are decoded and preprocessed one at a time: a 124 KB 16-bit
# 8000 x 8000 PNG takes about 550 MB while decoded, four at once 1.1 GB and more (a 4 GB Pi with --workers 4 ran out)
# request bodies held in memory at once, across every upload in progress, in units of --max-bytes: uploads hold no
# request slot, so without this bound 25 stalled 30 MB uploads held 880 MB (503 beyond it)
UPLOAD_BUFFERS = 4
TOKEN_ENV = "EDGECXR_SERVE_TOKEN"
MIN_TOKEN = 16
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
RAW_TYPES = ("application/dicom", "application/octet-stream")
TYPE_HINT = ("send the image with Content-Type image/jpeg, image/png, application/dicom or application/octet-stream, "
             "or as multipart/form-data field 'file' (curl -F file=@chest.jpeg)")
_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "kib": 2**10, "m": 2**20, "mb": 2**20, "mib": 2**20,
          "g": 2**30, "gb": 2**30, "gib": 2**30}


class Reject(Exception):
    """A request refused with an HTTP status and one line for the client."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers


def parse_size(text, option: str = "--max-bytes") -> int:
    """'32MB', '512k', '1048576' -> bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m[2].lower() not in _UNITS:
        raise ConfigError(f"{option} {text!r}: expected a size like 20MB, 512KB or 1048576")
    try:
        size = int(float(m[1]) * _UNITS[m[2].lower()])
    except (OverflowError, ValueError):  # 400 nines: float says inf
        raise ConfigError(f"{option} {text!r} is too large; expected a size like 20MB") from None
    if size < 1:
        raise ConfigError(f"{option} must be at least 1 byte")
    return size


def _one_line(text: str, limit: int = 500) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _safe_name(filename: str | None, default: str) -> str:
    """A client-given file name reduced to a short, printable base name (only used in messages and DICOM detection)."""
    if not filename:
        return default
    name = re.sub(r"[^\w.\-]", "_", filename.replace("\\", "/").rsplit("/", 1)[-1])[:80]
    return name or default


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(token_file: Path | None) -> str | None:
    """The bearer token from --token-file, else from $EDGECXR_SERVE_TOKEN; None when neither is given."""
    if token_file is not None:
        where = f"--token-file {token_file}"
        try:
            token = read_small(token_file, where).decode("utf-8-sig").strip()  # an editor's byte-order mark is not the token
        except UnicodeDecodeError as exc:
            raise ConfigError(f"--token-file {token_file}: cannot read it ({exc}); pass a text file holding the token") from None
    elif os.environ.get(TOKEN_ENV):
        token, where = os.environ[TOKEN_ENV].strip(), f"${TOKEN_ENV}"
    else:
        return None
    if not token.isascii():  # HTTP headers carry ASCII: such a token could never match a request
        raise ConfigError(f"{where}: the token must be ASCII (letters, digits, - _ and similar); make one with "
                          "python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    if len(token) < MIN_TOKEN or any(c.isspace() for c in token):
        raise ConfigError(f"{where}: the token must be at least {MIN_TOKEN} characters without spaces; make one with "
                          "python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return token


def host_name(header: str) -> str:
    """'example.org:8080' -> 'example.org', '[::1]:8080' -> '::1' (lower case, no trailing dot)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return (header.rsplit(":", 1)[0] if header.count(":") == 1 else header).rstrip(".")


def allowed_hosts(bind: str, extra=()) -> frozenset | None:
    """The Host names accepted: localhost names, the bind address and `extra` (None when '*' allows any)."""
    if "*" in extra:
        return None
    return frozenset(host_name(h) for h in (*LOCAL_HOSTS, bind, *extra))


class Guard:
    """ASGI middleware in front of the app: Host check, bearer token."""

    def __init__(self, app, *, hosts=None, token: str | None = None):
        self.app, self.hosts = app, hosts
        self.token = token.encode() if token else None

    def authorized(self, headers, scope=None) -> bool:
        if self.token is None:
            return True
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token):
            return True
        given = _app_token(scope, headers) if scope is not None else None  # a browser opening /app sends no header
        return given is not None and hmac.compare_digest(given.encode(), self.token)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.datastructures import Headers

        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if self.hosts is not None and host_name(host) not in self.hosts:
            status, message, extra = 421, (f"Host {host!r} is not served here; use one of {', '.join(sorted(self.hosts))} "
                                           "or start the service with --allowed-host NAME"), {}
        elif not self.authorized(headers, scope) and scope["path"] != "/healthz":
            status, message, extra = 401, "missing or wrong token; send the header 'Authorization: Bearer TOKEN'", \
                {"WWW-Authenticate": "Bearer"}
        else:
            return await self.app(scope, receive, send)
        await _json_error(status, message, extra)(scope, receive, send)


APP_COOKIE = "edgecxr_app_token"


def _app_token(scope, headers) -> str | None:
    """The token a browser gives for the web app: GET/HEAD under /app, as ?token= (first visit) or the cookie."""
    path = scope.get("path", "")
    if scope.get("method") not in ("GET", "HEAD") or not (path == "/app" or path.startswith("/app/")):
        return None
    from urllib.parse import parse_qs

    query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    if query:
        return query[0]
    from http.cookies import CookieError, SimpleCookie

    try:
        cookie = SimpleCookie(headers.get("cookie", ""))
    except CookieError:
        return None
    return cookie[APP_COOKIE].value if APP_COOKIE in cookie else None


def _json_error(status: int, message: str, headers=None):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": _one_line(message)}, status_code=status, headers={"Cache-Control": "no-store", **(headers or {})})


def header_timeout_protocol(seconds: float):
    """uvicorn's h11 protocol, closing a connection that has not sent complete request headers within `seconds`
    (after connecting, or after its previous response): idle and half-sent connections cannot pile up."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeout(H11Protocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self):
            super().on_response_complete()
            self._arm()

        def _arm(self):
            self.loop.call_later(seconds, self._expire, self.cycle)

        def _expire(self, cycle):
            waiting = self.cycle is cycle and (cycle is None or cycle.response_complete)  # no request began since
            if waiting and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeout


class Service:
    """State shared by the requests: the classifier, the worker pool, the lock and counters."""

    def __init__(self, classifier, *, max_bytes: int, workers: int | None, read_timeout: float,
                 max_requests: int | None = None, min_upload_rate: float = DEFAULT_MIN_UPLOAD_RATE):
        self.clf = classifier
        self.max_bytes = int(max_bytes)
        self.read_timeout = float(read_timeout)
        self.min_upload_rate = float(min_upload_rate)
        # requests whose body has arrived and that are being classified: an upload in progress holds no slot
        self.max_requests, self.active = max_requests, 0
        self.buffered, self.max_buffered = 0, UPLOAD_BUFFERS * self.max_bytes  # body bytes held by uploads
        self.workers = workers or min(4, os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="edgecxr-serve")
        self.lock = threading.Lock()  # the model call; the Classifier holds its own lock as well
        self.big_decode = threading.Lock()  # one image above BIG_DECODE_PIXELS in memory at a time
        self.started = time.time()
        self.counts = {"classified": 0, "rejected": 0, "disconnected": 0, "errors": 0}
        manifest = classifier.bundle.manifest
        runtime = dict(classifier.runtime)
        self.model = {"model_sha256": manifest["sha256"], "target": manifest["target"],
                      "runtime": {k: runtime.get(k) for k in ("name", "version", "provider", "threads", "note")}}

    # -- runs in the pool --------------------------------------------------------------
    def classify(self, data: bytes, name: str) -> dict:
        from edgecxr.devices.classifier import Timings
        from edgecxr.data.images import BIG_DECODE_PIXELS, declared_pixels, decode_image

        clock = time.perf_counter
        big = (declared_pixels(data, name) or 0) > BIG_DECODE_PIXELS
        with self.big_decode if big else contextlib.nullcontext():
            t0 = clock()
            image = decode_image(data, name, draft=self.clf.spec.draft_size)
            t1 = clock()
            x, _, pre_ms, warning = self.clf.prepare(image, name)
            del image
        with self.lock:
            p, infer_ms = self.clf.infer(x)
        pred = self.clf.decide(p, Timings((t1 - t0) * 1e3, pre_ms, infer_ms), warning=warning)
        t = pred.timings
        return {"probability": pred.probability, "label": pred.label, "positive": pred.positive,
                "threshold": pred.threshold, "warning": pred.warning, **self.model,
                "timings": {"decode_ms": t.decode_ms, "preprocess_ms": t.preprocess_ms, "infer_ms": t.infer_ms,
                            "total_ms": t.total_ms}}

    # -- request handling ----------------------------------------------------------------
    async def read_body(self, request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise Reject(400, f"bad Content-Length {declared!r}")
            if int(declared) > self.max_bytes:
                raise Reject(413, f"request body of {int(declared):,} bytes is above the {self.max_bytes:,}-byte limit "
                                  "(--max-bytes)")
        held = [0]  # the bytes this upload counts against the shared buffer: its declared length, else what came
        try:
            self._hold(held, int(declared) if declared is not None else 0)
            return await self._read_chunks(request, held)
        finally:
            self.buffered -= held[0]

    def _hold(self, held: list, size: int) -> None:
        more = size - held[0]
        if more <= 0:
            return
        if self.buffered + more > self.max_buffered:
            raise Reject(503, f"uploads in progress hold {self.buffered:,} bytes (limit {self.max_buffered:,}: "
                              f"{UPLOAD_BUFFERS} x --max-bytes); retry shortly", {"Retry-After": "1"})
        self.buffered += more
        held[0] = size

    async def _read_chunks(self, request, held: list) -> bytes:
        """The body, at no less than the minimum upload rate."""
        import anyio

        chunks, size, started, stream = [], 0, time.monotonic(), request.stream().__aiter__()
        while True:
            # the moment the average rate since the start would fall below the minimum, unless more bytes come
            cutoff = started + UPLOAD_GRACE + size / self.min_upload_rate
            chunk = None
            with anyio.move_on_after(max(0.0, cutoff - time.monotonic())) as waited:
                with contextlib.suppress(StopAsyncIteration):
                    chunk = await stream.__anext__()
            if waited.cancelled_caught:
                raise Reject(408, f"the upload is slower than {self.min_upload_rate / 1024:g} KiB/s "
                                  f"({size:,} bytes in {time.monotonic() - started:.1f} s); send it faster or lower "
                                  "--min-upload-rate")
            if chunk is None:
                break
            size += len(chunk)
            if size > self.max_bytes:
                raise Reject(413, f"request body is above the {self.max_bytes:,}-byte limit (--max-bytes)")
            self._hold(held, size)
            chunks.append(chunk)
        return b"".join(chunks)

    async def image_from_request(self, request) -> tuple[bytes, str]:
        ctype = request.headers.get("content-type", "")
        main = ctype.split(";", 1)[0].strip().lower()
        multipart = main == "multipart/form-data"
        if not (multipart or main.startswith("image/") or main in RAW_TYPES):
            raise Reject(415, f"content type {main or '(none)'!r} is not an image; {TYPE_HINT}")
        try:
            with _deadline(self.read_timeout):
                body = await self.read_body(request)
        except TimeoutError:
            raise Reject(408, f"the upload took longer than {self.read_timeout:g} s; send it faster or raise --read-timeout") from None
        if multipart:
            return await self._from_multipart(request, body)
        name = "upload.dcm" if main == "application/dicom" else "upload"
        if not body:
            raise Reject(400, f"empty request body; {TYPE_HINT}")
        return body, name

    async def _from_multipart(self, request, body: bytes) -> tuple[bytes, str]:
        from starlette.datastructures import UploadFile
        from starlette.exceptions import HTTPException
        from starlette.requests import Request

        sent = False

        async def replay():  # the body was already read under the size cap and the deadline
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=4, max_fields=16, max_part_size=self.max_bytes)
        except HTTPException as exc:
            raise Reject(400, f"malformed multipart body ({exc.detail})") from None
        except Exception as exc:  # python-multipart raises its own types on garbage
            raise Reject(400, f"malformed multipart body ({_one_line(exc, 200)})") from None
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise Reject(422, "multipart body has no file field 'file'; send the image as -F file=@chest.jpeg")
            data = await upload.read()
            if not data:
                raise Reject(400, "the uploaded file 'file' is empty")
            part_type = (upload.content_type or "").split(";")[0].strip().lower()
            default = "upload.dcm" if part_type == "application/dicom" else "upload"
            return data, _safe_name(upload.filename, default)
        finally:
            await form.close()


@contextlib.contextmanager
def _deadline(seconds: float):
    import anyio

    with anyio.fail_after(seconds):
        yield


def create_app(classifier, *, max_bytes: int = DEFAULT_MAX_BYTES, workers: int | None = None,
               read_timeout: float = 15.0, token: str | None = None, hosts=None, max_requests: int | None = None,
               site=None, min_upload_rate: float = DEFAULT_MIN_UPLOAD_RATE):
    """The app serving `classifier` (an edgecxr.devices.Classifier); usable with TestClient or uvicorn.

    token: bearer token required on /v1/classify (None: no authentication); hosts: accepted Host
    names (None: any, see `allowed_hosts`); max_requests: requests being classified (body received) before 503;
    min_upload_rate: bytes/s an upload must average after its first UPLOAD_GRACE seconds (slower: 408); site: a web
    app (edgecxr.devices.web.load_site) served at /app/.
    """
    require("starlette", "serve")
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from edgecxr import __version__

    service = Service(classifier, max_bytes=max_bytes, workers=workers, read_timeout=read_timeout,
                      max_requests=max_requests, min_upload_rate=min_upload_rate)
    headers = {"Cache-Control": "no-store"}

    async def classify(request):
        return await _classify(service, request, headers)

    async def healthz(request):
        if not guard.authorized(request.headers):
            return JSONResponse({"status": "ok"}, headers=headers)  # nothing about the model to strangers
        return JSONResponse(_health(service, __version__), headers=headers)

    async def http_error(request, exc):
        return _json_error(exc.status_code, exc.detail or "error")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        service.pool.shutdown(wait=False, cancel_futures=True)

    routes = [Route("/v1/classify", classify, methods=["POST"]), Route("/healthz", healthz, methods=["GET"])]
    if site is not None:
        routes += _app_routes(site, classifier, token)
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error}, lifespan=lifespan)
    app.state.service = service
    guard = Guard(app, hosts=hosts, token=token)
    guard.state = app.state
    return guard


def _app_routes(site, classifier, token):
    """/app: the site's files; ?token=TOKEN (checked by the Guard) becomes an HttpOnly cookie for /app only."""
    from edgecxr.devices.web import site_routes

    if site.config["bundle"]["model_sha256"] != classifier.bundle.manifest["sha256"]:
        raise ConfigError(f"--app {site.path}: the site was built from another model (SHA-256 "
                          f"{site.config['bundle']['model_sha256'][:16]}..., this bundle's is "
                          f"{classifier.bundle.manifest['sha256'][:16]}...); rebuild it: edgecxr device web BUNDLE --out SITE")

    def set_cookie(request, response):
        if token:
            response.set_cookie(APP_COOKIE, request.query_params["token"], path="/app", httponly=True,
                                samesite="strict", secure=request.url.scheme == "https")
        return response

    return site_routes(site, "/app", on_query_token=set_cookie)


async def _classify(service, request, headers):
    """POST /v1/classify: the image's prediction, or a JSON error whose status says whose fault it was."""
    from starlette.requests import ClientDisconnect
    from starlette.responses import JSONResponse

    try:
        data, name = await service.image_from_request(request)
        if service.max_requests is not None and service.active >= service.max_requests:
            raise Reject(503, f"more than {service.max_requests} requests in progress (--max-connections); retry "
                              "shortly", {"Retry-After": "1"})
        service.active += 1
        try:
            result = await asyncio.get_running_loop().run_in_executor(service.pool, service.classify, data, name)
        finally:
            service.active -= 1
    except Reject as exc:
        service.counts["rejected"] += 1
        return _json_error(exc.status, str(exc), exc.headers)
    except ClientDisconnect:
        service.counts["disconnected"] += 1
        return _json_error(400, "client disconnected during the upload")  # nobody reads it
    except asyncio.CancelledError:  # SIGTERM's grace ran out: uvicorn cancels the uploads still in progress
        service.counts["disconnected"] += 1
        return _json_error(503, "the service is shutting down; retry on another instance or later")
    except EdgecxrError as exc:  # ImageError and friends: the image, not the server
        service.counts["rejected"] += 1
        return _json_error(422, str(exc))
    except Exception as exc:
        service.counts["errors"] += 1
        print(f"edgecxr serve: unexpected error on {request.url.path}:", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        return _json_error(500, f"internal error ({type(exc).__name__}); see the server log")
    service.counts["classified"] += 1
    return JSONResponse(result, headers=headers)


def _health(service, version: str) -> dict:
    clf = service.clf
    return {"status": "ok", "edgecxr": version, **service.model, "threshold": clf.threshold,
            "labels": list(clf.labels), "max_bytes": service.max_bytes, "workers": service.workers,
            "uptime_s": round(time.time() - service.started, 3), "counts": dict(service.counts)}


def _check_serve_deps() -> None:
    require("starlette", "serve")
    require("uvicorn", "serve")
    try:
        import python_multipart  # noqa: F401
    except ImportError:
        require("multipart", "serve")


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but loopback exposes the service: add --token-file and a TLS proxy.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@threads_option()
@click.option("--workers", type=click.IntRange(1, 64), help="Decode/preprocess threads, 1-64 (default: up to 4).")
@click.option("--max-bytes", default="32MB", show_default=True, help="Largest request body (e.g. 20MB, 512KB); above it: 413.")
@click.option("--read-timeout", default=15.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds allowed to upload one body; slower: 408.")
@click.option("--min-upload-rate", default="16KB", show_default=True,
              help=f"Bytes per second an upload must average after its first {UPLOAD_GRACE:g} s; slower: 408.")
@click.option("--max-connections", default=64, show_default=True, type=click.IntRange(min=1),
              help="Requests being classified (their body received) before new ones get 503; uploads in progress "
                   "and idle connections do not count.")
@click.option("--header-timeout", default=10.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds a connection may take to send complete request headers; slower ones are closed.")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path),
              help=f"Require 'Authorization: Bearer TOKEN' (TOKEN read from this file; or set ${TOKEN_ENV}).")
@click.option("--allowed-host", "hosts", multiple=True, metavar="NAME",
              help="Repeatable: a Host name clients use (default: localhost names and --host); '*' allows any.")
@click.option("--trusted-key", type=click.Path(dir_okay=False, path_type=Path),
              help="Public key (edgecxr keygen's .pub): refuse a bundle not signed by it (default: $EDGECXR_TRUSTED_KEY).")
@click.option("--runtime", help=runtime_help())
@click.option("--device", "device_name", help=device_help())
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@click.option("--app", "app_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also serve the web app `edgecxr device web` built from this bundle at /app/ (it classifies in the "
                   "browser; images are not uploaded). With a token, open /app/?token=TOKEN once.")
def serve(bundle, host, port, threads, workers, max_bytes, read_timeout, min_upload_rate, max_connections, header_timeout,
          token_file, hosts, trusted_key, runtime, device_name, log_level, app_dir):
    """Serve BUNDLE over HTTP: POST an image to /v1/classify, GET /healthz (loopback by default).

    Example: edgecxr serve bundles/tflite-int8 --port 8080, then curl -F file=@chest.jpeg localhost:8080/v1/classify"""
    _check_serve_deps()
    import uvicorn

    from edgecxr.devices.classifier import Classifier

    limit, min_rate = parse_size(max_bytes), parse_size(min_upload_rate, "--min-upload-rate")
    token = read_token(token_file)
    sock = bind_socket(host, port)  # a busy port fails now, in one line, before the model loads
    site = None
    if app_dir is not None:
        from edgecxr.devices.web import load_site

        site = load_site(app_dir)  # every file checked against files.json before anything is served
    clf = Classifier.load(bundle, runtime=runtime, threads=threads, device=device_name, trusted_key=trusted_key)
    app = create_app(clf, max_bytes=limit, workers=workers, read_timeout=read_timeout, token=token,
                     hosts=allowed_hosts(host, hosts), max_requests=max_connections, site=site, min_upload_rate=min_rate)
    if not _is_loopback(host):
        click.echo(f"warning: binding to {host}: the service has no TLS" +
                   ("" if token else " and no authentication (--token-file)") +
                   "; put it behind a TLS reverse proxy (see docs/devices.md)" +
                   ("" if hosts else "; clients must send Host " + host + " or localhost: add --allowed-host NAME for others"),
                   err=True)
    rt = clf.runtime
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"edgecxr serve: {clf.bundle.manifest['target']} on {rt['name']} {rt['version']} ({rt['provider']}), "
               f"http://{shown}:{port}/v1/classify, max {limit:,} bytes", err=True)
    if site is not None:
        click.echo(f"web app (classifies in the browser): http://{shown}:{port}/app/" + ("?token=TOKEN" if token else "") +
                   ("" if _is_loopback(host) else "; browsers keep it for offline use only over https (TLS proxy) "
                    "or on localhost"), err=True)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=log_level in ("info", "debug"),
                            http=header_timeout_protocol(header_timeout), timeout_keep_alive=5, server_header=False,
                            timeout_graceful_shutdown=SHUTDOWN_GRACE)
    uvicorn.Server(config).run(sockets=[sock])


def bind_socket(host: str, port: int):
    """A listening socket on host:port; an OSError naming host:port when it is taken or not allowed."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, exc.strerror, f"{host}:{port}") from None
    sock.set_inheritable(True)
    return sock
