"""The embeddable on-device classifier: a verified bundle + one runtime, no TensorFlow.

    from edgecxr.devices import Classifier
    clf = Classifier.load("bundles/tflite-int8")          # verifies hashes, opens LiteRT
    result = clf.predict("chest.jpeg")                      # Prediction(probability=..., label=...)
    results = clf.predict_batch(paths)                      # decoding overlaps inference

Thread safety: one Classifier may be shared by many threads. Decoding and
preprocessing run concurrently; the model call itself is serialized by a lock
held by the Classifier (runtime interpreters are not re-entrant). For parallel
inference load one Classifier per thread.

Inputs accepted by ``predict``: a path (str / PathLike), raw file bytes, a PIL
image, a uint8 image array (H, W) or (H, W, 3), or a float32 array of exactly
the model's input shape (size, size, channels), taken as already preprocessed (finite, not constant).
"""
from __future__ import annotations

import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Iterable, Union

import numpy as np

from edgecxr.formats.bundle import Bundle, load_bundle
from edgecxr.data.domain import check_domain
from edgecxr.utils.errors import ConfigError, EdgecxrError, ImageError, ModelError
from edgecxr.data.images import decode_image, to_gray

from edgecxr.runtimes import Session, dequantize, is_nchw, open_session, quantize_input

from edgecxr.formats.modelinfo import OUTPUT_KINDS as KINDS, to_prob  # noqa: E402


@dataclass(frozen=True)
class Timings:
    decode_ms: float
    preprocess_ms: float
    infer_ms: float  # quantize + runtime call + dequantize, inside the lock

    @property
    def total_ms(self) -> float:
        return self.decode_ms + self.preprocess_ms + self.infer_ms


@dataclass(frozen=True)
class Prediction:
    probability: float  # of the positive class (labels[1])
    label: str  # labels[1] when probability >= threshold, else labels[0]
    positive: bool
    threshold: float
    timings: Timings
    source: str | None = None
    warning: str | None = None  # e.g. a lateral view: classified, outside what the model was validated on

    def to_dict(self) -> dict:
        out = asdict(self)
        out["timings"]["total_ms"] = self.timings.total_ms
        return out


@dataclass(frozen=True)
class Failure:
    """An input that could not be classified (returned by predict_batch when strict=False)."""

    source: str
    error: str


Item = Union[str, os.PathLike, bytes, np.ndarray, "PIL.Image.Image"]  # noqa: F821


def _check_quantization(bundle, session, in_q, out_q) -> None:
    """The manifest's quantization of an integer tensor must be the model file's own (TFLite reports it):
    an edited scale or zero point would turn every pixel into another number."""
    model_q = getattr(session, "quantization", None)
    if model_q is None:
        return
    for name, declared, actual in (("input", in_q, model_q[0]), ("output", out_q, model_q[1])):
        if declared is not None and actual != (0.0, 0.0) and not np.allclose(declared, actual, rtol=1e-6, atol=0):
            raise ModelError(f"{bundle.path}: manifest {name} quantization {declared} is not the model's {actual}; "
                             "re-export the bundle")


def _quant(tensor: dict):
    q = tensor.get("quantization")
    if not q:
        return None
    return float(q["scale"]), int(q["zero_point"])


class Classifier:
    """A loaded bundle ready to classify images. Create with `Classifier.load`."""

    def __init__(self, bundle: Bundle, session: Session):
        self.bundle, self.session = bundle, session
        manifest = bundle.manifest
        self.spec = bundle.spec
        self.threshold = bundle.threshold
        self.labels = bundle.labels
        out = manifest["output"]
        self.kind = out.get("kind", "sigmoid")
        if self.kind not in KINDS:
            raise ModelError(f"{bundle.path}: output kind {self.kind!r} unknown; valid: {', '.join(KINDS)}")
        self.positive_index = int(out.get("positive_index", 0))
        self._in_q, self._out_q = _quant(manifest["input"]), _quant(out)
        _check_quantization(bundle, session, self._in_q, self._out_q)
        self._in_dtype = session.input_dtype
        declared = np.dtype(manifest["input"]["dtype"])
        if declared != self._in_dtype:
            raise ModelError(f"{bundle.path}: manifest says input dtype {declared}, the model has {self._in_dtype}; re-export the bundle")
        if self._in_dtype.kind in "iu" and self._in_q is None:
            raise ModelError(f"{bundle.path}: integer input without quantization parameters in the manifest")
        # NCHW models (some ONNX exports) get the channel axis moved in front.
        shape = session.input_shape
        c = self.spec.channels
        self._nchw = is_nchw(shape, c)
        dims = (shape[2], shape[3], shape[1]) if self._nchw else tuple(shape[1:])
        if len(shape) != 4 or any(d not in (None, -1, w) for d, w in zip(dims, self.spec.input_shape)):
            raise ModelError(f"{bundle.path}: its model takes input {tuple(shape)} but its preprocessing spec makes "
                             f"{self.spec.input_shape} (size {self.spec.size}, {c} channel(s)); every image would "
                             "fail: re-export the bundle")
        self._lock = threading.Lock()
        self._lut = self._quantize(self.spec.scale_pixels(np.arange(256, dtype=np.uint8)[None])[0, :, 0])
        self.device: str | None = None  # as asked at load time (OpenVINO device / ORT provider)

    # -- construction ---------------------------------------------------------
    @classmethod
    def load(cls, bundle: Union[str, os.PathLike, Bundle], runtime: str | None = None, threads: int | None = None,
             device: str | None = None, trusted_key=None) -> "Classifier":
        """Verify `bundle` (folder or .zip) and open its model.

        runtime: a name from edgecxr.runtimes.RUNTIMES (default: the first installed one
        for the bundle's family); threads: runtime CPU threads; device: OpenVINO device
        (CPU, GPU, NPU) or ONNX Runtime provider (cpu, cuda, tensorrt); trusted_key: a public key
        file (default: $EDGECXR_TRUSTED_KEY): the bundle must be signed by it.
        """
        from edgecxr.formats.signing import trusted_key_path

        if not isinstance(bundle, Bundle):
            bundle = load_bundle(bundle, trusted_key=trusted_key_path(trusted_key))
        target = bundle.target
        try:  # from the verified bytes: a model file swapped after verification never runs
            session = open_session(bundle.model_source(), target.family, runtime=runtime, threads=threads,
                                   device=device, precision=target.precision)
        except ModelError as exc:  # the runtimes name in-memory models "<model bytes>": name the file
            raise ModelError(str(exc).replace("<model bytes>", str(bundle.model_path))) from None
        clf = cls(bundle, session)
        clf.device = device
        return clf

    def twin(self) -> "Classifier | None":
        """The bundle's float32 twin on the same runtime and threads (None when the bundle has none)."""
        twin = self.bundle.twin()
        if twin is None:
            return None
        return Classifier.load(twin, runtime=self.session.runtime, threads=self.session.threads, device=self.device)

    @property
    def runtime(self) -> dict:
        """Name, version, provider/delegate and threads of the runtime that runs the model."""
        return self.session.describe()

    # -- the three steps --------------------------------------------------------
    def prepare(self, item: Item, name: str | None = None) -> tuple[np.ndarray, float, float, str | None]:
        """Decode, check against the bundle's input domain, preprocess to the model's input tensor.

        Returns (model_input, decode_ms, preprocess_ms, warning). Raises ImageError for an unreadable
        image or one outside the domain (edgecxr.data.domain). Thread-safe; no runtime call.
        """
        clock = time.perf_counter
        t0 = clock()
        if isinstance(item, np.ndarray) and item.dtype.kind == "f":
            if item.shape != self.spec.input_shape:
                raise ConfigError(f"a float array is taken as a preprocessed input and must have shape "
                                  f"{self.spec.input_shape}, got {item.shape}; pass uint8 pixels for a raw image")
            low, high = float(item.min()), float(item.max())  # NaN or inf when any value is
            if not (np.isfinite(low) and np.isfinite(high)):
                raise ImageError("float input holds NaN or infinite values; not a usable image")
            if low == high:
                raise ImageError(f"float input is constant (every value {low:g}); not an X-ray")
            return self.to_model_input(item), 0.0, (clock() - t0) * 1e3, None
        img = self._decode(item)
        warning = check_domain(img, name or _source(item) or "<input>", self.bundle.domain)
        t1 = clock()
        x = self.from_pixels(self.spec.to_pixels(img))
        return x, (t1 - t0) * 1e3, (clock() - t1) * 1e3, warning

    def _decode(self, item):
        if isinstance(item, (str, os.PathLike)):
            return self.spec.read(item)
        if isinstance(item, (bytes, bytearray, memoryview)):
            return decode_image(bytes(item), draft=self.spec.draft_size)
        if isinstance(item, np.ndarray):
            from PIL import Image

            if item.dtype != np.uint8 or item.ndim not in (2, 3) or (item.ndim == 3 and item.shape[-1] not in (1, 3, 4)):
                raise ImageError(f"array of shape {item.shape} and dtype {item.dtype}: expected uint8 (H, W) or (H, W, 3)")
            arr = item[..., 0] if item.ndim == 3 and item.shape[-1] == 1 else item
            return to_gray(Image.fromarray(arr), "<array>")  # RGBA composited on black, as a file's pixels are
        if hasattr(item, "convert") and hasattr(item, "size"):  # a PIL image
            size = item.info.get("source_size", item.size)  # decode_image's, before a reduced-scale decode
            if getattr(item, "format", None) == "JPEG" and getattr(item, "tile", None):
                item.draft(item.mode, (self.spec.draft_size,) * 2)  # not loaded yet: decode as a path would be
            gray = to_gray(item)
            gray.info["source_size"] = size
            return gray
        raise ConfigError(f"cannot classify a {type(item).__name__}; pass a path, bytes, a PIL image or a numpy array")

    def from_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (size, size) pixels -> model input, through a 256-entry table.

        The table holds exactly spec.scale_pixels(0..255), quantized like any float input,
        so the result equals to_model_input(spec.scale_pixels(pixels)) bit for bit.
        """
        x = self._lut[pixels][..., None]
        if self.spec.channels == 3:
            x = np.repeat(x, 3, axis=-1)
        return self._layout(x)

    def to_model_input(self, x: np.ndarray) -> np.ndarray:
        """float32 (size, size, c) -> the model's input tensor (quantized when the model takes integers)."""
        return self._layout(self._quantize(np.asarray(x, np.float32)))

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        return quantize_input(x, self._in_q, self._in_dtype)

    def _layout(self, x: np.ndarray) -> np.ndarray:
        x = x[None]
        if self._nchw:
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x)

    def probability(self, raw: np.ndarray) -> float:
        """Raw model output -> probability of the positive class."""
        p = float(to_prob(dequantize(raw, self._out_q).reshape(1, -1), self.kind, self.positive_index)[0])
        if not (np.isfinite(p) and -1e-6 <= p <= 1 + 1e-6):
            raise ModelError(f"{self.bundle.path}: the model returned {float(p):.4g} as a probability (output kind "
                             f"'{self.kind}'); its output is not what the bundle declares (raw logits?); "
                             "re-export it with the right --output")
        return float(min(max(p, 0.0), 1.0))

    def infer(self, x: np.ndarray) -> tuple[float, float]:
        """Model input from `prepare` -> (probability, infer_ms). The model call, serialized by the lock."""
        with self._lock:
            t0 = time.perf_counter()
            raw = self.session.run(x)
            p = self.probability(raw)
            return p, (time.perf_counter() - t0) * 1e3

    def decide(self, probability: float, timings: Timings, source=None, warning=None) -> Prediction:
        positive = probability >= self.threshold
        return Prediction(probability, self.labels[1] if positive else self.labels[0], bool(positive),
                          self.threshold, timings, source, warning)

    # -- public API -------------------------------------------------------------
    def predict(self, item: Item) -> Prediction:
        """Classify one image (see the module docstring for accepted inputs); raises ImageError."""
        x, decode_ms, pre_ms, warning = self.prepare(item)
        p, infer_ms = self.infer(x)
        return self.decide(p, Timings(decode_ms, pre_ms, infer_ms), _source(item), warning)

    def predict_batch(self, items: Iterable[Item], *, workers: int | None = None,
                      strict: bool = True) -> list[Prediction | Failure]:
        """Classify many images in order; decoding runs in `workers` threads while the model runs.

        At most 2 * workers inputs are decoded ahead of the model (a bounded window), so a large
        folder never piles decoded images up in memory while the serialized model call catches up.
        strict=True raises the first ImageError; strict=False returns a Failure in its place.
        """
        workers = workers or min(4, os.cpu_count() or 1)
        window = 2 * workers

        def prep(item):
            try:
                return self.prepare(item)
            except ImageError as exc:
                return exc

        results: list[Prediction | Failure] = []
        pending = deque()  # (item, future) in input order, at most `window` long
        source = iter(items)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgecxr-decode") as pool:
            try:
                while True:
                    for item in source:  # top the window up
                        pending.append((item, pool.submit(prep, item)))
                        if len(pending) >= window:
                            break
                    if not pending:
                        break
                    item, future = pending.popleft()
                    prepared = future.result()
                    if isinstance(prepared, EdgecxrError):
                        if strict:
                            raise prepared
                        results.append(Failure(_source(item) or "<input>", str(prepared)))
                        continue
                    x, decode_ms, pre_ms, warning = prepared
                    p, infer_ms = self.infer(x)
                    results.append(self.decide(p, Timings(decode_ms, pre_ms, infer_ms), _source(item), warning))
            finally:
                for _, future in pending:  # on an error: do not decode the rest of the window
                    future.cancel()
        return results

    def __repr__(self):
        r = self.runtime
        return (f"Classifier({self.bundle.manifest['target']}, runtime={r['name']} {r['version']}, "
                f"provider={r['provider']}, threshold={self.threshold:.4f})")


def _source(item) -> str | None:
    return str(item) if isinstance(item, (str, os.PathLike)) else None
