"""Training stage (TensorFlow + tf_keras): models, training, evaluation, Grad-CAM.

tf_keras is required because tensorflow-model-optimization (export stage) works
only with it, so TF_USE_LEGACY_KERAS=1 is set before TensorFlow is imported.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from edgecxr.quiet import quiet_frameworks  # noqa: E402

quiet_frameworks()


def import_tf():
    """(tensorflow, tf_keras), or a clear error naming the extra to install."""
    from edgecxr.errors import require

    tf = require("tensorflow", "train")
    keras = require("tf_keras", "train")
    return tf, keras
