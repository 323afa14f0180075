"""Which rounding does the runtime's own QUANTIZE op use for the grey levels of the shipped model's input?"""
import json, os, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import numpy as np, tensorflow as tf, tf_keras as keras
from ai_edge_litert import interpreter as litert
from edgecxr.preprocess import PreprocessSpec

spec = PreprocessSpec.from_dict(json.load(open("edgecxr/default/model.json"))["preprocess"])
levels = np.arange(256, dtype=np.uint8)
x = (levels.astype(np.float32) * np.float32(2 / 255) + np.float32(-1.0)).astype(np.float32)  # placeholder, replaced below
if spec is not None:
    x = spec.scale_pixels(levels[None])[0, :, 0].astype(np.float32)
inp = keras.Input((16, 16, 3)); out = keras.layers.Reshape((16, 48))(inp)
model = keras.Model(inp, out)
def rep():
    for v in (-1.0, 1.0):
        yield [np.full((1, 16, 16, 3), v, np.float32)]
conv = tf.lite.TFLiteConverter.from_keras_model(model)
conv.optimizations = [tf.lite.Optimize.DEFAULT]; conv.representative_dataset = rep
conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
conv.inference_input_type = tf.float32; conv.inference_output_type = tf.int8
tfl = conv.convert()
bundle_in = json.load(open(sys.argv[1]))["input"]["quantization"]
res = {"bundle_input_quantization": bundle_in}
for name, kw in (("xnnpack", {}), ("builtin", {"experimental_op_resolver_type": litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES})):
    it = litert.Interpreter(model_content=tfl, **kw); it.allocate_tensors()
    d_in, d_out = it.get_input_details()[0], it.get_output_details()[0]
    ops = [o["op_name"] for o in it._get_ops_details()]
    codes = []
    for v in x:
        it.set_tensor(d_in["index"], np.full((1, 16, 16, 3), v, np.float32)); it.invoke()
        codes.append(int(it.get_tensor(d_out["index"]).reshape(-1)[0]))
    codes = np.array(codes)
    scale, zero = d_out["quantization"]
    rne = np.clip(np.round(x / np.float32(scale)) + zero, -128, 127)
    v64 = (x / np.float32(scale)).astype(np.float64)
    away = np.clip(np.trunc(v64 + np.copysign(0.5, v64)) + zero, -128, 127)
    mul = (x * np.float32(1 / np.float32(scale))).astype(np.float32)
    rne_mul = np.clip(np.round(mul) + zero, -128, 127)
    res[name] = {"ops": ops, "scale": scale, "zero": zero, "distinct_codes": int(len(set(codes))),
                 "differ_numpy_rne_div": int((codes != rne).sum()), "differ_half_away_div": int((codes != away).sum()),
                 "differ_rne_mul_inverse": int((codes != rne_mul).sum()),
                 "ties": int(np.sum(np.abs(v64 - np.floor(v64) - 0.5) < 1e-9))}
    print(name, res[name], flush=True)
json.dump(res, open("quant_boundary.json", "w"), indent=1)
