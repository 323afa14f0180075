"""Load a float model safely (.keras from tf_keras or Keras 3, .h5, SavedModel) and describe it.

Every flavour ends as one `tf.function` with a fixed input signature, which all
converters read, and a `ModelInfo` (spec, labels, threshold, output kind).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edgecxr.formats.bundle import sha256_file
from edgecxr.utils.errors import ConfigError, ModelError, require
from edgecxr.formats.modelinfo import ModelInfo, load_info
from edgecxr.data.preprocess import PreprocessSpec
from edgecxr.formats.kerasfile import check_safe, _safe_scope, _load_keras, TRUST_HINT



@dataclass
class ModelOverrides:
    """Flags describing a model not made by edgecxr (None: keep the sidecar's or infer)."""

    input_size: int | None = None
    scale: float | None = None
    offset: float | None = None
    channels: int | None = None
    output: str | None = None
    positive_index: int | None = None
    threshold: float | None = None
    labels: tuple | None = None

    def any(self) -> bool:
        return any(v is not None for v in vars(self).values())


@dataclass
class SourceModel:
    path: Path
    sha256: str
    flavor: str  # "tf_keras" | "keras3" | "savedmodel"
    info: ModelInfo
    fn: object  # tf.function: float32 (N, H, W, C) -> raw output (N, K)
    trackable: object  # owner of the variables (for the TFLite converter)
    out_dim: int
    keras_model: object | None = None  # a tf_keras model (needed by prune / QAT)
    notes: list = field(default_factory=list)

    @property
    def spec(self) -> PreprocessSpec:
        return self.info.preprocess

    def predict(self, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
        outs = [np.asarray(self.fn(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]
        return np.concatenate(outs).reshape(len(x), -1).astype(np.float64)


def _keras_fn(tf, model, shape):
    @tf.function(input_signature=[tf.TensorSpec([None, *shape], tf.float32, name="input")])
    def fn(x):
        y = model(x, training=False)
        if isinstance(y, (list, tuple, dict)):
            raise ModelError("the model has several outputs; export needs one output (sigmoid or two classes)")
        return tf.cast(y, tf.float32)

    return fn


def _check_keras_io(path: Path, model) -> tuple:
    inputs = model.inputs if hasattr(model, "inputs") else None
    if not inputs:
        raise ModelError(f"{path}: the model has no defined input (subclassed model?); save it as a functional model")
    if len(inputs) != 1:
        raise ModelError(f"{path}: the model has {len(inputs)} inputs; export needs a single image input")
    if len(model.outputs) != 1:
        raise ModelError(f"{path}: the model has {len(model.outputs)} outputs; export needs one output (sigmoid or two classes)")
    in_shape = tuple(inputs[0].shape)[1:]
    out_shape = tuple(model.outputs[0].shape)
    return in_shape, out_shape


def _load_savedmodel(tf, path: Path, trust: bool):
    """A SavedModel folder: tf_keras if it was saved by Keras (so prune/QAT work), else its serving signature."""
    if (path / "keras_metadata.pb").exists():
        try:
            import tf_keras

            with _safe_scope(trust):
                model = tf_keras.models.load_model(str(path), compile=False)
            return model, "tf_keras", None
        except Exception as exc:  # fall back to the plain signature
            print(f"note: {path} did not load as a tf_keras model ({str(exc)[:120]}); using its serving signature", file=sys.stderr)
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        raise ModelError(f"{path}: cannot load the SavedModel ({str(exc).splitlines()[0][:300]})") from None
    sigs = getattr(loaded, "signatures", {})
    if "serving_default" not in sigs:
        raise ModelError(f"{path}: the SavedModel has no 'serving_default' signature; export it with one")
    return loaded, "savedmodel", sigs["serving_default"]


def _signature_fn(tf, path: Path, sig, shape_override):
    inputs = sig.structured_input_signature[1]
    outputs = sig.structured_outputs
    if len(inputs) != 1:
        raise ModelError(f"{path}: the model has {len(inputs)} inputs; export needs a single image input")
    if len(outputs) != 1:
        raise ModelError(f"{path}: the model has {len(outputs)} outputs; export needs one output (sigmoid or two classes)")
    (in_name, in_spec), = inputs.items()
    (out_name, out_spec), = outputs.items()
    in_shape = tuple(in_spec.shape)[1:]
    if shape_override:
        in_shape = shape_override

    @tf.function(input_signature=[tf.TensorSpec([None, *in_shape], tf.float32, name="input")])
    def fn(x):
        return tf.cast(sig(**{in_name: tf.cast(x, in_spec.dtype)})[out_name], tf.float32)

    return fn, in_shape, tuple(out_spec.shape)


def _resolve_info(path: Path, in_shape, out_dim: int, flags: ModelOverrides) -> tuple[ModelInfo, list]:
    notes = []
    info = load_info(path)
    if info is None:
        missing = [n for n in ("scale", "offset") if getattr(flags, n) is None]
        if missing:
            raise ConfigError(f"{path} is not an edgecxr model (no {path.with_suffix('.json').name} beside it); "
                              f"describe its input with --scale and --offset (input = pixel * scale + offset), "
                              f"and --input-size/--channels/--output/--positive-index if they cannot be inferred")
        size = flags.input_size or (in_shape[0] if in_shape and in_shape[0] else None)
        if size is None:
            raise ConfigError(f"{path}: the model accepts any input size; pass --input-size")
        channels = flags.channels or (in_shape[2] if len(in_shape) == 3 and in_shape[2] else 3)
        kind = flags.output or ("sigmoid" if out_dim == 1 else "softmax")
        pos = flags.positive_index if flags.positive_index is not None else (0 if out_dim == 1 else 1)
        if flags.output is None or flags.positive_index is None:
            notes.append(f"assumed output {kind}, positive index {pos} (set --output/--positive-index otherwise)")
        info = ModelInfo(preprocess=PreprocessSpec(size=int(size), channels=int(channels), scale=float(flags.scale),
                                                   offset=float(flags.offset)),
                         output=kind, positive_index=int(pos), threshold=0.5, threshold_method="default 0.5 (external model)")
    else:
        spec_changes = {k: v for k, v in (("size", flags.input_size), ("scale", flags.scale),
                                          ("offset", flags.offset), ("channels", flags.channels)) if v is not None}
        if spec_changes:
            notes.append(f"flags override the model's saved spec: {spec_changes}")
            info = replace(info, preprocess=replace(info.preprocess, **spec_changes))
        if flags.output is not None:
            info = replace(info, output=flags.output)
        if flags.positive_index is not None:
            info = replace(info, positive_index=flags.positive_index)
    if flags.threshold is not None:
        info = replace(info, threshold=float(flags.threshold), threshold_method="given by --threshold")
    if flags.labels is not None:
        info = replace(info, labels=tuple(flags.labels))
    return info, notes


def check_output(path: Path, info: ModelInfo, out_shape) -> int:
    if len(out_shape) != 2 or out_shape[-1] not in (1, 2):
        raise ModelError(f"{path}: output shape {tuple(out_shape)} is neither one sigmoid unit (N, 1) nor two classes (N, 2)")
    out_dim = int(out_shape[-1])
    if info.output == "sigmoid" and out_dim != 1:
        raise ModelError(f"{path}: output kind 'sigmoid' needs one output unit, the model has {out_dim}; pass --output softmax or logits")
    if info.output == "softmax" and out_dim != 2:
        raise ModelError(f"{path}: output kind 'softmax' needs two outputs, the model has {out_dim}; pass --output sigmoid or logits")
    if not 0 <= info.positive_index < out_dim:
        raise ModelError(f"{path}: --positive-index {info.positive_index} is out of range for {out_dim} output(s)")
    return out_dim


def load_source(path, flags: ModelOverrides | None = None, *, trust: bool = False) -> SourceModel:
    """Load and check a float model; raises ModelError/ConfigError with one clear line."""
    flags = flags or ModelOverrides()
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: model not found; pass --model PATH (.keras, .h5 or a SavedModel folder)")
    if path.is_file() and path.suffix not in (".keras", ".h5", ".hdf5"):
        raise ModelError(f"{path}: unsupported model file; pass a .keras or .h5 file or a SavedModel folder")
    if path.is_dir() and not (path / "saved_model.pb").exists():
        raise ModelError(f"{path}: a folder without saved_model.pb is not a SavedModel")
    check_safe(path, trust)
    require("tf_keras", "export")
    tf = require("tensorflow", "export")
    sig = None
    if path.is_dir():
        model, flavor, sig = _load_savedmodel(tf, path, trust)
    else:
        model, flavor = _load_keras(path, trust)
    if sig is None:
        in_shape, out_shape = _check_keras_io(path, model)
        if flavor == "tf_keras":
            _check_layers(path, model, trust)
    else:
        fn0, in_shape, out_shape = _signature_fn(tf, path, sig, None)
    if len(out_shape) != 2 or out_shape[-1] not in (1, 2):
        check_output(path, ModelInfo(PreprocessSpec()), out_shape)
    info, notes = _resolve_info(path, in_shape, int(out_shape[-1]), flags)
    out_dim = check_output(path, info, out_shape)
    spec = info.preprocess
    want = spec.input_shape
    if len(in_shape) != 3 or any(a is not None and a != b for a, b in zip(in_shape, want)):
        raise ModelError(f"{path}: model input {tuple(in_shape)} does not match the spec {want}; "
                         f"set --input-size/--channels to what the model expects")
    if sig is None:
        fn = _keras_fn(tf, model, want)
    else:
        fn, _, _ = _signature_fn(tf, path, sig, want)
    return SourceModel(path=path, sha256=_model_hash(path), flavor=flavor, info=info, fn=fn, trackable=model,
                       out_dim=out_dim, keras_model=model if flavor == "tf_keras" else None, notes=notes)


def _check_layers(path: Path, model, trust: bool) -> None:
    if trust:
        return
    for layer in model.submodules if hasattr(model, "submodules") else model.layers:
        if type(layer).__name__ == "Lambda":
            raise ModelError(f"{path}: the model contains a Lambda layer ({layer.name}); refusing it; {TRUST_HINT}")


def _model_hash(path: Path) -> str:
    if path.is_file():
        return sha256_file(path)
    import hashlib

    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(path).as_posix().encode() + b"\0" + sha256_file(p).encode() + b"\n")
    return h.hexdigest()


def keras_source(model, base: SourceModel, note: str) -> SourceModel:
    """A SourceModel for a transformed tf_keras model (pruned), keeping the original's info and hash."""
    from edgecxr.formats.kerasfile import import_tf

    tf, _ = import_tf()
    return replace(base, fn=_keras_fn(tf, model, base.spec.input_shape), trackable=model, keras_model=model,
                   notes=[*base.notes, note])
