"""ONNX Runtime int8 variants of the shipped model on its 523 validation images (choose here)."""
import json, sys, time, tempfile
from pathlib import Path
import numpy as np, onnx, onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from edgecxr.export import datasets as X
from edgecxr.export.onnx import _Reader
from edgecxr import data as D
from edgecxr.bundle import load_bundle
MODEL = Path("edgecxr/default/model.keras")
ONNX = Path(sys.argv[1])
spec = load_bundle(ONNX.parent).spec
train, val, test, _ = X.export_splits("../shared/data/kermany-cxr-224", D.DEFAULT_CLASSES, MODEL)
cx = X.load_inputs(X.calibration_samples(train, 300, seed=0), spec)[0]; vx, vy, _ = X.load_inputs(val, spec)
sx, sy, _ = X.load_inputs(D.list_split("edgecxr/sample", "test", D.DEFAULT_CLASSES), spec)
thr = json.loads((ONNX.parent / "manifest.json").read_text())["threshold"]
g = onnx.load(str(ONNX)).graph; name = g.input[0].name
compute = [n.name for n in g.node if n.op_type in ("Conv", "MatMul", "Gemm")]
def run(path, x):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, {name: x[i:i+32]})[0] for i in range(0, len(x), 32)]).ravel()
pv, ps = run(ONNX, vx), run(ONNX, sx)
lg = lambda p: np.log(np.clip(p,1e-7,1-1e-7)/np.clip(1-p,1e-7,1))
variants = {"current": [], "no_head": compute[-1:], "no_first_head": [compute[0], compute[-1]]}
out = {}
for vname, excl in variants.items():
    t = time.time(); q = Path(tempfile.mkdtemp()) / "q.onnx"
    reader = type("Reader", (_Reader, CalibrationDataReader), {})(name, cx)
    quantize_static(str(ONNX), str(q), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=True, nodes_to_exclude=excl)
    qv, qs = run(q, vx), run(q, sx); d = np.abs(lg(qv) - lg(pv))
    r = {"quant_s": round(time.time()-t,1), "val_mean_abs_logit": float(d.mean()), "val_p99_abs_logit": float(np.quantile(d, .99)),
         "val_max_abs_prob": float(np.abs(qv-pv).max()), "val_flips": int(((qv>=thr)!=(pv>=thr)).sum()),
         "sample_flips": int(((qs>=thr)!=(ps>=thr)).sum()), "excluded": excl}
    t2=time.time(); run(q, vx[:64]); r["ms_per_image"] = round((time.time()-t2)/64*1e3, 2)
    out[vname] = r; print(vname, r, flush=True)
json.dump(out, open("ort_exp.json","w"), indent=1)
