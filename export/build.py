"""Write one target's model file into a bundle folder; int8 targets pass the validation gate or recover."""
from __future__ import annotations

import shutil
from pathlib import Path

import click

from edgecxr.utils.errors import ConfigError
from edgecxr.formats.targets import FAMILIES, TARGETS, check_precision, load
from edgecxr.export import accuracy, onnx as onnx_x, openvino as ov_x, tflite, tflite_metadata
from edgecxr.export.float_runs import Runner


class Context:
    """What every target of one export call shares: the source, data, gate and cached intermediates."""

    def __init__(self, source, calib_x, gate, workdir: Path, qat_source=None, qat_fallback=None, test=None,
                 twin: bool = True, qat_training: str = "labels"):
        self.source, self.calib_x, self.gate, self.workdir = source, calib_x, gate, workdir
        self.with_twin = twin  # ship a float32 twin in every non-float32 bundle
        self.test = test  # (samples, inputs, labels) of the reference test split, for export parity
        self.qat_source = qat_source  # a SourceModel of the QAT model (tflite-int8 with --qat)
        self.qat_fallback = qat_fallback  # callable -> SourceModel of a QAT model (TFLite recovery)
        self.qat_training = qat_training  # what QAT fits: "labels" or "distillation" (the float model's probabilities)
        self._onnx = None

    @property
    def onnx_fp32(self) -> Path:
        if self._onnx is None:
            self._onnx = onnx_x.to_onnx(self.source, self.workdir / "fp32.onnx")
        return self._onnx


    def twin(self, family: str) -> Path:
        """A folder with the float32 model of `family`, built once per export: the device's float reference
        for images the bundle holds no reference for (a clinic's own X-rays)."""
        folder = self.workdir / f"twin-{family}"
        if not folder.is_dir():
            folder.mkdir()
            build(TARGETS[f"{family}-fp32"], self, folder)
        return folder


def _gate_model(ctx, family, model) -> dict:
    return ctx.gate.check(Runner(family, model)(ctx.gate.x), "post-training quantization")


def build(target, ctx: Context, folder: Path) -> dict:
    """Write target.model_file into folder with its family's converter (the format table names it);
    returns {"qat": bool, "accuracy_control": dict|None, ...}."""
    check_precision(target)
    return load(FAMILIES[target.family].converter)(target, ctx, folder / target.model_file)


def _refuse(target):
    raise ConfigError(f"target {target.name}: this converter does not implement precision {target.precision!r}")


def _announce(target, step: str) -> None:
    click.echo(f"    {target.name}: post-training int8 missed the gate; {step}", err=True)


def _tried_entry(report: dict) -> dict:
    entry = {k: report[k] for k in ("method", "recall_drop", "accuracy_drop", "decision_agreement")}
    entry["missed"] = [c["name"] for c in report.get("checks", []) if not c["passed"]]
    predicted = report.get("predicted_reference")
    if predicted and report.get("predicted_reference_agreement", 1) < predicted["need"] - 1e-9 and not report.get("small_validation"):
        entry["missed"].append(f"predicted test agreement {report['predicted_reference_agreement']:.4f} < {predicted['need']:.4f}")
    return entry


def _write_tflite(target, ctx, path, model: bytes) -> None:
    """The .tflite file with its standard metadata (normalization, labels, threshold: export/tflite_metadata.py)."""
    path.write_bytes(model)
    tflite_metadata.write(path, ctx.source.spec, ctx.source.info, target.name, out_dim=ctx.source.out_dim,
                          int8_input=target.int8)


def build_tflite(target, ctx, path):
    """The TFLite family's converter: fp32, fp16, dynamic; int8 through the gate (QAT, PTQ, float layers, QAT fallback)."""
    if tflite_metadata.enabled():
        tflite_metadata.mediapipe_python()  # a missing MediaPipe fails now, not after the conversion
    if target.precision != "int8":
        _write_tflite(target, ctx, path, tflite.convert(ctx.source, target.precision))
        return {"qat": False, "accuracy_control": None}
    run = lambda model: Runner("tflite", model)(ctx.gate.x)  # noqa: E731
    tried = []

    def attempt(model, method, qat=False):
        report = ctx.gate.check(run(model), method)
        tried.append(_tried_entry(report))
        return {"model": model, "report": report, "qat": qat}

    def qat_attempt(source, method):
        return attempt(tflite.convert(source, "int8", ctx.calib_x), method, qat=True)

    # 1. the QAT model when --qat was asked for, 2. post-training int8, 3. worst layers kept float, 4. QAT fallback
    qat_method = "quantization-aware training" + (" (distillation)" if ctx.qat_training == "distillation" else "")
    best = qat_attempt(ctx.qat_source, qat_method) if ctx.qat_source else None
    if best is None or not best["report"]["passed"]:
        best = attempt(tflite.convert(ctx.source, "int8", ctx.calib_x), "post-training quantization")
    if not best["report"]["passed"]:
        _announce(target, "keeping the layers with the largest int8 error in float (up to 5 tries, seconds each)")
        model, report = accuracy.tflite_recover(ctx.source, ctx.gate, ctx.calib_x, run)
        if report is not None:
            tried.append(_tried_entry(report))
            if model is not None:
                best = {"model": model, "report": report, "qat": False}
    if not best["report"]["passed"] and ctx.qat_source is None and ctx.qat_fallback is not None:
        try:
            best = qat_attempt(ctx.qat_fallback("post-training int8 missed the gate"), "quantization-aware training (fallback)")
        except ConfigError as exc:
            best["report"]["method"] += f"; QAT fallback impossible ({str(exc)[:300]})"
    report = best["report"]
    if len(tried) > 1:
        report["tried"] = tried
    if not report["passed"]:
        ctx.gate.fail(target.name, report)
    _write_tflite(target, ctx, path, best["model"])
    return {"qat": best["qat"], "accuracy_control": report}


def build_onnx(target, ctx, path):
    """The ONNX family's converter: fp32 (tf2onnx), int8 static QDQ through the gate (NNCF accuracy control)."""
    if target.precision == "fp32":
        shutil.copyfile(ctx.onnx_fp32, path)
        return {"qat": False, "accuracy_control": None}
    if target.precision != "int8":
        _refuse(target)
    onnx_x.quantize(ctx.onnx_fp32, path, ctx.calib_x, target.scheme)
    report = _gate_model(ctx, "onnx", path)
    if target.scheme == "tensorrt":
        if not report["passed"]:
            report = _onnx_keep_float(target, ctx, path, report)
        return {"qat": False, "accuracy_control": report, "tensorrt_check": onnx_x.tensorrt_check(path, target.name)}
    if not report["passed"]:
        import onnx

        first = report
        _announce(target, "NNCF accuracy control (reverts layers to float until the gate holds; a minute or more)")

        def raw(model, x):
            return Runner("onnx", model.SerializeToString() if hasattr(model, "SerializeToString") else model)(x)

        fp32 = onnx.load(str(ctx.onnx_fp32))
        quantized = accuracy.nncf_accuracy_control(fp32, ctx.gate, ctx.calib_x, raw, fp32.graph.input[0].name)
        onnx.save(quantized, str(path))
        report = _gate_model(ctx, "onnx", path)
        report["method"], report["initial"] = "nncf.quantize_with_accuracy_control", {k: first[k] for k in ("recall_drop", "accuracy_drop")}
        if not report["passed"]:
            ctx.gate.fail(target.name, report)
    return {"qat": False, "accuracy_control": report}


def _onnx_keep_float(target, ctx, path, first):
    """TensorRT's scheme: NNCF's recovery would write uint8 activations, so the end layers stay float instead
    (the classifier, then the first convolution too): ONNX Runtime re-quantizes without them."""
    _announce(target, "keeping the first and last layers in float (two tries, seconds each)")
    report = first
    for exclude in onnx_x.end_layers(ctx.onnx_fp32):
        onnx_x.quantize(ctx.onnx_fp32, path, ctx.calib_x, target.scheme, exclude=exclude)
        report = _gate_model(ctx, "onnx", path)
        report["method"] = f"post-training quantization, {len(exclude)} layers kept float ({', '.join(exclude)})"
        report["initial"] = {k: first[k] for k in ("recall_drop", "accuracy_drop")}
        if report["passed"]:
            return report
    ctx.gate.fail(target.name, report)


def build_openvino(target, ctx, path):
    """The OpenVINO family's converter: fp32 and fp16 IR; int8 (NNCF) through the gate (accuracy control)."""
    if target.precision not in ("fp32", "fp16", "int8"):
        _refuse(target)
    model = ov_x.read_onnx(ctx.onnx_fp32)
    if target.precision != "int8":
        ov_x.save(model, path, fp16=target.precision == "fp16")
        return {"qat": False, "accuracy_control": None}
    quantized = ov_x.quantize(model, ctx.calib_x)
    report = ctx.gate.check(Runner("openvino", quantized)(ctx.gate.x), "NNCF post-training quantization")
    if not report["passed"]:
        first = report
        _announce(target, "NNCF accuracy control (reverts layers to float until the gate holds; a minute or more)")

        def raw(compiled, x):
            return __import__("numpy").concatenate([compiled(x[i:i + 32])[compiled.outputs[0]] for i in range(0, len(x), 32)])

        quantized = accuracy.nncf_accuracy_control(ov_x.read_onnx(ctx.onnx_fp32), ctx.gate, ctx.calib_x, raw)
        report = ctx.gate.check(Runner("openvino", quantized)(ctx.gate.x), "nncf.quantize_with_accuracy_control")
        report["initial"] = {k: first[k] for k in ("recall_drop", "accuracy_drop")}
        if not report["passed"]:
            ctx.gate.fail(target.name, report)
    ov_x.save(quantized, path, fp16=False)
    return {"qat": False, "accuracy_control": report}
