"""The format table drives export, the runtime layer, the help texts, the web page and the extras (issue 29)."""
from __future__ import annotations

import ast
from dataclasses import replace as dataclasses_replace
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

    import edgecxr.devices.cli  # noqa: F401  (its help texts are read from the table at import: before the toy rows)
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
    runtime = "|".join(re.escape(r.name) for f in FAMILIES.values() for r in f.runtimes)
    listed = re.compile(rf"\b(?:{runtime}) \| (?:{runtime})\b")  # "litert | tflite-runtime | ..." in a help text
    text_lists = [f"{p.relative_to(REPO)}" for folder in SOURCES for p in sorted((REPO / folder).rglob("*.py"))
                  if listed.search(p.read_text())]
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


def test_an_installed_runtime_that_does_not_import_falls_through_or_is_one_line(monkeypatch, tmp_path):
    """Review of issue 29: the table's lazily loaded opener raising ImportError is a missing dependency, so
    open_session moves on to the family's next runtime, and naming that runtime is a one-line error."""
    import dataclasses

    import numpy as np
    import toy_family

    import edgecxr.runtimes as R
    from edgecxr.formats.targets import RuntimeRow
    from edgecxr.utils.errors import MissingDependencyError

    broken = RuntimeRow("broken-ref", "numpy", "", "installed, does not import", "toy_family:broken_opener")
    family = dataclasses.replace(toy_family.FAMILY, runtimes=(broken, *toy_family.FAMILY.runtimes))
    monkeypatch.setitem(FAMILIES, family.name, family)
    monkeypatch.setattr(R, "RUNTIMES", R._registry())
    model = tmp_path / "model.npz"
    np.savez(model, layers=np.array('[{"kind": "Flatten", "activation": null, "epsilon": null}]'),
             **{"0_0": np.zeros((3, 3, 1, 1))})
    assert R.open_session(model, "npref").runtime == "numpy-ref"
    with pytest.raises(MissingDependencyError, match="runtime broken-ref is installed but does not import"):
        R.open_session(model, "npref", runtime="broken-ref")


@pytest.mark.parametrize("change,named", [
    (lambda f: {"runtimes": ()}, "has no runtime"),
    (lambda f: {"converter": "no colon"}, "is not 'module:name'"),
    (lambda f: {"runtimes": (dataclasses_replace(f.runtimes[0], name="onnxruntime"),)}, "runtime names repeat"),
])
def test_a_broken_family_row_is_refused_before_any_work(monkeypatch, change, named):
    import toy_family

    from edgecxr.formats.targets import resolve_targets
    from edgecxr.utils.errors import ConfigError

    toy_family.add(monkeypatch)
    monkeypatch.setitem(FAMILIES, "npref", dataclasses_replace(toy_family.FAMILY, **change(toy_family.FAMILY)))
    with pytest.raises(ConfigError, match=named):
        resolve_targets(["npref-fp32"])
    monkeypatch.setitem(FAMILIES, "npref", toy_family.FAMILY)
    monkeypatch.delitem(TARGETS, "npref-fp32")
    monkeypatch.setitem(TARGETS, "npref-int8", Target("npref-int8", "npref", "fp32", False, "no fp32 row"))
    with pytest.raises(ConfigError, match="has no npref-fp32 target"):
        resolve_targets(["tflite-fp32"])
