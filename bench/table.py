"""The `edgecxr benchmark` table and its Markdown page, from the result dict of `run_benchmark`."""
from __future__ import annotations


def _f(v, fmt=".3f", none="–"):
    if v is None:
        return none
    if isinstance(v, bool):
        return str(v)
    return format(v, fmt) if isinstance(v, (int, float)) else str(v)


COLUMNS = ("target", "runtime", "size MB", "gz MB", "accuracy", "recall", "specificity", "ROC-AUC", "agreement",
           "new FN", "new FP", "unstable", "p50 ms", "p90 ms", "speedup", "parity", "n", "export s")


def format_table(result: dict) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|---|" + "---:|" * (len(COLUMNS) - 2)]
    fl = result.get("float") or {}
    if "p50_ms" in fl:
        lines.append("| " + " | ".join([
            "keras (float)", fl["runtime"], _f(fl["size_mb"], ".2f"), "–", _f(fl.get("accuracy")), _f(fl.get("recall")),
            _f(fl.get("specificity")), _f(fl.get("roc_auc")), "reference", "–", "–", "–", _f(fl["p50_ms"], ".2f"),
            _f(fl["p90_ms"], ".2f"), "1.00", "–", _f(fl.get("n"), "d"), "–"]) + " |")
    elif fl.get("error"):
        lines.append(f"| keras (float) | error: {fl['error'][:200]} |" + " |" * (len(COLUMNS) - 2))
    for r in result["rows"]:
        if r["error"]:
            msg = r["error"].replace("|", "/")[:300]
            lines.append(f"| {r['target']} | {msg} |" + " |" * (len(COLUMNS) - 3) + " ERROR |")
            continue
        lines.append("| " + " | ".join([
            r["target"], r["runtime"], _f(r["size_mb"], ".2f"), _f(r["size_gz_mb"], ".2f"), _f(r["accuracy"]),
            _f(r["recall"]), _f(r["specificity"]), _f(r["roc_auc"]), _f(r["agreement"]), _f(r["new_fn"], "d"),
            _f(r["new_fp"], "d"), _f(r.get("unstable")), _f(r["p50_ms"], ".2f"), _f(r["p90_ms"], ".2f"), _f(r["speedup"], ".2f"),
            "pass" if r["passed"] else "FAIL", _f(r["n"], "d"),
            _f(r["export_s"], ".1f") + (" (reused)" if r["reused"] else "")]) + " |")
    return "\n".join(lines)


def format_markdown(result: dict) -> str:
    m, d, o = result["machine"], result["data_info"], result["options"]
    fl = result.get("float") or {}
    lines = [
        "# edgecxr benchmark", "",
        f"- model: `{result['model']['path']}` (sha256 {result['model']['sha256'][:12]}), threshold "
        f"{_f(fl.get('threshold'), '.4f')}",
        f"- data: `{d['root']}`, {d['images']} test images" + (f" (--limit {d['limit']} subset)" if d["limit"] else "")
        + (f" of the pooled re-split `{d['split_file']}` (not comparable with the official test set)"
           if d.get("split_file") else "")
        + f", files sha256 {d['files_sha256'][:12]}",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['os']}, Python {m['python']}"
        + (f", {m['board']}" if m.get("board") else "")
        + (f"; int8 path {m['int8_path']} (latency and speed-ups hold for this CPU only: "
           "`edgecxr device choose` ranks the targets on yours)" if m.get("int8_path") else ""),
        f"- threads {o['threads']}, {o['runs']} timed runs per target; created {result.get('created', '')}",
        f"- command: `{result['command']}`", "",
        format_table(result), "",
        "p50/p90: latency of the model call on this device (quantize + runtime call + dequantize, batch 1, real test "
        "images, after warm-up). speedup: float Keras p50 (batch 1, same run, same threads) / device p50. "
        "Metrics at the float model's validation-chosen threshold; agreement: share of identical decisions; "
        "new FN / new FP: decisions the device got newly wrong; unstable: share of test images (a spread subset, "
        "--stability-images) whose decision flips under any ordinary input-path variant (`edgecxr device stability`). "
        "size: the model file(s) of the bundle.",
    ]
    if any("+prune" in r["target"] for r in result["rows"]):
        lines += ["", "+prune rows: decisions at the pruned model's own threshold (re-chosen on validation after "
                  "pruning), parity (agreement, new FN/FP) against the pruned float model, the reference stored in "
                  "their bundle; compare their accuracy/recall/specificity with the float row for the cost of pruning "
                  "itself. +qat rows are compared with the original float model; +prune...+qat rows use "
                  "tensorflow-model-optimization's pruning-preserving QAT scheme."]
    if any(r["target"].endswith("+qat-distill") for r in result["rows"]):
        lines += ["", "+qat-distill rows: quantization-aware training fitted the float model's own probabilities "
                  "(the pruned model's in +prune rows) instead of the labels (`--distill`)."]
        lines += [f"- {r['target']}: {_f(r.get('weight_zeros'), '.1%')} of the int8 convolution and dense weights are "
                  "zero in the bundle (measured in the .tflite file)" for r in result["rows"]
                  if "+prune" in r["target"] and not r["error"] and r.get("weight_zeros") is not None]
    failed = [r for r in result["rows"] if not r["error"] and not r["passed"]]
    if failed:
        lines += ["", "Parity failures:"]
        lines += [f"- {r['target']}: {'; '.join(r['failed_checks'] or [])}" for r in failed]
    errors = [r for r in result["rows"] if r["error"]]
    if errors:
        lines += ["", "Errors:"] + [f"- {r['target']} ({r['stage']}): {r['error']}" for r in errors]
    sc = result.get("scaling")
    if sc:
        from edgecxr.bench import scaling as S

        if sc.get("batch"):
            lines += ["", "## Batch scaling (batch 1, 4, 16; each in a fresh process)", "", S.format_batch_scaling(sc["batch"])]
        if sc.get("batch_error"):
            lines += ["", f"Batch scaling failed: {sc['batch_error']}"]
        if sc.get("architectures"):
            lines += ["", "## Export cost per architecture (untrained weights, calibration on 32 images)", "",
                      S.format_arch_scaling(sc["architectures"], sc["architecture_targets"])]
    return "\n".join(lines) + "\n"
