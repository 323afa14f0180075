"""The format table drives export, the runtime layer, the help texts, the web page and the extras (issue 29)."""
from __future__ import annotations

import ast
import json
import re
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgecxr.formats.targets import FAMILIES, TARGETS, Target

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("edgecxr", "training", "export", "devices", "bench", "reports")


def test_a_family_added_through_the_table_alone_exports_and_passes_device_parity(tiny_model, kermany, tmp_path,
                                                                                 monkeypatch):
    import toy_family

    from edgecxr.cli import main
    from edgecxr.export import export_model

    toy_family.add(monkeypatch)
    [folder] = export_model(tiny_model, ["npref-fp32"], kermany, tmp_path / "bundles")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (manifest["target"], manifest["runtime"], manifest["model_file"]) == ("npref-fp32", "numpy-ref", "model.npz")
    parity = manifest["optimization"]["export_parity"]
    assert parity["passed"] and parity["agreement"] > 0.99, parity  # numpy computes what Keras does
    out = tmp_path / "parity.json"
    done = CliRunner().invoke(main, ["device", "parity", str(folder), "--data", str(kermany), "--json", str(out)])
    assert done.exit_code == 0, done.output
    report = json.loads(out.read_text())
    assert report["passed"] and report["n"] == 624 and report["runtime"]["name"] == "numpy-ref", report["runtime"]


def test_a_target_whose_precision_its_family_does_not_implement_is_refused(monkeypatch, tmp_path):
    from edgecxr.export.build import build
    from edgecxr.formats.targets import resolve_targets
    from edgecxr.utils.errors import ConfigError

    bad = Target("onnx-fp16", "onnx", "fp16", False, "an fp16 row the ONNX converter does not write")
    monkeypatch.setitem(TARGETS, bad.name, bad)
    with pytest.raises(ConfigError, match="onnx converter writes fp32, int8, not fp16"):
        resolve_targets(["tflite-fp32"])
    with pytest.raises(ConfigError, match="not fp16"):
        build(bad, ctx=None, folder=tmp_path)


def _family_literals(path: Path):
    """Literal tuples/lists/sets/dict keys naming two or more families: a family list written out."""
    names = set(FAMILIES)
    for node in ast.walk(ast.parse(path.read_text())):
        items = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", None) if isinstance(
            node, (ast.Tuple, ast.List, ast.Set)) else None
        found = {n.value for n in items or () if isinstance(n, ast.Constant) and n.value in names}
        if len(found) >= 2:
            yield f"{path.relative_to(REPO)}:{node.lineno}"


def test_no_family_list_outside_the_table():
    found = [hit for folder in SOURCES for path in sorted((REPO / folder).rglob("*.py"))
             if path != REPO / "edgecxr/formats/targets.py" for hit in _family_literals(path)]
    text_lists = [f"{p.relative_to(REPO)}" for folder in SOURCES for p in sorted((REPO / folder).rglob("*.py"))
                  if re.search(r"tflite \| onnx|TFLite, ONNX Runtime and OpenVINO\b.*\|", p.read_text())]
    assert not found and not text_lists, found + text_lists


def test_help_texts_and_extras_come_from_the_table():
    from edgecxr.cli import main

    device_help = CliRunner().invoke(main, ["device", "parity", "-h"], terminal_width=400).output
    for family in FAMILIES.values():
        for runtime in family.runtimes:
            assert runtime.name in device_help
        for device in family.devices:
            assert device in device_help
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for family in FAMILIES.values():
        for runtime in family.runtimes:
            dist = runtime.module.split(".")[0].replace("_", "-")
            assert any(req.startswith(dist) for req in extras[runtime.extra]), (runtime.name, runtime.extra)
