"""One home for the verdict: edgecxr.parity.verdict turns checks into `passed`; no other module assigns one."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("edgecxr", "export", "devices", "bench", "training", "reports")
HOME = ROOT / "edgecxr" / "parity" / "verdict.py"

# what assigning a verdict looks like: report["passed"] = ..., passed = all(...), {"passed": all(...)},
# passed=all(...), a check record built by hand ({"passed": bool(...)}), passed = passed and ...
ASSIGNS = [
    re.compile(r"""\[\s*["']passed["']\s*\]\s*=(?!=)"""),
    re.compile(r"""\bpassed\s*=\s*all\s*\("""),
    re.compile(r"""["']passed["']\s*:\s*all\s*\("""),
    re.compile(r"""["']passed["']\s*:\s*bool\s*\("""),
    re.compile(r"""\bpassed\s*=\s*passed\s+and\b"""),
]


def _sources():
    for stage in STAGES:
        for path in sorted((ROOT / stage).rglob("*.py")):
            if path != HOME and ".venv" not in path.parts:
                yield path


def test_no_module_but_verdict_assigns_a_verdict():
    found = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
             for path in _sources()
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if not line.lstrip().startswith("#") and any(p.search(line) for p in ASSIGNS)]
    assert not found, "a verdict assigned outside edgecxr/parity/verdict.py:\n" + "\n".join(found)


def _c(passed):
    return {"name": "x", "value": 0.0, "limit": 0.0, "passed": passed, "message": "m"}


def test_verdict_all_pass_one_fails_and_undecided():
    from edgecxr.parity.verdict import verdict

    assert verdict([_c(True), _c(True)]) is True
    assert verdict([]) is None  # nothing was measured: not a pass
    assert verdict([_c(True), _c(False), _c(True)]) is False
    assert verdict([_c(False)], decided=False) is None
    assert verdict([{"passed": True}, {}]) is False  # a record without a verdict never passes


def test_judge_writes_checks_then_passed_and_counts_unlisted_conditions():
    from edgecxr.parity.verdict import at_least, judge

    report = judge({"n": 3}, [_c(True)])
    assert list(report) == ["n", "checks", "passed"] and report["passed"] is True
    extra = at_least("predicted", 0.5, 0.9, "m", eps=1e-9)
    assert judge({"n": 3}, [_c(True)], also=[extra])["passed"] is False
    assert judge({"n": 3, "checks": [_c(True)]})["passed"] is True  # re-judged from its own checks
    undecided = judge({"n": 3}, also=[], decided=False)
    assert undecided == {"n": 3, "passed": None}  # no "checks" key added


def test_at_most_and_at_least_keep_their_epsilons():
    from edgecxr.parity.verdict import at_least, at_most, check

    assert check("a", 1, 2, 0, "m") == {"name": "a", "value": 1.0, "limit": 2.0, "passed": False, "message": "m"}
    assert at_most("d", 0.01 + 5e-10, 0.01, "m", eps=1e-9)["passed"] is True
    assert at_most("d", 0.01 + 5e-10, 0.01, "m", eps=1e-12)["passed"] is False
    assert at_least("g", 0.98 - 5e-10, 0.98, "m", eps=1e-9)["passed"] is True
    assert at_least("g", 0.98 - 5e-10, 0.98, "m", eps=1e-12)["passed"] is False
    said = at_least("c", 0.5, 1.0, lambda ok: "shown" if ok else "NOT shown", eps=1e-12)
    assert said["message"] == "NOT shown" and said["passed"] is False


def test_stability_gate_is_tri_state():
    from edgecxr.devices.stability import stability_check
    from edgecxr.parity.verdict import judge

    def report(limit):
        r = {"device": {"unstable": 0.02, "unstable_n": 2, "n": 100}, "max_unstable": limit}
        gate = [] if limit is None else [stability_check(r)]
        return judge(r, also=gate, decided=bool(gate))

    assert report(None)["passed"] is None
    assert report(0.02)["passed"] is True and report(0.01)["passed"] is False
    assert stability_check(report(0.01))["message"] == "2 of 100 images (0.0200) flip under some input variant (allowed 0.01)"


def test_evidence_and_benchmark_verdicts():
    from edgecxr.parity.verdict import judge_benchmark
    from edgecxr.reports.evidence import verdict as evidence_verdict

    assert evidence_verdict([], [])["passed"] is None
    assert evidence_verdict([{"passed": True, "checks": [_c(True)]}], [])["text"] == "PASSED"
    failed = evidence_verdict([{"passed": True, "checks": []}, {"passed": False, "checks": [_c(False)]}], [])
    assert failed["passed"] is False and failed["text"] == "FAILED"
    assert judge_benchmark({}, [])["passed"] is True and judge_benchmark({}, [{"target": "t"}])["passed"] is False
    skipped = {"target": "onnx-int8", "missing_extra": True}  # not measured here: neither a pass nor a parity loss
    assert judge_benchmark({}, [], [skipped])["passed"] is None
    assert judge_benchmark({}, [{"target": "t"}], [skipped])["passed"] is False


def test_comparison_checks_decide_the_report():
    import numpy as np
    from edgecxr.parity.comparison import compare_unlabeled

    probs = np.linspace(0.05, 0.95, 50)
    same = compare_unlabeled([f"{i}.png" for i in range(50)], probs, probs, 0.5)
    assert same["passed"] is True and list(same)[-2:] == ["checks", "passed"]
    moved = compare_unlabeled([f"{i}.png" for i in range(50)], probs, probs - 0.2, 0.5)
    assert moved["passed"] is False and [c["passed"] for c in moved["checks"]] == [False, False]
