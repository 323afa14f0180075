"""Pruning and quantization-aware training (tensorflow-model-optimization, tf_keras models only)."""
from __future__ import annotations

import gzip
import sys

import numpy as np

from edgecxr.utils.errors import ConfigError, require


def _tfmot():
    return require("tensorflow_model_optimization", "export")


def _targets(labels: np.ndarray, info, out_dim: int, label_smoothing: float = 0.0):
    """Training labels and loss matching the model's own output kind (label smoothing: single-output models)."""
    import tf_keras as keras

    y = labels.astype(np.float32)
    if out_dim == 1:
        return y, keras.losses.BinaryCrossentropy(from_logits=info.output == "logits", label_smoothing=label_smoothing)
    y = y if info.positive_index == 1 else 1 - y
    return y.astype(np.int32), keras.losses.SparseCategoricalCrossentropy(from_logits=info.output == "logits")


def _dataset(tf, x, y, batch_size, seed):
    return (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed)
            .batch(batch_size).prefetch(tf.data.AUTOTUNE))


def _soft_targets(source, x):
    """The float model's own output probabilities (distillation keeps its decisions)."""
    import tf_keras as keras

    raw = np.asarray(source.predict(x), np.float64).reshape(len(x), -1)
    if source.info.output == "logits" and raw.shape[1] == 1:
        raw = 1 / (1 + np.exp(-np.clip(raw, -60, 60)))
    elif source.info.output == "logits":
        z = np.exp(raw - raw.max(axis=1, keepdims=True))
        raw = z / z.sum(axis=1, keepdims=True)
    loss = keras.losses.BinaryCrossentropy(from_logits=source.info.output == "logits") if raw.shape[1] == 1 else \
        keras.losses.CategoricalCrossentropy(from_logits=source.info.output == "logits")
    return raw.astype(np.float32), loss


def _fit(model, source, x, labels, epochs, lr, callbacks=(), seed=0, batch_size=32, distill=False, augment=None,
         label_smoothing=0.0):
    import tensorflow as tf
    import tf_keras as keras

    if distill:
        y, loss = _soft_targets(source, x)
        weights = np.ones(len(x), np.float32)
    else:
        y, loss = _targets(labels, source.info, source.out_dim, label_smoothing)
        counts = np.bincount(labels, minlength=2)
        cw = {i: float(len(labels) / (2 * max(c, 1))) for i, c in enumerate(counts)}
        weights = np.array([cw[int(v)] for v in labels], np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, y, weights)).shuffle(len(x), seed=seed).batch(batch_size)
    if augment is not None and augment.active:
        ds = ds.map(lambda bx, by, bw: (_augmented(tf, bx, augment, source.spec), by, bw),
                    num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss)
    model.fit(ds, epochs=epochs, callbacks=list(callbacks), verbose=2 if not sys.stderr.isatty() else 1)
    return model


def _augmented(tf, x, augment, spec):
    """A batch of model inputs (B, H, W, C) warped as the training stage warps its grey 0..255 images."""
    from edgecxr.training.augment import augment_batch

    grey = (x[..., 0] - np.float32(spec.offset)) / np.float32(spec.scale)
    warped = augment_batch(tf, grey, augment) * np.float32(spec.scale) + np.float32(spec.offset)
    return tf.repeat(warped[..., None], tf.shape(x)[-1], axis=-1)


def require_keras(source, what: str):
    if source.keras_model is None:
        raise ConfigError(f"{what} needs a tf_keras model (tensorflow-model-optimization works only with tf_keras); "
                          f"{source.path} is a {source.flavor} model: export without {what} or re-save it with tf_keras")
    return source.keras_model


def prune(source, x, labels, sparsity: float, epochs: int, *, seed: int = 0, lr: float = 1e-4, distill: bool = False,
          freeze_bn: bool = False, augment=None, label_smoothing: float = 0.0):
    """(stripped pruned tf_keras model, report) after magnitude pruning with polynomial decay and fine-tuning
    (towards the labels, or with distill towards the dense model's own probabilities on the unwarped images).
    freeze_bn: BatchNorm layers run in inference mode while fine-tuning (the dense model's statistics kept);
    augment (a training-stage Augment) warps the fine-tuning batches; label_smoothing applies to the labels."""
    import tensorflow as tf

    tfmot = _tfmot()
    model = require_keras(source, "--prune")
    tf.keras.utils.set_random_seed(seed)
    steps = int(np.ceil(len(x) / 32)) * max(1, epochs)
    end = max(1, int(steps * 0.7))
    schedule = tfmot.sparsity.keras.PolynomialDecay(initial_sparsity=0.0, final_sparsity=sparsity, begin_step=0,
                                                    end_step=end, frequency=max(1, min(100, end // 10)))
    try:
        pruned = wrap_for_pruning(tfmot, model, schedule)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"--prune: this model cannot be pruned by tensorflow-model-optimization ({str(exc)[:200]})") from None
    if freeze_bn:
        freeze_batchnorm(pruned)
    smoothing = label_smoothing if not distill and source.out_dim == 1 else 0.0  # BCE on labels only
    _fit(pruned, source, x, labels, max(1, epochs), lr, [tfmot.sparsity.keras.UpdatePruningStep()], seed, distill=distill,
         augment=augment, label_smoothing=smoothing)
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    return stripped, {"target_sparsity": sparsity, "finetune_epochs": epochs, "finetune_images": int(len(x)),
                      "batchnorm": "frozen (inference mode)" if freeze_bn else "trained",
                      "augmentation": augment.to_dict() if augment is not None and augment.active else None,
                      "label_smoothing": smoothing,
                      "schedule": f"polynomial decay 0 -> {sparsity} over {end} steps",
                      "layers": layer_sparsity(stripped)}


def wrap_for_pruning(tfmot, model, schedule):
    """The model wrapped for magnitude pruning. The fixed anti-aliasing blur (`train --antialias`) stays whole:
    zeroing its smallest taps would leave no blur."""
    from edgecxr.training.models import is_fixed

    if not any(is_fixed(layer) for layer in model.layers):
        return tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
    import tf_keras as keras
    from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import PruneRegistry

    def wrap(layer):  # the same layer object (weights kept) unless it is pruned
        if is_fixed(layer) or not PruneRegistry.supports(layer):
            return layer
        return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)

    return keras.models.clone_model(model, clone_function=wrap)


def freeze_batchnorm(model) -> None:
    """Every BatchNormalization layer (inside prune wrappers too) non-trainable, so that it runs in inference mode."""
    import tf_keras as keras

    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        if isinstance(inner, keras.layers.BatchNormalization):
            inner.trainable = layer.trainable = False


def layer_sparsity(model) -> dict:
    """Share of zero weights in every layer kernel (DepthwiseConv2D kernels are never pruned by tfmot)."""
    out = {}
    for layer in model.submodules if hasattr(model, "submodules") else model.layers:
        kernel = getattr(layer, "kernel", None) if not hasattr(layer, "depthwise_kernel") else layer.depthwise_kernel
        if kernel is not None and hasattr(kernel, "numpy"):
            w = kernel.numpy()
            out[layer.name] = {"sparsity": round(float(np.mean(w == 0)), 4), "weights": int(w.size)}
    return out


def qat(model, source, x, labels, epochs: int, *, pruned: bool, seed: int = 0, lr: float = 1e-5, distill: bool = False):
    """Quantization-aware fine-tuning; with pruning, the pruning-preserving scheme keeps the zeros.

    Trains on the labels (class-weighted). distill=True trains on the float model's own
    probabilities instead (every output, equal weights), so the int8 model learns the float
    model's decisions rather than the labels; which variant keeps parity is measured per model
    (benchmarks/results/pqat-choice-2026-12-02).
    """
    import tensorflow as tf

    tfmot = _tfmot()
    tf.keras.utils.set_random_seed(seed)
    q = tfmot.quantization.keras
    try:
        if pruned:
            annotated = q.quantize_annotate_model(model)
            qmodel = q.quantize_apply(annotated, tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme())
        else:
            qmodel = q.quantize_model(model)
    except (ValueError, RuntimeError, TypeError, AttributeError) as exc:  # AttributeError: TFOpLambda ops (hard-swish)
        raise ConfigError(f"--qat: tensorflow-model-optimization cannot quantize this model "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    return _fit(qmodel, source, x, labels, max(1, epochs), lr, seed=seed, distill=distill)


def gzip_size(path) -> int:
    with open(path, "rb") as fh:
        return len(gzip.compress(fh.read(), 9))
