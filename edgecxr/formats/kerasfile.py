"""Open a Keras model file safely (.keras from tf_keras or Keras 3, .h5, a Keras SavedModel): its config is
read and checked for code (Lambda layers, unknown classes, oversized or deeply nested configs) before
anything is deserialized. Training, evaluation and export all load models through here; TensorFlow is
imported only when a model is really loaded.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from edgecxr.utils.errors import ModelError, first_line, require

TRUST_HINT = "pass --trust-model only if you trust its author (it runs code stored in the file)"
MAX_CONFIG = 64 << 20  # a .keras config.json: MobileNetV2's is a few hundred KB
# Classes that run code stored in the file or look functions up by name (TFOpLambda: any tf.* function,
# tf.io.write_file too), or load another program (TFSMLayer: a SavedModel). Refused without --trust-model.
CODE_CLASSES = {"Lambda", "TFOpLambda", "SlicingOpLambda", "TFSMLayer", "JaxLayer", "FlaxLayer", "TorchModuleWrapper",
                "__lambda__", "__python_function__"}
# Besides the public classes of Keras' layer/initializer/... modules: the model classes and the markers of
# plain data in Keras 3 configs (tensors, tuples, slices), never code.
KERAS_EXTRAS = {"Functional", "Sequential", "Model", "__keras_tensor__", "__tensor__", "__numpy__", "__tuple__",
                "__slice__", "__ellipsis__", "__bytes__"}
# TensorFlow functions a TFOpLambda may name: elementwise arithmetic, no code (tf_keras writes `x + 3` and `x * (1/6)`
# in MobileNetV3's hard-swish this way); any other function, or any other code class, is refused
PURE_TF_OPS = {"__operators__.add", "__operators__.sub", "__operators__.mul", "__operators__.truediv",
               "math.add", "math.subtract", "math.multiply", "math.truediv", "math.divide", "math.negative",
               "nn.relu", "nn.relu6", "math.sigmoid", "math.maximum", "math.minimum"}
SAFE_MODULES = ("keras", "tf_keras")  # a Keras 3 config's "module" is imported by the loader: only Keras' own
DEEP = "the model config is nested too deeply to be a model (a damaged or hostile file); refusing it"


def import_tf():
    """(tensorflow, tf_keras), quietly, or a clear error naming the extra to install. tf_keras, because
    tensorflow-model-optimization works only with it: TF_USE_LEGACY_KERAS=1 before TensorFlow starts."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    return require("tensorflow", "train"), require("tf_keras", "train")


def _no_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:  # a text search and the loader could then read different values
        raise ValueError(f"key {twice[0]!r} appears twice in one object")
    return dict(pairs)


def _read_entry(zf: zipfile.ZipFile, name: str, path: Path) -> bytes:
    """A member of a .keras archive, refused from its header above MAX_CONFIG (1.5 MB inflating to 1.6 GB)."""
    size = zf.getinfo(name).file_size  # zipfile never inflates more than this
    if size > MAX_CONFIG:
        raise ModelError(f"{path}: its {name} inflates to {size / 2**20:,.0f} MB, above the {MAX_CONFIG >> 20} MB "
                         "a model config needs; refusing it")
    return zf.read(name)


def _config(path: Path):
    """The parsed model config of a .keras or .h5 file (None for a SavedModel folder)."""
    if path.is_dir():
        return None
    if path.suffix == ".keras":
        try:
            with zipfile.ZipFile(path) as zf:
                text = _read_entry(zf, "config.json", path).decode()
        except (zipfile.BadZipFile, KeyError, UnicodeDecodeError) as exc:
            raise ModelError(f"{path}: not a valid .keras archive ({exc})") from None
    else:
        h5py = require("h5py", "export")
        try:
            with h5py.File(path, "r") as fh:
                text = fh.attrs.get("model_config", "")
        except OSError as exc:
            raise ModelError(f"{path}: not a readable HDF5 model ({exc})") from None
        text = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
        if not text:
            raise ModelError(f"{path}: the HDF5 file holds no model config (weights only?); pass a full model")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except ValueError as exc:
        raise ModelError(f"{path}: the model config is not valid JSON ({exc}); {TRUST_HINT}") from None
    except RecursionError:  # [[[[... 200k levels deep
        raise ModelError(f"{path}: {DEEP}") from None


def _keras_version(path: Path) -> str:
    if path.suffix == ".keras":
        try:
            with zipfile.ZipFile(path) as zf:
                return str(json.loads(_read_entry(zf, "metadata.json", path)).get("keras_version", ""))
        except (KeyError, ValueError, AttributeError, RecursionError, zipfile.BadZipFile):
            return ""
    if path.suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(path, "r") as fh:
            v = fh.attrs.get("keras_version", "")
        return v.decode() if isinstance(v, bytes) else str(v)
    return ""


def _builtin_classes(keras3: bool) -> set:
    """Names of the classes Keras itself defines for model configs (layers, initializers, regularizers, ...)."""
    import importlib

    from edgecxr.utils.quiet import import_tensorflow

    import_tensorflow()  # quietly, before Keras imports it
    root = "keras" if keras3 else "tf_keras"
    names = set()
    for sub in ("layers", "initializers", "regularizers", "constraints", "mixed_precision", "dtype_policies"):
        try:
            module = importlib.import_module(f"{root}.{sub}")
        except ImportError:
            continue
        names |= {n for n in dir(module) if isinstance(getattr(module, n, None), type)}
    return (names | KERAS_EXTRAS) - CODE_CLASSES


def _pure_op(entry: dict) -> bool:
    body = entry.get("config")
    module = entry.get("module")
    return (isinstance(body, dict) and body.get("function") in PURE_TF_OPS and entry.get("registered_name") in (None, "TFOpLambda")
            and (module is None or (isinstance(module, str) and module.split(".")[0] == "tf_keras")))


def unsafe_entries(config, allowed: set, where: str = "config"):
    """Yield (place, reason) for every object of `config` that would run code or is not Keras' own."""
    if isinstance(config, list):
        for i, item in enumerate(config):
            yield from unsafe_entries(item, allowed, f"{where}[{i}]")
        return
    if not isinstance(config, dict):
        return
    name = config.get("class_name")
    if name is not None:
        module, registered = config.get("module"), config.get("registered_name")
        label = config.get("config", {}).get("name") if isinstance(config.get("config"), dict) else None
        place = f"{where} ({name}{' ' + repr(label) if label else ''})"
        if name == "TFOpLambda" and _pure_op(config):
            pass  # a named elementwise TensorFlow op, called with the layer's own inputs
        elif not isinstance(name, str) or name in CODE_CLASSES:
            yield place, f"{name!r} runs code stored in the file"
        elif name == "function":  # a Keras 3 function reference: only Keras' own activations
            if not (isinstance(module, str) and module.split(".")[0] in SAFE_MODULES and "activations" in module):
                yield place, f"a function from module {module!r}"
        elif name not in allowed:
            yield place, f"{name!r} is not a built-in Keras class (custom code)"
        elif module is not None and not (isinstance(module, str) and module.split(".")[0] in SAFE_MODULES):
            yield place, f"module {module!r} is not Keras"
        elif registered not in (None, name):
            yield place, f"registered custom class {registered!r}"
    for key, value in config.items():
        # the model's own compile_config is never deserialized (every load here uses compile=False); a nested
        # model's is (Keras 3 compiles it from its config): walked like the rest
        if key != "compile_config" or where != "config":
            yield from unsafe_entries(value, allowed, f"{where}.{key}")


def check_safe(path: Path, trust: bool) -> None:
    """Refuse, before anything is deserialized, a model whose loading or running would run code from the file.

    A SavedModel folder is a TensorFlow program (its graph may hold any op, file writes too): trusted only.
    A .keras or .h5 config is parsed and every object in it walked: only built-in Keras classes pass.
    """
    path = Path(path)
    if trust:
        return
    if path.is_dir():
        raise ModelError(f"{path}: a SavedModel is a TensorFlow program (loading and exporting it runs its graph, "
                         f"which can read and write files); save the model as .keras, or {TRUST_HINT}")
    config = _config(path)
    keras3 = _keras_version(path).startswith("3.")
    try:
        for place, reason in unsafe_entries(config, _builtin_classes(keras3)):
            raise ModelError(f"{path}: {reason} at {place}; refusing to load it; {TRUST_HINT}")
    except RecursionError:  # parsed, but too deep to walk
        raise ModelError(f"{path}: {DEEP}") from None


# -- loading --------------------------------------------------------------------
def _safe_scope(trust: bool):
    """tf_keras's safe mode around every load (its legacy .h5 loader takes no safe_mode argument)."""
    try:
        from tf_keras.src.saving.serialization_lib import SafeModeScope
    except ImportError:  # a tf_keras without it: the config walk above still refuses code
        import contextlib

        return contextlib.nullcontext()
    return SafeModeScope(not trust)


def _load_keras(path: Path, trust: bool):
    """(model, flavor) for .keras / .h5 files."""
    version = _keras_version(path)
    try:
        if version.startswith("3."):
            keras3 = require("keras", "export")
            return keras3.saving.load_model(str(path), compile=False, safe_mode=not trust), "keras3"
        import tf_keras

        with _safe_scope(trust):
            return tf_keras.models.load_model(str(path), compile=False), "tf_keras"
    except ModelError:
        raise
    except Exception as exc:
        msg = first_line(exc)
        if "lambda" in msg.lower() or "safe_mode" in msg:
            raise ModelError(f"{path}: unsafe model content ({msg}); {TRUST_HINT}") from None
        raise ModelError(f"{path}: cannot load the model ({msg})") from None


def load_keras(path, trust: bool = False):
    """(model, flavor) of a .keras, .h5 or (trusted) Keras SavedModel, checked before anything is deserialized."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model {path} not found; pass --model PATH to a .keras, .h5 or SavedModel")
    check_safe(path, trust)
    if not path.is_dir():
        return _load_keras(path, trust)
    import tf_keras

    try:
        with _safe_scope(trust):
            model = tf_keras.models.load_model(str(path), compile=False)
    except Exception as exc:
        model = exc
    if not isinstance(model, tf_keras.Model):  # a plain tf.Module SavedModel loads as a bare object
        why = first_line(model) if isinstance(model, Exception) else f"it holds a {type(model).__name__}"
        raise ModelError(f"{path}: cannot load the SavedModel as a Keras model ({why}); "
                         "`edgecxr export` reads other SavedModels")
    return model, "tf_keras"
