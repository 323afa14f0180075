"""Make a model edgecxr did not make, to test export and parity the way a user with their own model would.

Keras 3 (not tf_keras), 160 px RGB, its own scaling (pixel / 127.5 - 1), two logits (no softmax), no
edgecxr sidecar. Trained briefly on the train split minus the patient-grouped 10 % that `edgecxr export`
holds out for its validation gate (same seed), so that gate sees held-out images.

    python benchmarks/third_party_model.py --data ../shared/data/kermany-cxr-224 --out ../runs/third-party
    edgecxr export --model ../runs/third-party/model.keras --input-size 160 --channels 3 --scale 0.00784313725 \\
        --offset -1 --output logits --positive-index 1 --target tflite-int8 --data ... --out ...
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

os.environ["TF_USE_LEGACY_KERAS"] = "0"  # Keras 3, as a user of current TensorFlow has
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZE, SCALE, OFFSET = 160, 1 / 127.5, -1.0


def build(keras):
    layers = keras.layers
    inp = keras.Input((SIZE, SIZE, 3))
    x = inp
    for width in (16, 32, 64, 96):
        x = layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(128, 3, padding="same", activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.2)(x)
    return keras.Model(inp, layers.Dense(2)(x), name="third_party_cnn")  # two logits


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--epochs", type=int, default=4)
    args = ap.parse_args()

    import keras
    from tqdm import tqdm

    from edgecxr.data import folders as D
    from edgecxr.data.preprocess import PreprocessSpec

    keras.utils.set_random_seed(0)
    spec = PreprocessSpec(size=SIZE, channels=3, scale=SCALE, offset=OFFSET)
    train, _ = D.grouped_split(D.list_split(args.data, "train"), 0.1, 0)  # export's own split (seed 0)
    x = np.stack([spec.load_input(s.path) for s in tqdm(train, desc="loading train")]).astype(np.float32)
    y = np.array([s.label for s in train])
    weights = {c: len(y) / (2 * max(1, (y == c).sum())) for c in (0, 1)}
    model = build(keras)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(x, y, epochs=args.epochs, batch_size=32, class_weight=weights, shuffle=True, verbose=2)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save(args.out / "model.keras")
    print(f"wrote {args.out / 'model.keras'} (Keras {keras.__version__}); export it with --input-size {SIZE} "
          f"--channels 3 --scale {SCALE:.11f} --offset {OFFSET} --output logits --positive-index 1")


if __name__ == "__main__":
    main()
