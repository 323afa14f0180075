"""Hardening, round two (issue 12): no code from a model file, no impossible numbers, one line and a
documented exit code for every failure. Small unit tests; the bundle ones copy the tiny model's bundle."""
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgecxr import bundle as B
from edgecxr.errors import BundleError, ConfigError, DataError, ModelError

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
EXTERNAL = {"scale": 1 / 255, "offset": 0.0}


def _cli(*args):
    from click.testing import CliRunner

    from edgecxr.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line(result, code: int) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == code and len(lines) == 1 and lines[0].startswith("error: "), (result.exit_code, result.output)
    return lines[0]


# -- 1. code execution: the config is parsed and walked, a SavedModel is a program ---------------------
@pytest.fixture(scope="module")
def code_models(tmp_path_factory):
    """Models whose code writes a marker file when it runs: a Lambda layer hidden from a text search
    (a unicode escape, other whitespace) in .h5 and .keras, and a SavedModel whose graph writes a file."""
    import h5py
    import tensorflow as tf
    import tf_keras as keras

    folder = tmp_path_factory.mktemp("code")
    marker = folder / "code-ran"

    def fn(t, path=str(marker)):
        open(path, "w").close()
        return t * 2.0

    inp = keras.Input((32, 32, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Lambda(fn)(inp))
    model = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(x))
    paths = {}
    for name, old, new in (("escaped", '"class_name": "Lambda"', '"class_name": "\\u004cambda"'),
                           ("spaced", '"class_name": "Lambda"', '"class_name"  :\t"Lambda"')):
        h5 = paths[f"h5-{name}"] = folder / f"{name}.h5"
        model.save(h5)
        with h5py.File(h5, "r+") as fh:
            text = fh.attrs["model_config"]
            text = text.decode() if isinstance(text, bytes) else text
            assert old in text
            fh.attrs["model_config"] = text.replace(old, new)
        src = folder / f"{name}-src.keras"
        model.save(src)
        dst = paths[f"keras-{name}"] = folder / f"{name}.keras"
        with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
            for item in zin.infolist():
                data = zin.read(item)
                if item.filename == "config.json":
                    data = data.decode().replace(old, new).encode()
                zout.writestr(item, data)

    class Writer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 1], tf.float32)])
        def serve(self, x):
            tf.io.write_file(str(marker), "graph op ran")
            return {"out": tf.reduce_mean(x, axis=[1, 2])}

    writer = Writer()
    paths["savedmodel"] = folder / "writer"
    tf.saved_model.save(writer, str(paths["savedmodel"]), signatures={"serving_default": writer.serve})
    marker.unlink(missing_ok=True)
    return paths, marker


@pytest.mark.parametrize("kind", ["h5-escaped", "h5-spaced", "keras-escaped", "keras-spaced", "savedmodel"])
def test_model_code_never_runs_without_trust(code_models, kind):
    from edgecxr.export import ModelOverrides, load_source
    from edgecxr.training.evaluate import load_model

    paths, marker = code_models
    for load in (lambda: load_model(paths[kind]), lambda: load_source(paths[kind], ModelOverrides(**EXTERNAL))):
        with pytest.raises(ModelError, match="--trust-model") as info:
            load()
        assert "\n" not in str(info.value)
        assert not marker.exists(), f"{kind}: the model's code ran although it was refused"


def test_savedmodel_runs_with_trust(code_models):
    from edgecxr.export import ModelOverrides, load_source

    paths, marker = code_models
    source = load_source(paths["savedmodel"], ModelOverrides(**EXTERNAL), trust=True)
    assert source.out_dim == 1
    marker.unlink(missing_ok=True)


def _rewrite_h5_config(path: Path, change) -> None:
    import h5py

    with h5py.File(path, "r+") as fh:
        text = fh.attrs["model_config"]
        cfg = json.loads(text.decode() if isinstance(text, bytes) else text)
        change(cfg)
        fh.attrs["model_config"] = json.dumps(cfg)


@pytest.fixture(scope="module")
def plain_h5(tmp_path_factory):
    import tf_keras as keras

    inp = keras.Input((32, 32, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(inp))
    path = tmp_path_factory.mktemp("plain") / "plain.h5"
    keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(x)).save(path)
    return path


def _layer(cfg, cls):
    return next(layer for layer in cfg["config"]["layers"] if layer["class_name"] == cls)


@pytest.mark.parametrize("case, expect", [
    ("unknown-class", "MyCustomLayer"),
    ("nested-lambda", "Lambda"),
    ("tf-op", "TFOpLambda"),
    ("duplicate-key", "twice"),
])
def test_model_config_walk(plain_h5, tmp_path, case, expect):
    from edgecxr.export.loading import check_safe

    path = tmp_path / "m.h5"
    shutil.copy(plain_h5, path)
    if case == "unknown-class":
        _rewrite_h5_config(path, lambda c: _layer(c, "Conv2D").update(class_name="MyCustomLayer"))
    elif case == "nested-lambda":  # a Lambda deep inside another layer's config
        _rewrite_h5_config(path, lambda c: _layer(c, "Dense")["config"].update(
            kernel_initializer={"class_name": "Lambda", "config": {"function": "x"}}))
    elif case == "tf-op":  # looks a TensorFlow function up by name: io.write_file is one
        _rewrite_h5_config(path, lambda c: _layer(c, "Conv2D").update(class_name="TFOpLambda"))
    else:
        import h5py

        with h5py.File(path, "r+") as fh:
            text = fh.attrs["model_config"]
            text = text.decode() if isinstance(text, bytes) else text
            fh.attrs["model_config"] = text.replace('"class_name": "Conv2D"', '"class_name": "Conv2D", "class_name": "Lambda"', 1)
    check_safe(plain_h5, trust=False)  # the untouched model is fine
    with pytest.raises(ModelError, match=f"{expect}.*--trust-model") as info:
        check_safe(path, trust=False)
    assert "\n" not in str(info.value)
    check_safe(path, trust=True)


def test_shipped_and_keras3_models_pass_the_walk(tmp_path):
    from edgecxr.export.loading import check_safe
    from edgecxr.modelinfo import default_model_path

    check_safe(default_model_path(), trust=False)
    import subprocess
    import sys

    out = tmp_path / "k3.keras"
    code = ("import keras; i = keras.Input((8, 8, 1)); x = keras.layers.Conv2D(2, 3, activation='relu')(i); "
            "x = keras.layers.GlobalAveragePooling2D()(x); "
            f"keras.Model(i, keras.layers.Dense(2, activation='softmax')(x)).save({str(out)!r})")
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "0"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)
    check_safe(out, trust=False)
