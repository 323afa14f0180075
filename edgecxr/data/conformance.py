"""Golden vectors of the input contract (written into every bundle at export) and the conformance check
(`edgecxr device conform`) that tells an integrator which stage of their own pipeline differs, and why.

The reference pipeline below decodes with Pillow (entropy decoding only) and does every other step with
edgecxr.data.contract's numpy functions; known mistakes are the same pipeline with one step replaced.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecxr.data import contract as C
from edgecxr.utils.errors import BundleError

FIXTURES = Path(__file__).parents[1] / "conformance_images"
FOLDER = "conformance"
PROB_TOLERANCE = 0.02  # two runtimes (or CPUs) running the same model file: measured up to 0.0043 (openvino-int8)
NEAR_MARGIN = 2 * PROB_TOLERANCE  # near-threshold images keep their decision under that tolerance, with room
TOLERANCE = {"decoded": {"max_abs": 2, "mean_abs": 0.5,
                         "why": "two correct JPEG decoders (accurate vs fast IDCT) differ by up to 2 grey levels"},
             "input": {"max_abs": 1e-6, "why": "float32 rounding of another but equivalent formula"},
             "probability": {"max_abs": PROB_TOLERANCE, "why": "another runtime, version or CPU on the same model "
                             "and the same input tensor (a tensor that differs within the tolerances: the decision "
                             "decides)"},
             "decision": "identical on every image whose golden probability is more than the probability "
                         "tolerance from the threshold",
             "first_stage": {"mean_abs": 2.0, "why": "the first stage submitted, when it is not `decoded`: within "
                             "2 grey levels on average of the golden (another decoder); every later stage is checked "
                             "exactly against the contract's steps on it"},
             "other": "every other stage: exactly the contract's step applied to the stage before it"}
KINDS = {"fullsize-normal.jpeg": "full-size JPEG (grayscale, decoded at a reduced scale)",
         "fullsize-pneumonia.jpeg": "full-size JPEG (grayscale, decoded at a reduced scale)",
         "png16-normal.png": "16-bit PNG (12-bit values through a gamma, offset: scaled by the rank rule, rounded)",
         "portrait-normal.jpeg": "full-size JPEG taller than wide (the resize's pass order shows)",
         "dicom-monochrome1-pneumonia.dcm": "DICOM CR, MONOCHROME1, 12 bits stored, LINEAR window",
         "exif6-colour-pneumonia.jpeg": "colour JPEG stored turned, EXIF orientation 6"}
LABELS = {"fullsize-normal.jpeg": 0, "fullsize-pneumonia.jpeg": 1, "png16-normal.png": 0, "portrait-normal.jpeg": 0,
          "dicom-monochrome1-pneumonia.dcm": 1, "exif6-colour-pneumonia.jpeg": 1}


# -- the model side of the pipeline ---------------------------------------------------------------------
@dataclass
class ModelIO:
    """What the stages after `resized` need: the spec, the tensor specs and (lazily) a runtime session."""

    spec: object
    input: dict
    output: dict
    threshold: float
    open_session: object = None  # () -> Session, called once when a model output is needed
    _session: object = field(default=None, repr=False)

    @property
    def nchw(self) -> bool:
        from edgecxr.runtimes import is_nchw

        return is_nchw(self.input["shape"], self.spec.channels)

    @property
    def in_q(self):
        q = self.input.get("quantization")
        return (float(q["scale"]), int(q["zero_point"])) if q else None

    @property
    def out_q(self):
        q = self.output.get("quantization")
        return (float(q["scale"]), int(q["zero_point"])) if q else None

    @property
    def stages(self) -> list[str]:
        skip = {"cropped"} if self.spec.crop is None else set()
        skip |= set() if self.spec.equalize else {"equalized"}
        skip |= set() if self.in_q and np.dtype(self.input["dtype"]).kind in "iu" else {"quantized"}
        return [s for s in C.STAGES if s not in skip]

    def run(self, tensor: np.ndarray) -> np.ndarray:
        if self._session is None:
            self._session = self.open_session()
        return np.asarray(self._session.run(np.ascontiguousarray(tensor)))

    def probability(self, raw) -> float:
        from edgecxr.formats.modelinfo import to_prob
        from edgecxr.runtimes import dequantize

        raw = np.asarray(raw)
        return float(to_prob(dequantize(raw, self.out_q).reshape(1, -1), self.output.get("kind", "sigmoid"),
                             int(self.output.get("positive_index", 0)))[0])


# -- the reference pipeline ------------------------------------------------------------------------------
def decode_raw(data: bytes, name: str, draft_size: int):
    """(samples as the file holds them, Pillow mode, EXIF orientation): Pillow decodes, nothing converts.
    DICOM is decoded by edgecxr.data.images (numpy already) and returned as gray."""
    from PIL import Image

    from edgecxr.data.images import _decode_pil, _is_dicom, decode_image

    if _is_dicom(data, name):
        return np.asarray(decode_image(data, name)), "DICOM", 1
    _decode_pil(data, name, draft_size)  # the runner's checks (size limit, corrupt files) with its messages
    img = Image.open(io.BytesIO(data))
    if img.format == "JPEG":
        img.draft(img.mode, (draft_size, draft_size))
    img.load()
    orientation = img.getexif().get(0x0112, 1)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode not in ("L", "RGB", "RGBA", "LA", "I;16", "I;16B", "I;16L", "I", "F"):
        img = img.convert("RGB")  # CMYK, YCbCr, 1 ...: the decoder's colour model to RGB
    dtype = np.float32 if img.mode in ("I;16", "I;16B", "I;16L", "I", "F") else np.uint8
    return np.asarray(img, dtype=dtype), img.mode, orientation


def to_gray(samples: np.ndarray, mode: str, swap_rb: bool = False) -> np.ndarray:
    if mode in ("L", "DICOM"):
        return samples
    if samples.dtype == np.float32:
        return C.scale_uint8(samples)
    if mode == "LA":
        samples = np.concatenate([np.repeat(samples[..., :1], 3, axis=-1), samples[..., 1:2]], axis=-1)
    if samples.shape[-1] == 4:
        samples = C.composite_on_black(samples)
    return C.rgb_to_gray(samples[..., ::-1] if swap_rb else samples)


def _decoded(case, io_, mistake=None) -> np.ndarray:
    samples, mode, orientation = decode_raw(case.data, case.id, io_.spec.draft_size)
    gray = to_gray(samples, mode, swap_rb=mistake == "bgr")
    if mistake == "monochrome1_not_inverted" and case.monochrome1:
        gray = 255 - gray
    return gray if mistake == "exif_ignored" else C.exif_transpose(gray, orientation)


def _input(prev, io_):
    return C.to_input(prev, io_.spec, io_.nchw)


def _quantized(prev, io_, rounding=np.rint):
    return C.quantize(prev, *io_.in_q, np.dtype(io_.input["dtype"]), rounding)


STEPS = {  # stage -> (previous stage's array, case, ModelIO) -> this stage's array
    "decoded": lambda prev, case, io_: _decoded(case, io_),
    "cropped": lambda prev, case, io_: np.ascontiguousarray(C.crop(prev, io_.spec.crop)),
    "equalized": lambda prev, case, io_: C.equalize(prev),
    "resized": lambda prev, case, io_: C.resize(prev, io_.spec.size, io_.spec.interpolation),
    "input": lambda prev, case, io_: _input(prev, io_),
    "quantized": lambda prev, case, io_: _quantized(prev, io_),
    "output": lambda prev, case, io_: io_.run(prev),
    "probability": lambda prev, case, io_: np.float64(io_.probability(prev)),
    "decision": lambda prev, case, io_: np.int64(float(prev) >= io_.threshold),
}


@dataclass
class Case:
    """One conformance image: its id (file name in the bundle), bytes and what it exercises."""

    id: str
    data: bytes
    kind: str
    label: int | None = None

    @property
    def monochrome1(self) -> bool:
        return b"MONOCHROME1" in self.data[:4096] if self.id.lower().endswith((".dcm", ".dicom")) else False


def run_pipeline(case: Case, io_: ModelIO, mistake: "Mistake | None" = None, until: str = "decision") -> dict:
    """Every stage of the contract for one image (with one known mistake in place of its step)."""
    arrays, prev = {}, None
    for stage in io_.stages:
        if mistake is not None and mistake.stage == stage:
            prev = mistake.apply(prev, case, io_)
        else:
            prev = STEPS[stage](prev, case, io_)
        arrays[stage] = prev
        if stage == until:
            break
    return arrays


# -- known mistakes --------------------------------------------------------------------------------------
def _cv2_equalize(prev, case, io_):
    """OpenCV's equalizeHist: lut[i] = round(cumsum(h)[i] * 255 / (N - h[first])), 0 below the first level."""
    hist = np.bincount(prev.ravel(), minlength=256)
    used = np.flatnonzero(hist)
    if len(used) == 0 or hist[used[0]] == prev.size:
        return np.full_like(prev, used[0] if len(used) else 0)
    scale = np.float32(255.0 / (prev.size - hist[used[0]]))
    cum = np.cumsum(hist).astype(np.float32) - np.float32(hist[used[0]])
    lut = np.clip(np.rint(cum * scale), 0, 255).astype(np.uint8)
    lut[:used[0] + 1] = 0
    return lut[prev]


def _linear_no_antialias(prev, case, io_):
    """Two-tap bilinear at the output pixel centres (cv2.INTER_LINEAR), whatever the scale."""
    size = io_.spec.size
    if prev.shape == (size, size):
        return prev

    def axis(n):
        pos = np.clip((np.arange(size) + 0.5) * (n / size) - 0.5, 0, n - 1)
        lo = np.floor(pos).astype(int)
        return lo, np.minimum(lo + 1, n - 1), (pos - lo).astype(np.float32)

    (r0, r1, fr), (c0, c1, fc) = axis(prev.shape[0]), axis(prev.shape[1])
    p = prev.astype(np.float32)
    rows = p[r0] * (1 - fr)[:, None] + p[r1] * fr[:, None]
    out = rows[:, c0] * (1 - fc)[None] + rows[:, c1] * fc[None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _nearest(prev, case, io_):
    """cv2.INTER_NEAREST: source index floor(i * in / out)."""
    size = io_.spec.size
    rows = (np.arange(size) * prev.shape[0] // size)
    cols = (np.arange(size) * prev.shape[1] // size)
    return prev[rows][:, cols]


def _chw(prev, case, io_):
    x = _input(prev, io_)
    return np.ascontiguousarray(np.moveaxis(x, 1, 3) if io_.nchw else np.moveaxis(x, 3, 1))


@dataclass(frozen=True)
class Mistake:
    name: str
    stage: str
    description: str
    fix: str
    apply: object  # (previous stage's array, case, ModelIO) -> the mistaken stage array


MISTAKES = [
    Mistake("bgr", "decoded", "colour channels taken as BGR (OpenCV's imread order) by an RGB formula, or the "
            "reverse", "convert with the channel order the decoder gives (cv2.COLOR_BGR2GRAY for cv2.imread, or "
            "swap to RGB first) and the contract's luma", lambda p, c, m: _decoded(c, m, "bgr")),
    Mistake("exif_ignored", "decoded", "EXIF orientation ignored (the image is used as stored, turned)",
            "apply EXIF tag 0x0112 after decoding (OpenCV's imread does unless IMREAD_IGNORE_ORIENTATION; "
            "Android: ExifInterface)", lambda p, c, m: _decoded(c, m, "exif_ignored")),
    Mistake("monochrome1_not_inverted", "decoded", "DICOM MONOCHROME1 not inverted (bone dark, air bright)",
            "for PhotometricInterpretation MONOCHROME1 take 255 - v after windowing",
            lambda p, c, m: _decoded(c, m, "monochrome1_not_inverted")),
    Mistake("no_equalization", "equalized", "histogram equalization missing",
            "equalize with the contract's lookup table before resizing", lambda p, c, m: p),
    Mistake("opencv_equalizehist", "equalized", "another equalization formula (OpenCV's equalizeHist)",
            "build the contract's 256-entry table from the histogram and apply it (cv2.LUT); equalizeHist's "
            "formula differs", _cv2_equalize),
    Mistake("resize_no_antialias", "resized", "resize without antialiasing (cv2.INTER_LINEAR, a 2-tap bilinear)",
            "use the contract's triangle filter whose support widens with the scale (Pillow's BILINEAR; "
            "examples/opencv_recipe.py's resize)", _linear_no_antialias),
    Mistake("resize_nearest", "resized", "nearest-neighbour resize", "use the contract's antialiased bilinear",
            _nearest),
    Mistake("scale_0_1", "input", "pixels scaled to [0, 1] instead of the contract's [-1, 1]",
            "x = p * scale + offset with the manifest's scale and offset (the input table)",
            lambda p, c, m: C.to_input(p, _unit(m.spec), m.nchw)),
    Mistake("layout_chw", "input", "channels-first (CHW) where the model takes channels-last (HWC), or the "
            "reverse", "lay the tensor out as the manifest's input shape says", _chw),
    Mistake("input_other_formula", "quantized", "the float input computed as (p - mean) / std (e.g. (p - 127.5) "
            "/ 127.5) instead of p * scale + offset in float32: x / scale lands on the other side of .5 and the int8 "
            "value moves by one", "quantize from the contract's input table, or use its 256-entry quantized table",
            lambda p, c, m: _quantized(_other_input(p, c, m), m)),
    Mistake("int8_round_half_up", "quantized", "int8 input rounded half up (floor(v + 0.5)) instead of half to even",
            "round half to even, or use the contract's 256-entry quantized table",
            lambda p, c, m: _quantized(p, m, lambda v: np.floor(v + np.float32(0.5)))),
    Mistake("int8_round_half_away", "quantized", "int8 input rounded half away from zero (C's round()) instead "
            "of half to even", "round half to even (nearbyint / rint), or use the contract's quantized table",
            lambda p, c, m: _quantized(p, m, lambda v: np.sign(v) * np.floor(np.abs(v) + np.float32(0.5)))),
    Mistake("int8_truncate", "quantized", "int8 input truncated toward zero (a plain cast) instead of rounded",
            "round half to even before the cast", lambda p, c, m: _quantized(p, m, np.trunc)),
]
MISTAKE_NAMES = {m.name: m for m in MISTAKES}


def _other_input(prev, case, io_):
    """The float input by the formula people write: (p - mean) / std, mean 127.5 and std 127.5 for [-1, 1]."""
    spec = io_.spec
    gray = np.asarray(prev, np.float32)[:, 0] if io_.nchw else np.asarray(prev, np.float32)[..., 0]
    pixels = np.rint((gray - np.float32(spec.offset)) / np.float32(spec.scale))  # back to the grey levels
    x = (pixels - np.float32(-spec.offset / spec.scale)) / np.float32(1 / spec.scale)  # (p - mean) / std
    x = np.repeat(x[..., None], spec.channels, axis=-1)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if io_.nchw else x)


def _unit(spec):
    from dataclasses import replace

    return replace(spec, scale=1 / 255, offset=0.0)


# -- golden vectors, written at export ----------------------------------------------------------------
def near_threshold(reference: dict, threshold: float, label: int) -> list[str]:
    """Reference images of `label` on their label's side of the threshold, nearest first (by the float model:
    write_golden keeps the first the bundle's own model also leaves NEAR_MARGIN away)."""
    probs, labels = reference["probs"], reference["labels"]
    return [rel for _, rel in sorted((abs(p - threshold), rel) for rel, p in probs.items()
                                     if labels[rel] == label and (p >= threshold) == bool(label))]


def cases_for(reference: dict, threshold: float, data_paths: dict) -> tuple[list[Case], dict]:
    """The conformance set: the shipped fixtures, and per class the reference images nearest the threshold
    (224 px JPEGs of the Kermany layout) as candidates (write_golden keeps one of each). data_paths: rel -> path."""
    cases = [Case(p.name, p.read_bytes(), KINDS[p.name], LABELS[p.name]) for p in sorted(FIXTURES.iterdir())
             if p.name in KINDS]
    candidates = {}
    for label, word in ((0, "normal"), (1, "pneumonia")):
        candidates[word] = [Case(f"near-threshold-{word}{Path(data_paths[rel]).suffix.lower()}",
                                 Path(data_paths[rel]).read_bytes(),
                                 f"test image near the threshold ({word}, float probability "
                                 f"{reference['probs'][rel]:.4f}; {rel})", label)
                            for rel in near_threshold(reference, threshold, label) if rel in data_paths]
    return cases, candidates


def _pick_near(io_: ModelIO, candidates: list[Case], limit: int = 200) -> tuple[Case, dict] | None:
    """The first candidate whose probability by the bundle's own model is NEAR_MARGIN from the threshold."""
    for case in candidates[:limit]:
        arrays = run_pipeline(case, io_)
        if abs(float(arrays["probability"]) - io_.threshold) >= NEAR_MARGIN:
            return case, arrays
    return None


def write_golden(folder: Path, io_: ModelIO, cases: list[Case], runner_pixels=None, candidates=None) -> dict:
    """Write FOLDER/conformance/{images,golden}/ and return the manifest's `conformance` entry.

    runner_pixels: (path) -> uint8 (size, size) of edgecxr's runner; every golden `resized` array must equal
    it, so golden vectors never disagree with the runner they describe. candidates: {class word: [Case]} of
    near-threshold images, nearest first (cases_for's)."""
    root = Path(folder) / FOLDER
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "golden").mkdir(exist_ok=True)
    entries, computed, missing = [], {}, []
    for word, options in (candidates or {}).items():
        picked = _pick_near(io_, options)
        if picked is None:
            missing.append(word)
            continue
        cases = [*cases, picked[0]]
        computed[picked[0].id] = picked[1]
    for case in cases:
        image = root / "images" / case.id
        image.write_bytes(case.data)
        arrays = computed.get(case.id) or run_pipeline(case, io_)
        if runner_pixels is not None and not np.array_equal(runner_pixels(image), arrays["resized"]):
            raise BundleError(f"{case.id}: the contract's reference and edgecxr's runner disagree on the resized "
                              "pixels; this edgecxr build is inconsistent, report it")
        golden = root / "golden" / f"{Path(case.id).stem}.npz"
        np.savez_compressed(golden, **{s: np.asarray(a) for s, a in arrays.items()})
        margin = abs(float(arrays["probability"]) - io_.threshold)
        entries.append({"id": case.id, "file": f"{FOLDER}/images/{case.id}", "kind": case.kind, "label": case.label,
                        "golden": f"{FOLDER}/golden/{golden.name}", "probability": float(arrays["probability"]),
                        "decision": int(arrays["decision"]), "decision_checked": margin > PROB_TOLERANCE,
                        "arrays": {s: {"shape": list(np.shape(a)), "dtype": np.asarray(a).dtype.name,
                                       "sha256": C.array_sha256(a)} for s, a in arrays.items()}})
    block = {"contract_version": C.VERSION, "stages": io_.stages, "tolerance": TOLERANCE, "images": entries}
    if missing:  # a small reference split: say it rather than ship fewer images silently
        block["note"] = (f"no {' or '.join(missing)} reference image is {NEAR_MARGIN} from the threshold by this "
                         "bundle's model: the set has no near-threshold image of that class")
    return block


def quantized_table(io_: ModelIO) -> list[int] | None:
    """The int8 value of each grey level 0..255 (the `quantized` formula, as a table)."""
    if "quantized" not in io_.stages:
        return None
    return [int(v) for v in _quantized(C.scale_table(io_.spec), io_)]


# -- the check ----------------------------------------------------------------------------------------
SCALARS = ("probability", "decision")


def bundle_io(bundle, runtime=None, threads=None, device=None) -> ModelIO:
    from edgecxr.runtimes import open_session

    m = bundle.manifest
    opener = lambda: open_session(bundle.model_path, bundle.target.family, runtime=runtime,  # noqa: E731
                                  threads=threads, device=device, precision=bundle.target.precision)
    return ModelIO(bundle.spec, m["input"], m["output"], bundle.threshold, opener)


def golden_set(bundle) -> list[tuple[dict, Case, dict]]:
    """[(manifest entry, case, golden arrays)] of a bundle, every array checked against its listed hash."""
    block = bundle.manifest.get("conformance")
    if not block:
        raise BundleError(f"{bundle.path}: the bundle has no conformance set (exported before edgecxr wrote golden "
                          "vectors); re-export it with this edgecxr")
    _check_block(bundle, block)
    out = []
    for entry in block["images"]:
        with np.load(bundle.path / entry["golden"], allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        for stage, info in entry["arrays"].items():
            if stage not in arrays or C.array_sha256(arrays[stage]) != info["sha256"]:
                raise BundleError(f"{bundle.path}: golden array {entry['id']}/{stage} does not match its hash in "
                                  "the manifest; re-export the bundle")
        data = (bundle.path / entry["file"]).read_bytes()
        out.append((entry, Case(entry["id"], data, entry["kind"], entry.get("label")), arrays))
    return out


def _check_block(bundle, block) -> None:
    """The conformance block names files of the bundle only, holds images, and the input contract it goes with
    is the one edgecxr writes for the bundle's preprocessing (a resealed manifest cannot contradict it)."""
    from pathlib import PurePosixPath

    bad = BundleError(f"{bundle.path}: manifest 'conformance' is malformed; re-export the bundle")
    images = block.get("images") if isinstance(block, dict) else None
    if not isinstance(images, list) or not images:
        raise bad
    for entry in images:
        if not isinstance(entry, dict) or not isinstance(entry.get("arrays"), dict):
            raise bad
        for key in ("file", "golden", "id"):
            rel = entry.get(key)
            if not isinstance(rel, str) or (key != "id" and rel not in bundle.manifest["files"]) \
                    or PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts:
                raise bad
    m = bundle.manifest
    io_ = ModelIO(bundle.spec, m["input"], m["output"], bundle.threshold)
    if _parameters(m.get("input_contract"), io_) != _parameters(C.algorithms(bundle.spec), io_, quantized_table(io_)):
        raise BundleError(f"{bundle.path}: manifest 'input_contract' does not give the numbers of its 'preprocess' "
                          "and input quantization (edited); re-export the bundle")


def _parameters(rules, io_: ModelIO, table="given"):
    """The numbers of an input contract (its prose may be reworded between versions of edgecxr)."""
    try:
        steps = rules["steps"]
        return (rules["version"], steps["decoded"]["draft_size"], steps["cropped"]["box"],
                steps["equalized"]["enabled"], steps["resized"]["size"], steps["resized"]["kernel"],
                steps["input"]["channels"], steps["input"]["table"],
                steps["quantized"].get("table") if table == "given" else table)
    except (KeyError, TypeError):
        return None


def own_submission(bundle, classifier) -> dict[str, dict]:
    """What edgecxr's runner produces for the conformance images: the submission of edgecxr itself."""
    out = {}
    for entry, case, _ in golden_set(bundle):
        path = bundle.path / entry["file"]
        img = classifier.spec.read(path)
        pixels = classifier.spec.to_pixels(img)
        x = classifier.from_pixels(pixels)
        p, _ = classifier.infer(x)
        stage = "quantized" if x.dtype.kind in "iu" else "input"
        out[entry["id"]] = {"decoded": np.asarray(img), "resized": pixels, stage: x, "probability": np.float64(p)}
    return out
