"""Options declared once: the shared options live in edgecxr/options.py, train/export/benchmark build theirs from
their typed configs (the defaults live in the config), and `--config FILE` feeds train and export."""
import dataclasses
import json
import re
import sys

import pytest
from click.testing import CliRunner

from edgecxr.cli import main
from edgecxr.options import option_default, option_specs

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def _commands():
    from edgecxr.bench.config import BenchConfig
    from edgecxr.bench.run import benchmark
    from edgecxr.export.cli import export
    from edgecxr.export.config import ExportConfig
    from edgecxr.training.cli import train
    from edgecxr.training.train import TrainConfig

    return [(train, TrainConfig), (export, ExportConfig), (benchmark, BenchConfig)]


@pytest.mark.parametrize("command,cls", _commands(), ids=["train", "export", "benchmark"])
def test_every_option_default_is_its_config_field_default(command, cls):
    params = {p.name: p for p in command.params}
    defaults = {}  # field -> default, a nested config's fields (ModelOverrides, Tolerances) flattened
    for f in dataclasses.fields(cls):
        value = f.default_factory() if f.default is dataclasses.MISSING else f.default
        defaults.update({g.name: getattr(value, g.name) for g in dataclasses.fields(value)}
                        if dataclasses.is_dataclass(value) else {f.name: value})
    specs = list(option_specs(cls))
    assert len(specs) > 15 and {name for _, name, _, _ in specs} <= set(params)
    for _, name, spec, _ in specs:
        param, default = params[name], option_default(params[name])
        if param.required:
            continue  # --data: no default on either side that matters
        if spec["unset"]:  # no default of its own: the config's applies when not given
            assert default in (None, ()), name
            continue
        if param.is_flag:
            default = bool(default)  # a plain flag is off unless given
        elif default is not None and spec["to_config"] is not None:
            default = spec["to_config"](default)
        assert default == defaults[name] and type(default) is type(defaults[name]), name


def test_the_parity_limits_come_from_tolerances():
    from edgecxr.bench.config import BenchConfig
    from edgecxr.export.config import ExportConfig
    from edgecxr.parity.criteria import Tolerances

    assert ExportConfig().min_agreement == BenchConfig().tolerances.min_agreement == Tolerances().min_agreement
    sources = [p for d in ("edgecxr", "training", "export", "bench", "devices", "reports") for p in (REPO / d).rglob("*.py")]
    default = re.compile(r"(=\s*|default=)0\.98\b")  # a default written down, not an example in a message
    written = [p.relative_to(REPO).as_posix() for p in sources if default.search(p.read_text())]
    assert written == ["edgecxr/parity/criteria.py"], written


def test_shared_options_are_declared_once():
    declared = re.compile(r'option\(\s*"--(classes|strict|min-agreement|max-recall-drop|max-accuracy-drop)"')
    found = {}
    for folder in ("edgecxr", "training", "export", "bench", "devices", "reports"):
        for path in (REPO / folder).rglob("*.py"):
            for flag in declared.findall(path.read_text()):
                found.setdefault(flag, []).append(path.relative_to(REPO).as_posix())
    assert found == {f: ["edgecxr/options.py"] for f in ("classes", "strict", "min-agreement", "max-recall-drop",
                                                          "max-accuracy-drop")}


@pytest.fixture
def captured_train(monkeypatch):
    import edgecxr.training.train as T

    seen = {}
    monkeypatch.setattr(T, "train", lambda cfg, out, overwrite=False: seen.update(cfg=cfg, out=out, overwrite=overwrite))
    return seen


def test_train_config_file_sets_values_and_the_command_line_wins(tmp_path, sample, captured_train):
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'data = "{sample}"\nout = "{tmp_path / "run"}"\narch = "tiny_cnn"\nepochs = 4\nbatch-size = 8\n'
                   'lr = 0.01\nlung_crop = true\nclasses = ["NORMAL", "PNEUMONIA"]\nloss = "focal"\n')
    r = CliRunner().invoke(main, ["train", "--config", str(cfg), "--epochs", "2", "--no-lung-crop", "--overwrite"])
    assert r.exit_code == 0, r.output
    got = captured_train["cfg"]
    assert (got.arch, got.epochs, got.batch_size, got.lr, got.lung_crop, got.loss) == ("tiny_cnn", 2, 8, 0.01, False,
                                                                                         "focal")
    assert got.data == str(sample) and got.classes == ("NORMAL", "PNEUMONIA") and got.patience == 8
    assert captured_train["out"] == tmp_path / "run" and captured_train["overwrite"]


def test_a_runs_recorded_config_reproduces_it(tmp_path, sample, captured_train):
    """What train writes to RUN/config.json, given back as --config (with --out), is the same configuration."""
    from edgecxr.training.train import TrainConfig

    original = TrainConfig(arch="tiny_cnn", data=str(sample), epochs=2, batch_size=8, augment="none", swa=1,
                           target_recall=0.95, classes=("NORMAL", "PNEUMONIA"), extra={"note": "x"})
    recorded = tmp_path / "config.json"
    recorded.write_text(json.dumps(dataclasses.asdict(original), indent=2, default=list) + "\n")  # as train writes it
    r = CliRunner().invoke(main, ["train", "--config", str(recorded), "--out", str(tmp_path / "again")])
    assert r.exit_code == 0, r.output
    assert captured_train["cfg"] == original


@pytest.mark.parametrize("text,named", [("epoch = 3\n", "unknown key 'epoch' (did you mean 'epochs'?)"),
                                        ("epochs = 'three'\n", "epochs: expected an integer, got 'three'"),
                                        ("epochs = 2.5\n", "epochs: expected an integer"),
                                        ("lung-crop = 1\n", "lung-crop: expected true or false"),
                                        ("loss = 'l2'\n", "loss: 'l2' is not one of"),
                                        ("extra = 3\n", "extra: expected dict")])
def test_a_bad_config_key_or_value_is_one_line_naming_it(tmp_path, sample, captured_train, text, named):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    r = CliRunner().invoke(main, ["train", "--config", str(cfg), "--data", str(sample), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and named in r.output and r.output.count("\n") == 1, r.output
    assert "cfg" not in captured_train


def test_export_config_file_nested_overrides_and_dashed_names(tmp_path, sample, monkeypatch):
    import edgecxr.export as E
    from edgecxr.export.config import ExportConfig
    from edgecxr.export.loading import ModelOverrides

    seen = {}
    monkeypatch.setattr(E, "export_model", lambda model, targets, data, out, config: seen.update(
        targets=targets, data=data, config=config) or [])
    cfg = tmp_path / "export.json"
    cfg.write_text(json.dumps({"target": ["tflite-int8"], "data": str(sample), "calib-count": 24, "min_agreement": 0.9,
                               "overrides": {"scale": 0.5, "channels": 3}, "output": "softmax", "twin": False}))
    r = CliRunner().invoke(main, ["export", "--config", str(cfg), "--out", str(tmp_path / "b"), "--calib-count", "12"])
    assert r.exit_code == 0, r.output
    assert seen["targets"] == ("tflite-int8",) and str(seen["data"]) == str(sample)
    assert seen["config"] == ExportConfig(calib_count=12, min_agreement=0.9, twin=False,
                                          overrides=ModelOverrides(scale=0.5, channels=3, output="softmax"))


def test_yaml_without_pyyaml_says_what_to_install(tmp_path, sample, captured_train, monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml", None)  # as if not installed
    cfg = tmp_path / "run.yaml"
    cfg.write_text("epochs: 2\n")
    r = CliRunner().invoke(main, ["train", "--config", str(cfg), "--data", str(sample), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "pip install pyyaml" in r.output and r.output.count("\n") == 1, r.output


def test_the_functions_take_a_config_or_its_fields_as_keywords():
    from edgecxr.bench.config import BenchConfig
    from edgecxr.options import configured
    from edgecxr.parity.criteria import Tolerances

    assert configured(BenchConfig, None, {"runs": 3}) == BenchConfig(runs=3)
    assert configured(BenchConfig, BenchConfig(runs=3), {"tolerances": Tolerances(0.1, 0.1, 0.9)}).runs == 3
    with pytest.raises(TypeError, match="'epochs'"):
        configured(BenchConfig, None, {"epochs": 3})


@pytest.mark.parametrize("name,text,named", [
    ("dup.toml", "epochs = 3\nbatch-size = 8\nbatch_size = 16\n", "set twice"),
    ("dup.json", '{"epochs": 3, "epochs": 7}', "key 'epochs' given twice"),
    ("flag.toml", "in_memory = true\n", "give --in-memory on the command line"),
    ("keys.yaml", "1: 2\n", "is not a name"),
    ("deep.json", "[" * 100000 + "]" * 100000, "not valid JSON"),
    ("bom.toml", "\ufeffepochs = 3\nepoch = 1\n", "unknown key 'epoch'"),
    ("when.yaml", "extra: {when: 2024-01-01}\n", "extra: must be plain JSON values, got datetime.date"),
    ("laughs.yaml", "extra:\n  a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"  a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]\n"
        for i in range(1, 9)) + "arch: *a8\n", "more than 10,000 values"),
])
def test_a_hostile_config_file_is_one_line(tmp_path, sample, captured_train, name, text, named):
    """Duplicates, a flag a file cannot undo, non-string keys, deep nesting, a BOM, non-JSON extras and an alias
    bomb: one line, exit 2, before anything runs (review of issue 29)."""
    cfg = tmp_path / name
    cfg.write_text(text, encoding="utf-8")
    r = CliRunner().invoke(main, ["train", "--config", str(cfg), "--data", str(sample), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and named in r.output and r.output.count("\n") == 1 and len(r.output) < 600, r.output[:600]
    assert "cfg" not in captured_train


def test_a_config_that_is_not_a_small_regular_file_is_refused(tmp_path, sample, captured_train):
    import os

    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    big = tmp_path / "big.json"
    big.write_text('{"arch": "' + "x" * (2 << 20) + '"}')
    for path, named in ((fifo, "not a regular file"), (big, "larger than")):
        r = CliRunner().invoke(main, ["train", "--config", str(path), "--data", str(sample), "--out", str(tmp_path / "o")])
        assert r.exit_code == 2 and named in r.output and r.output.count("\n") == 1, r.output[:300]


def test_a_recursive_yaml_override_table_is_refused(tmp_path, sample, monkeypatch):
    import edgecxr.export as E

    monkeypatch.setattr(E, "export_model", lambda *a, **k: pytest.fail("export ran"))
    cfg = tmp_path / "rec.yaml"
    cfg.write_text(f"target: onnx-fp32\ndata: {sample}\nout: {tmp_path / 'o'}\noverrides: &o\n  scale: 0.5\n  overrides: *o\n")
    r = CliRunner().invoke(main, ["export", "--config", str(cfg)])
    assert r.exit_code == 2 and "at the top level" in r.output and r.output.count("\n") == 1, r.output[:300]
