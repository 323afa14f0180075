"""Standard TFLite metadata in every .tflite a bundle holds (its twin's too), written with MediaPipe's
`metadata_writers`: the input normalization, a label for each output column, the decision threshold as the
output's ScoreThresholdingOptions, and a description with the decision rule and the preprocessing that
MediaPipe does not do (crop, equalization, resize: the bundle's input contract). Android's MediaPipe
ImageClassifier reads all of it.

MediaPipe gets a venv of its own. No mediapipe release installs beside the export extra: from 0.10.30 on
mediapipe pins absl-py~=2.3 where tensorflow-model-optimization 0.8 pins absl-py~=1.2, and up to 0.10.21
it pins protobuf<5 where TensorFlow 2.21 needs protobuf>=6.31 (pip then downgrades TensorFlow). So the
writer runs in a subprocess with a Python that has MediaPipe: $EDGECXR_MEDIAPIPE_PYTHON, else this
Python when it has mediapipe, else a venv built once under ~/.cache/edgecxr-mediapipe
($EDGECXR_MEDIAPIPE_CACHE) with `pip install 'mediapipe>=1.2,<2'`. EDGECXR_TFLITE_METADATA=0 exports
without metadata (offline, no MediaPipe).

This file is also the script that runs there (`python tflite_metadata.py write|read|classify REQUEST`):
its top level imports only the standard library.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

MEDIAPIPE_REQUIREMENT = "mediapipe>=1.2,<2"  # the same as pyproject's `mediapipe` extra
PYTHON_ENV, CACHE_ENV, SWITCH_ENV = "EDGECXR_MEDIAPIPE_PYTHON", "EDGECXR_MEDIAPIPE_CACHE", "EDGECXR_TFLITE_METADATA"
_READY = "edgecxr-ready.json"  # written into the cached venv once MediaPipe imports there


# -- what to write (export side, no MediaPipe) ---------------------------------------------------------------
def float32_at_or_above(value: float) -> float:
    """The smallest float32 >= value: MediaPipe compares float32 scores with a float32 threshold, so for every
    float32 score s, s >= this  <=>  s >= value (edgecxr's rule, `probability >= threshold`)."""
    import numpy as np

    f = np.float32(value)
    if float(f) < value:
        f = np.nextafter(f, np.float32(np.inf))
    return float(f)


def plan(spec, info, target_name: str, out_dim: int = 1, int8_input: bool = False) -> dict:
    """The metadata of one model: spec (PreprocessSpec), info (ModelInfo), out_dim output columns.

    Scores are the probabilities of the output kinds sigmoid and softmax, so the threshold is the model's;
    one logit gets logit(threshold) (sigmoid is monotonic); two or more logits get none (softmax couples the
    columns), the description still states the rule."""
    import math

    pi, (negative, positive) = int(info.positive_index), info.labels
    if out_dim == 1:
        names = [positive]
    else:
        names = [negative if out_dim == 2 else f"class {i}" for i in range(out_dim)]
        names[pi] = positive
    t = float(info.threshold)
    if info.output in ("sigmoid", "softmax"):
        score_threshold, on = float32_at_or_above(t), "probability"
    elif out_dim == 1:
        score_threshold, on = float32_at_or_above(math.log(t / (1 - t))), "logit"
    else:
        score_threshold, on = None, "softmax probability"
    mean, std = -spec.offset / spec.scale, 1 / spec.scale
    steps = [f"lung crop rows {spec.crop[0]:g}-{spec.crop[1]:g}, columns {spec.crop[2]:g}-{spec.crop[3]:g}"
             if spec.crop else None, "histogram equalization" if spec.equalize else None,
             f"{spec.interpolation} resize to {spec.size}x{spec.size}"]
    rule = (f"{positive} when the {on} of output column {pi} is >= "
            + (f"{score_threshold:.9g} (ScoreThresholdingOptions; float {t:.9g})" if score_threshold is not None
               else f"{t:.9g}") + f", else {negative}")
    description = (f"edgecxr {target_name}: chest X-ray pneumonia classifier ({info.output} output, "
                   f"{out_dim} column(s)). Decide {rule}. Input: the bundle's contract pixels (grey; "
                   f"{', '.join(s for s in steps if s)}, as manifest.json 'preprocess' says; MediaPipe does "
                   f"none of these), grey copied to {spec.channels} channel(s), normalized (x - {mean:.9g}) / "
                   f"{std:.9g}.")
    if int8_input:
        description += (" The int8 input and output carry their scale and zero point in the tensors; MediaPipe's "
                        "ImageClassifier takes only uint8 or float32 input: give it the float twin (twin/).")
    return {"name": f"edgecxr {target_name}", "description": description, "mean": [mean], "std": [std],
            "color_space": "GRAYSCALE" if spec.channels == 1 else "RGB", "labels": names,
            "score_threshold": score_threshold, "positive_index": pi}


# -- where MediaPipe runs ----------------------------------------------------------------------------------
def enabled() -> bool:
    return os.environ.get(SWITCH_ENV, "1").strip().lower() not in ("0", "off", "no", "false")


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "edgecxr-mediapipe")


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _missing(reason: str):
    from edgecxr.utils.errors import MissingDependencyError

    return MissingDependencyError(
        f"TFLite metadata needs MediaPipe in a venv of its own ({reason}): python -m venv VENV && "
        f"VENV/bin/pip install '{MEDIAPIPE_REQUIREMENT}', then set {PYTHON_ENV}=VENV/bin/python "
        f"(or {SWITCH_ENV}=0 to export without metadata)")


def mediapipe_python(build: bool = True) -> str:
    """A Python that imports mediapipe (see the module docstring); builds the cached venv when none is found."""
    import importlib.util

    given = os.environ.get(PYTHON_ENV)
    if given:
        if not Path(given).is_file():
            raise _missing(f"{PYTHON_ENV}={given} does not exist")
        return given
    if importlib.util.find_spec("mediapipe") is not None:
        return sys.executable
    venv = cache_dir() / "venv"
    python = _venv_python(venv)
    if _ready(venv):
        return str(python)
    if not build:
        raise _missing(f"none at {venv}")
    return str(_build(venv))


def _ready(venv: Path) -> bool:
    try:
        return json.loads((venv / _READY).read_text())["requirement"] == MEDIAPIPE_REQUIREMENT
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _build(venv: Path) -> Path:
    """pip install MediaPipe into a new venv (once, ~650 MB with its OpenCV; under a lock)."""
    import shutil

    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / "lock", "w") as lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)  # another export may be building it
        except ImportError:
            pass
        python = _venv_python(venv)
        if _ready(venv):
            return python
        print(f"    building MediaPipe's venv for TFLite metadata at {venv} (once; pip install "
              f"'{MEDIAPIPE_REQUIREMENT}', ~650 MB)", file=sys.stderr, flush=True)
        shutil.rmtree(venv, ignore_errors=True)
        steps = ([sys.executable, "-m", "venv", str(venv)],
                 [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", MEDIAPIPE_REQUIREMENT],
                 [str(python), "-I", "-c", "import json, mediapipe; print(json.dumps(mediapipe.__version__))"])
        for cmd in steps:
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=_clean_env())
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise _missing(f"building {venv} failed: {exc}") from None
            if done.returncode != 0:
                tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
                raise _missing(f"building {venv} failed: {tail[0][:200]}")
        version = json.loads(done.stdout.strip().splitlines()[-1])
        (venv / _READY).write_text(json.dumps({"requirement": MEDIAPIPE_REQUIREMENT, "mediapipe": version}) + "\n")
        return python


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.setdefault("GLOG_minloglevel", "2")
    return env


def _run(command: str, request: dict, timeout: float = 900) -> dict:
    """Run this file's `command` with MediaPipe's Python; returns the answer it wrote (raises on a crash)."""
    from edgecxr.utils.errors import ModelError

    python = mediapipe_python()
    with tempfile.TemporaryDirectory(prefix="edgecxr-mediapipe-") as tmp:
        req, answer = Path(tmp) / "request.json", Path(tmp) / "answer.json"
        req.write_text(json.dumps({**request, "answer": str(answer)}))
        try:
            done = subprocess.run([python, "-I", str(Path(__file__).resolve()), command, str(req)],
                                  capture_output=True, text=True, timeout=timeout, env=_clean_env())
        except subprocess.TimeoutExpired:
            raise ModelError(f"MediaPipe's {command} took over {timeout:.0f} s") from None
        if done.returncode != 0 or not answer.is_file():
            lines = [line for line in done.stderr.strip().splitlines() if line.strip()] or ["no output"]
            if "No module named 'mediapipe'" in lines[-1]:
                raise _missing(f"{python} has no mediapipe")
            raise ModelError(f"MediaPipe's {command} failed ({python}): {lines[-1][:300]}")
        return json.loads(answer.read_text())


# -- the export side's calls -------------------------------------------------------------------------------
def write(path: Path, spec, info, target_name: str, out_dim: int = 1, int8_input: bool = False) -> dict | None:
    """Write the metadata into the .tflite at path (in place). Returns {"mediapipe": version,
    "min_parser_version": ...}, or None when EDGECXR_TFLITE_METADATA=0."""
    if not enabled():
        return None
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="edgecxr-metadata-") as tmp:
        out = Path(tmp) / path.name
        metadata = plan(spec, info, target_name, out_dim, int8_input)
        result = _run("write", {"model": str(path), "out": str(out), **metadata})
        path.write_bytes(out.read_bytes())
    return result


def read(path: Path) -> dict:
    """{"metadata": the metadata as MediaPipe's displayer shows it, "files": {name: text}} of a .tflite."""
    return _run("read", {"model": str(Path(path))})


def classify(model: Path, pixels, positive_index: int = 0, timeout: float = 1800) -> dict:
    """MediaPipe's ImageClassifier on contract pixels (N, size, size) uint8: grey copied to RGB, so that its
    resize is an identity and only the metadata's normalization applies.

    Returns {"mediapipe": version, "scores": [positive column's score, every image], "positive": [decision of
    MediaPipe's own thresholding (the metadata's ScoreThresholdingOptions)]}. Raises ModelError when
    MediaPipe refuses the model (its message says why)."""
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="edgecxr-pixels-") as tmp:
        arrays = Path(tmp) / "pixels.npy"
        np.save(arrays, np.ascontiguousarray(np.asarray(pixels, np.uint8)))
        answer = _run("classify", {"model": str(Path(model)), "pixels": str(arrays),
                                   "positive_index": int(positive_index)}, timeout=timeout)
    if "error" in answer:
        from edgecxr.utils.errors import ModelError

        raise ModelError(f"MediaPipe {answer['mediapipe']}'s ImageClassifier refused {model}: {answer['error']}")
    return answer


# -- the script, in MediaPipe's Python --------------------------------------------------------------------
def _metadata_version_module():
    """MediaPipe's metadata module imports `_pywrap_metadata_version`, a C extension that the pip wheels
    from 0.10.30 on (the ctypes rewrite) no longer ship, so `metadata_writers` fails to import there. Where it
    is missing, stand in the one function it provides, computed from the schema's version history
    (metadata_schema.fbs, 'History')."""
    import importlib
    import types

    name = "mediapipe.tasks.cc.metadata.python._pywrap_metadata_version"
    try:
        return importlib.import_module(name)
    except ImportError:
        pass
    parents = name.split(".")
    for i in range(3, len(parents)):
        pkg = ".".join(parents[:i])
        if pkg not in sys.modules:
            sys.modules[pkg] = types.ModuleType(pkg)
            sys.modules[pkg].__path__ = []
    module = types.ModuleType(name)
    module.GetMinimumMetadataParserVersion = _min_parser_version
    sys.modules[name] = module
    setattr(sys.modules[".".join(parents[:-1])], parents[-1], module)
    return module


def _min_parser_version(buf: bytes) -> str:
    """The oldest metadata parser that understands every field of this metadata flatbuffer."""
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    md = fb.ModelMetadataT.InitFromObj(fb.ModelMetadata.GetRootAs(bytearray(buf), 0))
    need = [(1, 0, 0)]
    units_at = {fb.ProcessUnitOptions.BertTokenizerOptions: (1, 1, 0),
                fb.ProcessUnitOptions.SentencePieceTokenizerOptions: (1, 1, 0),
                fb.ProcessUnitOptions.RegexTokenizerOptions: (1, 2, 1)}

    def files(items):
        for f in items or []:
            need.append({fb.AssociatedFileType.VOCABULARY: (1, 0, 1),
                         fb.AssociatedFileType.SCANN_INDEX_FILE: (1, 4, 0)}.get(f.type, (1, 0, 0)))
            if f.version is not None:
                need.append((1, 4, 1))

    def units(items):
        need.extend(units_at.get(u.optionsType, (1, 0, 0)) for u in items or [])

    files(md.associatedFiles)
    for sg in md.subgraphMetadata or []:
        files(sg.associatedFiles)
        if sg.inputProcessUnits or sg.outputProcessUnits:
            need.append((1, 1, 0))
        units(sg.inputProcessUnits)
        units(sg.outputProcessUnits)
        if sg.inputTensorGroups or sg.outputTensorGroups:
            need.append((1, 2, 0))
        if sg.customMetadata:
            need.append((1, 5, 0))
        for t in list(sg.inputTensorMetadata or []) + list(sg.outputTensorMetadata or []):
            files(t.associatedFiles)
            units(t.processUnits)
            if t.content is not None and t.content.contentPropertiesType == fb.ContentProperties.AudioProperties:
                need.append((1, 3, 0))
    return ".".join(map(str, max(need)))


def _fixed_zip_times(buf: bytes) -> bytes:
    """populate() appends the associated files (labels.txt) as a zip stamped with the current time; restamp
    them 1980-01-01 so that the same model and metadata always give the same bytes (the bundle's hashes)."""
    import io
    import zipfile

    if not zipfile.is_zipfile(io.BytesIO(buf)):
        return buf
    with zipfile.ZipFile(io.BytesIO(buf)) as zf:
        infos = zf.infolist()
        entries = [(i.filename, zf.read(i)) for i in infos]
    out = io.BytesIO()
    out.write(buf[:min(i.header_offset for i in infos)])
    with zipfile.ZipFile(out, "a") as zf:  # appended after the flatbuffer, as MediaPipe's populator does
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type, info.external_attr = zipfile.ZIP_STORED, 0o600 << 16
            zf.writestr(info, data)
    return out.getvalue()


def _script_write(req: dict) -> dict:
    _metadata_version_module()
    import mediapipe
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_writer as mw

    writer = mw.MetadataWriter.create(bytearray(Path(req["model"]).read_bytes()))
    writer.add_general_info(req["name"], req["description"])
    writer.add_image_input(req["mean"], req["std"], getattr(fb.ColorSpaceType, req["color_space"]))
    thresholding = mw.ScoreThresholding(req["score_threshold"]) if req["score_threshold"] is not None else None
    writer.add_classification_output(mw.Labels().add(req["labels"]), score_thresholding=thresholding)
    model, metadata = writer.populate()
    writer._temp_folder.cleanup()  # its __del__ would clean up at exit, after tempfile's globals are gone
    Path(req["out"]).write_bytes(_fixed_zip_times(bytes(model)))
    return {"mediapipe": mediapipe.__version__, "min_parser_version": json.loads(metadata)["min_parser_version"]}


def _script_read(req: dict) -> dict:
    _metadata_version_module()
    from mediapipe.tasks.python.metadata import metadata

    shown = metadata.MetadataDisplayer.with_model_buffer(Path(req["model"]).read_bytes())
    files = {name: shown.get_associated_file_buffer(name).decode("utf-8", "replace")
             for name in shown.get_packed_associated_file_list()}
    return {"metadata": json.loads(shown.get_metadata_json()), "files": files}


def _script_classify(req: dict) -> dict:
    import numpy as np
    import mediapipe
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    pixels, pi = np.load(req["pixels"]), int(req["positive_index"])

    def run(score_threshold):
        options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=req["model"]),
                                                score_threshold=score_threshold)
        out = []
        with vision.ImageClassifier.create_from_options(options) as classifier:
            for grey in pixels:
                rgb = np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=-1))
                result = classifier.classify(mediapipe.Image(image_format=mediapipe.ImageFormat.SRGB, data=rgb))
                scores = {c.index: c.score for c in result.classifications[0].categories}
                out.append(scores.get(pi))
        return out

    try:
        kept = run(None)  # the metadata's ScoreThresholdingOptions decides
        # A threshold <= 0 counts as unset (the metadata's applies): the smallest positive float32 keeps all
        # scores (one below it, a float32 sigmoid's exact 0, reads as 0).
        scores = [0.0 if s is None else float(s) for s in run(float(np.finfo(np.float32).tiny))]
    except (ValueError, RuntimeError) as exc:
        return {"mediapipe": mediapipe.__version__, "error": str(exc).strip().splitlines()[0][:500]}
    return {"mediapipe": mediapipe.__version__, "scores": scores, "positive": [s is not None for s in kept]}


def _script(argv: list[str]) -> int:
    command, request = argv[0], json.loads(Path(argv[1]).read_text())
    answer = {"write": _script_write, "read": _script_read, "classify": _script_classify}[command](request)
    Path(request["answer"]).write_text(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(_script(sys.argv[1:]))
