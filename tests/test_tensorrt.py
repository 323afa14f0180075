"""The TensorRT-clean int8 ONNX target and the static check of what TensorRT would refuse (no GPU needed)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

onnx = pytest.importorskip("onnx")
from onnx import helper, numpy_helper  # noqa: E402

from edgecxr.formats import trt_check  # noqa: E402
from edgecxr.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shipped_trt(tmp_path_factory, sample) -> Path:
    """The shipped model's onnx-int8-trt bundle from the shipped sample (about 40 s)."""
    from edgecxr.export import export_model

    out = tmp_path_factory.mktemp("shipped-trt")
    return export_model(REPO / "edgecxr" / "default" / "model.keras", ["onnx-int8-trt"], sample, out, calib_count=96)[0]


@pytest.fixture()
def clean(tiny_bundles):
    return onnx.load(str(tiny_bundles["onnx-int8-trt"] / "model.onnx"))


def _errors(model) -> set:
    return {p.rule for p in trt_check.check_model(model) if p.error}


def _init(model, name):
    return next(i for i in model.graph.initializer if i.name == name)


def _replace(model, name, array):
    _init(model, name).CopyFrom(numpy_helper.from_array(array, name))


def _nodes(model, op):
    return [n for n in model.graph.node if n.op_type == op]


def _consts(model):
    return {i.name for i in model.graph.initializer}


def _activation_q(model):
    return next(n for n in _nodes(model, "QuantizeLinear") if n.input[0] not in _consts(model))


def _weight_dq(model):
    consts, conv_weights = _consts(model), {n.input[1] for n in _nodes(model, "Conv")}
    return next(n for n in _nodes(model, "DequantizeLinear") if n.input[0] in consts and n.output[0] in conv_weights)


def test_the_trt_bundle_is_clean_and_the_cpu_int8_bundle_is_not(tiny_bundles):
    trt = tiny_bundles["onnx-int8-trt"]
    manifest = json.loads((trt / "manifest.json").read_text())
    assert manifest["optimization"]["tensorrt_check"]["passed"] is True
    assert manifest["optimization"]["tensorrt_check"]["qdq_nodes"] > 0
    model = onnx.load(str(trt / "model.onnx"))
    assert _errors(model) == set()
    zero_points = [numpy_helper.to_array(i) for i in model.graph.initializer if i.name.endswith("zero_point")]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    # the CPU bundle (uint8 activations, asymmetric, int32 biases) is what the issue measured TensorRT refuses
    cpu = _errors(onnx.load(str(tiny_bundles["onnx-int8"] / "model.onnx")))
    assert {"not-int8", "int32-bias"} <= cpu


PLANTED = {
    "zero-point": lambda m: _replace(m, _activation_q(m).input[2], np.array(3, np.int8)),
    "not-int8": lambda m: _replace(m, _activation_q(m).input[2], np.array(0, np.uint8)),
    "per-channel-activation": lambda m: _replace(m, _activation_q(m).input[1], np.full(4, 0.02, np.float32)),
    "scale": lambda m: _replace(m, _activation_q(m).input[1], np.array(0.0, np.float32)),
}


def _plant_weight_range(m):
    dq = _weight_dq(m)
    weight = numpy_helper.to_array(_init(m, dq.input[0])).copy()
    weight.flat[0] = -128
    _replace(m, dq.input[0], weight)


def _plant_weight_axis(m):
    dq = _weight_dq(m)
    kept = [a for a in dq.attribute if a.name != "axis"]
    del dq.attribute[:]
    dq.attribute.extend(kept + [helper.make_attribute("axis", 1)])


def _plant_int32_bias(m):
    conv = next(n for n in _nodes(m, "Conv") if len(n.input) > 2)
    bias = numpy_helper.to_array(_init(m, conv.input[2]))
    m.graph.initializer.extend([numpy_helper.from_array(np.round(bias * 1000).astype(np.int32), "planted_bias_q"),
                                numpy_helper.from_array(np.array(0.001, np.float32), "planted_bias_scale"),
                                numpy_helper.from_array(np.array(0, np.int32), "planted_bias_zp")])
    m.graph.node.insert(0, helper.make_node("DequantizeLinear", ["planted_bias_q", "planted_bias_scale", "planted_bias_zp"],
                                            ["planted_bias"], name="planted_bias_dq"))
    conv.input[2] = "planted_bias"


def _plant_q_without_dq(m):
    q = _activation_q(m)
    consumer = next(n for n in m.graph.node if q.output[0] in n.input)
    # the Q's int8 output goes straight into a float op
    m.graph.node.append(helper.make_node("Relu", [q.output[0]], ["planted_relu"], name="planted_relu"))
    del consumer  # the original DQ stays: one consumer too many is enough


def _plant_computed_scale(m):
    q = _activation_q(m)
    m.graph.node.insert(0, helper.make_node("Identity", [q.input[1]], ["planted_scale"], name="planted_identity"))
    q.input[1] = "planted_scale"


def _plant_shape_input(m):
    m.graph.initializer.extend([numpy_helper.from_array(np.array([1, -1], np.int8), "planted_shape_q"),
                                numpy_helper.from_array(np.array(1.0, np.float32), "planted_shape_scale"),
                                numpy_helper.from_array(np.array(0, np.int8), "planted_shape_zp")])
    m.graph.node.extend([
        helper.make_node("DequantizeLinear", ["planted_shape_q", "planted_shape_scale", "planted_shape_zp"],
                         ["planted_shape"], name="planted_shape_dq"),
        helper.make_node("Reshape", [m.graph.output[0].name, "planted_shape"], ["planted_reshaped"], name="planted_reshape")])


def _plant_qoperator(m):
    m.graph.node.append(helper.make_node("QLinearConv", ["a", "b", "c", "d", "e", "f", "g", "h"], ["planted_qconv"],
                                         name="planted_qlinearconv"))


def _plant_foreign_domain(m):
    q = _activation_q(m)
    q.domain = "com.microsoft"


def _plant_dq_without_q(m):
    m.graph.node.append(helper.make_node("DequantizeLinear", [m.graph.input[0].name, _activation_q(m).input[1],
                                                              _activation_q(m).input[2]], ["planted_dq_out"],
                                         name="planted_dq_of_input"))


def _plant_missing_zero_point(m):
    q = _activation_q(m)
    del q.input[2]


PLANTED.update({"weight-range": _plant_weight_range, "weight-axis": _plant_weight_axis, "int32-bias": _plant_int32_bias, "q-without-dq": _plant_q_without_dq,
                "scale-not-constant": _plant_computed_scale, "shape-input": _plant_shape_input,
                "qoperator": _plant_qoperator, "foreign-domain": _plant_foreign_domain,
                "dq-without-q": _plant_dq_without_q, "not-int8 (no zero point: uint8)": _plant_missing_zero_point})


@pytest.mark.parametrize("rule", list(PLANTED))
def test_each_planted_defect_is_found(clean, rule, tmp_path):
    assert _errors(clean) == set()
    PLANTED[rule](clean)
    assert rule.split(" ")[0] in _errors(clean)
    path = tmp_path / "planted.onnx"
    path.write_bytes(clean.SerializeToString())
    result = CliRunner().invoke(main, ["device", "check-trt", str(path), "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 1, result.output
    assert "TensorRT would refuse it" in result.output and rule.split(" ")[0] in result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] is False and any(f["rule"] == rule.split(" ")[0] for f in report["findings"])


def test_a_layer_quantized_on_one_side_is_a_warning_not_an_error(clean):
    conv = next(n for n in _nodes(clean, "Conv") if n.input[1] in {d.output[0] for d in _nodes(clean, "DequantizeLinear")})
    dq = next(d for d in _nodes(clean, "DequantizeLinear") if d.output[0] == conv.input[1])
    weight = numpy_helper.to_array(_init(clean, dq.input[0])).astype(np.float32)
    clean.graph.initializer.append(numpy_helper.from_array(weight, "planted_float_weight"))
    conv.input[1] = "planted_float_weight"
    found = trt_check.check_model(clean)
    assert [p.rule for p in found if not p.error] == ["half-quantized"] and not any(p.error for p in found)


def test_check_trt_cli_on_bundles_and_bad_input(tiny_bundles, tmp_path):
    ok = CliRunner().invoke(main, ["device", "check-trt", str(tiny_bundles["onnx-int8-trt"])])
    assert ok.exit_code == 0 and "TensorRT-clean" in ok.output
    fp32 = CliRunner().invoke(main, ["device", "check-trt", str(tiny_bundles["onnx-fp32"])])
    assert fp32.exit_code == 0 and "no quantization" in fp32.output
    refused = CliRunner().invoke(main, ["device", "check-trt", str(tiny_bundles["onnx-int8"])])
    assert refused.exit_code == 1 and "zero" in refused.output
    tflite = CliRunner().invoke(main, ["device", "check-trt", str(tiny_bundles["tflite-int8"])])
    assert tflite.exit_code == 2 and "no ONNX model here" in tflite.output
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\xff not a protobuf \x12\x99" * 10)
    bad = CliRunner().invoke(main, ["device", "check-trt", str(junk)])
    assert bad.exit_code == 2 and "not a readable ONNX model" in bad.output and len(bad.output.strip().splitlines()) == 1


def test_the_shipped_model_trt_bundle_passes_the_check_and_device_parity(shipped_trt, sample, tmp_path):
    check = subprocess.run([sys.executable, "-m", "edgecxr.cli", "device", "check-trt", str(shipped_trt)],
                           capture_output=True, text=True)
    assert check.returncode == 0 and "TensorRT-clean" in check.stdout, check.stdout + check.stderr
    parity = CliRunner().invoke(main, ["device", "parity", str(shipped_trt), "--data", str(sample),
                                       "--device", "cpu", "--json", str(tmp_path / "p.json")])
    report = json.loads((tmp_path / "p.json").read_text())
    assert parity.exit_code == 0 and report["passed"] is True, parity.output
    assert report["runtime"]["provider"] == "CPUExecutionProvider"


def test_tensorrt_provider_options_int8_fp16_and_one_engine_cache_per_model(tmp_path, monkeypatch):
    from edgecxr.runtimes.onnx import tensorrt_options

    monkeypatch.setenv("EDGECXR_TRT_CACHE", str(tmp_path))
    int8 = tensorrt_options(b"model one", "int8", False)
    assert int8["trt_int8_enable"] is True and int8["trt_fp16_enable"] is False and int8["trt_engine_cache_enable"]
    fp32 = tensorrt_options(b"model one", "fp32", True)
    assert fp32["trt_int8_enable"] is False and fp32["trt_fp16_enable"] is True
    other = tensorrt_options(b"model two", "int8", False)
    assert int8["trt_engine_cache_path"] != other["trt_engine_cache_path"]
    assert Path(int8["trt_engine_cache_path"]).parent == tmp_path
    path = tmp_path / "m.onnx"
    path.write_bytes(b"model one")
    assert tensorrt_options(path, "int8", False)["trt_engine_cache_path"] == int8["trt_engine_cache_path"]


@pytest.mark.skipif(subprocess.run(["sh", "-c", "command -v nvidia-smi"], capture_output=True).returncode == 0,
                    reason="a GPU machine runs the GPU part (pip installs); this test is for CPU machines")
def test_the_gpu_script_runs_its_cpu_part_and_skips_the_gpu_in_one_line(tiny_bundles, kermany, tmp_path):
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    for name in ("onnx-fp32", "onnx-int8-trt"):
        (bundles / name).symlink_to(tiny_bundles[name])
    out = tmp_path / "out"
    run = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu" / "tensorrt_parity.sh"), str(bundles), str(kermany)],
                         capture_output=True, text=True, env={**__import__("os").environ, "OUT": str(out)})
    assert run.returncode == (1 if "| FAILED |" in (out / "summary.md").read_text() else 0), run.stdout + run.stderr
    assert "onnx-int8-trt: TensorRT static check: clean" in run.stdout
    assert "onnx-fp32: TensorRT static check: no quantization" in run.stdout
    skipped = [line for line in run.stdout.splitlines() if "skipped the TensorRT engines" in line]
    assert len(skipped) == 1
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["row"]: r for r in summary["rows"]}
    assert set(rows) == {"onnx-fp32.onnxruntime-cpu", "onnx-int8-trt.onnxruntime-cpu"}
    assert all(r["images"] == 624 and r["p50_ms"] > 0 for r in rows.values())
    assert run.returncode == (0 if all(r["passed"] for r in rows.values()) else 1)
    report = json.loads((out / "onnx-int8-trt.onnxruntime-cpu.json").read_text())
    assert report["runtime"]["provider"] == "CPUExecutionProvider" and "checks" in report
    assert "| onnx-int8-trt.onnxruntime-cpu |" in (out / "summary.md").read_text()


def _qat_conv(axis=0, domain=""):
    """x -> Q/DQ (per tensor) -> Conv whose float weight goes through a per-channel Q -> DQ (the QAT export format)."""
    w = np.random.default_rng(0).normal(size=(4, 1, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.full(4, 0.01, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(4, np.int8), "wz"), numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
             numpy_helper.from_array(np.array(0, np.int8), "xz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="xq"),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="xd"),
             helper.make_node("QuantizeLinear", ["w", "ws", "wz"], ["wq"], name="wq", axis=axis),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], name="wd", axis=axis, domain=domain),
             helper.make_node("Conv", ["xd", "wd"], ["y"], name="conv")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_qat_weights_subgraphs_foreign_ops_empty_files_and_external_data(tmp_path, monkeypatch):
    """The hostile review: QAT's float weight -> Q -> DQ is TensorRT's own format (was refused as a per-channel
    activation); Q/DQ inside an If branch was never looked at; a com.microsoft op was not flagged; an empty
    file passed as 'no quantization'; external data was read from the current folder."""
    assert _errors(_qat_conv()) == set()
    assert _errors(_qat_conv(axis=1)) == {"weight-axis"}
    assert _errors(_qat_conv(domain="com.microsoft")) >= {"foreign-domain"}
    branch = _qat_conv().graph
    for init in branch.initializer:
        if init.name == "xz":
            init.CopyFrom(numpy_helper.from_array(np.array(128, np.uint8), "xz"))
    outer = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)], "outer",
                              [helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    assert {"not-int8", "zero-point"} <= _errors(helper.make_model(outer, opset_imports=[helper.make_opsetid("", 17)]))
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    r = CliRunner().invoke(main, ["device", "check-trt", str(empty)])
    assert r.exit_code == 2 and "not an ONNX model" in r.output
    model = _qat_conv()
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.onnx.data", size_threshold=0)
    monkeypatch.chdir(tmp_path.parent)
    r = CliRunner().invoke(main, ["device", "check-trt", str(tmp_path / "ext.onnx")])
    assert r.exit_code == 0 and "TensorRT-clean" in r.output, r.output


def test_end_layers_and_a_refused_trt_export(tmp_path, tiny_model, sample):
    from edgecxr.export.onnx import end_layers

    def graph(ops):
        nodes = [helper.make_node(op, ["x"], [f"y{i}"], name=f"n{i}") for i, op in enumerate(ops)]
        path = tmp_path / f"{len(ops)}.onnx"
        onnx.save(helper.make_model(helper.make_graph(nodes, "g", [], [])), str(path))
        return path

    assert end_layers(graph(["Relu"])) == []
    assert end_layers(graph(["MatMul", "Relu"])) == [["n0"]]
    assert end_layers(graph(["Conv", "Relu", "Conv", "Gemm"])) == [["n3"], ["n0", "n3"]]
    # every try misses the gate: post-training int8, the classifier kept float, the first layer too; then a refusal
    from edgecxr.utils.errors import GateFailed
    from edgecxr.export import build as B
    from edgecxr.export import export_model

    tries = []
    real_quantize = B.onnx_x.quantize

    def counting_quantize(fp32, out, calib, scheme="", exclude=()):
        tries.append((scheme, list(exclude)))
        return real_quantize(fp32, out, calib, scheme, exclude)

    def missed(ctx, family, model):
        report = ctx.gate.check(B.Runner(family, model)(ctx.gate.x), "post-training quantization")
        report["passed"] = False
        return report

    mp = pytest.MonkeyPatch()
    mp.setattr(B.onnx_x, "quantize", counting_quantize)
    mp.setattr(B, "_gate_model", missed)
    try:
        with pytest.raises(GateFailed, match="onnx-int8-trt"):
            export_model(tiny_model, ["onnx-int8-trt"], sample, tmp_path / "o", calib_count=24)
    finally:
        mp.undo()
    assert [scheme for scheme, _ in tries] == ["tensorrt"] * 3 and tries[0][1] == [] and len(tries[2][1]) == 2
    assert not (tmp_path / "o" / "onnx-int8-trt").exists()
