"""Export stage: float Keras model -> verified bundles for TFLite, ONNX Runtime and OpenVINO.

    from edgecxr.export import export_model
    export_model("run/model.keras", ["all"], "data/kermany", "bundles")

Heavy frameworks (TensorFlow, ONNX, OpenVINO, NNCF) are imported only when used.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from edgecxr.utils.quiet import quiet_frameworks  # noqa: E402

quiet_frameworks()

from edgecxr.export.calibration import calibration_samples  # noqa: E402
from edgecxr.formats.modelinfo import to_prob  # noqa: E402
from edgecxr.export.loading import ModelOverrides, load_source  # noqa: E402
from edgecxr.export.config import ExportConfig  # noqa: E402
from edgecxr.export.pipeline import export_model  # noqa: E402
from edgecxr.export.float_runs import Runner, run_bundle  # noqa: E402

__all__ = ["export_model", "ExportConfig", "ModelOverrides", "load_source", "calibration_samples", "to_prob", "Runner",
           "run_bundle"]
