"""Choose the target to ship on this device: parity and latency of every bundle, here, ranked.

Which int8 target is fastest, and whether it keeps parity, depends on the CPU (VNNI or not, ARM dot
product or not) and the runtime build: one machine's speed-ups are not general. This runs each bundle's
parity on the device, times the ones that pass, and names the fastest.
"""
from __future__ import annotations

from pathlib import Path

from edgecxr.comparison import PARITY_BOOTSTRAP
from edgecxr.errors import BundleError, DataError, EdgecxrError


def find_bundles(paths) -> list[Path]:
    """Bundle folders (or .zip files) given directly or found one level inside the given folders."""
    found = []
    for p in map(Path, paths):
        if (p / "manifest.json").is_file() or p.suffix.lower() == ".zip":
            found.append(p)
        elif p.is_dir():
            found += sorted(c for c in p.iterdir() if (c / "manifest.json").is_file() or c.suffix.lower() == ".zip")
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


def rank(bundles, data, *, tolerances=None, runs: int = 100, warmup: int = 10, threads=None, progress=None,
         trusted_key=None, n_boot: int = PARITY_BOOTSTRAP) -> dict:
    """{"rows": [...], "choice": row | None, "host": ...}: every bundle's parity here, passing ones timed.
    tolerances: as for run_parity (None or a dict's None values: each bundle's own acceptance criteria)."""
    from edgecxr.devices.bench import run_bench
    from edgecxr.devices.classifier import Classifier
    from edgecxr.cpu import host_info
    from edgecxr.devices.parity import run_parity
    from edgecxr.data import list_site

    list_site(data)  # data no bundle could use: one error now, not one row per bundle
    rows = []
    for path in bundles:
        row = {"bundle": str(path), "target": path.name}
        if progress:
            progress(f"{path.name}: parity and latency")
        try:
            clf = Classifier.load(path, threads=threads, trusted_key=trusted_key)
            row.update(target=clf.bundle.manifest["target"], runtime=f"{clf.runtime['name']} {clf.runtime['version']}",
                       provider=clf.runtime["provider"], size_mb=_model_mb(clf.bundle))
            report = run_parity(clf, data, tolerances=tolerances, n_boot=n_boot)
            row.update(parity=report["passed"], agreement=report["agreement"],
                       recall=(report.get("device") or {}).get("recall"),  # None on a site's unlabeled images
                       new_fn=(report.get("flipped_counts") or {}).get("new_false_negative"),
                       failed=[c["name"] for c in report["checks"] if not c["passed"]],
                       deviations=[d["message"] for d in report["criteria"]["deviations"]])
            if report["passed"]:
                bench = run_bench(clf, data=data, warmup=warmup, runs=runs, cold=False)
                row["p50_ms"], row["p90_ms"] = bench["latency_ms"]["p50"], bench["latency_ms"]["p90"]
        # a bundle exported from other images (DataError), no runtime here, a tampered bundle: a skipped row;
        # data that no bundle can use ends below, in one error naming each bundle's reason
        except (BundleError, EdgecxrError, ImportError, OSError) as exc:
            row.update(parity=None, error=str(exc) if isinstance(exc, EdgecxrError) else f"{type(exc).__name__}: {exc}")
        rows.append(row)
    if all(r.get("parity") is None for r in rows):
        raise EdgecxrError("no bundle could be checked here: " + "; ".join(f"{r['target']}: {r['error'][:120]}" for r in rows))
    passing = sorted((r for r in rows if r.get("parity") and "p50_ms" in r), key=lambda r: r["p50_ms"])
    for i, r in enumerate(passing, 1):
        r["rank"] = i
    return {"rows": rows, "choice": passing[0] if passing else None, "host": host_info(), "data": str(data)}


def format_choice(result: dict) -> str:
    cpu = result["host"]["cpu"]
    lines = [f"on {cpu['model'] or cpu['machine']} ({cpu['int8_path']}), parity against each bundle's float reference:",
             f"{'rank':>4s}  {'target':22s} {'runtime':22s} {'MB':>6s} {'parity':>6s} {'agree':>6s} {'new FN':>6s} "
             f"{'p50 ms':>7s} {'p90 ms':>7s}"]
    order = sorted(result["rows"], key=lambda r: (r.get("rank") or 99, r["target"]))
    for r in order:
        if r.get("parity") is None:
            lines.append(f"{'-':>4s}  {r['target']:22s} skipped: {r['error'][:160]}")
            continue
        timed = f"{r['p50_ms']:7.2f} {r['p90_ms']:7.2f}" if "p50_ms" in r else f"{'-':>7s} {'-':>7s}"
        new_fn = "-" if r["new_fn"] is None else str(r["new_fn"])
        lines.append(f"{r.get('rank', '-')!s:>4s}  {r['target']:22s} {r['runtime']:22s} {r['size_mb']:6.2f} "
                     f"{'pass' if r['parity'] else 'FAIL':>6s} {r['agreement']:6.3f} {new_fn:>6s} {timed}"
                     + (f"  failed: {', '.join(r['failed'])}" if r.get("failed") else ""))
        lines += [f"      DEVIATION: {d}" for d in r.get("deviations") or []]
    c = result["choice"]
    if c is None:
        lines.append("no bundle keeps parity on this device: ship none of them here")
    else:
        fp32 = [r for r in result["rows"] if r.get("p50_ms") and r["target"].endswith("fp32") and r is not c]
        faster = f", {min(fp32, key=lambda r: r['p50_ms'])['p50_ms'] / c['p50_ms']:.1f}x the fastest fp32 bundle" if fp32 else ""
        passing = sum(1 for r in result["rows"] if r.get("parity"))
        same_name = sum(1 for r in result["rows"] if r["target"] == c["target"]) > 1
        where = f" ({c['bundle']})" if same_name else ""
        lines.append(f"ship {c['target']}{where} here: the fastest of "
                     f"{passing} bundle{'s' if passing != 1 else ''} that keep parity on this CPU (p50 {c['p50_ms']:.2f} ms{faster})")
    return "\n".join(lines)
