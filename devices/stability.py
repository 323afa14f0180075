"""Input-path stability: how decisions move under ordinary variation of the acquisition path.

Each variant changes the decoded 8-bit grayscale image the way another scanner, PACS export or
converter could, before the bundle's own preprocessing (`spec.to_pixels`). For every model (the
device model, and the float model when given) a variant's flip rate is the share of images whose
decision differs from the decision on the unmodified image; an image is unstable when any variant
flips it. numpy + Pillow only.

    from edgecxr.devices.stability import measure_stability
    report = measure_stability(clf, paths, float_clf=twin, max_unstable=0.05)
"""
from __future__ import annotations

import io
import os
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from edgecxr.utils.errors import DataError, ImageError
from edgecxr.data.images import decode_image, is_image_file
from edgecxr.data.preprocess import INTERPOLATIONS
from edgecxr.parity.verdict import at_most, judge

PAIR = "full-size"  # the row of --pairs: decision on the original against decision on the downsized file


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return decode_image(buf.getvalue())


def _decoder_noise(img: Image.Image) -> Image.Image:
    """Pillow cannot pick the IDCT (fast vs accurate): add -1/0/+1 grey level to pixels (1/4, 1/2, 1/4, seeded),
    0.5 grey levels on average, the size of the measured difference between TensorFlow's default decoder and
    Pillow's (mean 0.48, max 2)."""
    noise = np.random.default_rng(0).choice(np.array([-1, 0, 1], np.int16), size=(img.height, img.width), p=[0.25, 0.5, 0.25])
    return Image.fromarray(np.clip(np.asarray(img, np.int16) + noise, 0, 255).astype(np.uint8))


def _png16(img: Image.Image) -> Image.Image:
    """The image as a 16-bit PNG, read back by edgecxr.data.images (16-bit data scaled by ranks, as every 16-bit file)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(img, np.uint16) * 257).save(buf, "PNG")
    return decode_image(buf.getvalue())


def _window(img: Image.Image, low: float = 1, high: float = 99) -> Image.Image:
    """A DICOM-like window: clip to the 1st..99th percentile and stretch to 0..255."""
    a = np.asarray(img, np.float32)
    lo, hi = np.percentile(a, [low, high])
    if hi <= lo:
        return img
    return Image.fromarray(np.rint((np.clip(a, lo, hi) - lo) * (255 / (hi - lo))).astype(np.uint8))


def _shift(img: Image.Image, fraction: float = 0.015) -> Image.Image:
    """Move the image down and right by 1.5 % of its short side (3 px at 224 px), repeating the edge."""
    d = max(1, round(fraction * min(img.size)))
    a = np.pad(np.asarray(img), ((d, 0), (d, 0)), mode="edge")
    return Image.fromarray(a[: img.height, : img.width])


def _crop(img: Image.Image, fraction: float = 0.025) -> Image.Image:
    """Cut 2.5 % off every side (the spec's resize brings it back to the model's size)."""
    dx, dy = round(fraction * img.width), round(fraction * img.height)
    return img.crop((dx, dy, img.width - dx, img.height - dy))


def _gamma(img: Image.Image, gamma: float) -> Image.Image:
    return img.point([round(255 * (v / 255) ** gamma) for v in range(256)])


# A function (PIL image -> PIL image) runs before the spec; a Pillow kernel replaces the spec's resize kernel.
VARIANTS = {
    "resize-nearest": Image.Resampling.NEAREST,
    "resize-bicubic": Image.Resampling.BICUBIC,
    "resize-lanczos": Image.Resampling.LANCZOS,
    "resize-box": Image.Resampling.BOX,
    "jpeg-q70": partial(_jpeg, quality=70),
    "jpeg-q85": partial(_jpeg, quality=85),
    "jpeg-q95": partial(_jpeg, quality=95),
    "decoder-noise": _decoder_noise,
    "png-16bit": _png16,
    "window-p1-p99": _window,
    "shift-1.5%": _shift,
    "crop-2.5%": _crop,
    "gamma-0.9": partial(_gamma, gamma=0.9),
    "gamma-1.1": partial(_gamma, gamma=1.1),
}


def variant_pixels(img: Image.Image, spec, variant) -> np.ndarray:
    """The model's uint8 pixels of `img` under one variant (a registry value)."""
    if callable(variant):
        return spec.to_pixels(variant(img))
    if max(img.size) <= spec.size:  # a file already at the model's size is not resized: resize a 2x enlargement
        img = img.resize((2 * img.width, 2 * img.height), INTERPOLATIONS[spec.interpolation])
    return spec.to_pixels(img, resample=variant)


def _probability(clf, pixels: np.ndarray) -> float:
    return clf.infer(clf.from_pixels(pixels))[0]


def _names(paths) -> list[str]:
    """Paths relative to the folder they share (e.g. NORMAL/IM-0001-0001.jpeg)."""
    base = os.path.commonpath([str(Path(p).parent) for p in paths])
    return [os.path.relpath(p, base) for p in paths]


def image_files(folder, split: str | None = None) -> list[Path]:
    """The image files under FOLDER/SPLIT when that exists (a Kermany root), else under FOLDER (recursively)."""
    folder = Path(folder)
    if split and (folder / split).is_dir():
        folder = folder / split
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder; pass a folder of images or a data root holding the split")
    files = sorted(f for f in folder.rglob("*") if f.is_file() and is_image_file(f))
    if not files:
        raise DataError(f"{folder}: no image files (.jpeg/.jpg/.png/.dcm)")
    return files


def match_pairs(originals, downsized) -> list[tuple[Path, Path]]:
    """(original, downsized) files with the same path relative to their folders, suffix aside."""
    small = {f.relative_to(downsized).with_suffix("").as_posix(): f for f in image_files(downsized)}
    pairs = [(f, small[key]) for f in image_files(originals)
             if (key := f.relative_to(originals).with_suffix("").as_posix()) in small]
    if not pairs:
        raise DataError(f"no file of {originals} has a counterpart with the same relative path in {downsized}")
    return pairs


def _summary(probs: dict, threshold: float, variants, show: int) -> dict:
    """probs: image -> {variant: (probability unmodified, probability under the variant)}.

    Per variant: flips and |probability shift|; overall: the share of unstable images, the least stable ones."""
    rows, images = {}, []
    for v in variants:
        pairs = np.array([p[v] for p in probs.values() if v in p]).reshape(-1, 2)
        if not len(pairs):
            continue
        shift, flips = np.abs(pairs[:, 1] - pairs[:, 0]), (pairs[:, 1] >= threshold) != (pairs[:, 0] >= threshold)
        rows[v] = {"n": len(pairs), "flips": int(flips.sum()), "flip_rate": float(flips.mean()),
                   "mean_shift": float(shift.mean()), "max_shift": float(shift.max())}
    for name, p in probs.items():
        worst = max(p, key=lambda v: abs(p[v][1] - p[v][0]))
        images.append({"file": name, "max_shift": abs(p[worst][1] - p[worst][0]), "variant": worst,
                       "prob": p[worst][0], "variant_prob": p[worst][1],
                       "flipped_by": [v for v, (a, b) in p.items() if (a >= threshold) != (b >= threshold)]})
    unstable = [r["file"] for r in images if r["flipped_by"]]
    images.sort(key=lambda r: (-r["max_shift"], r["file"]))
    return {"threshold": float(threshold), "n": len(images), "variants": rows, "unstable_n": len(unstable),
            "unstable": len(unstable) / max(len(images), 1), "unstable_images": sorted(unstable),
            "least_stable": images[:show]}


def _read(path, spec, bad: list):
    try:
        return spec.read(path)
    except ImageError as exc:
        bad.append({"file": str(path), "error": str(exc)})
        return None


def measure_stability(clf, paths=(), *, float_clf=None, pairs=(), variants=None, max_unstable: float | None = None,
                      show: int = 10, names=None, progress: bool = False) -> dict:
    """Decisions of `clf` (and `float_clf`) on each image under every variant, against the unmodified image.

    paths: image files; pairs: (original, downsized) files, giving the 'full-size' row (the downsized file is the
    baseline); variants: name -> registry value (default VARIANTS); max_unstable: the gate on the device model's
    share of unstable images. Unreadable files are skipped and listed.
    """
    from tqdm import tqdm

    started = time.perf_counter()
    paths, pairs = [Path(p) for p in paths], [(Path(a), Path(b)) for a, b in pairs]
    variants = VARIANTS if variants is None else variants
    models = {"device": clf} | ({"float": float_clf} if float_clf is not None else {})
    probs = {m: {} for m in models}
    bad: list = []
    names = list(names) if names is not None else (_names(paths) if paths else [])
    pair_names = _names([a for a, _ in pairs]) if pairs else []
    work = [(n, p, None) for n, p in zip(names, paths)] + [(n, b, a) for n, (a, b) in zip(pair_names, pairs)]
    for name, path, original in tqdm(work, desc="stability", unit="img", disable=not progress, file=sys.stderr,
                                     leave=False):
        img = _read(path, clf.spec, bad)
        full = _read(original, clf.spec, bad) if original is not None and img is not None else None
        if img is None or (original is not None and full is None):
            continue
        for m, model in models.items():
            p = probs[m].setdefault(name, {})
            base = _probability(model, model.spec.to_pixels(img))
            if original is not None:
                p[PAIR] = (base, _probability(model, model.spec.to_pixels(full)))
                continue
            for v, variant in variants.items():
                p[v] = (base, _probability(model, variant_pixels(img, model.spec, variant)))
    if not probs["device"]:
        raise DataError(f"no readable images to measure ({len(bad)} unreadable, first: "
                        f"{bad[0]['error'] if bad else 'none given'})")
    order = [*variants, PAIR] if pairs else list(variants)
    report = {"variants": order, "unreadable": bad,
              "data": {"images": len(paths), "pairs": len(pairs)}}
    for m, model in models.items():
        report[m] = _summary(probs[m], model.threshold, order, show) | {"model": _describe(model)}
    report["seconds"] = time.perf_counter() - started
    report["max_unstable"] = max_unstable
    gate = [] if max_unstable is None else [stability_check(report)]
    return judge(report, also=gate, decided=bool(gate))  # no limit: passed None (not decided)


def _describe(clf) -> dict:
    rt = clf.runtime
    return {"target": clf.bundle.manifest["target"], "path": str(clf.bundle.path),
            "runtime": f"{rt['name']} {rt['version']}", "provider": rt["provider"]}


def stability_check(report: dict) -> dict:
    """The gate as a parity-style check (name, value, limit, passed, message)."""
    d, limit = report["device"], report["max_unstable"]
    return at_most("stability", d["unstable"], limit, f"{d['unstable_n']} of {d['n']} images ({d['unstable']:.4f}) "
                   f"flip under some input variant (allowed {limit})", eps=1e-12)


def format_stability(report: dict, show: int = 10) -> str:
    """The human summary: one table row per variant, the unstable share and the least stable images."""
    models = [m for m in ("device", "float") if m in report]
    head = f"{'variant':16s}" + "".join(f" {report[m]['model']['target'] + ' flips':>20s} {'mean|dp|':>8s} {'max|dp|':>8s}"
                                        for m in models)
    lines = [f"stability of {report['device']['model']['target']} ({report['device']['model']['runtime']}) on "
             f"{report['data']['images']} images" + (f" and {report['data']['pairs']} full-size pairs" if report['data']['pairs'] else "")
             + f", threshold {report['device']['threshold']:.4f}", head]
    for v in (v for v in report["variants"] if any(v in report[m]["variants"] for m in models)):
        cells = []
        for m in models:
            r = report[m]["variants"][v]
            cells.append(f" {r['flips']:>5d}/{r['n']:<5d} {r['flip_rate']:8.4f} {r['mean_shift']:8.4f} {r['max_shift']:8.4f}")
        lines.append(f"{v:16s}" + "".join(cells))
    for m in models:
        r = report[m]
        lines.append(f"unstable ({r['model']['target']}): {r['unstable_n']} of {r['n']} images ({r['unstable']:.4f}) "
                     "flip under at least one variant")
    lines.append(f"least stable ({report['device']['model']['target']}, largest probability shift):")
    for r in report["device"]["least_stable"][:show]:
        flips = ", ".join(r["flipped_by"]) or "no flip"
        lines.append(f"  {r['file']}  {r['prob']:.3f} -> {r['variant_prob']:.3f} ({r['variant']}); flipped by: {flips}")
    if report["unreadable"]:
        lines.append(f"{len(report['unreadable'])} unreadable image(s) skipped, first: {report['unreadable'][0]['error']}")
    if report["passed"] is not None:
        c = stability_check(report)
        lines.append(f"{'PASS' if c['passed'] else 'FAIL'} {c['name']}: {c['message']}")
    return "\n".join(lines)
