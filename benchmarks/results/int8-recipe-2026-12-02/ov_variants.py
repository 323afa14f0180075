"""OpenVINO int8 variants of the shipped model, compared on its 523 validation images (choose here)."""
import json, sys, time
from pathlib import Path
import numpy as np
import nncf, openvino as ov
from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
from edgecxr.export import datasets as X
from edgecxr import data as D
from edgecxr.preprocess import PreprocessSpec
from edgecxr.bundle import load_bundle

MODEL = Path("edgecxr/default/model.keras")
ONNX = Path(sys.argv[1])  # onnx-fp32 bundle's model.onnx
spec = load_bundle(ONNX.parent).spec
train, val, test, _ = X.export_splits("../shared/data/kermany-cxr-224", D.DEFAULT_CLASSES, MODEL)
calib = X.calibration_samples(train, 300, seed=0)
cx = X.load_inputs(calib, spec)[0]; vx, vy, _ = X.load_inputs(val, spec)
sample_test = D.list_split("edgecxr/sample", "test", D.DEFAULT_CLASSES)
sx, sy, _ = X.load_inputs(sample_test, spec)
thr = json.loads((ONNX.parent / "manifest.json").read_text())["threshold"]
core = ov.Core()
def run(model, x):
    c = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.concatenate([c(x[i:i+32])[c.outputs[0]] for i in range(0, len(x), 32)]).ravel()
fp = ov.convert_model(str(ONNX))
pv, ps = run(fp, vx), run(fp, sx)
lg = lambda p: np.log(np.clip(p,1e-7,1-1e-7)/np.clip(1-p,1e-7,1))
ds = nncf.Dataset([cx[i:i+1].astype(np.float32) for i in range(len(cx))])
AQP = lambda: AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE)
P = "mobilenetv2_1.00_224/"
HEAD, FIRST = P + "prob/MatMul", P + "Conv1/Conv2D/WithoutBiases"
ignore = lambda *names: nncf.IgnoredScope(names=list(names))
variants = {
 "current": dict(advanced_parameters=AQP()),
 "full_bias": dict(fast_bias_correction=False, advanced_parameters=AQP()),
 "mixed": dict(preset=nncf.QuantizationPreset.MIXED, advanced_parameters=AQP()),
 "no_head": dict(ignored_scope=ignore(HEAD), advanced_parameters=AQP()),
 "no_head_conv1": dict(ignored_scope=ignore(HEAD, P + "Conv_1/Conv2D/WithoutBiases"), advanced_parameters=AQP()),
 "no_first_head": dict(ignored_scope=ignore(HEAD, FIRST), advanced_parameters=AQP()),
 "no_depthwise": dict(ignored_scope=nncf.IgnoredScope(types=["GroupConvolution"]), advanced_parameters=AQP()),
 "no_first_head_full_bias": dict(fast_bias_correction=False, ignored_scope=ignore(HEAD, FIRST), advanced_parameters=AQP()),
 "no_first2_head": dict(ignored_scope=ignore(HEAD, FIRST, P + "expanded_conv_depthwise/depthwise/WithoutBiases"), advanced_parameters=AQP()),
 "no_first_head_mixed": dict(preset=nncf.QuantizationPreset.MIXED, ignored_scope=ignore(HEAD, FIRST), advanced_parameters=AQP()),
}
out = {}
for name, kw in variants.items():
    t = time.time()
    q = nncf.quantize(ov.convert_model(str(ONNX)), ds, subset_size=len(cx), **kw)
    qv, qs = run(q, vx), run(q, sx)
    d = np.abs(lg(qv) - lg(pv))
    r = {"quant_s": round(time.time()-t,1), "val_mean_abs_logit": float(d.mean()), "val_p99_abs_logit": float(np.quantile(d, .99)),
         "val_max_abs_prob": float(np.abs(qv-pv).max()), "val_flips": int(((qv>=thr)!=(pv>=thr)).sum()),
         "sample_flips": int(((qs>=thr)!=(ps>=thr)).sum())}
    out[name] = r; print(name, r, flush=True)
json.dump(out, open("ov_variants.json","w"), indent=1)
