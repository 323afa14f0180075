"""edgecxr: train, export and verify chest X-ray pneumonia classifiers for edge devices.

The core package is light (numpy, Pillow, click). The stages live in
``edgecxr.training`` (TensorFlow), ``edgecxr.export`` and ``edgecxr.devices``
(no TensorFlow).
"""

__version__ = "0.1.0"

from edgecxr.utils.errors import EdgecxrError  # noqa: E402

__all__ = ["EdgecxrError", "__version__"]
