"""JUnit XML for CI: one test case per check, failures carrying the check's message."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from edgecxr.utils.atomic import write_bytes_atomic


def junit_xml(suite: str, checks: list[dict], *, seconds: float = 0.0, properties: dict | None = None,
              classname: str = "edgecxr.device.parity") -> bytes:
    """checks: dicts with name, passed, message (and optionally value/limit)."""
    failures = sum(1 for c in checks if not c["passed"])
    root = ET.Element("testsuites", name="edgecxr", tests=str(len(checks)), failures=str(failures), errors="0",
                      time=f"{seconds:.3f}")
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(checks)), failures=str(failures), errors="0",
                       skipped="0", time=f"{seconds:.3f}")
    if properties:
        props = ET.SubElement(ts, "properties")
        for key, value in properties.items():
            ET.SubElement(props, "property", name=str(key), value=str(value))
    for c in checks:
        case = ET.SubElement(ts, "testcase", classname=classname, name=c["name"], time="0")
        if not c["passed"]:
            fail = ET.SubElement(case, "failure", message=c["message"], type="ParityCheckFailed")
            fail.text = c["message"]
        else:
            out = ET.SubElement(case, "system-out")
            out.text = c["message"]
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def write_junit(path: Path, suite: str, checks: list[dict], **kw) -> None:
    write_bytes_atomic(Path(path), junit_xml(suite, checks, **kw))


def parity_junit(path: Path, report: dict) -> None:
    """The JUnit file of a parity report."""
    rt, b = report["runtime"], report["bundle"]
    write_junit(path, f"parity {b['target']} {rt['name']}", report["checks"], seconds=report["timing"]["seconds"],
                properties={"target": b["target"], "bundle_sha256": b["sha256"], "runtime": rt["name"],
                            "runtime_version": rt["version"], "provider": rt["provider"], "n": report["n"],
                            "agreement": f"{report['agreement']:.4f}", "passed": report["passed"]})
