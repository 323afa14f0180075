"""`edgecxr device conform`: an integrator's own pipeline output against a bundle's golden vectors.

Every submitted stage is checked twice: against the golden array, and against the contract's steps applied to
the nearest earlier stage they submitted (so each step of theirs is checked exactly, whatever their decoder
did). Where they submitted a tensor, this bundle's model runs it, and any probability they give must be what
the model says for it. The earliest stage not shown right is diagnosed from edgecxr.data.conformance.MISTAKES.
"""
from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import numpy as np

from edgecxr.data import contract as C
from edgecxr.data.conformance import MISTAKE_NAMES, MISTAKES, PROB_TOLERANCE, STEPS, TOLERANCE, Case, ModelIO, \
    bundle_io, golden_set, run_pipeline
from edgecxr.parity import verdict as rule
from edgecxr.utils.errors import ConfigError, ImageError
from edgecxr.utils.errors import printable

SCALARS = ("probability", "decision")
TENSORS = ("input", "quantized", "output")
FIRST_STAGE_MEAN = TOLERANCE["first_stage"]["mean_abs"]  # grey levels: another decoder, seen at a later stage
MAX_SUBMISSION = 512 << 20
LAYOUT = ("SUBMISSION: .npz with arrays 'IMAGE/STAGE', a folder IMAGE/STAGE.npy, .json {IMAGE: {STAGE: value}} or "
          "{IMAGE: probability}, or .csv with columns image,probability[,decision]")


# -- reading a submission -----------------------------------------------------------------------------------
def load_submission(path: Path, ids: list[str], stages: list[str]) -> dict[str, dict]:
    """An integrator's results: image id -> {stage: array}. ID is a conformance file name or its stem; only
    the bundle's stages are accepted. Any unreadable or malformed input is one ConfigError naming the file."""
    path = Path(path)
    try:
        raw = _read_raw(path)
    except ConfigError:
        raise
    except (OSError, ValueError, TypeError, KeyError, zipfile.BadZipFile, UnicodeDecodeError, RecursionError,
            MemoryError, EOFError) as exc:
        raise ConfigError(f"{path}: not a readable submission ({type(exc).__name__}: {printable(str(exc))[:200]}); "
                          f"{LAYOUT}") from None
    return _by_image(raw, ids, stages, path)


def _read_raw(path: Path) -> list[tuple[str, np.ndarray]]:
    if path.is_dir():
        files = [p for p in sorted(path.glob("*/*.npy"))
                 if not p.name.startswith(".") and not p.parent.name.startswith((".", "__MACOSX"))]
        return [(f"{p.parent.name}/{p.stem}", _array(np.load(io.BytesIO(_small(p)), allow_pickle=False), p))
                for p in files]
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(io.BytesIO(_small(path)), allow_pickle=False) as npz:
            return [(k, _array(npz[k], k)) for k in npz.files]
    if suffix == ".json":
        doc = json.loads(_small(path).decode("utf-8-sig"))
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}: a JSON submission is an object {{IMAGE: {{STAGE: value}}}}; {LAYOUT}")
        return [(f"{image}/{stage}", _array(np.asarray(v), f"{image}/{stage}"))
                for image, value in doc.items()
                for stage, v in (value.items() if isinstance(value, dict) else [("probability", value)])]
    if suffix == ".csv":
        rows = list(csv.DictReader(io.StringIO(_small(path).decode("utf-8-sig"))))
        rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in row.items()} for row in rows]
        if rows and "image" not in rows[0]:
            raise ConfigError(f"{path}: the CSV needs a header row with an 'image' column; {LAYOUT}")
        return [(f"{row['image']}/{stage}", np.asarray(float(row[stage])))
                for row in rows for stage in SCALARS if row.get(stage)]
    raise ConfigError(f"{path}: pass a .npz, .json or .csv file or a folder of IMAGE/STAGE.npy arrays")


def _small(path: Path) -> bytes:
    from edgecxr.utils.atomic import read_small

    return read_small(path, str(path), limit=MAX_SUBMISSION)


def _array(value: np.ndarray, name) -> np.ndarray:
    if value.dtype.kind not in "biuf":
        raise ConfigError(f"{printable(name)}: holds {value.dtype} values; stages are arrays of numbers")
    return value


def _by_image(raw, ids: list[str], stages: list[str], path) -> dict[str, dict]:
    names = {**{Path(i).stem: i for i in ids}, **{i: i for i in ids}}
    out: dict[str, dict] = {}
    for key, value in raw:
        image, _, stage = key.rpartition("/")
        if stage not in stages:
            known = ", ".join(stages)
            raise ConfigError(f"{path}: '{printable(key)}' names no stage of this bundle (its stages: {known})")
        if image not in names:
            raise ConfigError(f"{path}: '{printable(image)}' is not a conformance image; they are {', '.join(ids)}")
        given = out.setdefault(names[image], {})
        if stage in given and not np.array_equal(given[stage], value):
            raise ConfigError(f"{path}: {names[image]}/{stage} is given twice with different values; give it once")
        given[stage] = value
    if not out:
        raise ConfigError(f"{path}: holds no results; {LAYOUT}")
    return out


# -- comparing ------------------------------------------------------------------------------------------------
def _fit(value, like) -> np.ndarray:
    """Their array in the golden's shape when only axes of size 1 differ (HWC for 1xHxWxC)."""
    value, like = np.asarray(value), np.asarray(like)
    if value.shape != like.shape and value.size == like.size and \
            tuple(d for d in value.shape if d != 1) == tuple(d for d in like.shape if d != 1):
        return value.reshape(like.shape)
    return value


def _diff(a, b) -> dict:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:  # before any conversion: a huge array costs nothing here
        return {"shape": list(a.shape), "expected_shape": list(b.shape)}
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return {"exact": bool(np.array_equal(a, b)), "max_abs": float(d.max()) if d.size else 0.0,
            "mean_abs": float(d.mean()) if d.size else 0.0, "share": float((d > 0).mean()) if d.size else 0.0}


def _grey(stage: str, io_: ModelIO) -> float:
    """One grey level in the stage's units."""
    return abs(io_.spec.scale) if stage == "input" else 1.0


def _step_ok(stage: str, d: dict, io_: ModelIO) -> bool:
    if "shape" in d:
        return False
    if stage == "input":
        return d["max_abs"] <= TOLERANCE["input"]["max_abs"]
    if stage in ("output", "probability"):
        return d["max_abs"] <= PROB_TOLERANCE
    return d["exact"]


def _model_tensor(stage: str, value, io_: ModelIO):
    """Their tensor as the model takes it, or a sentence saying why it cannot be."""
    value = np.asarray(value)
    if stage == "input" and "quantized" in io_.stages:
        return STEPS["quantized"](value.astype(np.float32), None, io_)
    want = np.dtype(io_.input["dtype"]) if stage in ("input", "quantized") else None
    if want is not None and want.kind in "iu":
        info = np.iinfo(want)
        if not (np.all(np.isfinite(value)) and np.all(value == np.round(value)) and value.min() >= info.min
                and value.max() <= info.max):
            return f"its values are not {want} integers"
        return value.astype(want)
    if not np.all(np.isfinite(value)):
        return "it holds NaN or infinite values"
    return value.astype(want or np.float32)


def _levels(x, io_: ModelIO) -> np.ndarray:
    """The grey levels (size, size) a float input tensor stands for (its first channel)."""
    x = np.asarray(x, np.float64)
    gray = x[0, 0] if io_.nchw else x[0, ..., 0]
    return np.clip(np.rint((gray - io_.spec.offset) / io_.spec.scale), 0, 255).astype(np.uint8)


def _chain(stages, start: str, stop: str, value, case, io_: ModelIO):
    """The contract's steps after `start` up to `stop`, applied to their `start` array."""
    out = np.asarray(value)
    for stage in stages[stages.index(start) + 1: stages.index(stop) + 1]:
        if stage == "output":
            tensor = _model_tensor(stages[stages.index(stage) - 1], out, io_)
            if isinstance(tensor, str):
                raise ValueError(tensor)
            out = io_.run(tensor)
        else:
            out = STEPS[stage](out, case, io_)
    return out


def check_image(case: Case, golden: dict, theirs: dict, io_: ModelIO, decision_checked: bool = True) -> dict:
    stages = io_.stages
    theirs = {s: _fit(v, golden[s]) for s, v in theirs.items()}
    computed = _add_model_results(theirs, golden, stages, io_)
    rows, earlier, pixels = [], None, None
    for stage in stages:
        if stage not in theirs:
            continue
        row = {"stage": stage, "golden": _diff(theirs[stage], golden[stage])}
        if stage in SCALARS and computed.get(stage):
            row["computed_from"] = computed[stage]
        if stage == "probability":
            row["mismatch"] = computed.get("mismatch")
            row["inputs_exact"] = all(r["golden"].get("exact") for r in rows if r["stage"] not in ("output",))
        if stage == "output" and "shape" not in row["golden"]:
            row["probability_diff"] = abs(io_.probability(theirs[stage]) - float(golden["probability"]))
        source = earlier
        if stage == "quantized" and pixels is not None:  # the int8 tensor is the table of the grey levels: exact
            source = pixels
        if source is not None and "shape" not in row["golden"]:
            try:
                if stage == "quantized" and source == "input":  # the table of the grey levels their input holds
                    expected = STEPS["quantized"](C.to_input(_levels(theirs["input"], io_), io_.spec, io_.nchw), case, io_)
                else:
                    expected = _chain(stages, source, stage, theirs[source], case, io_)
                row["step"] = _diff(theirs[stage], expected)
                row["step_from"] = source
            except (ValueError, ImageError) as exc:
                row["step"] = {"shape": [], "expected_shape": [], "why": str(exc)}
        row["status"], row["why"] = _judge(stage, row, io_, decision_checked, first=earlier is None)
        rows.append(row)
        earlier = stage if "shape" not in row["golden"] else earlier
        pixels = stage if stage in C.PIXEL_STAGES and "shape" not in row["golden"] else pixels
    first = next((r for r in rows if r["status"] != "pass"), None)
    inconsistent = first is not None and first["stage"] in SCALARS and "step" in first  # their own numbers disagree
    diagnosis = diagnose(case, first["stage"], theirs, golden, io_) if first is not None and not inconsistent else []
    tolerated = next((r for r in rows if r["status"] == "pass" and r["stage"] not in SCALARS
                      and not r["golden"].get("exact", True)), None)
    if tolerated is not None and (first is None or stages.index(tolerated["stage"]) < stages.index(first["stage"])):
        found = diagnose(case, tolerated["stage"], theirs, golden, io_)
        # within a tolerance, but what a known mistake gives: exactly, or four times closer than the golden
        if found and (found[0]["exact"] or (found[0]["matches"] and
                                            found[0]["mean_abs"] <= tolerated["golden"]["mean_abs"] / 4)):
            tolerated["status"], tolerated["why"] = "fail", "what a known mistake gives, not another decoder"
            first, diagnosis = tolerated, found
    result = {"image": case.id, "kind": case.kind, "stages": rows, "passed": first is None,
              "probability": float(theirs["probability"]) if "probability" in theirs else None,
              "golden_probability": float(golden["probability"])}
    if first is not None:
        result["first_difference"], result["diagnosis"] = first["stage"], diagnosis
    return result


def _add_model_results(theirs: dict, golden: dict, stages: list[str], io_: ModelIO) -> dict:
    """Their last tensor through this bundle's model: the probability it gives is theirs to match. Fills in
    the probability and decision they did not give; returns {stage: what it was computed from, "mismatch": ...}."""
    computed = {}
    tensor = next((s for s in ("output", "quantized", "input") if s in theirs and s in stages), None)
    if tensor is not None and np.shape(theirs[tensor]) == np.shape(golden[tensor]):
        fed = theirs[tensor] if tensor == "output" else _model_tensor(tensor, theirs[tensor], io_)
        if not isinstance(fed, str):
            p = io_.probability(fed if tensor == "output" else io_.run(fed))
            if "probability" in theirs and abs(float(theirs["probability"]) - p) > PROB_TOLERANCE:
                computed["mismatch"] = (f"your probability {float(theirs['probability']):.4f} is not what this "
                                        f"bundle's model gives for your {tensor} ({p:.4f})")
            if "probability" not in theirs:
                theirs["probability"], computed["probability"] = np.float64(p), tensor
    if "decision" not in theirs and "probability" in theirs:
        theirs["decision"], computed["decision"] = np.int64(float(theirs["probability"]) >= io_.threshold), "probability"
    return computed


def _judge(stage: str, row: dict, io_: ModelIO, decision_checked: bool, first: bool) -> tuple[str, str]:
    g = row["golden"]
    if "shape" in g:
        return "fail", f"shape {tuple(g['shape'])}, the contract gives {tuple(g['expected_shape'])}"
    step = row.get("step")
    if step is not None and not _step_ok(stage, step, io_):
        if step.get("why"):
            return "fail", f"cannot be checked from your {row['step_from']}: {step['why']}"
        if stage in SCALARS:
            return "fail", f"not what this bundle's model gives for your {row['step_from']} (|d| {step['max_abs']:.4f})"
        return "fail", (f"not the contract's steps applied to your {row['step_from']} (max |d| {step['max_abs']:.4g}, "
                        f"{step['share']:.1%} of values differ)")
    if stage == "probability":
        if row.get("mismatch"):
            return "fail", row["mismatch"]
        if not row["inputs_exact"]:  # their tensor differs within the tolerances: the decision decides
            return "pass", f"|d| {g['max_abs']:.4f} from inputs that differ within the tolerances (the decision decides)"
        ok = g["max_abs"] <= PROB_TOLERANCE
        return ("pass" if ok else "fail"), f"|d| {g['max_abs']:.4f} (tolerance {PROB_TOLERANCE} for the same input)"
    if stage == "output" and step is None:
        ok = row["probability_diff"] <= PROB_TOLERANCE
        return ("pass" if ok else "fail"), f"its probability is {row['probability_diff']:.4f} from the golden's"
    if stage == "decision":
        if not decision_checked:
            return "pass", "not compared: the golden probability is within the tolerance of the threshold"
        return ("pass", "same decision") if g["exact"] else ("fail", "the decision differs from the golden")
    if g["exact"] or (stage == "input" and _step_ok("input", g, io_)):
        return "pass", "exact" if g["exact"] else "within tolerance"
    if stage == "decoded":
        tol = TOLERANCE["decoded"]
        ok = g["max_abs"] <= tol["max_abs"] and g["mean_abs"] <= tol["mean_abs"]
        return ("pass" if ok else "fail"), (f"max |d| {g['max_abs']:.0f}, mean {g['mean_abs']:.3f} grey levels from the "
                                            f"golden ({'within' if ok else 'beyond'} the decoder tolerance "
                                            f"{tol['max_abs']} / {tol['mean_abs']})")
    if step is not None:
        return "pass", f"the contract's steps on your {row['step_from']} (which differs from the golden)"
    if first and stage != "output" and g["mean_abs"] <= FIRST_STAGE_MEAN * _grey(stage, io_):
        return "pass", (f"mean |d| {g['mean_abs']:.4g} from the golden, within what another decoder gives; submit "
                        "the stages before it to check each step exactly")
    return "fail", (f"differs from the golden (max |d| {g['max_abs']:.4g}, mean {g['mean_abs']:.4g}, "
                    f"{g['share']:.1%} of values)")


# -- diagnosis ------------------------------------------------------------------------------------------------
def diagnose(case: Case, stage: str, theirs: dict, golden: dict, io_: ModelIO, top: int = 3) -> list[dict]:
    """Known mistakes ranked by how closely each reproduces their `stage` (matches first)."""
    stage = "probability" if stage == "decision" else stage
    if stage not in theirs or stage == "output":
        return []
    mine = np.asarray(theirs[stage])
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
            continue  # the mistake changes nothing on this image: it explains nothing
        d = _diff(mine, variant)
        if "shape" in d or not ("shape" in base or d["mean_abs"] < base["mean_abs"]):
            continue
        found.append({"mistake": m.name, "description": m.description, "fix": m.fix, "exact": d["max_abs"] == 0,
                      "matches": d["mean_abs"] <= _match_tolerance(stage, io_),
                      "mean_abs": d["mean_abs"], "max_abs": d["max_abs"]})
    return sorted(found, key=lambda f: (not f["matches"], f["mean_abs"]))[:top]


def _match_tolerance(stage: str, io_: ModelIO) -> float:
    """How close to a known mistake's result counts as that mistake: half a grey level on average (another
    implementation of the same mistake rounds otherwise: cv2.INTER_LINEAR's fixed point is not ours)."""
    return PROB_TOLERANCE / 2 if stage == "probability" else 0.5 * _grey(stage, io_)


def _variant(m, case: Case, stage: str, theirs: dict, io_: ModelIO):
    stages = io_.stages
    prev = stages[stages.index(m.stage) - 1] if stages.index(m.stage) else None
    if m.stage == stage and prev in theirs:  # the mistaken step on their own previous stage
        return m.apply(np.asarray(theirs[prev]), case, io_)
    return run_pipeline(case, io_, m, until=stage)[stage]


# -- the report -----------------------------------------------------------------------------------------------
def check(bundle, submission: dict[str, dict], io_: ModelIO | None = None, only_submitted: bool = False) -> dict:
    """The conformance report. only_submitted: images without results are listed as not submitted instead of
    failing (a pipeline that cannot read a format, e.g. DICOM); the verdict says so."""
    io_ = io_ or bundle_io(bundle)
    images, skipped = [], []
    for entry, case, golden in golden_set(bundle):
        if entry["id"] not in submission:
            if only_submitted:
                skipped.append(entry["id"])
                continue
            images.append({"image": entry["id"], "kind": entry["kind"], "passed": False, "stages": [],
                           "first_difference": None, "missing": True})
            continue
        result = check_image(case, golden, dict(submission[entry["id"]]), io_, entry.get("decision_checked", True))
        images.append(result)
    given = {s for stages in submission.values() for s in stages}
    firsts = [d for r in images for d in r.get("diagnosis", [])[:1]]
    matched = [d["mistake"] for d in firsts if d["matches"]]
    closest = [d["mistake"] for d in firsts if not d["matches"]]
    likely = max(set(matched), key=matched.count) if matched else None
    return {"bundle": str(bundle.path), "target": bundle.manifest["target"], "contract_version": C.VERSION,
            "images": images, "passed": rule.verdict(images),
            "failed": [r["image"] for r in images if not r["passed"]],
            "stages_given": [s for s in io_.stages if s in given], "not_submitted": skipped,
            "probabilities_only": not (given - set(SCALARS)),
            "most_likely_mistake": likely and MISTAKE_NAMES[likely].description,
            "most_likely_fix": likely and MISTAKE_NAMES[likely].fix,
            "closest_mistake": None if likely or not closest else MISTAKE_NAMES[max(set(closest), key=closest.count)].description,
            "tolerance": TOLERANCE}


def format_report(r: dict) -> str:
    lines = [f"conformance against {r['bundle']} ({r['target']}, input contract v{r['contract_version']}); "
             f"stages given: {', '.join(r['stages_given']) or 'none'}"]
    for img in r["images"]:
        if img.get("missing"):
            lines.append(f"  FAIL  {img['image']}: no results for this image")
            continue
        shown = " · ".join(f"{s['stage']} {_short(s)}" for s in img["stages"])
        lines.append(f"  {'PASS' if img['passed'] else 'FAIL'}  {img['image']}: {shown}")
        if img.get("first_difference"):
            row = next(s for s in img["stages"] if s["stage"] == img["first_difference"])
            lines.append(f"        first difference: {row['stage']}: {row['why']}")
            for i, d in enumerate(img.get("diagnosis", [])):
                how = "exactly" if d["exact"] else \
                    f"{'within rounding' if d['matches'] else 'not close'}: mean |d| {d['mean_abs']:.4g}"
                head = "or" if i else ("most likely" if d["matches"] else "closest known mistake")
                lines.append(f"        {head}: {d['description']} [{d['mistake']}, {how}]"
                             + (f"; fix: {d['fix']}" if i == 0 else ""))
            if not img.get("diagnosis") and row["stage"] not in SCALARS:
                lines.append("        no known mistake reproduces it; compare with the golden arrays in the bundle's "
                             "conformance/golden/")
    n, bad = len(r["images"]), len(r["failed"])
    verdict = "PASSED" if r["passed"] else f"FAILED ({bad} of {n} images)"
    if r.get("not_submitted"):
        verdict += f" on the {n} images submitted (not submitted, so not checked: {', '.join(r['not_submitted'])})"
    if r["most_likely_mistake"]:
        verdict += f"; most likely mistake: {r['most_likely_mistake']}; fix: {r['most_likely_fix']}"
    elif r.get("closest_mistake"):
        verdict += f"; no known mistake reproduces it exactly (closest: {r['closest_mistake']})"
    if r["probabilities_only"]:
        lines.append("note: probabilities only: this checks decisions, not the pipeline; submit the stages "
                     "(at least the model's input tensor) for a conformance check of the input path")
    lines.append(f"conformance {verdict}")
    return "\n".join(printable(line) for line in lines)


def _short(row: dict) -> str:
    g = row["golden"]
    mark = {"pass": "", "fail": " FAIL"}[row["status"]]
    computed = " (computed)" if row.get("computed_from") else ""
    if "shape" in g:
        return f"shape {tuple(g['shape'])}{mark}"
    if row["stage"] in SCALARS:
        return f"{'exact' if g['exact'] else 'Δ %.4f' % g['max_abs']}{computed}{mark}"
    return f"{'exact' if g['exact'] else 'max |d| %.3g' % g['max_abs']}{mark}"
