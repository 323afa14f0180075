"""The verdict: check records and the one rule that turns them into `passed`.

Every gate judges here: the export gate (validation and export parity), device parity (one run, shards merged,
choose), stability, the benchmark and the evidence report. A check record is
{"name", "value", "limit", "passed", "message"} (comparison helpers may add keys, e.g. "status"); a verdict is
True when every check passed, False when one failed, None when nothing decides (a stability run without a limit,
an evidence report without a parity result). No NumPy here.
"""
from __future__ import annotations


def check(name, value, limit, passed, message) -> dict:
    """A check record; `passed`: the condition the caller computed (at_most / at_least compute theirs)."""
    return {"name": name, "value": float(value), "limit": float(limit), "passed": bool(passed), "message": message}


def _record(name, value, limit, ok, message) -> dict:
    return check(name, value, limit, ok, message(ok) if callable(message) else message)


def at_most(name, value, limit, message, *, eps: float) -> dict:
    """Passed when value <= limit + eps. message: a string, or a function of the outcome giving one."""
    return _record(name, value, limit, value <= limit + eps, message)


def at_least(name, value, limit, message, *, eps: float) -> dict:
    """Passed when value >= limit - eps. message: a string, or a function of the outcome giving one."""
    return _record(name, value, limit, value >= limit - eps, message)


def verdict(checks, *, decided: bool = True) -> bool | None:
    """True when every check (any record with "passed") passed, False when one did not; None when not decided,
    or when there is no check at all (nothing was measured: not a pass)."""
    checks = list(checks)
    if not decided or not checks:
        return None
    return all(c.get("passed") for c in checks)


def judge(report: dict, checks: list | None = None, *, also=(), decided: bool = True) -> dict:
    """Write report["checks"] (when checks are given) and report["passed"]: the verdict of its checks and of
    `also`, check records that decide without being listed (the export gate's predicted test agreement)."""
    if checks is not None:
        report["checks"] = checks
    report["passed"] = verdict([*report.get("checks", ()), *also], decided=decided)
    return report


def judge_benchmark(result: dict, failures: list, missing: list = ()) -> dict:
    """The benchmark's verdict: False when a row failed parity (bench.run.parity_failures lists them), None when
    none failed but a row could not run for a missing extra (not measured, the command exits 2), else True."""
    result["passed"] = False if failures else None if missing else True
    return result
