"""The input contract (edgecxr.data.contract), golden vectors in every bundle and `edgecxr device conform`."""
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from edgecxr.data import conform as V
from edgecxr.data import conformance as K
from edgecxr.data import contract as C
from edgecxr.data.preprocess import LUNG_CROP, PreprocessSpec

from conftest import FULLRES, REPO

FIXTURES = sorted(K.FIXTURES.iterdir())
SHIPPED_SPEC = PreprocessSpec(equalize=True)
FLOAT_IO = K.ModelIO(SHIPPED_SPEC, {"shape": [1, 224, 224, 3], "dtype": "float32", "quantization": None},
                     {"shape": [1, 1], "dtype": "float32", "quantization": None}, 0.5)


def _case(path: Path) -> K.Case:
    return K.Case(path.name, path.read_bytes(), "")


def _pillow_pixels(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """The runner before the contract: Pillow's equalize and resize."""
    img = ImageOps.equalize(img) if spec.equalize else img
    if img.size != (spec.size, spec.size):
        img = img.resize((spec.size, spec.size), Image.Resampling.BILINEAR)
    return np.asarray(img)


def test_reference_equals_the_runner_and_pillow_on_the_real_images(kermany):
    """624 test images, the 16 full-size originals, the conformance fixtures (PNG 16-bit, DICOM, EXIF colour):
    the numpy reference gives the runner's decoded, resized pixels and model input bit for bit, and Pillow's own
    equalize + resize (these images are landscape: Pillow resizes them horizontally first, as the contract)."""
    files = sorted((kermany / "test").glob("*/*.jpeg")) + sorted(FULLRES.glob("*/*.jpeg")) + FIXTURES
    assert len(files) == 624 + 16 + 6
    for path in files:
        stages = K.run_pipeline(_case(path), FLOAT_IO, until="input")
        img = SHIPPED_SPEC.read(path)
        pixels = SHIPPED_SPEC.to_pixels(img)
        assert np.array_equal(np.asarray(img), stages["decoded"]), path.name
        assert np.array_equal(pixels, stages["resized"]), path.name
        assert np.array_equal(SHIPPED_SPEC.scale_pixels(pixels)[None], stages["input"]), path.name
        pillow_same = np.array_equal(_pillow_pixels(img, SHIPPED_SPEC), stages["resized"])
        assert pillow_same == (path.name != "portrait-normal.jpeg"), path.name  # Pillow 13 turns that one first


@pytest.mark.parametrize("kernel", ["bilinear", "bicubic", "lanczos", "nearest"])
def test_resize_is_pillows_arithmetic_for_every_kernel(kernel):
    """Shapes Pillow resizes horizontally first (it reduces the width at least as much as the height)."""
    rng = np.random.default_rng(0)
    resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                "lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST}[kernel]
    for (h, w), size in [((232, 322), 224), ((592, 968), 224), ((100, 150), 224), ((224, 500), 160), ((300, 301), 299)]:
        pixels = rng.integers(0, 256, (h, w)).astype(np.uint8)
        expected = np.asarray(Image.fromarray(pixels).resize((size, size), resample))
        assert np.array_equal(C.resize(pixels, size, kernel), expected), (kernel, h, w, size)


def test_crop_equalize_resize_match_pillow_and_the_order_is_horizontal_first():
    spec = PreprocessSpec(size=200, equalize=True, crop=LUNG_CROP)
    img = Image.open(FULLRES / "NORMAL" / "NORMAL2-IM-1427-0001.jpeg").convert("L")
    w, h = img.size
    top, bottom, left, right = LUNG_CROP
    manual = img.crop((round(left * w), round(top * h), round(right * w), round(bottom * h)))
    assert np.array_equal(spec.to_pixels(img), _pillow_pixels(manual, spec))
    # one axis up, the other down: the contract passes horizontally first, whatever Pillow's version chooses
    pixels = np.random.default_rng(1).integers(0, 256, (300, 200)).astype(np.uint8)
    h_first = C._resize_axis(np.ascontiguousarray(C._resize_axis(pixels, 224, "bilinear").T), 224, "bilinear").T
    assert np.array_equal(C.resize(pixels, 224), h_first)


def test_equalize_lut_is_pillows_formula_with_its_edge_cases():
    rng = np.random.default_rng(2)
    cases = [rng.integers(0, 256, (64, 64)), np.full((8, 8), 77), np.r_[np.zeros(10), np.full(3, 200)].reshape(1, -1),
             rng.integers(100, 103, (50, 50)), np.r_[np.zeros(300), np.arange(256)].reshape(1, -1)]
    for pixels in cases:
        pixels = pixels.astype(np.uint8)
        assert np.array_equal(C.equalize(pixels), np.asarray(ImageOps.equalize(Image.fromarray(pixels)))), pixels.shape


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_the_runner(tmp_path, orientation):
    pixels = np.arange(12 * 20, dtype=np.uint8).reshape(12, 20) * 1
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "o.png"
    Image.fromarray(pixels).save(path, exif=exif.tobytes())
    decoded = K.run_pipeline(_case(path), FLOAT_IO, until="decoded")["decoded"]
    assert np.array_equal(decoded, np.asarray(SHIPPED_SPEC.read(path)))


def test_every_bundle_has_its_conformance_set_and_its_runner_conforms(tiny_bundles):
    for name, folder in tiny_bundles.items():
        if name == "twin":
            continue
        manifest = json.loads((folder / "manifest.json").read_text())
        ids = [e["id"] for e in manifest["conformance"]["images"]]
        assert set(p.name for p in FIXTURES) <= set(ids), name
        assert {"near-threshold-normal.jpeg", "near-threshold-pneumonia.jpeg"} <= set(ids), name
        for entry in manifest["conformance"]["images"]:  # a near-threshold image keeps its decision by the bundle's model
            if entry["id"].startswith("near-threshold"):
                assert abs(entry["probability"] - manifest["threshold"]) >= K.NEAR_MARGIN, (name, entry)
        assert manifest["input_contract"]["stages"] == manifest["conformance"]["stages"]
        assert all(manifest["files"][e["golden"]] for e in manifest["conformance"]["images"])  # hash-pinned
        assert manifest["input_contract"]["version"] == C.VERSION
        done = _cli("device", "conform", str(folder))
        assert done.returncode == 0, (name, done.stdout[-2000:], done.stderr[-2000:])
        assert "conformance PASSED" in done.stdout


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "edgecxr.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_the_opencv_recipe_conforms_exactly_at_every_stage(shipped_int8, tmp_path):
    from integrator_mistakes import recipe  # examples/opencv_recipe.py

    recipe.main([str(shipped_int8), "--conformance", str(tmp_path / "mine.npz")])
    done = _cli("device", "conform", str(shipped_int8), str(tmp_path / "mine.npz"), "--json", str(tmp_path / "r.json"))
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] and len(report["images"]) == 8
    for image in report["images"]:
        assert all(s["golden"]["exact"] for s in image["stages"]), image


def test_the_readme_recipe_is_the_tested_file():
    """The OpenCV recipe printed in docs/integrators.md is examples/opencv_recipe.py, the file CI runs."""
    text = (REPO / "docs" / "integrators.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert (REPO / "examples" / "opencv_recipe.py").read_text() in blocks


@pytest.mark.parametrize("mistake", [m.name for m in K.MISTAKES])
def test_each_known_mistake_is_caught_and_named(shipped_int8, mistake):
    from integrator_mistakes import submission

    from edgecxr.formats.bundle import load_bundle

    bundle = load_bundle(shipped_int8)
    io_ = K.bundle_io(bundle)
    layouts = [None, ("input", "quantized")] + ([] if mistake == "layout_chw" else [("resized", "quantized"), ("quantized",)])
    for stages in layouts:  # every stage, or only some (the CHW mistake is in the input tensor alone)
        report = V.check(bundle, submission(shipped_int8, mistake, stages), io_)
        assert not report["passed"], (mistake, stages)
        assert report["most_likely_mistake"] == K.MISTAKE_NAMES[mistake].description, (mistake, stages)
        if stages is None:
            failed = [i for i in report["images"] if not i["passed"]]
            assert all(i["diagnosis"][0]["mistake"] == mistake for i in failed), (mistake, failed)
            assert {i["first_difference"] for i in failed} <= {K.MISTAKE_NAMES[mistake].stage, "resized", "probability"}


def test_a_legitimately_different_decoder_passes(shipped_int8):
    """Another JPEG decoder: +-1 grey level on 30 % of the decoded pixels of every JPEG, the rest of the recipe
    exact. Every step checks exactly from their decoded stage; decisions decide (none flips here)."""
    from integrator_mistakes import recipe

    from edgecxr.formats.bundle import load_bundle

    bundle = load_bundle(shipped_int8)
    rng = np.random.default_rng(0)
    submission = {}
    for image in sorted((shipped_int8 / "conformance" / "images").iterdir()):
        stages = recipe.stages(image, bundle.manifest)
        if image.suffix == ".jpeg":
            noise = (rng.random(stages["decoded"].shape) < 0.3) * rng.choice([-1, 1], stages["decoded"].shape)
            decoded = np.clip(stages["decoded"].astype(int) + noise, 0, 255).astype(np.uint8)
            stages = {"decoded": decoded, "resized": recipe.resize(recipe.equalize(decoded), 224)}
        submission[image.name] = {k: v for k, v in stages.items() if k in ("decoded", "resized")}
    report = V.check(bundle, submission, K.bundle_io(bundle))
    flips = [i["image"] for i in report["images"] if any(s["stage"] == "decision" and s["status"] == "fail"
                                                         for s in i["stages"])]
    assert report["passed"] or set(report["failed"]) == set(flips), V.format_report(report)


def test_copied_probabilities_with_wrong_tensors_fail(shipped_int8):
    """The probability they give must be what this bundle's model gives for the tensor they give."""
    from integrator_mistakes import submission

    from edgecxr.formats.bundle import load_bundle

    bundle = load_bundle(shipped_int8)
    io_ = K.bundle_io(bundle)
    entries = bundle.manifest["conformance"]["images"]
    wrong = submission(shipped_int8, "scale_0_1", ("quantized",))
    for entry in entries:
        wrong[entry["id"]]["probability"] = np.float64(entry["probability"])  # copied from the manifest
    assert not V.check(bundle, wrong, io_)["passed"]
    right = submission(shipped_int8, "none", ("quantized",))  # the right tensors, another image's probability
    for entry, other in zip(entries, entries[1:] + entries[:1]):
        right[entry["id"]]["probability"] = np.float64(other["probability"])
    report = V.check(bundle, right, io_)
    assert not report["passed"] and "not what this bundle's model gives for your quantized" in V.format_report(report)


def test_conform_names_the_stage_and_the_fix_on_the_console(shipped_int8, tmp_path):
    from integrator_mistakes import submission

    arrays = {f"{i}/{s}": v for i, st in submission(shipped_int8, "opencv_equalizehist").items() for s, v in st.items()}
    np.savez(tmp_path / "eq.npz", **arrays)
    done = _cli("device", "conform", str(shipped_int8), str(tmp_path / "eq.npz"))
    assert done.returncode == 1
    assert "first difference: equalized: not the contract's steps applied to your decoded" in done.stdout
    assert "most likely: another equalization formula (OpenCV's equalizeHist)" in done.stdout
    assert "conformance FAILED (8 of 8 images)" in done.stdout


def test_probabilities_alone_are_checked_by_decision_and_tolerance(shipped_int8, tmp_path):
    manifest = json.loads((shipped_int8 / "manifest.json").read_text())
    golden = {e["id"]: e["probability"] for e in manifest["conformance"]["images"]}
    ok = tmp_path / "ok.csv"
    ok.write_text("\ufeffImage,Probability\n" + "".join(f"{i},{p + 0.01:.6f}\n" for i, p in golden.items()))  # Excel
    done = _cli("device", "conform", str(shipped_int8), str(ok))
    assert done.returncode == 0 and "probabilities only: this checks decisions, not the pipeline" in done.stdout
    flipped = {Path(i).stem: (1 - p) for i, p in golden.items()}  # stems are accepted too
    (tmp_path / "bad.json").write_text(json.dumps(flipped))
    done = _cli("device", "conform", str(shipped_int8), str(tmp_path / "bad.json"))
    assert done.returncode == 1 and "first difference: probability" in done.stdout
    assert "decision Δ 1.0000 (computed) FAIL" in done.stdout and "most likely mistake" not in done.stdout


def test_write_example_is_read_back_as_a_passing_submission(shipped_int8, tmp_path):
    example = tmp_path / "example.npz"
    assert _cli("device", "conform", str(shipped_int8), "--write-example", str(example)).returncode == 0
    done = _cli("device", "conform", str(shipped_int8), str(example))
    assert done.returncode == 0, done.stdout


@pytest.mark.parametrize("content, name, message", [
    ({"nosuch.jpeg/probability": 0.5}, "a.npz", "is not a conformance image"),
    ({"fullsize-normal.jpeg/logits": 0.5}, "b.npz", "names no stage"),
    ({"fullsize-normal.jpeg/cropped": np.zeros((4, 4), np.uint8)}, "c.npz", "names no stage of this bundle"),
    ({"fullsize-normal.jpeg/input": np.zeros(3, complex)}, "d.npz", "stages are arrays of numbers"),
    ("x", "e.txt", "pass a .npz, .json or .csv"),
    ("not a zip", "f.npz", "not a readable submission"),
    ("[1, 2]", "g.json", "a JSON submission is an object"),
    ('{"fullsize-normal.jpeg": {"probability": "high"}}', "h.json", "stages are arrays of numbers"),
    ("[" * 100000, "i.json", "not a readable submission"),
    ("image,probability\nfullsize-normal.jpeg,high\n", "j.csv", "not a readable submission"),
    ("probability\n0.5\n", "k.csv", "needs a header row with an 'image' column"),
    ("image,probability\nfullsize-normal.jpeg,0.1\nfullsize-normal.jpeg,0.9\n", "l.csv", "given twice"),
])
def test_bad_submissions_are_one_line_errors(shipped_int8, tmp_path, content, name, message):
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    else:
        np.savez(path, **{k: np.asarray(v) for k, v in content.items()})
    done = _cli("device", "conform", str(shipped_int8), str(path))
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_an_input_contract_that_contradicts_the_preprocessing_is_refused(shipped_int8, tmp_path):
    from edgecxr.formats.bundle import finalize, load_bundle
    from edgecxr.utils.errors import BundleError

    folder = tmp_path / "b"
    shutil.copytree(shipped_int8, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["input_contract"]["steps"]["equalized"]["enabled"] = False  # resealed: the digest recomputed
    finalize(folder, {k: v for k, v in manifest.items() if k not in ("files", "sha256", "digest", "format", "version")})
    with pytest.raises(BundleError, match="input_contract' does not give the numbers"):
        K.golden_set(load_bundle(folder))


def test_json_output_to_a_device_file_is_refused(shipped_int8):
    done = _cli("device", "conform", str(shipped_int8), "--json", "/dev/null")
    assert done.returncode == 2 and "not a regular file" in done.stderr and Path("/dev/null").is_char_device()


def test_a_changed_golden_array_is_refused(shipped_int8, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(shipped_int8, bundle)
    golden = bundle / "conformance" / "golden" / "fullsize-normal.npz"
    with np.load(golden) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["resized"] = arrays["resized"].copy()
    arrays["resized"][0, 0] ^= 1
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    golden.write_bytes(buf.getvalue())
    done = _cli("device", "conform", str(bundle))
    assert done.returncode == 2 and "fullsize-normal.npz does not match its SHA-256" in done.stderr


def test_a_bundle_without_golden_vectors_says_to_re_export(shipped_int8):
    from edgecxr.formats.bundle import Bundle, load_bundle
    from edgecxr.utils.errors import BundleError

    bundle = load_bundle(shipped_int8)
    old = Bundle(bundle.path, {k: v for k, v in bundle.manifest.items() if k != "conformance"})
    with pytest.raises(BundleError, match="no conformance set.*re-export"):
        K.golden_set(old)
