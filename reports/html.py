"""The HTML page of `edgecxr report`: headline, metric tables, curves, parity table and case gallery, images inlined."""
from __future__ import annotations

import base64
import html
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgecxr.parity import metrics
from edgecxr.utils.errors import EdgecxrError

if TYPE_CHECKING:
    from edgecxr.reports.report import Found, Section

PARITY_COLUMNS = ("target", "runtime", "size_mb", "accuracy", "recall", "specificity", "roc_auc", "agreement",
                  "new_fn", "new_fp", "p50_ms", "passed")
HEADLINE = (("recall", "Sensitivity", "pneumonia X-rays the model flags"),
            ("specificity", "Specificity", "normal X-rays the model clears"),
            ("accuracy", "Accuracy", "all X-rays answered correctly"),
            ("roc_auc", "ROC AUC", "ranking quality at any threshold (0.5 = chance, 1 = perfect)"))
NAMES = {"recall": "Sensitivity (recall)", "specificity": "Specificity", "accuracy": "Accuracy",
         "precision": "Precision (positive predictive value)", "f1": "F1 score", "roc_auc": "ROC AUC",
         "pr_auc": "PR AUC (average precision)"}


# -- pictures -----------------------------------------------------------------------------
def _img(data: bytes, alt: str, width: int | None = None) -> str:
    w = f' width="{width}"' if width else ""
    return f'<img alt="{html.escape(alt)}"{w} src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _plots(s: Section, labels, tmp: Path) -> list[tuple[str, bytes, str]]:
    from edgecxr import plots

    t = s.threshold
    out = []
    plots.roc_png(s.y, s.prob, tmp / "roc.png", t, title="ROC curve")
    out.append(("ROC curve", (tmp / "roc.png").read_bytes(),
                f"Every point is a possible threshold; the red dot is the one in use ({t:.3f}). "
                "The closer the curve hugs the top-left corner, the better; the dashed line is chance."))
    plots.pr_png(s.y, s.prob, tmp / "pr.png", title="Precision-recall curve")
    out.append(("Precision-recall curve", (tmp / "pr.png").read_bytes(),
                "How often a pneumonia call is right (precision) as the model is made to catch more cases (recall)."))
    plots.confusion_png(s.m["confusion"], labels, tmp / "cm.png")
    out.append(("Confusion matrix", (tmp / "cm.png").read_bytes(),
                "Rows: true diagnosis; columns: the model's answer. Bottom-left: pneumonia missed (false negatives); "
                "top-right: normal X-rays called pneumonia (false positives)."))
    plots.calibration_png(s.y, s.prob, tmp / "cal.png")
    out.append(("Calibration", (tmp / "cal.png").read_bytes(),
                "On the dashed line a predicted probability of 80% comes true 80% of the time; "
                "below it the model is over-confident."))
    return out


class Mapper:
    """Grad-CAM (float model) and occlusion (bundle) figures for gallery cases, loaded on first use."""

    def __init__(self, model: Path | None, enabled: bool):
        self.model, self.enabled, self._float, self._bundles = model, enabled, None, {}
        self.problem = None if enabled else "maps turned off (--no-maps)"

    def _explainer(self):
        if self._float is None and self.enabled and self.model is not None and self.problem is None:
            from edgecxr.reports.explain import FloatExplainer

            try:
                self._float = FloatExplainer(self.model)
            except EdgecxrError as exc:
                self.problem = f"no Grad-CAM: {exc}"
        return self._float

    def gradcam(self, path: Path):
        e = self._explainer()
        return e.explain(path, "gradcam") if e else None

    def occlusion(self, bundle, path: Path):
        if not self.enabled:
            return None
        from edgecxr.reports.explain import BundleExplainer

        key = str(bundle)
        if key not in self._bundles:
            try:
                self._bundles[key] = BundleExplainer(bundle)
            except EdgecxrError as exc:
                self._bundles[key] = None
                self.problem = f"no occlusion map for {bundle}: {exc}"
        return self._bundles[key].explain(path) if self._bundles[key] else None


def _resolve(rel: str, roots) -> Path | None:
    for root in roots:
        if (Path(root) / rel).is_file():
            return Path(root) / rel
    return None


def _card(title: str, rel: str, images: list[tuple[str, bytes]], lines: list[str]) -> str:
    figs = "".join(f'<figure>{_img(b, cap, 150)}<figcaption>{html.escape(cap)}</figcaption></figure>' for cap, b in images)
    text = "".join(f"<div>{html.escape(t)}</div>" for t in lines)
    return (f'<div class="card"><div class="case">{html.escape(title)}</div><div class="figs">{figs}</div>'
            f'<div class="small">{text}<div class="file">{html.escape(rel)}</div></div></div>')


def _xray_and_maps(path: Path, mapper: Mapper, bundle=None) -> list[tuple[str, bytes]]:
    from edgecxr.reports.explain import png_bytes

    images = []
    g = mapper.gradcam(path) if path else None
    o = mapper.occlusion(bundle, path) if (path and bundle) else None
    base = g or o
    if base is not None:
        images.append(("X-ray (model input)", png_bytes(np.repeat(base.gray[..., None], 3, -1), 180)))
    if g is not None:
        images.append(("float model: Grad-CAM", png_bytes(g.overlay(), 180)))
    if o is not None:
        images.append((f"device {o.source}: occlusion", png_bytes(o.overlay(), 180)))
    if base is None and path is not None:
        from edgecxr.data.images import read_image

        img = read_image(path).convert("L")
        img.thumbnail((360, 360))
        images.append(("X-ray", png_bytes(np.repeat(np.asarray(img)[..., None], 3, -1))))
    return images


def _gallery(found: Found, mapper: Mapper, roots, limit: int) -> tuple[str, list]:
    notes, parts = [], []
    for r in found.parity:
        flips = r.get("flipped") or []
        target = (r.get("bundle") or {}).get("target") or r.get("target", "device")
        bundle = (r.get("bundle") or {}).get("path") or r.get("bundle_path")
        bundle = bundle if bundle and Path(bundle).exists() else None
        if not flips:
            continue
        cards = []
        for f in flips[:limit]:
            path = _resolve(f["file"], roots)
            kind = f["kind"].replace("_", " ")
            cards.append(_card(kind.capitalize(), f["file"], _xray_and_maps(path, mapper, bundle) if path else [],
                               [f"true: {('PNEUMONIA' if f['label'] else 'NORMAL') if 'label' in f else 'unknown (unlabeled)'}",
                                f"float p = {f['float_prob']:.3f}, device p = {f['device_prob']:.3f}"]))
        more = f" (first {limit} of {len(flips)})" if len(flips) > limit else ""
        parts.append(f"<h3>Decisions that changed on {html.escape(str(target))}{more}</h3>"
                     "<p>The same X-ray, answered differently by the float model and the device. New false negatives "
                     "(pneumonia the device now misses) come first. Red marks the regions that drove each answer: "
                     "Grad-CAM for the float model, occlusion (hiding a patch and watching the probability) for the device; "
                     "blue or uncoloured areas mattered little.</p>"
                     f'<div class="gallery">{"".join(cards)}</div>')
        if not bundle:
            notes.append(f"device occlusion maps for {target}: its bundle folder was not found (pass --bundle)")
    if not found.parity:
        notes.append("flipped cases: no parity results (run `edgecxr device parity --json FILE` or `edgecxr benchmark`, "
                     "or pass --bundle and --data)")
    if found.sections:
        s = found.sections[0]
        pred = s.prob >= s.threshold
        fn = sorted(np.flatnonzero((s.y == 1) & ~pred), key=lambda i: s.prob[i])[:limit]
        fp = sorted(np.flatnonzero((s.y == 0) & pred), key=lambda i: -s.prob[i])[:limit]
        for name, idx, text in (("Missed pneumonia (false negatives)", fn, "lowest probability first"),
                                ("Normal X-rays called pneumonia (false positives)", fp, "most confident first")):
            if not len(idx):
                parts.append(f"<h3>{name}</h3><p>None on the {html.escape(s.title)}.</p>")
                continue
            cards = []
            for i in idx:
                path = _resolve(s.rel[i], roots)
                cards.append(_card(f"p = {s.prob[i]:.3f} (threshold {s.threshold:.3f})", s.rel[i],
                                   _xray_and_maps(path, mapper) if path else [], []))
            parts.append(f"<h3>{name}, {text}</h3><p>From the {html.escape(s.title)}; "
                         "red marks the regions that drove the (wrong) answer.</p>"
                         f'<div class="gallery">{"".join(cards)}</div>')
        if not any(_resolve(r, roots) for r in s.rel[:50]):
            notes.append("gallery images: the X-ray files were not found (pass --data ROOT)")
    if mapper.problem:
        notes.append(mapper.problem)
    elif mapper.model is None:
        notes.append("Grad-CAM maps: no float model found (pass --model)")
    return "".join(parts), notes


# -- the page -------------------------------------------------------------------------------
def _pct(v) -> str:
    return "n/a" if v is None or v != v else f"{100 * v:.1f}%"


def _ci(m: dict, k: str, pct=True) -> str:
    lo, hi = (m.get("ci") or {}).get(k, [None, None])
    if lo is None or lo != lo:
        return ""
    return f"{_pct(lo)} – {_pct(hi)}" if pct else f"{lo:.3f} – {hi:.3f}"


def _headline(s: Section, labels) -> str:
    m, cm = s.m, s.m["confusion"]
    tiles = "".join(
        f'<div class="tile"><div class="label">{name}</div><div class="big">'
        f'{_pct(m[k]) if k != "roc_auc" else f"{m[k]:.3f}"}</div>'
        f'<div class="ci">95% CI {_ci(m, k, k != "roc_auc")}</div><div class="small">{html.escape(what)}</div></div>'
        for k, name, what in HEADLINE)
    pos, neg = cm["tp"] + cm["fn"], cm["tn"] + cm["fp"]
    return (f'<div class="tiles">{tiles}</div><p class="plain">On the <b>{html.escape(s.title)}</b> ({m["n"]} X-rays): '
            f'of <b>{pos}</b> with {html.escape(labels[1].lower())}, the model flagged <b>{cm["tp"]}</b> and missed '
            f'<b>{cm["fn"]}</b>; of <b>{neg}</b> {html.escape(labels[0].lower())} X-rays it cleared <b>{cm["tn"]}</b> and '
            f'wrongly flagged <b>{cm["fp"]}</b>. Decision threshold {s.threshold:.3f} '
            f'({html.escape(s.method or "method not recorded")}). {_interval_words(m)}</p>'
            + "".join(f"<p class='warn'>{html.escape(n)}</p>" for n in metrics.small_sample_notes(cm)))


def _interval_words(m: dict) -> str:
    info = m.get("ci_info") or {}
    if info.get("unit") == "patient":
        return (f"Intervals are {100 * info['level']:.0f}% bootstrap intervals resampling the {info['patients']} patients "
                f"(their {info['images']} X-rays kept together).")
    return "Intervals are 95% bootstrap intervals over images."


def _count(n, word: str) -> str:
    n = int(n or 0)
    return f"{n} {word}{'' if n == 1 else 's'}"


def _findings(found: Found) -> str:
    """Plain-language bullets: error rates per 100, validation-to-test gap, device parity."""
    items, s = [], (found.sections or [None])[0]
    cm = s.m["confusion"] if s else {"tp": 0, "fn": 0, "tn": 0, "fp": 0}
    pos, neg = cm["tp"] + cm["fn"], cm["tn"] + cm["fp"]
    if pos:
        items.append(f"About <b>{100 * cm['fn'] / pos:.0f} in 100</b> pneumonia X-rays are missed.")
    if neg:
        items.append(f"About <b>{100 * cm['fp'] / neg:.0f} in 100</b> normal X-rays are wrongly flagged as pneumonia.")
    val = next((v for v in found.sections if v.title.startswith("Validation")), None)
    if s is not None and val is not None and val is not s:
        gap = val.m["accuracy"] - s.m["accuracy"]
        text = (f"Accuracy was {_pct(val.m['accuracy'])} on validation but {_pct(s.m['accuracy'])} on the test set")
        items.append(text + (": <b>validation overstates how the model does on new patients</b>." if gap > 0.05 else "."))
    for r in found.bench:
        if r.get("agreement") is None:
            if r.get("error"):
                items.append(f"{html.escape(str(r.get('target')))}: could not be checked ({html.escape(str(r['error'])[:120])}).")
            continue
        verdict = "passes" if r.get("passed") else "<span class='bad'>fails</span>"
        if r.get("labeled") is False:
            items.append(f"Device {html.escape(str(r.get('target')))} gives the same answer on {_pct(r['agreement'])} of "
                         f"the site's X-rays; {_count(r.get('new_negative'), 'X-ray')} the float model calls pneumonia "
                         f"it calls normal: {verdict} the parity check.")
            continue
        items.append(f"Device {html.escape(str(r.get('target')))} gives the same answer on {_pct(r['agreement'])} of X-rays; "
                     f"it misses {_count(r.get('new_fn'), 'pneumonia case')} the float model caught and newly flags "
                     f"{_count(r.get('new_fp'), 'normal X-ray')}: {verdict} the parity check.")
    return "<ul class='findings'>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def _metric_table(s: Section) -> str:
    rows = "".join(f"<tr><td>{NAMES[k]}</td><td class='num'>{_pct(s.m[k]) if 'auc' not in k else f'{s.m[k]:.3f}'}</td>"
                   f"<td class='num'>{_ci(s.m, k, 'auc' not in k)}</td></tr>" for k in metrics.METRIC_NAMES)
    return f"<table><tr><th>metric</th><th>value</th><th>95% interval</th></tr>{rows}</table>"


def _shortcut_table(s: Section) -> str:
    """Metrics with the border or the top band masked (`edgecxr evaluate`'s shortcut check), and its reading."""
    from edgecxr.training.shortcuts import REPORTED, reading

    sc = s.m.get("shortcuts")
    if not sc:
        return ""
    rows = [("as given", s.m, None), ("outside the lung box masked", sc["border"], sc["border"]["changed"]),
            (f"top {100 * sc['top_band_rows']:.0f}% band masked", sc["top_band"], sc["top_band"]["changed"])]
    body = "".join(f"<tr><td>{what}</td>" + "".join(f"<td class='num'>{_pct(m[k]) if k != 'roc_auc' else f'{m[k]:.3f}'}</td>"
                                                    for k in REPORTED) + f"<td class='num'>{_pct(ch) if ch is not None else '–'}</td></tr>"
                   for what, m, ch in rows)
    head = "".join(f"<th>{NAMES[k]}</th>" for k in REPORTED)
    cam, box = sc.get("gradcam_in_lung") or {}, sc["lung_box"]
    note = (f" Grad-CAM share over {cam.get('n')} of {cam.get('of')} X-rays ({html.escape(str(cam.get('images')))})."
            if cam.get("mean") is not None else f" {html.escape(cam.get('error', ''))}")
    return (f"<h3>Does the model look at the lungs?</h3><table><tr><th>input</th>{head}<th>decisions changed</th></tr>"
            f"{body}</table><p class='plain'>{html.escape(reading(sc))}</p><p class='small'>Masked pixels are set to black "
            f"after preprocessing; the lung box is rows {_pct(box[0])}–{_pct(box[1])}, columns {_pct(box[2])}–{_pct(box[3])} "
            f"of the image.{note}</p>")


def _fmt(k, v) -> str:
    if v is None:
        return "–"
    if k == "passed":
        return '<span class="ok">pass</span>' if v else '<span class="bad">FAIL</span>'
    if isinstance(v, float):
        return f"{v:.2f}" if k in ("size_mb", "p50_ms") else f"{v:.3f}"
    return html.escape(str(v))


def _parity_table(rows: list) -> str:
    cols = [c for c in PARITY_COLUMNS if any(c in r for r in rows)]
    head = "".join(f"<th>{c.replace('_', ' ')}</th>" for c in cols)
    body = ""
    for r in rows:
        cells = [f"<td class='{'num' if isinstance(r.get(c), (int, float)) else ''}'>{_fmt(c, r.get(c))}</td>" for c in cols]
        if r.get("error"):  # a target that could not be exported or run: its message instead of numbers
            keep = [i for i, c in enumerate(cols) if c in ("target", "runtime", "passed")]
            middle = len(cols) - len(keep)
            cells = [cells[i] for i in keep if cols[i] != "passed"] + \
                    [f"<td colspan='{middle}' class='bad'>{html.escape(str(r['error']))[:300]}</td>"] + \
                    [cells[i] for i in keep if cols[i] == "passed"]
        body += "<tr>" + "".join(cells) + "</tr>"
    return (f"<table><tr>{head}</tr>{body}</table><p class='small'>Each row is one export of the model, run on the "
            "device runtime over the same test X-rays at the same threshold. <b>agreement</b>: share of X-rays with the "
            "same answer as the float model; <b>new fn</b>: pneumonia cases the device misses that the float model caught; "
            "<b>new fp</b>: normal X-rays the device newly flags; <b>p50 ms</b>: median time per X-ray.</p>")


CSS = """body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1d2733;background:#f4f6f8}
main{max-width:1080px;margin:0 auto;padding:24px 32px;background:#fff}
h1{font-size:26px;margin:0 0 4px}h2{margin-top:36px;border-bottom:2px solid #e3e8ee;padding-bottom:4px}
.sub{color:#5b6775}.tiles{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0}
.tile{flex:1 1 200px;border:1px solid #d8dee6;border-radius:8px;padding:12px 16px;background:#f9fbfd}
.label{font-weight:600;color:#34495e}.big{font-size:34px;font-weight:700;color:#0b5394}.ci{color:#34495e}
.small{font-size:13px;color:#5b6775}.plain{font-size:16px;line-height:1.5}
.warn{background:#fff4e5;border-left:4px solid #f0a030;padding:8px 12px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #d8dee6;padding:4px 10px;text-align:left}
th{background:#eef2f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1e7b34;font-weight:700}.bad{color:#b3261e;font-weight:700}
.figs{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0;max-width:500px}figcaption{font-size:13px;color:#5b6775;max-width:480px}
.card figcaption{max-width:150px;font-size:12px}
figure img{max-width:100%;height:auto}.grid figure img{width:480px;border:1px solid #e3e8ee}
.findings li{margin:4px 0;font-size:16px}
.gallery{display:flex;flex-wrap:wrap;gap:12px}.card{border:1px solid #d8dee6;border-radius:8px;padding:8px;background:#fbfcfd}
.case{font-weight:600;margin-bottom:4px}.file{font-family:monospace;font-size:11px;color:#8795a1}
nav a{margin-right:14px;color:#0b5394}.hash{font-family:monospace;font-size:11px;word-break:break-all}"""


def render(found: Found, *, roots, mapper: Mapper, gallery: int, title: str, sources, record: dict | None = None) -> str:
    from edgecxr.reports.evidence import record_html

    labels = found.info.labels if found.info else ("NORMAL", "PNEUMONIA")
    notes = list(found.notes)
    body = []
    if found.sections:
        s = found.sections[0]
        body.append(f"<h2 id='summary'>Summary</h2>{_headline(s, labels)}{_findings(found)}")
        if s.title.startswith("Validation"):
            body.append("<p class='warn'>Only validation numbers are available. Validation images come from the same "
                        "source as the training images and usually overstate performance on new patients; run "
                        "<code>edgecxr evaluate --split test</code> and add its folder.</p>")
            notes.append("test-set evaluation (run `edgecxr evaluate`)")
    else:
        body.append(f"<h2 id='summary'>Summary</h2>{_findings(found)}")
        notes.append("the float model's own metrics and curves (add a training run or `edgecxr evaluate` folder)")
    if record is not None:
        body.append(record_html(record))
        if not record["bench"]:
            notes.append("latency and memory on the device (add `edgecxr device bench --json FILE`)")
    with tempfile.TemporaryDirectory() as tmp:
        for s in found.sections:
            figs = "".join(f"<figure>{_img(b, name)}<figcaption><b>{name}.</b> {html.escape(cap)}</figcaption></figure>"
                           for name, b, cap in _plots(s, labels, Path(tmp)))
            body.append(f"<h2>{html.escape(s.title)}</h2>{_metric_table(s)}{_shortcut_table(s)}"
                        f"<div class='figs grid'>{figs}</div>")
        if found.history:
            from edgecxr import plots

            plots.history_png(found.history, Path(tmp) / "hist.png")
            body.append("<h2 id='training'>Training curves</h2><figure style='max-width:100%'>"
                        f"{_img((Path(tmp) / 'hist.png').read_bytes(), 'training curves')}<figcaption>Loss and scores per "
                        "epoch on the training images and the held-out validation images. A widening gap between the two "
                        "lines means the model is memorising its training images.</figcaption></figure>")
        elif found.history is not None:  # a header-only history.csv: the run trained no epoch (--epochs 0)
            notes.append("training curves (the run trained no epoch: train --epochs 0)")
        elif any(s.title.startswith("Validation") for s in found.sections):
            notes.append("training curves (history.csv not found)")
    if found.bench:
        body.append(f"<h2 id='parity'>Edge devices: does the exported model answer the same?</h2>{_parity_table(found.bench)}")
    else:
        notes.append("parity table (no benchmark.json or parity JSON; run `edgecxr benchmark`)")
    cases, gallery_notes = _gallery(found, mapper, roots, gallery)
    notes += gallery_notes
    body.append(f"<h2 id='cases'>Cases to look at</h2>{cases or '<p>No cases to show.</p>'}")
    if notes:
        body.append("<h2 id='missing'>Not in this report</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    model = f"model {html.escape(str(found.model))}" + (f" ({html.escape(found.info.arch)})" if found.info else "") if found.model else "no float model found"
    nav = "".join(f"<a href='#{a}'>{t}</a>" for a, t in (("summary", "Summary"), ("verdict", "Verdict"),
                                                          ("criteria", "Criteria"), ("data", "Data"), ("results", "Results"),
                                                          ("calibration", "Calibration"), ("latency", "Latency"),
                                                          ("versions", "Runtimes"), ("sbom", "SBOM"), ("training", "Training"),
                                                          ("parity", "Devices"), ("cases", "Cases"), ("missing", "Missing"))
                  if f"id='{a}'" in "".join(body))
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><main><h1>{html.escape(title)}</h1>"
            f"<div class='sub'>{model}; from {html.escape(', '.join(map(str, sources)))}; "
            f"made {time.strftime('%Y-%m-%d %H:%M')}. A decision aid under evaluation, not a diagnosis.</div>"
            f"<nav>{nav}</nav>{''.join(body)}</main></body></html>\n")
