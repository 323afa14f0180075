"""TFLite conversions: fp32, fp16, dynamic-range and full-integer int8 (optionally with float layers kept)."""
from __future__ import annotations

import csv
import io

import numpy as np

from edgecxr.utils.errors import ConfigError


def representative(x: np.ndarray):
    def gen():
        for i in range(len(x)):
            yield [x[i:i + 1].astype(np.float32)]

    return gen


def converter_for(source):
    """A converter for the source's function; Keras 3 and SavedModel functions are frozen first
    (their resource variables otherwise break int8 calibration with READ_VARIABLE errors)."""
    import tensorflow as tf

    func = source.fn.get_concrete_function()
    if source.flavor == "tf_keras":
        return tf.lite.TFLiteConverter.from_concrete_functions([func], source.trackable)
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    return tf.lite.TFLiteConverter.from_concrete_functions([convert_variables_to_constants_v2(func)])


def configure(conv, precision: str, calib_x: np.ndarray | None = None, io_dtype: str = "int8"):
    import tensorflow as tf

    if precision == "fp16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif precision == "dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif precision == "int8":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative(calib_x)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = conv.inference_output_type = {"int8": tf.int8, "uint8": tf.uint8}[io_dtype]
    elif precision != "fp32":
        raise ConfigError(f"the TFLite converter writes fp32, fp16, dynamic and int8, not {precision!r}")
    return conv


def convert(source, precision: str, calib_x: np.ndarray | None = None) -> bytes:
    from edgecxr.utils.quiet import native_output_captured

    converter = configure(converter_for(source), precision, calib_x)
    with native_output_captured():  # the converter's "fully_quantize: ..." lines
        return converter.convert()


def selective_int8(source, calib_x: np.ndarray, denylisted_nodes: list[str]) -> bytes:
    """Full-integer model (int8 in and out) with the named tensors' ops kept in float.

    The quantization debugger calibrates; its own selective model has float input and output,
    so the calibrated model is re-quantized with int8 I/O through the converter's MLIR quantizer
    (a private TF function; falls back to the debugger's float-I/O model if it ever moves).
    """
    import tensorflow as tf

    conv = configure(converter_for(source), "int8", calib_x)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(denylisted_nodes))
    debugger = tf.lite.experimental.QuantizationDebugger(converter=conv, debug_dataset=representative(calib_x),
                                                         debug_options=options)
    try:
        from tensorflow.lite.python import convert

        return convert.mlir_quantize(debugger.calibrated_model, fully_quantize=True, input_data_type=tf.int8,
                                     output_data_type=tf.int8, denylisted_nodes=list(denylisted_nodes))
    except (ImportError, AttributeError, TypeError):
        return debugger.get_nondebug_quantized_model()


def layer_errors(source, calib_x: np.ndarray) -> list[tuple[str, float]]:
    """(tensor name, RMSE / scale) for every quantized layer, worst first (the debugger's per-layer error)."""
    import tensorflow as tf

    conv = configure(converter_for(source), "int8", calib_x)
    conv.inference_input_type = conv.inference_output_type = tf.float32
    debugger = tf.lite.experimental.QuantizationDebugger(converter=conv, debug_dataset=representative(calib_x[:32]))
    debugger.run()
    buf = io.StringIO()
    debugger.layer_statistics_dump(buf)
    buf.seek(0)
    rows = {}
    for row in csv.DictReader(buf):
        scale, mse = float(row["scale"] or 0), float(row["mean_squared_error"] or 0)
        err = float(np.sqrt(mse) / scale) if scale else float(np.sqrt(mse))
        rows[row["tensor_name"]] = max(err, rows.get(row["tensor_name"], 0.0))
    return sorted(rows.items(), key=lambda r: -r[1])
