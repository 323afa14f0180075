"""Training stage (TensorFlow + tf_keras): models, training, evaluation, Grad-CAM.

tf_keras is required because tensorflow-model-optimization (export stage) works
only with it, so TF_USE_LEGACY_KERAS=1 is set before TensorFlow is imported.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from edgecxr.utils.quiet import quiet_frameworks  # noqa: E402

quiet_frameworks()

from edgecxr.formats.kerasfile import import_tf  # noqa: E402,F401  (the training stage's way in; lives in the core)
