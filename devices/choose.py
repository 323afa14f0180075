"""Choose the bundle to ship on this device: parity, clinical numbers and latency of every bundle, here, ranked.

Which int8 target is fastest, and whether it keeps parity, depends on the CPU (VNNI or not, ARM dot
product or not) and the runtime build: one machine's speed-ups are not general. This runs each bundle's
parity on the device, times the ones that pass, and names the fastest; with a latency budget or a clinical
floor (bundles of several models: a small fast one, a large accurate one) it names the most accurate bundle
that keeps parity, fits the budget and meets every floor.
"""
from __future__ import annotations

from pathlib import Path

from edgecxr.parity.comparison import PARITY_BOOTSTRAP
from edgecxr.formats.bundle import release_extraction
from edgecxr.utils.errors import BundleError, DataError, EdgecxrError, ModelError


def find_bundles(paths) -> list[Path]:
    """Bundle folders (or .zip files) given directly or found one level inside the given folders."""
    found = []
    for p in map(Path, paths):
        if (p / "manifest.json").is_file() or p.suffix.lower() == ".zip":
            found.append(p)
        elif p.is_dir():
            inside = sorted(c for c in p.iterdir() if (c / "manifest.json").is_file() or c.suffix.lower() == ".zip")
            if not inside:
                raise DataError(f"{p}: no bundles in it (folders holding manifest.json, or .zip files); "
                                "pass bundle folders or a folder of them")
            found += inside
        else:
            raise DataError(f"{p}: not a bundle folder, a bundle .zip or a folder of bundles")
    if not found:
        raise DataError(f"no bundles (folders holding manifest.json) in {', '.join(map(str, paths))}")
    unique = {}
    for p in found:
        unique.setdefault(p.resolve(), p)  # the same bundle named twice is ranked once
    return list(unique.values())


def _model_mb(bundle) -> float:
    """The model's files (an OpenVINO .xml has its weights in a .bin beside it)."""
    stem = bundle.model_path.with_suffix("")
    return sum(p.stat().st_size for p in bundle.model_path.parent.glob(stem.name + ".*")) / 2**20


FLOORS = ("recall", "specificity", "accuracy", "roc_auc")  # --min-recall ...: on the device, at the bundle's threshold


def _model_name(manifest: dict) -> str:
    """Which float model a bundle came from, as a person reads it: its folder, size and hash."""
    source = manifest.get("source_model") or {}
    folder = Path(source.get("path") or "model").parent.name or "model"
    return f"{folder} {manifest.get('preprocess', {}).get('size', '?')}px {str(source.get('sha256', ''))[:8]}"


def _misses(row: dict, max_ms, floors: dict) -> list[str]:
    """Why a bundle that keeps parity does not fit the budget or the floors (empty: it fits)."""
    found = []
    if max_ms is not None and row["p50_ms"] > max_ms:
        found.append(f"p50 {row['p50_ms']:.2f} ms > {max_ms:g} ms")
    for name, floor in floors.items():
        value = row.get(name)
        if value is None:
            found.append(f"{name} unknown (unlabeled images)")
        elif value < floor - 1e-12:
            found.append(f"{name} {value:.4f} < {floor:g}")
    return found


def rank(bundles, data, *, tolerances=None, runs: int = 100, warmup: int = 10, threads=None, progress=None,
         trusted_key=None, n_boot: int = PARITY_BOOTSTRAP, max_ms: float | None = None, floors: dict | None = None) -> dict:
    """{"rows": [...], "choice": row | None, "host": ...}: every bundle's parity here, passing ones timed.
    tolerances: as for run_parity (None or a dict's None values: each bundle's own acceptance criteria).
    max_ms / floors ({"recall": 0.96, ...}): choose the most accurate bundle that fits (accuracy, then ROC-AUC,
    then speed) instead of the fastest."""
    floors = {k: v for k, v in (floors or {}).items() if v is not None}
    from edgecxr.devices.bench import run_bench
    from edgecxr.devices.classifier import Classifier
    from edgecxr.utils.cpu import host_info
    from edgecxr.devices.parity import run_parity
    from edgecxr.data.folders import list_site

    list_site(data)  # data no bundle could use: one error now, not one row per bundle
    rows = []
    for path in bundles:
        row, clf = {"bundle": str(path), "target": path.name}, None
        if progress:
            progress(f"{path.name}: parity and latency")
        try:
            clf = Classifier.load(path, threads=threads, trusted_key=trusted_key)
            row.update(target=clf.bundle.manifest["target"], runtime=f"{clf.runtime['name']} {clf.runtime['version']}",
                       provider=clf.runtime["provider"], size_mb=_model_mb(clf.bundle),
                       model=_model_name(clf.bundle.manifest))
            report = run_parity(clf, data, tolerances=tolerances, n_boot=n_boot)
            row.update(parity=report["passed"], agreement=report["agreement"],
                       **{k: (report.get("device") or {}).get(k) for k in FLOORS},  # None on unlabeled images
                       new_fn=(report.get("flipped_counts") or {}).get("new_false_negative"),
                       failed=[c["name"] for c in report["checks"] if not c["passed"]],
                       deviations=[d["message"] for d in report["criteria"]["deviations"]])
            if report["passed"]:
                bench = run_bench(clf, data=data, warmup=warmup, runs=runs, cold=False)
                row["p50_ms"], row["p90_ms"] = bench["latency_ms"]["p50"], bench["latency_ms"]["p90"]
                row["misses"] = _misses(row, max_ms, floors)
        # a tampered or malformed bundle, or a model it cannot run, stops the choice: dropping a candidate silently
        # could change which model ships
        except (BundleError, ModelError) as exc:
            cls = BundleError if isinstance(exc, BundleError) else ModelError
            raise cls(f"{path}: {exc}; fix the bundle or leave it out of the list") from None
        # a bundle exported from other images (DataError), no runtime here: a skipped row; data that no bundle can
        # use ends below, in one error naming each bundle's reason
        except (EdgecxrError, ImportError, OSError) as exc:
            row.update(parity=None, error=str(exc) if isinstance(exc, EdgecxrError) else f"{type(exc).__name__}: {exc}")
        finally:
            if clf is not None:
                release_extraction(clf.bundle.path)  # a zipped bundle's extraction goes after its row
        rows.append(row)
    if all(r.get("parity") is None for r in rows):
        raise EdgecxrError("no bundle could be checked here: " + "; ".join(f"{r['target']}: {r['error'][:120]}" for r in rows))
    constrained = max_ms is not None or bool(floors)
    passing = [r for r in rows if r.get("parity") and "p50_ms" in r and not r["misses"]]
    if constrained:
        passing.sort(key=lambda r: (-(r.get("accuracy") or 0), -(r.get("roc_auc") or 0), r["p50_ms"]))
    else:
        passing.sort(key=lambda r: r["p50_ms"])
    for i, r in enumerate(passing, 1):
        r["rank"] = i
    return {"rows": rows, "choice": passing[0] if passing else None, "host": host_info(), "data": str(data),
            "constraints": {"max_ms": max_ms, **{f"min_{k}": v for k, v in floors.items()}} if constrained else None}


def format_choice(result: dict) -> str:
    cpu = result["host"]["cpu"]
    several = len({r.get("model") for r in result["rows"] if r.get("model")}) > 1
    targets = [r["target"] for r in result["rows"]]
    copies = len(set(targets)) < len(targets)  # two bundles of one target: the path tells them apart
    lines = [f"on {cpu['model'] or cpu['machine']} ({cpu['int8_path']}), parity against each bundle's float reference:",
             f"{'rank':>4s}  {'target':22s} {'runtime':22s} {'MB':>6s} {'parity':>6s} {'agree':>6s} {'new FN':>6s} "
             f"{'recall':>6s} {'spec':>6s} {'p50 ms':>7s} {'p90 ms':>7s}" + ("  model" if several else "")]
    order = sorted(result["rows"], key=lambda r: (r.get("rank") or 99, r["target"]))
    for r in order:
        if r.get("parity") is None:
            lines.append(f"{'-':>4s}  {r['target']:22s} skipped: {r['error'][:160]}" + (f"  {r['bundle']}" if copies else ""))
            continue
        timed = f"{r['p50_ms']:7.2f} {r['p90_ms']:7.2f}" if "p50_ms" in r else f"{'-':>7s} {'-':>7s}"
        new_fn = "-" if r["new_fn"] is None else str(r["new_fn"])
        clinical = " ".join("     -" if r.get(k) is None else f"{r[k]:6.3f}" for k in ("recall", "specificity"))
        lines.append(f"{r.get('rank', '-')!s:>4s}  {r['target']:22s} {r['runtime']:22s} {r['size_mb']:6.2f} "
                     f"{'pass' if r['parity'] else 'FAIL':>6s} {r['agreement']:6.3f} {new_fn:>6s} {clinical} {timed}"
                     + (f"  {r.get('model')}" if several else "") + (f"  {r['bundle']}" if copies else "")
                     + (f"  failed: {', '.join(r['failed'])}" if r.get("failed") else "")
                     + (f"  does not fit: {'; '.join(r['misses'])}" if r.get("misses") else ""))
        lines += [f"      DEVIATION: {d}" for d in r.get("deviations") or []]
    c, limits = result["choice"], result.get("constraints")
    wanted = ", ".join(f"p50 <= {v:g} ms" if k == "max_ms" else f"{k[4:]} >= {v:g}" for k, v in (limits or {}).items()
                       if v is not None)
    if c is None:
        lines.append(f"no bundle keeps parity on this device{' and fits ' + wanted if limits else ''}: ship none of them here")
    elif limits:
        numbers = [f"{k.replace('roc_auc', 'ROC-AUC')} {c[k]:.4f}" for k in ("accuracy", "recall", "specificity", "roc_auc")
                   if c.get(k) is not None] or ["no clinical numbers (unlabeled images)"]
        lines.append(f"ship {c['target']} ({c.get('model')}, {c['bundle']}) here: the most accurate of the bundles that "
                     f"keep parity and fit {wanted}: {', '.join(numbers)}, p50 {c['p50_ms']:.2f} ms")
    else:
        fp32 = [r for r in result["rows"] if r.get("p50_ms") and r["target"].endswith("fp32") and r is not c]
        other = " other" if c["target"].endswith("fp32") else ""
        faster = f", {min(fp32, key=lambda r: r['p50_ms'])['p50_ms'] / c['p50_ms']:.1f}x the fastest{other} fp32 bundle" if fp32 else ""
        passing = sum(1 for r in result["rows"] if r.get("parity"))
        where = f" ({c['bundle']})" if targets.count(c["target"]) > 1 else ""
        lines.append(f"ship {c['target']}{where} here: the fastest of "
                     f"{passing} bundle{'s' if passing != 1 else ''} that keep parity on this CPU (p50 {c['p50_ms']:.2f} ms{faster})")
    return "\n".join(lines)
