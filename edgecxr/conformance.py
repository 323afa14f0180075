"""Golden vectors of the input contract (written into every bundle at export) and the conformance check
(`edgecxr device conform`) that tells an integrator which stage of their own pipeline differs, and why.

The reference pipeline below decodes with Pillow (entropy decoding only) and does every other step with
edgecxr.contract's numpy functions; known mistakes are the same pipeline with one step replaced.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecxr import contract as C
from edgecxr.errors import BundleError, ConfigError, ImageError

FIXTURES = Path(__file__).parent / "conformance_images"
FOLDER = "conformance"
PROB_TOLERANCE = 0.02  # two runtimes (or CPUs) running the same model file: measured up to 0.0043 (openvino-int8)
NEAR_MARGIN = 2 * PROB_TOLERANCE  # near-threshold images keep their decision under that tolerance, with room
TOLERANCE = {"decoded": {"max_abs": 2, "mean_abs": 0.5,
                         "why": "two correct JPEG decoders (accurate vs fast IDCT) differ by up to 2 grey levels"},
             "input": {"max_abs": 1e-6, "why": "float32 rounding of another but equivalent formula"},
             "probability": {"max_abs": PROB_TOLERANCE, "why": "another runtime, version or CPU on the same model"},
             "decision": "identical on every image",
             "other": "every other stage: exactly the contract's step applied to the stage before it"}
KINDS = {"fullsize-normal.jpeg": "full-size JPEG (grayscale, decoded at a reduced scale)",
         "fullsize-pneumonia.jpeg": "full-size JPEG (grayscale, decoded at a reduced scale)",
         "png16-normal.png": "16-bit PNG (12-bit values, offset: min-max scaled)",
         "dicom-monochrome1-pneumonia.dcm": "DICOM CR, MONOCHROME1, 12 bits stored, LINEAR window",
         "exif6-colour-pneumonia.jpeg": "colour JPEG stored turned, EXIF orientation 6"}
LABELS = {"fullsize-normal.jpeg": 0, "fullsize-pneumonia.jpeg": 1, "png16-normal.png": 0,
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
        from edgecxr.modelinfo import to_prob
        from edgecxr.runtimes import dequantize

        raw = np.asarray(raw)
        return float(to_prob(dequantize(raw, self.out_q).reshape(1, -1), self.output.get("kind", "sigmoid"),
                             int(self.output.get("positive_index", 0)))[0])


# -- the reference pipeline ------------------------------------------------------------------------------
def decode_raw(data: bytes, name: str, draft_size: int):
    """(samples as the file holds them, Pillow mode, EXIF orientation): Pillow decodes, nothing converts.
    DICOM is decoded by edgecxr.images (numpy already) and returned as gray."""
    from PIL import Image

    from edgecxr.images import _decode_pil, _is_dicom, decode_image

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
        return C.minmax_uint8(samples)
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
    scale, zero = io_.in_q
    info = np.iinfo(np.dtype(io_.input["dtype"]))
    q = rounding(np.asarray(prev, np.float32) / np.float32(scale)) + zero
    return np.clip(q, info.min, info.max).astype(io_.input["dtype"])


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


def _unit(spec):
    from dataclasses import replace

    return replace(spec, scale=1 / 255, offset=0.0)


# -- golden vectors, written at export ----------------------------------------------------------------
def near_threshold(reference: dict, threshold: float, label: int) -> str | None:
    """The reference image of `label` closest to the threshold that still keeps its decision with
    NEAR_MARGIN to spare (so a pipeline within the probability tolerance cannot flip it)."""
    probs, labels = reference["probs"], reference["labels"]
    chosen = [(abs(p - threshold), rel) for rel, p in probs.items()
              if labels[rel] == label and abs(p - threshold) >= NEAR_MARGIN and (p >= threshold) == bool(label)]
    return min(chosen)[1] if chosen else None


def cases_for(reference: dict, threshold: float, data_paths: dict) -> list[Case]:
    """The conformance set: the shipped fixtures plus a normal and a pneumonia image of the reference
    split nearest the threshold (224 px JPEGs of the Kermany layout). data_paths: rel -> file path."""
    cases = [Case(p.name, p.read_bytes(), KINDS[p.name], LABELS[p.name]) for p in sorted(FIXTURES.iterdir())
             if p.name in KINDS]
    for label, word in ((0, "normal"), (1, "pneumonia")):
        rel = near_threshold(reference, threshold, label)
        if rel is not None and rel in data_paths:
            path = Path(data_paths[rel])
            cases.append(Case(f"near-threshold-{word}{path.suffix.lower()}", path.read_bytes(),
                              f"test image nearest the threshold ({word}, float probability "
                              f"{reference['probs'][rel]:.4f}; {rel})", label))
    return cases


def write_golden(folder: Path, io_: ModelIO, cases: list[Case], runner_pixels=None) -> dict:
    """Write FOLDER/conformance/{images,golden}/ and return the manifest's `conformance` entry.

    runner_pixels: (path) -> uint8 (size, size) of edgecxr's runner; every golden `resized` array must equal
    it, so golden vectors never disagree with the runner they describe."""
    root = Path(folder) / FOLDER
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "golden").mkdir(exist_ok=True)
    entries = []
    for case in cases:
        image = root / "images" / case.id
        image.write_bytes(case.data)
        arrays = run_pipeline(case, io_)
        if runner_pixels is not None and not np.array_equal(runner_pixels(image), arrays["resized"]):
            raise BundleError(f"{case.id}: the contract's reference and edgecxr's runner disagree on the resized "
                              "pixels; this edgecxr build is inconsistent, report it")
        golden = root / "golden" / f"{Path(case.id).stem}.npz"
        np.savez_compressed(golden, **{s: np.asarray(a) for s, a in arrays.items()})
        entries.append({"id": case.id, "file": f"{FOLDER}/images/{case.id}", "kind": case.kind, "label": case.label,
                        "golden": f"{FOLDER}/golden/{golden.name}", "probability": float(arrays["probability"]),
                        "decision": int(arrays["decision"]),
                        "arrays": {s: {"shape": list(np.shape(a)), "dtype": np.asarray(a).dtype.name,
                                       "sha256": C.array_sha256(a)} for s, a in arrays.items()}})
    return {"contract_version": C.VERSION, "stages": io_.stages, "tolerance": TOLERANCE, "images": entries}


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


def load_submission(path: Path, ids: list[str]) -> dict[str, dict]:
    """An integrator's results: image id -> {stage: array or number}. Accepted: .npz with keys 'ID/STAGE',
    a folder ID/STAGE.npy, .json {ID: {STAGE: value}} or {ID: probability}, .csv with image,probability[,decision].
    ID is the conformance file name or its stem."""
    path = Path(path)
    if path.is_dir():
        raw = {f"{p.parent.name}/{p.stem}": np.load(p, allow_pickle=False) for p in sorted(path.glob("*/*.npy"))}
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            raw = {k: npz[k] for k in npz.files}
    elif path.suffix == ".json":
        import json

        raw = {}
        for image, value in json.loads(path.read_text()).items():
            for stage, v in (value.items() if isinstance(value, dict) else [("probability", value)]):
                raw[f"{image}/{stage}"] = np.asarray(v)
    elif path.suffix == ".csv":
        import csv

        raw = {}
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                for stage in SCALARS:
                    if row.get(stage) not in (None, ""):
                        raw[f"{row.get('image', '')}/{stage}"] = np.asarray(float(row[stage]))
    else:
        raise ConfigError(f"{path}: pass a .npz, .json or .csv file or a folder of ID/STAGE.npy arrays")
    return _by_image(raw, ids, path)


def _by_image(raw: dict, ids: list[str], path) -> dict[str, dict]:
    names = {**{Path(i).stem: i for i in ids}, **{i: i for i in ids}}
    out: dict[str, dict] = {}
    for key, value in raw.items():
        image, _, stage = key.rpartition("/")
        if stage not in C.STAGES:
            raise ConfigError(f"{path}: '{key}' names no stage; stages are {', '.join(C.STAGES)}")
        if image not in names:
            raise ConfigError(f"{path}: '{image}' is not a conformance image; they are {', '.join(ids)}")
        out.setdefault(names[image], {})[stage] = value
    if not out:
        raise ConfigError(f"{path}: holds no results; see `edgecxr device conform --help` for the layout")
    return out


def _align(value, like):
    """Their array in the golden's shape when only leading 1-sized axes differ (HWC for 1xHxWxC)."""
    value = np.asarray(value)
    like = np.asarray(like)
    if value.shape != like.shape and value.size == like.size and \
            tuple(d for d in value.shape if d != 1) == tuple(d for d in like.shape if d != 1):
        return value.reshape(like.shape)
    return value


def _diff(a, b) -> dict:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return {"shape": list(a.shape), "expected_shape": list(b.shape)}
    d = np.abs(a - b)
    return {"exact": bool(np.array_equal(a, b)), "max_abs": float(d.max()) if d.size else 0.0,
            "mean_abs": float(d.mean()) if d.size else 0.0, "share": float((d > 0).mean()) if d.size else 0.0}


def _within(stage: str, d: dict, io_: ModelIO) -> bool:
    if "shape" in d:
        return False
    if stage in ("input",) and io_.input["dtype"].startswith("float"):
        return d["max_abs"] <= TOLERANCE["input"]["max_abs"]
    if stage == "probability":
        return d["max_abs"] <= PROB_TOLERANCE
    return d["exact"]


def _probability_of(stage: str, value, io_: ModelIO) -> float:
    return float(value) if stage == "probability" else io_.probability(value if stage == "output" else io_.run(value))


def check_image(case: Case, golden: dict, theirs: dict, io_: ModelIO) -> dict:
    """Stage by stage: against the golden arrays and, where the stage before was given too, against the
    contract's step applied to it. The first failing stage is diagnosed from MISTAKES."""
    theirs = {s: _align(v, golden[s]) for s, v in theirs.items()}
    rows, stages = [], io_.stages
    for i, stage in enumerate(stages):
        if stage not in theirs:
            continue
        row = {"stage": stage, "golden": _diff(theirs[stage], golden[stage])}
        prev = stages[i - 1] if i else None
        if prev in theirs and "shape" not in row["golden"] and stage not in ("output",):
            expected = STEPS[stage](np.asarray(theirs[prev]), case, io_)
            row["step"] = _diff(theirs[stage], expected)
        row["status"], row["why"] = _judge(stage, row, io_)
        rows.append(row)
    tensors = [s for s in ("output", "quantized", "input") if s in theirs and s in stages]
    if "probability" not in theirs and tensors and "shape" not in _diff(theirs[tensors[0]], golden[tensors[0]]):
        p = _probability_of(tensors[0], theirs[tensors[0]], io_)  # their tensor through this bundle's model
        row = {"stage": "probability", "computed_from": tensors[0], "golden": _diff(p, golden["probability"])}
        row["status"], row["why"] = _judge("probability", row, io_)
        rows.append(row)
        theirs["probability"] = np.float64(p)
    if "decision" not in theirs and "probability" in theirs:
        theirs["decision"] = np.int64(float(theirs["probability"]) >= io_.threshold)
        rows.append({"stage": "decision", "computed_from": "probability",
                     "golden": _diff(theirs["decision"], golden["decision"])})
        rows[-1]["status"], rows[-1]["why"] = _judge("decision", rows[-1], io_)
    first = next((r for r in rows if r["status"] == "fail"), None)
    result = {"image": case.id, "kind": case.kind, "stages": rows, "passed": first is None,
              "probability": float(theirs["probability"]) if "probability" in theirs else None,
              "golden_probability": float(golden["probability"])}
    target = next((r for r in rows if r["status"] != "pass"), None)  # the earliest stage not shown right
    if target is not None:
        result["first_difference"] = target["stage"]
        result["diagnosis"] = diagnose(case, target["stage"], theirs, golden, io_)
        if first is None and result["diagnosis"] and result["diagnosis"][0]["matches"]:
            target["status"], target["why"] = "fail", "reproduces a known mistake's result"
            result["passed"] = False
    return result


def _judge(stage: str, row: dict, io_: ModelIO) -> tuple[str, str]:
    """pass / fail / differs (unlike the golden but not checkable alone: the decision decides)."""
    g = row["golden"]
    if "shape" in g:
        return "fail", f"shape {tuple(g['shape'])}, the contract gives {tuple(g['expected_shape'])}"
    if "step" in row and not _within(stage, row["step"], io_):
        s = row["step"]
        return "fail", (f"not the contract's step applied to your previous stage (max |d| {s['max_abs']:.4g}, "
                        f"{s['share']:.1%} of values differ)")
    if stage == "decoded" and not g["exact"]:
        tol = TOLERANCE["decoded"]
        ok = g["max_abs"] <= tol["max_abs"] and g["mean_abs"] <= tol["mean_abs"]
        return ("pass" if ok else "fail"), (f"max |d| {g['max_abs']:.0f}, mean {g['mean_abs']:.3f} grey levels "
                                            f"from the golden ({'within' if ok else 'beyond'} the decoder tolerance "
                                            f"{tol['max_abs']} / {tol['mean_abs']})")
    if stage == "probability":
        ok = g["max_abs"] <= PROB_TOLERANCE
        return ("pass" if ok else "fail"), f"|d| {g['max_abs']:.4f} (tolerance {PROB_TOLERANCE})"
    if stage == "decision":
        return ("pass", "same decision") if g["exact"] else ("fail", "the decision differs from the golden")
    if g["exact"] or _within(stage, g, io_) or "step" in row:
        return "pass", "exact" if g["exact"] else ("within tolerance" if _within(stage, g, io_) else
                                                   "the contract's step on your previous stage (which differs)")
    return "differs", (f"differs from the golden (max |d| {g['max_abs']:.4g}, {g['share']:.1%} of values); "
                       "submit the stage before it to check this step exactly")


def diagnose(case: Case, stage: str, theirs: dict, golden: dict, io_: ModelIO, top: int = 3) -> list[dict]:
    """Known mistakes ranked by how closely each reproduces their `stage` (exact matches first)."""
    mine = np.asarray(theirs[stage], np.float64)
    base = _diff(mine, golden[stage])
    found = []
    for m in MISTAKES:
        if m.stage not in io_.stages or io_.stages.index(m.stage) > io_.stages.index(stage):
            continue
        try:
            variant = _variant(m, case, stage, theirs, io_)
        except (ImageError, ValueError):
            continue
        if np.shape(variant) == np.shape(golden[stage]) and np.array_equal(variant, golden[stage]):
            continue  # the mistake changes nothing on this image
        d = _diff(mine, variant)
        if "shape" in d:
            continue
        if "shape" in base or d["mean_abs"] < base["mean_abs"]:  # closer to the mistake than to the contract
            found.append({"mistake": m.name, "description": m.description, "fix": m.fix,
                          "exact": d["max_abs"] == 0, "matches": d["mean_abs"] <= _match_tolerance(stage, io_),
                          "mean_abs": d["mean_abs"], "max_abs": d["max_abs"]})
    return sorted(found, key=lambda f: (not f["matches"], f["mean_abs"]))[:top]


def _match_tolerance(stage: str, io_: ModelIO) -> float:
    """How close to a known mistake's result counts as that mistake: half a grey level on average (another
    implementation of the same mistake rounds differently: cv2.INTER_LINEAR's fixed point is not ours)."""
    if stage in ("output", "probability", "decision"):
        return PROB_TOLERANCE
    return 0.5 * abs(io_.spec.scale) if stage == "input" else 0.5


def _variant(m: Mistake, case: Case, stage: str, theirs: dict, io_: ModelIO):
    stages = io_.stages
    prev = stages[stages.index(m.stage) - 1] if stages.index(m.stage) else None
    if m.stage == stage and prev in theirs:  # the mistaken step on their own previous stage
        return m.apply(np.asarray(theirs[prev]), case, io_)
    return run_pipeline(case, io_, m, until=stage)[stage]


def check(bundle, submission: dict[str, dict], io_: ModelIO | None = None) -> dict:
    """The conformance report of `submission` (load_submission's) against the bundle's golden set."""
    io_ = io_ or bundle_io(bundle)
    images = []
    for entry, case, golden in golden_set(bundle):
        if entry["id"] not in submission:
            images.append({"image": entry["id"], "kind": entry["kind"], "passed": False, "stages": [],
                           "first_difference": None, "missing": True})
            continue
        images.append(check_image(case, golden, submission[entry["id"]], io_))
    firsts = [d for r in images for d in r.get("diagnosis", [])[:1]]
    exact = [d["mistake"] for d in firsts if d["matches"]]
    closest = [d["mistake"] for d in firsts if not d["matches"]]
    likely = max(set(exact), key=exact.count) if exact else None
    return {"bundle": str(bundle.path), "target": bundle.manifest["target"], "contract_version": C.VERSION,
            "images": images, "passed": all(r["passed"] for r in images),
            "failed": [r["image"] for r in images if not r["passed"]],
            "most_likely_mistake": likely and MISTAKE_NAMES[likely].description,
            "most_likely_fix": likely and MISTAKE_NAMES[likely].fix,
            "closest_mistake": None if likely or not closest else MISTAKE_NAMES[max(set(closest), key=closest.count)].description,
            "tolerance": TOLERANCE}


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


def format_report(r: dict) -> str:
    lines = [f"conformance against {r['bundle']} ({r['target']}, input contract v{r['contract_version']})"]
    for img in r["images"]:
        if img.get("missing"):
            lines.append(f"  FAIL  {img['image']}: no results for this image")
            continue
        status = "PASS" if img["passed"] else "FAIL"
        shown = " · ".join(f"{s['stage']} {_short(s)}" for s in img["stages"])
        lines.append(f"  {status}  {img['image']}: {shown}")
        if not img["passed"] or img.get("first_difference"):
            row = next(s for s in img["stages"] if s["stage"] == img["first_difference"])
            lines.append(f"        first difference: {row['stage']}: {row['why']}")
            for i, d in enumerate(img.get("diagnosis", [])):
                how = "exactly" if d["exact"] else f"{'within rounding' if d['matches'] else 'not close'}: mean |d| {d['mean_abs']:.4g}"
                head = "or" if i else ("most likely" if d["matches"] else "closest known mistake")
                lines.append(f"        {head}: {d['description']} [{d['mistake']}, {how}]"
                             + (f"; fix: {d['fix']}" if i == 0 else ""))
            if not img.get("diagnosis"):
                lines.append("        no known mistake reproduces it; compare with the golden arrays in the bundle's "
                             "conformance/golden/")
    n, bad = len(r["images"]), len(r["failed"])
    verdict = "PASSED" if r["passed"] else f"FAILED ({bad} of {n} images)"
    if r["most_likely_mistake"]:
        verdict += f"; most likely mistake: {r['most_likely_mistake']}; fix: {r['most_likely_fix']}"
    elif r.get("closest_mistake"):
        verdict += f"; no known mistake reproduces it exactly (closest: {r['closest_mistake']})"
    lines.append(f"conformance {verdict}")
    return "\n".join(_printable(line) for line in lines)


def _short(row: dict) -> str:
    g = row["golden"]
    mark = {"pass": "", "fail": " FAIL", "differs": " differs"}[row["status"]]
    if "shape" in g:
        return f"shape {tuple(g['shape'])}{mark}"
    if row["stage"] in SCALARS:
        return f"{'exact' if g['exact'] else 'Δ %.4f' % g['max_abs']}{mark}"
    return f"{'exact' if g['exact'] else 'max |d| %.3g' % g['max_abs']}{mark}"


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in text)
