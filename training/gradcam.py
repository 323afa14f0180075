"""Grad-CAM for float tf_keras models (Selvaraju et al. 2017).

The map is ReLU(sum_k w_k A_k) on the last convolutional layer (taken after its
batch norm and activation, e.g. MobileNetV2's ``out_relu``), w_k the mean
gradient of the score over the feature map A_k, normalised to 0..1 and resized
to the model input. The last convolutional layer is found automatically, also
inside a nested base model (e.g. ``Model(inputs, head(base(inputs)))``).

    model = load_model("run/model.keras")
    heat, prob = gradcam(model, x)               # x: one preprocessed input (H, W, C)
    rgb = edgecxr.occlusion.overlay(spec.to_pixels(img), heat)  # colour map over the X-ray
"""
from __future__ import annotations

import numpy as np

from edgecxr.occlusion import resize_map
from edgecxr.utils.errors import ModelError
from edgecxr.training import import_tf

CONV_TYPES = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose")
# Element-wise layers that finish a conv block: the map is taken after them (conv -> BN -> ReLU),
# since a BatchNormalization with a negative scale would otherwise flip the sign of the evidence.
FOLLOWERS = ("BatchNormalization", "Activation", "ReLU", "LeakyReLU", "PReLU", "ELU")


def _is_model(layer) -> bool:
    return hasattr(layer, "layers") and hasattr(layer, "inputs") and bool(layer.layers)


def _block_end(model, index: int) -> str:
    """The last layer of the conv block starting at model.layers[index] (conv, then BN/activation)."""
    layers, i = model.layers, index
    while i + 1 < len(layers) and type(layers[i + 1]).__name__ in FOLLOWERS:
        try:
            if layers[i + 1].input is not layers[i].output:
                break
        except (AttributeError, ValueError):  # a layer called more than once
            break
        i += 1
    return layers[i].name


def find_conv_layer(model) -> list[str]:
    """Names from the outer model down to its last convolutional block (searching nested models)."""
    for index in range(len(model.layers) - 1, -1, -1):
        layer = model.layers[index]
        if _is_model(layer):
            try:
                return [layer.name, *find_conv_layer(layer)]
            except ModelError:
                continue
        if type(layer).__name__ in CONV_TYPES:
            return [_block_end(model, index)]
    raise ModelError(f"{model.name}: no convolutional layer found; Grad-CAM needs a CNN (use --method occlusion)")


def _forward(tf, keras, model, x, path: list[str]):
    """Run `model` on x, returning (activation of the layer at `path`, model output)."""
    if len(path) == 1:
        return keras.Model(model.inputs, [model.get_layer(path[0]).output, model.output])(x, training=False)
    # The layer sits inside a nested model: replay the outer graph node by node.
    inner = model.get_layer(path[0])
    values = {id(t): v for t, v in zip(model.inputs, [x])}
    feat = None
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.is_input:
                continue
            args = tf.nest.map_structure(lambda t: values.get(id(t), t), node.call_args)
            kwargs = tf.nest.map_structure(lambda t: values.get(id(t), t), node.call_kwargs)
            kwargs.pop("training", None)
            if node.layer is inner:
                feat, out = _forward(tf, keras, inner, args[0], path[1:])
            else:
                out = node.layer(*args, training=False, **kwargs)
            for t, v in zip(tf.nest.flatten(node.outputs), tf.nest.flatten(out)):
                values[id(t)] = v
    return feat, values[id(model.outputs[0])]


def gradcam(model, x: np.ndarray, *, layer: list[str] | str | None = None, positive_index: int = 0,
            threshold: float | None = 0.5) -> tuple[np.ndarray, float]:
    """(map (H, W) in 0..1 at the input size, probability of the positive class).

    With a threshold the map explains the model's decision (evidence for pneumonia
    when p >= threshold, evidence against it otherwise); threshold=None always
    explains the positive class.
    """
    maps, probs = gradcam_batch(model, np.asarray(x)[None], layer=layer, positive_index=positive_index, threshold=threshold)
    return maps[0], float(probs[0])


def gradcam_batch(model, xs: np.ndarray, *, layer: list[str] | str | None = None, positive_index: int = 0,
                  threshold: float | None = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """`gradcam` of a batch of inputs (N, H, W, C) in one pass: (maps (N, H, W), probabilities (N,))."""
    tf, keras = import_tf()
    path = find_conv_layer(model) if layer is None else ([layer] if isinstance(layer, str) else list(layer))
    xs = np.asarray(xs, np.float32)
    batch = tf.convert_to_tensor(xs)
    with tf.GradientTape() as tape:
        feat, out = _forward(tf, keras, model, batch, path)
        out = tf.reshape(out, [len(xs), -1])
        score = out[:, positive_index] if out.shape[-1] > 1 else out[:, 0]
    probs = score.numpy().astype(np.float64)
    grads = tape.gradient(score, feat)  # images are independent (inference mode): d sum / d feat_i = d score_i / d feat_i
    if grads is None:
        raise ModelError(f"layer {'/'.join(path)} does not reach the output; pass another layer")
    sign = np.where(probs < threshold, -1.0, 1.0) if threshold is not None else np.ones(len(xs))
    weights = tf.reduce_mean(grads, axis=(1, 2)) * sign[:, None].astype(np.float32)  # (N, channels)
    cams = tf.nn.relu(tf.reduce_sum(feat * weights[:, None, None, :], axis=-1)).numpy()
    maps = np.stack([np.maximum(resize_map(cam, xs.shape[1:3]), 0) for cam in cams])
    top = maps.max(axis=(1, 2), keepdims=True)
    return np.divide(maps, top, out=np.zeros_like(maps), where=top > 0), probs
