"""`edgecxr train`: train a registered model on a Kermany-layout folder, honestly."""
from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import numpy as np

from edgecxr.data import folders as D
from edgecxr.options import classes_option, data_option, setting, strict_option
from edgecxr.parity import metrics
from edgecxr.utils.atomic import atomic_dir, check_writable
from edgecxr.utils.errors import ConfigError, DataError, EdgecxrError, ModelError
from edgecxr.formats.modelinfo import ModelInfo, save_info
from edgecxr.data.preprocess import LUNG_CROP, PreprocessSpec
from edgecxr.training import import_tf
from edgecxr.training.augment import Augment, augment_batch, get_preset, nudge
from edgecxr.training.distribute import Backup, distribute, get_strategy, is_chief
from edgecxr.training.models import build_model, get_entry, is_fixed
from edgecxr.training.stream import Inputs


_DISTILL = 0.5  # the teacher's share of each training target (with --teacher)
_VAL_FRACTION = 0.1
_PATH = click.Path(file_okay=False, path_type=Path)


@dataclass
class TrainConfig:
    """The training settings; each field's option is `edgecxr train`'s (in this order): the defaults live here."""

    arch: str = setting("mobilenet_v2", "Architecture (see `edgecxr models`).", show_default=True)
    data: str = setting("", shared=data_option)
    epochs: int = setting(15, "Training epochs (0 with --weights PATH: the loaded model as it is, its threshold "
                                  "chosen on validation).", show_default=True)
    size: int | None = setting(None, "Input size in pixels (default: the architecture's).", type=int)
    batch_size: int = setting(32, show_default=True)
    lr: float = setting(1e-3, "Learning rate (Adam).", show_default=True)
    augment: str = setting("standard", "standard | no-flip | strong | none", show_default=True)
    intensity: float = setting(0.0, "Brightness/contrast/gamma jitter strength.", show_default=True)
    acquisition: float = setting(  # share of training images sent through another acquisition path
        0.0, "Share of training images sent through another acquisition path (resampling, blur/sharpening, "
             "JPEG re-encoding), e.g. 0.5: makes decisions stable across scanners and exports.", show_default=True)
    loss: str = setting("bce", type=click.Choice(["bce", "focal"]), show_default=True)
    mixup: float = setting(0.0, "mixup Beta parameter (e.g. 0.2); 0 = off.", show_default=True)  # Beta(a, a) mixing
    label_smoothing: float = setting(0.0, "Label smoothing of the loss (e.g. 0.1).", show_default=True)
    class_weights: bool = setting(True, secondary=True, show_default=True)
    weights: str = setting("none", "none | imagenet | PATH to a weights file.", show_default=True)
    alpha: float | None = setting(None, "Width multiplier of MobileNet models.", type=float)
    antialias: bool = setting(  # Zhang 2019: blur before every stride-2 subsampling
        False, "Anti-alias every stride-2 convolution (a fixed blur does the subsampling): decisions move less "
               "when the image shifts by a few pixels. With --weights PATH, BatchNorm statistics are re-estimated "
               "on the training images before fine-tuning.", is_flag=True)
    consistency: float = setting(  # weight of the squared logit change under a small shift and zoom
        0.0, "Consistency training: weight of a penalty on how far the logit moves when each training image is "
             "shifted by up to 2 % and magnified by up to 6 % (e.g. 1): decisions move less on the input path. "
             "Each step runs the model three times.",
        show_default=True)
    lung_crop: bool = setting(False, "Fixed lung-region crop.", secondary=True, show_default=True)
    equalize: bool = setting(False, "Histogram equalization.", secondary=True, show_default=True)
    val_fraction: float = setting(_VAL_FRACTION, "Share of train/ held out, grouped by patient (not with --split-file).",
                                  show_default=True)
    split_file: str | None = setting(None, "Reuse the split of an earlier run, or a pooled re-split from `edgecxr split`.",
                                     type=click.Path(exists=True))
    folds: int = setting(0, "K-fold patient-grouped cross-validation instead of one model.")
    patience: int = setting(8, "Early-stopping patience (epochs).", show_default=True)
    head_epochs: int = setting(3, "Frozen-base epochs when weights are pretrained (0: keep the loaded model's head).",
                               show_default=True)
    finetune_layers: int = setting(30, "Base layers unfrozen in phase 2.", show_default=True)
    bn_momentum: float = setting(0.9, "BatchNorm momentum when training from scratch.", show_default=True)
    mixed_precision: bool = setting(False, "float16 compute on a GPU.", is_flag=True)
    swa: int = setting(0, "Average the weights of the last N epochs, then re-estimate BatchNorm statistics on plain "
                          "training images.", show_default=True)
    target_recall: float | None = setting(
        None, "Pick the threshold reaching this validation recall (default: Youden's J).", type=float)
    teacher: str | None = setting(  # an edgecxr model whose probabilities the training targets are mixed with
        None, "Distill from this edgecxr model: each training target mixes the label with the teacher's probability.",
        type=click.Path(exists=True, dir_okay=False, path_type=Path))
    distill: float = setting(_DISTILL, f"With --teacher: the teacher's share of each target (default {_DISTILL:g}).",
                             type=float, unset=True)
    seed: int = setting(0, show_default=True)
    cache: str | None = setting(  # folder for the decoded training images (tf.data cache)
        None, "Folder to cache the decoded training images in (later epochs and runs read them back).", type=_PATH)
    in_memory: bool = setting(  # decode every image into one array first (small sets); default: streamed
        False, "Decode all images into memory before training (small sets; memory grows with the data). "
               "Default: streamed from disk.", is_flag=True)
    backup: bool = setting(  # BackupAndRestore: a restarted run resumes at its last finished epoch
        True, "Back up each epoch; a killed run started again with the same command resumes there.", secondary=True,
        show_default=True)
    backup_dir: str | None = setting(
        None, "Where the backup goes (default: OUT.backup beside the run folder; shared by all workers).", type=_PATH)
    classes: tuple = setting(D.DEFAULT_CLASSES, shared=classes_option, to_config=D.parse_classes)
    strict: bool = setting(False, shared=strict_option)
    extra: dict = field(default_factory=dict)  # recorded in config.json; no option

    def validate(self):
        get_entry(self.arch)
        self._check_numbers()
        get_preset(self.augment, self.intensity, self.acquisition)
        if self.loss not in ("bce", "focal"):
            raise ConfigError(f"unknown loss {self.loss!r}; valid: bce, focal")
        keeps_model = self.weights not in ("none", "imagenet")  # a whole model file: --epochs 0 keeps it as it is
        if self.epochs < (0 if keeps_model else 1) or self.batch_size < 1:
            raise ConfigError("epochs and batch size must be at least 1 (--epochs 0 only with --weights PATH: "
                              "the loaded model as it is, its threshold chosen on validation)")
        if self.head_epochs == 0 and self.weights == "imagenet":
            raise ConfigError("--head-epochs 0 keeps the loaded model's head, and ImageNet weights have none; "
                              "leave --head-epochs at its default")
        if self.epochs == 0 and (self.folds or self.teacher):
            raise ConfigError("--epochs 0 trains nothing: --folds would score the loaded model on images it may have "
                              "trained on, and --teacher would teach nothing; leave them out")
        if self.target_recall is not None and not 0 < self.target_recall <= 1:
            raise ConfigError(f"--target-recall {self.target_recall} must be a recall between 0 and 1, e.g. 0.95")
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"--label-smoothing {self.label_smoothing} must be in [0, 0.5), e.g. 0.1")
        if self.teacher is not None and not Path(self.teacher).is_file():
            raise ConfigError(f"--teacher {self.teacher}: no such model file; pass an edgecxr .keras model")
        if not 0 < self.distill <= 1:
            raise ConfigError(f"--distill {self.distill} must be in (0, 1]: the teacher's share of each target")
        if self.folds and self.split_file:
            raise ConfigError("--folds makes its own patient-grouped folds of train/; leave out --split-file")
        if self.split_file and self.val_fraction != _VAL_FRACTION:  # it would be recorded, and nothing would use it
            raise ConfigError(f"--val-fraction {self.val_fraction:g} is not used with --split-file, whose validation "
                              "images are fixed; leave out one of them")
        if not 0 <= self.swa <= self.epochs:
            raise ConfigError(f"--swa {self.swa} must be between 0 and --epochs ({self.epochs})")
        if not D.is_pooled(self.split_file):  # a wrong --data fails in a second, before TensorFlow starts
            D.list_split(self.data, "train", self.classes)

    def _check_numbers(self):
        """NaN, infinite or out-of-range numbers fail here, not as a NaN model after an hour of training."""
        ranges = {  # flag: (value, lowest, highest, the lowest itself allowed)
            "--lr": (self.lr, 0, None, False), "--bn-momentum": (self.bn_momentum, 0, 1, True),
            "--val-fraction": (self.val_fraction, 0, 1, False), "--patience": (self.patience, 0, None, True),
            "--folds": (self.folds, 0, None, True), "--head-epochs": (self.head_epochs, 0, None, True),
            "--finetune-layers": (self.finetune_layers, 0, None, True), "--intensity": (self.intensity, 0, None, True),
            "--mixup": (self.mixup, 0, None, True), "--alpha": (self.alpha, 0, None, False),
            "--consistency": (self.consistency, 0, None, True)}
        for flag, (value, low, high, low_ok) in ranges.items():
            if value is None:  # a library caller's "not set" (bn_momentum=None keeps Keras' own)
                continue
            try:
                bad = not np.isfinite(value) or value < low or (value == low and not low_ok) or \
                    (high is not None and value >= high)
            except TypeError:  # a string from a library caller
                bad = True
            if bad:
                span = f"{'at least' if low_ok else 'above'} {low}" + (f" and below {high}" if high is not None else "")
                raise ConfigError(f"{flag} {value} must be a number {span}")
        if self.folds == 1:
            raise ConfigError("--folds 1 is one model without a held-out fold; use 0 (one split) or at least 2")

    def spec(self) -> PreprocessSpec:
        base = get_entry(self.arch).spec
        return PreprocessSpec(size=self.size or base.size, channels=3, scale=base.scale, offset=base.offset,
                              crop=LUNG_CROP if self.lung_crop else None, equalize=self.equalize)


def make_dataset(tf, pixels, labels, spec: PreprocessSpec, batch_size: int, aug: Augment | None = None,
                 shuffle: bool = False, seed: int = 0, mixup: float = 0.0, weights: dict | None = None):
    """uint8 pixels (N, H, W) -> batches of model inputs; the same scaling as PreprocessSpec.scale_pixels.
    With `mixup`, batches carry mixed labels and per-image class weights: (x, y, w)."""
    ds = tf.data.Dataset.from_tensor_slices((pixels, labels.astype(np.float32)))
    if shuffle:
        ds = ds.shuffle(len(pixels), seed=seed, reshuffle_each_iteration=True)
    return batch_inputs(tf, ds, spec, batch_size, aug, mixup=mixup, weights=weights)


def batch_inputs(tf, ds, spec: PreprocessSpec, batch_size: int, aug: Augment | None = None, *, mixup: float = 0.0,
                 weights: dict | None = None, with_weights: bool = False):
    """(uint8 pixels (H, W), label) elements -> batches of model inputs. With `with_weights` (or mixup) batches
    carry per-image class weights, (x, y, w): what Keras class_weight does, which distributed datasets lack."""
    ds = ds.batch(batch_size)

    def to_input(x, y):
        x = tf.cast(x, tf.float32)
        if aug is not None:
            x = augment_batch(tf, x, aug)
        x = x * np.float32(spec.scale) + np.float32(spec.offset)
        x = tf.repeat(x[..., None], spec.channels, axis=-1)
        if mixup:
            return _mix(tf, x, y, mixup, weights or {0: 1.0, 1: 1.0})
        if with_weights:
            w = weights or {0: 1.0, 1: 1.0}
            return x, y, y * np.float32(w[1]) + (1 - y) * np.float32(w[0])
        return x, y

    return ds.map(to_input, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _mix(tf, x, y, alpha: float, weights: dict):
    """mixup (Zhang et al. 2018): blend each image with a shuffled partner, labels alike; the class weight
    of a blended image is blended the same way (Keras class_weight only indexes hard labels)."""
    n = tf.shape(x)[0]
    a, b = tf.random.gamma([n], alpha), tf.random.gamma([n], alpha)
    lam = a / (a + b)  # Beta(alpha, alpha)
    partner = tf.random.shuffle(tf.range(n))
    x = lam[:, None, None, None] * x + (1 - lam[:, None, None, None]) * tf.gather(x, partner)
    y = lam * y + (1 - lam) * tf.gather(y, partner)
    return x, y, y * np.float32(weights[1]) + (1 - y) * np.float32(weights[0])


def predict_probs(tf, model, pixels, spec, batch_size=64) -> np.ndarray:
    ds = make_dataset(tf, pixels, np.zeros(len(pixels)), spec, batch_size)
    return model.predict(ds.map(lambda x, y: x), verbose=0).reshape(-1).astype(np.float64)


def recalibrate_bn(tf, keras, model, pixels, spec: PreprocessSpec, batch_size: int = 64) -> int:
    """Precise BatchNorm: set the moving statistics to their average over un-augmented training images.

    Trained with zoom/shift augmentation, the moving averages describe augmented images, but the
    model is only ever run on plain ones. Returns the number of BatchNorm layers updated.
    """
    return _recalibrate(keras, model, (x for x, _ in make_dataset(tf, pixels, np.zeros(len(pixels)), spec, batch_size)))


def _recalibrate(keras, model, batches, every: bool = False) -> int:
    # frozen layers (a pretrained base) run in inference mode and keep their statistics, unless `every`
    layers = [m for m in model.submodules if isinstance(m, keras.layers.BatchNormalization) and (every or m.trainable)]
    saved = [(layer.momentum, layer.trainable) for layer in layers]
    for layer in layers:
        layer.trainable = True
    seen = 0
    for x in batches:
        n = int(x.shape[0])
        for layer in layers:
            layer.momentum = seen / (seen + n)  # running mean over every image seen so far
        model(x, training=True)
        seen += n
    for layer, (momentum, trainable) in zip(layers, saved):
        layer.momentum, layer.trainable = momentum, trainable
    return len(layers)


def class_weights(labels) -> dict:
    counts = np.bincount(labels, minlength=2)
    return {i: float(len(labels) / (2 * max(c, 1))) for i, c in enumerate(counts)}


def _compile(keras, model, cfg: TrainConfig, lr: float):
    if cfg.loss == "focal":
        loss = keras.losses.BinaryFocalCrossentropy(gamma=2.0, label_smoothing=cfg.label_smoothing)
    else:
        loss = keras.losses.BinaryCrossentropy(label_smoothing=cfg.label_smoothing)
    model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss,
                  metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy(name="accuracy"),
                           keras.metrics.Recall(name="recall")])


def _weight_averager(keras, epochs: int, last: int):
    """Callback: average the weights after each of the last `last` epochs and load the average at the end
    (stochastic weight averaging); keeps the best-epoch weights if training stops before the window."""

    class Averager(keras.callbacks.Callback):
        count, total = 0, None

        def on_epoch_end(self, epoch, logs=None):
            if epoch < epochs - last:
                return
            weights = self.model.get_weights()
            self.total = weights if self.total is None else [t + w for t, w in zip(self.total, weights)]
            self.count += 1

        def on_train_end(self, logs=None):
            if self.model.stop_training:  # early stopping restored its best epoch: keep it, not a partial window
                print("weight averaging skipped: training stopped early, the best epoch is kept", file=sys.stderr)
            elif self.count:
                self.model.set_weights([t / self.count for t in self.total])
                print(f"weight averaging: the last {self.count} epochs averaged", file=sys.stderr)

    return Averager()


def consistent(tf, keras, model, weight: float):
    """`model` for training with consistency: its loss adds `weight` times the mean squared change of the logit
    between each image and a nudged copy (`augment.nudge`); it predicts what `model` predicts and shares its
    weights, so training it trains `model`. Both images of the penalty run in inference mode (dropout off,
    BatchNorm's moving statistics), so the penalty measures the image change and not two dropout masks; the
    gradient reaches both. Each training step runs the model three times."""

    class Consistent(keras.Model):
        def __init__(self, inner):
            super().__init__(name=f"{inner.name}_consistent")
            self.inner = inner

        def call(self, x, training=False):
            p = self.inner(x, training=training)
            if training:
                before, after = (_logit(tf, self.inner(v, training=False)) for v in (x, nudge(tf, x)))
                self.add_loss(weight * tf.reduce_mean(tf.square(before - after)))
            return p

    wrapper = Consistent(model)
    wrapper(tf.zeros([1, *model.input_shape[1:]]))  # built before fit: BackupAndRestore restores only a built model
    return wrapper


def _logit(tf, p):
    p = tf.clip_by_value(tf.cast(p, tf.float32), 1e-6, 1 - 1e-6)
    return tf.math.log(p) - tf.math.log1p(-p)


def _fit(tf, keras, model, base, cfg, train_ds, val_ds, backup: Backup | None = None, skipped=None):
    """Train on (dataset, steps or None) pairs (class weights travel in the datasets); with `backup`, each
    phase resumes from its last epoch. `model` may be the consistency wrapper of the model `base` belongs to."""
    verbose = 1 if sys.stderr.isatty() else 2
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience, restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3, patience=2, min_lr=1e-6, verbose=1),
    ]
    if skipped is not None:
        callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: skipped.report()))
    # the averager runs after EarlyStopping has restored its best weights, in the last phase only
    last_phase = [_weight_averager(keras, cfg.epochs, cfg.swa)] if cfg.swa else []
    history: dict[str, list] = {}

    def run(epochs, lr, extra=(), phase="phase1"):
        with model.distribute_strategy.scope():
            _compile(keras, model, cfg, lr)
        every = callbacks + list(extra)
        h = model.fit(train_ds[0], steps_per_epoch=train_ds[1], validation_data=val_ds[0], validation_steps=val_ds[1],
                      epochs=epochs, callbacks=backup.callbacks(keras, phase, every) if backup else every,
                      verbose=verbose)
        done = backup.resumed(phase, h.epoch) if backup else {}
        skipped_epochs = len(next(iter(done.values()), []))
        for k in dict.fromkeys([*done, *h.history]):
            earlier = done.get(k, [float("nan")] * skipped_epochs)
            history.setdefault(k, []).extend(float(x) for x in earlier + list(h.history.get(k, [])))

    if not cfg.epochs:  # --epochs 0 (with --weights): the loaded model as it is, no head epochs either
        return history
    if cfg.weights != "none" and base is not getattr(model, "inner", model):
        base.trainable = False  # phase 1: train the new head on a frozen pretrained base
        if cfg.head_epochs:  # 0: the weights' own head is kept as it is
            run(cfg.head_epochs, cfg.lr)
        base.trainable = True
        for layer in base.layers[: max(0, len(base.layers) - cfg.finetune_layers)]:
            layer.trainable = False
        for layer in base.layers:
            if isinstance(layer, keras.layers.BatchNormalization) or is_fixed(layer):
                layer.trainable = False  # the anti-aliasing blur stays a blur
        run(cfg.epochs, cfg.lr / 10, last_phase, "phase2")  # phase 2: fine-tune the last layers
    else:
        run(cfg.epochs, cfg.lr, last_phase)
    return history


def _save_inference_model(keras, model, path: Path) -> None:
    """Save weights and graph without the optimizer state (which would triple the file)."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    clone.save(path)


def _write_history(history: dict, path: Path) -> None:
    keys = list(history)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["epoch", *keys])
        for i in range(len(history[keys[0]]) if keys else 0):
            writer.writerow([i + 1, *(history[k][i] for k in keys)])


def _train_one(tf, keras, cfg, spec, train, val, strategy, backup: Backup | None = None):
    """Train on `train`, pick the threshold on `val`; returns (model, (y_val, val_probs, kept_val), threshold,
    val_metrics, history). Images are streamed from disk (or loaded first, --in-memory)."""
    inputs = Inputs(tf, spec, strict=cfg.strict, seed=cfg.seed, cache=cfg.cache, in_memory=cfg.in_memory)
    labels = np.array([s.label for s in train], np.int32)
    print(f"train: {len(train)} images ({int(labels.sum())} positive), validation: {len(val)} "
          f"({sum(s.label for s in val)} positive), {len({s.patient for s in val})} patients", file=sys.stderr)
    aug = get_preset(cfg.augment, cfg.intensity, cfg.acquisition)
    weights = class_weights(labels) if cfg.class_weights else None

    soft = teacher_probs(tf, cfg.teacher, train) if cfg.teacher else None
    if cfg.teacher:
        _warn_teacher_trained_on(cfg.teacher, val)

    def train_batches(shard, batch):  # with mixup or class weights the dataset carries the weights
        elements = inputs.elements(train, "train", shuffle=True, shard=shard)
        pairs = _xy(elements) if soft is None else _distilled(tf, elements, soft, shard, cfg.distill)
        return batch_inputs(tf, pairs, spec, batch, aug, mixup=cfg.mixup, weights=weights,
                            with_weights=weights is not None)

    def val_batches(shard, batch):
        return batch_inputs(tf, _xy(inputs.elements(val, "validation", shard=shard)), spec, batch)

    train_ds = distribute(tf, strategy, train_batches, cfg.batch_size, len(train))
    val_ds = distribute(tf, strategy, val_batches, cfg.batch_size, len(val))
    options = {"alpha": cfg.alpha} if cfg.alpha is not None else {}
    with strategy.scope():
        model, base = build_model(cfg.arch, size=spec.size, weights=cfg.weights, bn_momentum=cfg.bn_momentum,
                                  antialias=cfg.antialias, whole=not (cfg.epochs and cfg.head_epochs), **options)
    if cfg.antialias and cfg.weights != "none":  # the blur changes every activation's statistics after it
        with inputs.skipped.raising(tf, train):
            _recalibrate(keras, model, _plain_images(tf, inputs, train, spec), every=True)
    with strategy.scope():
        fitted = consistent(tf, keras, model, cfg.consistency) if cfg.consistency else model
    with inputs.skipped.raising(tf, train):
        history = _fit(tf, keras, fitted, base, cfg, train_ds, val_ds, backup, inputs.skipped)
    with inputs.skipped.raising(tf, val):
        if cfg.swa:
            _recalibrate(keras, model, _plain_images(tf, inputs, train, spec))
        y_val, probs, kept = _validation_probs(tf, model, inputs.elements(val, "validation"), spec, val)
    inputs.skipped.report()
    threshold = metrics.choose_threshold(y_val, probs, target_recall=cfg.target_recall)
    return model, (y_val, probs, kept), threshold, metrics.binary_metrics(y_val, probs, threshold), history


def _plain_images(tf, inputs, train, spec):
    """Batches of the unaugmented training images (model inputs only), for re-measuring BatchNorm statistics."""
    return (x for x, _ in batch_inputs(tf, _xy(inputs.elements(train, "train")), spec, 64))


def _xy(elements):
    return elements.map(lambda x, y, i: (x, y))


def _distilled(tf, elements, soft: np.ndarray, shard: tuple, weight: float):
    """Targets (1 - weight) * label + weight * the teacher's probability; an element's index counts within its
    shard (every count-th sample from first)."""
    table, (count, first) = tf.constant(soft, tf.float32), shard
    return elements.map(lambda x, y, i: (x, (1 - weight) * y + weight * tf.gather(table, first + i * count)))


def _warn_teacher_trained_on(teacher, val) -> int:
    """Warn when the teacher trained on the student's validation images: the student learns their answers from
    it, so its validation numbers (and the threshold chosen on them) come out optimistic."""
    seen = D.seen_in_training(teacher, val, parts=("train",))
    if seen:
        print(f"warning: {seen} of the {len(val)} validation images are training images of the teacher {teacher}: "
              f"validation numbers will be optimistic; use the teacher's split (--split-file "
              f"{Path(teacher).parent / 'split.json'})", file=sys.stderr)
    return seen


def teacher_probs(tf, path, samples) -> np.ndarray:
    """The teacher's probability for each training sample (unaugmented, at the teacher's own preprocessing);
    an image it cannot read keeps its label. Loaded as every model is: no code from the file runs."""
    from edgecxr.formats.kerasfile import TRUST_HINT
    from edgecxr.formats.modelinfo import checked_prob, load_info
    from edgecxr.training.evaluate import load_model

    info = load_info(Path(path))
    if info is None:
        raise ConfigError(f"--teacher {path}: no model.json beside it; the teacher must be an edgecxr model "
                          "(its preprocessing and output kind are read from there)")
    try:
        model = load_model(Path(path))
    except ModelError as exc:  # train has no --trust-model: a teacher must load without running its code
        raise ModelError(f"--teacher {path}: " + str(exc).replace(
            TRUST_HINT, "a teacher must load without running code stored in the file (train has no --trust-model)")) from None
    check_teacher(model, info, path)
    pixels, _, kept, _ = D.load_pixels(samples, info.preprocess, progress="teacher: predicting the training images")
    raw = model.predict(make_dataset(tf, pixels, np.zeros(len(pixels)), info.preprocess, 64).map(lambda x, y: x), verbose=0)
    try:
        probs = checked_prob(raw, info.output, info.positive_index, "training", use="a teacher",
                             fix=f"set the output kind in {Path(path).with_suffix('.json')}")
    except ModelError as exc:
        raise ModelError(f"--teacher {path}: {exc}") from None
    soft = np.array([s.label for s in samples], np.float32)
    position = {s.path: i for i, s in enumerate(samples)}
    soft[[position[s.path] for s in kept]] = probs
    print(f"teacher {path}: mean probability {soft.mean():.3f} on {len(kept)} training images "
          f"(labels {np.mean([s.label for s in samples]):.3f})", file=sys.stderr)
    return soft


def check_teacher(model, info, path) -> None:
    """The teacher's input and output shapes agree with its model.json and it decides between two classes."""
    spec = info.preprocess
    shape, width = tuple(model.input_shape[1:]), int(model.output_shape[-1])
    if len(shape) != 3 or any(s is not None and s != w for s, w in zip(shape, (spec.size, spec.size, spec.channels))):
        raise ModelError(f"--teacher {path}: the model takes input {shape} but its model.json says {spec.size} px with "
                         f"{spec.channels} channel(s); fix model.json or pass the right model")
    widths = {"sigmoid": (1,), "softmax": (2,), "logits": (1, 2)}[info.output]  # one logit or two
    if width not in widths or info.positive_index >= width:
        raise ModelError(f"--teacher {path}: {width} output(s) with output kind '{info.output}' and positive_index "
                         f"{info.positive_index}; a teacher must be a two-class edgecxr model (one sigmoid output or two)")


def _validation_probs(tf, model, elements, spec, samples, batch_size: int = 64):
    """(labels, probabilities, samples) of the readable validation images, in order. The model is called
    directly (not predict): every worker of a multi-worker run holds the same weights and predicts alone."""
    probs, labels, index = [], [], []
    # the label slot carries (label, index) through the same scaling as training: no mixup, no weights
    for x, (y, i) in batch_inputs(tf, elements.map(lambda x, y, i: (x, (y, i))), spec, batch_size):
        probs.append(np.asarray(model(x, training=False), np.float64).reshape(-1))
        labels.append(y.numpy())
        index.append(i.numpy())
    if not probs:
        raise DataError("no readable validation images left after skipping unreadable files")
    kept = [samples[int(i)] for i in np.concatenate(index)]
    return np.concatenate(labels).astype(np.int32), np.concatenate(probs), kept


def resolved_paths(cfg: TrainConfig) -> dict:
    """The configuration's paths made absolute: the same folder named two ways is the same configuration."""
    return {k: str(Path(v).resolve()) for k in ("data", "split_file", "cache") if (v := getattr(cfg, k))}


def train(cfg: TrainConfig, out: Path, *, overwrite: bool = False) -> Path:
    """Train and write a complete run directory at `out` (or nothing, on failure).

    With several workers (TF_CONFIG) every worker runs this; only the chief writes `out`, the others write
    to a temporary folder that is removed. With cfg.backup, a run killed part-way and started again with the
    same command resumes at its last finished epoch (the backup folder is removed when the run is complete).
    """
    cfg.validate()
    out = Path(out)
    tf, keras = import_tf()
    strategy = get_strategy(tf)  # before any other TensorFlow op
    chief = is_chief(strategy)
    weights = cfg.weights if cfg.weights not in ("none", "imagenet") else None
    if chief:
        check_writable(out, overwrite=overwrite, inputs=(cfg.data, cfg.split_file, weights))
    backup = Backup(cfg.backup_dir or out.parent / f"{out.name}.backup", chief) if cfg.backup else None
    try:
        if backup:
            backup.check(asdict(cfg) | resolved_paths(cfg), defaults=asdict(TrainConfig()))
        if chief:
            _train_to(tf, keras, strategy, cfg, out, overwrite, backup)
        else:
            import tempfile

            with tempfile.TemporaryDirectory(prefix="edgecxr-worker-") as tmp:  # the same work, kept nowhere
                _train_to(tf, keras, strategy, cfg, Path(tmp) / out.name, False, backup)
    except BaseException as exc:
        if backup and chief:
            backup.discard_if_unused()
        if isinstance(exc, tf.errors.UnavailableError):  # several workers: one of them stopped
            where = f" from {backup.folder}" if backup else " (from the start: --no-backup)"
            raise EdgecxrError(f"a training worker was lost (a collective operation failed: {type(exc).__name__}); "
                               f"start every worker again with the same command: training resumes at the last "
                               f"finished epoch{where}") from None
        raise
    if backup and chief:
        backup.remove()
    return out


def _train_to(tf, keras, strategy, cfg: TrainConfig, out: Path, overwrite: bool, backup: Backup | None):
    tf.keras.utils.set_random_seed(cfg.seed)
    if cfg.mixed_precision and tf.config.list_physical_devices("GPU"):
        keras.mixed_precision.set_global_policy("mixed_float16")
    spec = cfg.spec()
    pooled = D.is_pooled(cfg.split_file)
    samples = D.pooled(cfg.data, cfg.classes) if pooled else D.list_split(cfg.data, "train", cfg.classes)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "config.json").write_text(json.dumps(asdict(cfg), indent=2, default=list) + "\n")
        spec.save(tmp / "preprocess.json")
        if cfg.folds:
            _cross_validate(tf, keras, cfg, spec, samples, tmp, strategy, backup)
            return out
        if cfg.split_file:
            train_s, val_s = D.apply_split(Path(cfg.split_file), samples)
        else:
            train_s, val_s = D.grouped_split(samples, cfg.val_fraction, cfg.seed)
        D.save_split(tmp / "split.json", train_s, val_s, seed=cfg.seed, val_fraction=cfg.val_fraction,
                     data=str(cfg.data), grouped_by="patient", **_pooled_test(cfg.split_file) if pooled else {})
        start = time.time()
        model, (y_val, p_val, val_s), threshold, val_metrics, history = _train_one(
            tf, keras, cfg, spec, train_s, val_s, strategy, backup)
        val_metrics["train_seconds"] = round(time.time() - start, 1)
        val_metrics["epochs_run"] = len(next(iter(history.values()), []))
        if backup and backup.resumed_at:
            val_metrics["resumed_at_epoch"] = backup.resumed_at
        _save_inference_model(keras, model, tmp / "model.keras")
        method = metrics.threshold_rule(cfg.target_recall)
        save_info(tmp / "model.keras", ModelInfo(preprocess=spec, labels=cfg.classes, threshold=threshold,
                                                threshold_method=method, arch=cfg.arch, val_metrics=val_metrics,
                                                pooled_split=D.is_pooled(cfg.split_file)))
        (tmp / "val_metrics.json").write_text(json.dumps(val_metrics, indent=2) + "\n")
        np.savez_compressed(tmp / "val_predictions.npz", y=y_val, prob=p_val, rel=[s.rel for s in val_s])
        _write_history(history, tmp / "history.csv")
        from edgecxr import plots

        if history:  # --epochs 0 trains nothing to draw
            plots.history_png(history, tmp / "training_curves.png")
        print(f"validation: accuracy {val_metrics['accuracy']:.4f} recall {val_metrics['recall']:.4f} "
              f"specificity {val_metrics['specificity']:.4f} auc {val_metrics['roc_auc']:.4f} "
              f"at threshold {threshold:.4f}", file=sys.stderr)
    return out


def _pooled_test(split_file) -> dict:
    """The pooled split's test list travels in the run's split.json, so export and evaluate find it."""
    data = D.read_split_file(split_file)
    return {"pooled": True, "ratios": data.get("ratios"), "test": data["test"]}


def _cross_validate(tf, keras, cfg, spec, samples, tmp: Path, strategy, backup: Backup | None = None):
    folds = D.grouped_kfold(samples, cfg.folds, cfg.seed)
    results = []
    for i, val_s in enumerate(folds):
        val_rel = {s.rel for s in val_s}
        train_s = [s for s in samples if s.rel not in val_rel]
        print(f"fold {i + 1}/{cfg.folds}", file=sys.stderr)
        if backup:
            backup.prefix = f"fold{i + 1}-"
        *_, m, history = _train_one(tf, keras, cfg, spec, train_s, val_s, strategy, backup)
        _write_history(history, tmp / f"history_fold{i + 1}.csv")
        results.append(m)
    names = ("accuracy", "recall", "specificity", "f1", "roc_auc", "pr_auc")
    summary = {n: {"mean": float(np.mean([r[n] for r in results])), "std": float(np.std([r[n] for r in results]))} for n in names}
    (tmp / "cv.json").write_text(json.dumps({"folds": results, "summary": summary}, indent=2) + "\n")
    for n in names:
        print(f"{n:12s} " + " ".join(f"{r[n]:.4f}" for r in results) +
              f"   mean {summary[n]['mean']:.4f} ± {summary[n]['std']:.4f}")
