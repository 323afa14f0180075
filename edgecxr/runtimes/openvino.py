"""The OpenVINO family's runtime: device CPU (default), GPU or NPU."""
from __future__ import annotations

from pathlib import PurePosixPath

import numpy as np

from edgecxr.runtimes.base import Session, _check_threads, _timed_loop
from edgecxr.utils.errors import ConfigError, ModelError

def _openvino_provider(core, compiled, device: str) -> str:
    """The device(s) and float precision the compiled model really uses, e.g. 'CPU (Intel Xeon ...), f32'."""
    def prop(get, name, default):
        try:
            return get(name)
        except Exception:  # a plugin without the property
            return default
    ran = prop(compiled.get_property, "EXECUTION_DEVICES", [device])
    ran = ", ".join(ran) if isinstance(ran, (list, tuple)) else str(ran)
    full = prop(lambda n: core.get_property(ran.split(",")[0].split(".")[0], n), "FULL_DEVICE_NAME", ran)
    precision = prop(compiled.get_property, "INFERENCE_PRECISION_HINT", "")
    precision = precision.to_string() if hasattr(precision, "to_string") else str(precision)
    return f"{ran} ({full})" + (f", {precision}" if precision else "")


class OpenVinoSession(Session):
    def __init__(self, model_path, *, threads=None, device=None, precision=None, batch=None):
        import openvino as ov

        _check_threads(threads)
        device = (device or "CPU").upper()
        core = ov.Core()
        if device.split(".")[0] not in {d.split(".")[0] for d in core.available_devices} and device != "AUTO":
            raise ConfigError(f"OpenVINO device {device!r} is not available here; available: {', '.join(core.available_devices)}")
        config = {"INFERENCE_NUM_THREADS": int(threads)} if threads and device == "CPU" else {}
        if device == "CPU":
            # The export gate ran f32. CPUs with bf16/AMX would otherwise run bf16, ARM f16 (int8 bundles too,
            # in their float parts): answers that drift from the verified ones and differ between CPUs.
            config["INFERENCE_PRECISION_HINT"] = "f32"
        source = model_path
        if isinstance(source, ov.Model):  # error messages name it
            model_path = f"<OpenVINO model {source.get_friendly_name()}>"
        try:
            model = source if isinstance(source, ov.Model) else core.read_model(str(source))
            if batch:
                shape = model.inputs[0].get_partial_shape()
                model.reshape({model.inputs[0]: ov.PartialShape([batch, *list(shape)[1:]])})
            self._model = model
            compiled = core.compile_model(model, device, config)
        except Exception as exc:
            raise ModelError(f"{model_path}: OpenVINO cannot compile this model for {device} ({exc})") from None
        if len(compiled.inputs) != 1:
            raise ModelError(f"{model_path}: expected one input, found {len(compiled.inputs)}")
        self.request = compiled.create_infer_request()
        self._port = compiled.inputs[0]
        self._out = compiled.outputs[0]
        self.input_dtype = np.dtype(self._port.get_element_type().to_dtype())
        shape = self._port.get_partial_shape()
        self.input_shape = tuple(d.get_length() if d.is_static else None for d in shape)
        self.runtime, self.version, self.threads = "openvino", ov.__version__.split("-")[0], threads
        self.provider = _openvino_provider(core, compiled, device)
        self._first_call(model_path)

    def _first_call(self, model_path):
        """Run once at load: some kernels fail only when first executed (OpenVINO's ARM int8 convolutions on
        CPUs without dot-product instructions), and that must be one error at load, not one per image."""
        if any(d is None for d in self.input_shape[1:]):
            return
        try:
            self.request.infer({0: np.zeros((self.input_shape[0] or 1, *self.input_shape[1:]), self.input_dtype)})
        except RuntimeError as exc:
            from edgecxr.utils.cpu import cpu_info

            if cpu_info()["int8_path"] == "ARM NEON without dot product":
                raise ModelError(
                    f"{model_path}: OpenVINO {self.version} cannot run this int8 model on this CPU: its ARM int8 "
                    "convolutions need the dot-product instructions (ARMv8.2+; a Raspberry Pi 4 has none); "
                    "use the tflite-int8 or onnx-int8 bundle, or openvino-fp32") from None
            raise ModelError(f"{model_path}: OpenVINO cannot run this model on {self.provider} "
                             f"({str(exc).strip().splitlines()[-1]})") from None

    def run(self, x):
        return self.request.infer({0: x})[self._out]

    def specs(self):
        return tuple({"name": port.get_any_name(),
                      "shape": [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()],
                      "dtype": np.dtype(port.get_element_type().to_dtype()).name, "quantization": None}
                     for port in (self._model.inputs[0], self._model.outputs[0]))

    def bare_loop(self, x, runs):
        import openvino as ov

        self.request.set_input_tensor(ov.Tensor(np.ascontiguousarray(x)))
        return _timed_loop(self.request.infer, runs)


def model_from_bytes(bundle, xml: bytes):
    """An openvino.Model from a bundle's verified .xml bytes and its verified .bin, in memory (the bundle's own
    path when OpenVINO is not installed: open_session then names the extra to install)."""
    try:
        import openvino as ov
    except ImportError:
        return bundle.model_path
    weights = bundle.read_verified(str(PurePosixPath(bundle.manifest["model_file"]).with_suffix(".bin")))
    model = ov.Core().read_model(xml, ov.Tensor(np.frombuffer(weights, np.uint8).copy()))
    model.set_friendly_name(bundle.manifest["model_file"])
    return model
