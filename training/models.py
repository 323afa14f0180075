"""Model registry: every architecture edgecxr trains, each with its default input spec."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgecxr.utils.errors import ConfigError, ModelError
from edgecxr.data.preprocess import PreprocessSpec
from edgecxr.training import import_tf


@dataclass(frozen=True)
class ModelEntry:
    name: str
    build_base: Callable  # (keras, input_shape, weights, **options) -> base model or full model
    spec: PreprocessSpec  # default input spec (size and scaling the architecture expects)
    head: str = "light"  # "light", "resnet" (dense 128 head) or "none" (builder returns the full model)
    tiny: bool = False
    options: tuple = ()  # allowed keyword options, e.g. ("alpha",)


MODELS: dict[str, ModelEntry] = {}
MINUS_ONE_TO_ONE = dict(scale=1 / 127.5, offset=-1.0)


def register(name, *, size, head="light", tiny=False, options=(), **spec):
    def wrap(fn):
        MODELS[name] = ModelEntry(name, fn, PreprocessSpec(size=size, **(spec or MINUS_ONE_TO_ONE)), head, tiny, tuple(options))
        return fn

    return wrap


def _app(keras, cls_name, input_shape, weights, **kw):
    cls = getattr(keras.applications, cls_name)
    return cls(input_shape=input_shape, include_top=False, weights=weights, pooling="avg", **kw)


@register("mobilenet", size=224, options=("alpha",))
def _mobilenet(keras, input_shape, weights, alpha=1.0):
    return _app(keras, "MobileNet", input_shape, weights, alpha=alpha)


@register("mobilenet_v2", size=224, options=("alpha",))
def _mobilenet_v2(keras, input_shape, weights, alpha=1.0):
    return _app(keras, "MobileNetV2", input_shape, weights, alpha=alpha)


@register("mobilenet_v3_small", size=224, options=("alpha",))
def _mobilenet_v3_small(keras, input_shape, weights, alpha=1.0):
    return _app(keras, "MobileNetV3Small", input_shape, weights, alpha=alpha, include_preprocessing=False)


@register("mobilenet_v3_large", size=224, options=("alpha",))
def _mobilenet_v3_large(keras, input_shape, weights, alpha=1.0):
    return _app(keras, "MobileNetV3Large", input_shape, weights, alpha=alpha, include_preprocessing=False)


# ResNet50's ImageNet weights expect caffe-style inputs: pixel minus the mean (~114 for gray).
@register("resnet50", size=224, head="resnet", scale=1.0, offset=-114.8)
def _resnet50(keras, input_shape, weights):
    return _app(keras, "ResNet50", input_shape, weights)


def _small_cnn(keras, input_shape, filters, dense, dropout):
    layers = keras.layers
    x = inputs = keras.Input(input_shape)
    for i, f in enumerate(filters):
        x = layers.Conv2D(f, 3, padding="same", activation="relu")(x)
        x = layers.BatchNormalization()(x)
        x = layers.MaxPooling2D(2, padding="same")(x)
        if i >= 2 and dropout:
            x = layers.Dropout(dropout)(x)
    x = layers.Flatten()(x)
    for d in dense:
        x = layers.Dense(d, activation="relu")(x)
        x = layers.Dropout(0.2)(x)
    return keras.Model(inputs, layers.Dense(1, activation="sigmoid", name="prob")(x))


# The small sequential CNN of the literature (150 px, 32/64/64/128/256 filters).
@register("cxr_cnn", size=150, head="none", scale=1 / 255.0, offset=0.0)
def _cxr_cnn(keras, input_shape, weights):
    return _small_cnn(keras, input_shape, (32, 64, 64, 128, 256), (128,), 0.2)


# Tiny models for tests: registered and built exactly like the real ones.
@register("tiny_cnn", size=32, head="none", tiny=True, scale=1 / 255.0, offset=0.0)
def _tiny_cnn(keras, input_shape, weights):
    return _small_cnn(keras, input_shape, (4, 8), (8,), 0.0)


@register("tiny_mobilenet_v2", size=48, tiny=True, options=("alpha",))
def _tiny_mobilenet_v2(keras, input_shape, weights, alpha=0.35):
    return _app(keras, "MobileNetV2", input_shape, weights, alpha=alpha)


def get_entry(name: str) -> ModelEntry:
    if name not in MODELS:
        raise ConfigError(f"unknown architecture {name!r}; valid: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def _add_head(keras, base, head: str):
    layers = keras.layers
    x = base.output
    if head == "resnet":
        x = layers.Dropout(0.5)(x)
        x = layers.Dense(128, activation="relu")(x)
        x = layers.Dropout(0.3)(x)
    else:
        x = layers.Dropout(0.2)(x)
    out = layers.Dense(1, activation="sigmoid", name="prob", dtype="float32")(x)
    return keras.Model(base.input, out, name=base.name)


def _build_base(keras, entry, input_shape, weights, options):
    try:
        return entry.build_base(keras, input_shape, weights, **options)
    except Exception as exc:  # a refused download surfaces as many exception types
        if weights == "imagenet" and any(k in str(exc).lower() for k in ("fetch", "url", "http", "connection", "resolve", "network")):
            raise ModelError(
                "could not download ImageNet weights (no internet?); download them on another machine "
                "and pass --weights PATH to the .h5 file, or train from scratch with --weights none"
            ) from None
        if weights == "imagenet":
            raise ModelError(f"ImageNet weights are not available for {entry.name} at {input_shape}: {exc}") from None
        raise


def build_model(name: str, *, size: int | None = None, channels: int = 3, weights: str = "none",
                bn_momentum: float | None = 0.9, antialias: bool = False, whole: bool = False, **options):
    """Build a registered model with a single sigmoid output (anti-aliased after the weights are loaded, with
    `antialias`; a file of an anti-aliased model loads too).

    weights: "none" (from scratch), "imagenet" (downloaded by Keras) or a path to a
    weights file saved by Keras (full model, or base network only; `whole`: the full model only).
    Returns (model, base); base is the pretrained part that fine-tuning freezes.
    """
    _, keras = import_tf()
    entry = get_entry(name)
    unknown = set(options) - set(entry.options)
    if unknown:
        raise ConfigError(f"{name} has no option(s) {sorted(unknown)}; valid: {list(entry.options) or 'none'}")
    input_shape = (size or entry.spec.size, size or entry.spec.size, channels)
    path = None if weights in ("none", "imagenet", None) else Path(weights)
    if path is not None and not path.exists():
        raise ModelError(f"weights file {path} not found; pass --weights none|imagenet|PATH")
    if weights == "imagenet" and entry.head == "none":
        raise ModelError(f"{name} has no ImageNet weights; use --weights none or a weights file")
    base = _build_base(keras, entry, input_shape, "imagenet" if weights == "imagenet" else None, options)
    model = base if entry.head == "none" else _add_head(keras, base, entry.head)
    if path is not None:
        try:
            _load_weights(model, base, path, whole)
        except ModelError:
            if not antialias:
                raise
            model, base = _antialiased(keras, model, base)  # the file may hold an anti-aliased model
            _load_weights(model, base, path, whole)
            antialias = False
    if weights == "none" and bn_momentum is not None:
        # Keras applications use momentum 0.99/0.999: from scratch on ~150 steps per epoch the
        # moving statistics lag far behind and validation output is constant (see DESIGN.md).
        for layer in model.submodules if hasattr(model, "submodules") else model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = bn_momentum
    if antialias:
        model, base = _antialiased(keras, model, base)
    return model, base


def _antialiased(keras, model, base):
    """(model, base) anti-aliased; the new base is the new model up to the old base's last layer."""
    new = antialias(keras, model)
    if base is model:
        return new, new
    return new, keras.Model(new.input, new.get_layer(base.layers[-1].name).output, name=base.name)


def _load_weights(model, base, path: Path, whole: bool = False):
    errors = []
    for target in (model,) if whole else (model, base):
        try:
            target.load_weights(str(path))
            return
        except Exception as exc:  # shape or layer-count mismatch: try the base network
            errors.append(str(exc).splitlines()[0][:200])
    if whole:
        raise ModelError(f"weights file {path} is not a whole {model.name} model ({errors[-1]}); --epochs 0 and "
                         "--head-epochs 0 keep the file's own head: pass a model trained with this --arch")
    raise ModelError(f"weights file {path} fits neither the full {model.name} model nor its base ({errors[-1]})")


def antialias(keras, model):
    """The same model with every stride-2 convolution anti-aliased (Zhang, "Making convolutional networks
    shift-invariant again", 2019): the convolution runs at stride 1 and a fixed 3x3 binomial blur after its
    activation does the subsampling. Weights are copied; the blur is a frozen DepthwiseConv2D, so the file needs
    no custom code. A functional model of single-call layers (the registry's)."""
    graph = _graph(keras, model)
    after: dict[str, list[str]] = {}
    for name, inputs, _ in graph:
        for source in inputs:
            after.setdefault(source, []).append(name)
    strided = [layer.name for layer in model.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))
               and tuple(layer.strides) == (2, 2)]
    pads = {name for name, _, _ in graph if isinstance(model.get_layer(name), keras.layers.ZeroPadding2D)
            and len(after.get(name, [])) == 1 and after[name][0] in strided}
    blur_after = {_activation_after(keras, model, after, name) for name in strided}
    tensors = {}
    for name, inputs, kwargs in graph:
        layer = model.get_layer(name)
        if not inputs:
            tensors[name] = keras.Input(batch_shape=layer.get_config()["batch_input_shape"], name=name)
            continue
        args = [tensors[source] for source in inputs]
        out = tensors[name] = args[0] if name in pads else \
            _strided_to_one(layer, name in strided)(args if len(args) > 1 else args[0], **kwargs)
        if name in blur_after:
            tensors[name] = _blur(keras, out, name + BLUR_SUFFIX)
    new = keras.Model(tensors[graph[0][0]], tensors[graph[-1][0]], name=model.name)
    for layer in new.layers:
        if layer.name in tensors and not is_fixed(layer) and layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return new


def _graph(keras, model) -> list[tuple[str, list[str], dict]]:
    """(layer name, input layer names, call keyword arguments) in order; a shared layer or a nested model is refused:
    the rewrite reads one call per layer."""
    graph = []
    for entry in model.get_config()["layers"]:
        name, nodes = entry["config"]["name"], entry["inbound_nodes"]
        if nodes and isinstance(nodes[0][0], str):  # a TF-op layer lists its one call's inputs without the node level
            nodes = [nodes]
        if len(nodes) > 1 or isinstance(model.get_layer(name), keras.Model):
            raise ModelError(f"--antialias cannot rewrite {model.name}: layer {name} is shared or a nested model; "
                             "use a registry architecture")
        calls = nodes[0] if nodes else []
        graph.append((name, [c[0] for c in calls], dict(calls[0][3]) if calls and len(calls[0]) > 3 else {}))
    return graph


BLUR_SUFFIX = "_blur"  # the anti-aliasing blur layers' names: the activation's name + this


def is_fixed(layer) -> bool:
    """The anti-aliasing blur: never trained (fine-tuning that unfreezes a whole base must freeze it again)."""
    return layer.name.endswith(BLUR_SUFFIX)


def _strided_to_one(layer, strided: bool):
    """A fresh copy of `layer` (stride 1, padding "same" when `strided`)."""
    config = layer.get_config()
    if strided:
        config.update(strides=(1, 1), padding="same")
    return layer.__class__.from_config(config)


def _activation_after(keras, model, after, name: str) -> str:
    """The activation of conv -> BatchNorm -> activation starting at layer `name` (the conv itself when none)."""
    current = name
    for _ in range(2):
        nxt = after.get(current, [])
        if len(nxt) != 1:
            break
        current = nxt[0]
        if isinstance(model.get_layer(current), (keras.layers.ReLU, keras.layers.Activation)):
            return current
    return name


def _blur(keras, x, name: str):
    import numpy as np

    blur = keras.layers.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False, trainable=False, name=name)
    out = blur(x)
    taps = np.outer([1, 2, 1], [1, 2, 1]).astype(np.float32) / 16
    blur.set_weights([np.repeat(taps[:, :, None, None], int(x.shape[-1]), axis=2)])
    return out
