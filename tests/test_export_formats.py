"""The deployable variants beyond plain QDQ / full-integer: TensorRT-style symmetric int8 QDQ,
INT4 weight containers, LiteRT float16 and dynamic-range int8. Each keeps our codes (read back
from the file), runs in its real runtime here, and says so in its op counts."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import randomize_bn
from onnx import numpy_helper

from devices.runner.defakeq_runner import open_model, score_all
from harness.detectors import DETECTORS
from harness.export import EXPORTERS, CannotRepresent, ExportRequest
from harness.export.onnx_export import (
    codes_match,
    export_float_onnx,
    onnx_op_counts,
    read_onnx_codes,
    trt_problems,
)
from harness.export.tflite_export import read_tflite_codes, tflite_codes_match
from quant import quantize, with_dequantized_weights


def _model(name: str):
    torch.manual_seed(1)
    return randomize_bn(DETECTORS[name].build(), seed=1)


def _export(fmt: str, result, calib_x: torch.Tensor, tmp: Path):
    tmp.mkdir(parents=True, exist_ok=True)
    return EXPORTERS[fmt].fn(ExportRequest(result, calib_x.numpy(), calib_x[:4], 64, tmp / fmt))


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    onnx_file = str(path).endswith(".onnx")
    return score_all(open_model(str(path), "onnxruntime-cpu" if onnx_file else "litert", 0), x, 16 if onnx_file else 1)


def _probs(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(np.asarray(logits)), 1)[:, 1].numpy()


def _native_symmetric_int8(res, x: torch.Tensor, tmp: Path) -> Path:
    """onnxruntime's own quantizer in the same container settings (symmetric int8 activations)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from harness.export.onnx_export import _Reader

    fpath = export_float_onnx(with_dequantized_weights(res.folded, res.params), 64, tmp / "native-float.onnx")
    out = tmp / "native-trt.onnx"
    quantize_static(str(fpath), str(out), _Reader(x.numpy(), "input"), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    return out


# --- onnx-qdq-trt -------------------------------------------------------------------------
@pytest.mark.parametrize("detector", ["tiny-resnet", "tiny-dsnet"])
def test_trt_variant_is_symmetric_int8_and_exact(detector, calib_batch, tmp_path):
    x, y = calib_batch
    res = quantize(_model(detector), "minmax", "W8A8", x, y, options={"act_symmetric": True})
    assert all(a.symmetric for a in res.params.acts.values())
    art = _export("onnx-qdq-trt", res, x, tmp_path)
    assert art.codes_exact and art.unmatched == [], art.info
    assert art.info["trt_problems"] == [] and trt_problems(art.path) == []
    m = onnx.load(str(art.path))
    inits = {i.name: i for i in m.graph.initializer}
    assert not [i.name for i in m.graph.initializer if i.data_type == onnx.TensorProto.UINT8]
    producers = {o: n.op_type for n in m.graph.node for o in n.output}
    for node in m.graph.node:
        if node.op_type == "QuantizeLinear":  # every activation grid: int8, zero point 0
            zp = inits[node.input[2]]
            assert zp.data_type == onnx.TensorProto.INT8 and int(numpy_helper.to_array(zp)) == 0
        if node.op_type == "Add":  # TensorRT wants Q/DQ on both inputs of a residual Add
            assert all(producers.get(i) == "DequantizeLinear" for i in node.input), node.name
    # no fusion lost against onnxruntime's own quantizer in the same settings
    native = onnx_op_counts(_native_symmetric_int8(res, x, tmp_path))
    assert art.op_counts["int8_convs"] >= native["int8_convs"], (art.op_counts, native)
    out, sim = _run(art.path, x.numpy()), res.sim(x).detach().numpy()
    lsb = res.params.acts[res.placement.output_point].scale
    assert np.abs(out - sim).max() <= 2 * lsb + 1e-6


def test_trt_variant_refuses_asymmetric_grids(calib_batch, tmp_path):
    x, y = calib_batch
    res = quantize(_model("tiny-dsnet"), "minmax", "W8A8", x, y)
    with pytest.raises(CannotRepresent, match="act_symmetric: true"):
        _export("onnx-qdq-trt", res, x, tmp_path)


def test_symmetric_grids_after_relu_stay_exact_in_plain_qdq(calib_batch, tmp_path):
    """quantize_static drops a Relu in front of a uint8 Q; with a symmetric grid that would keep
    negative values, so the exporter keeps the Relu: the result still equals the simulation."""
    x, y = calib_batch
    res = quantize(_model("tiny-resnet"), "minmax", "W8A8", x, y, options={"act_symmetric": True})
    art = _export("onnx-qdq", res, x, tmp_path)
    assert art.codes_exact and art.unmatched == []
    lsb = res.params.acts[res.placement.output_point].scale
    assert np.abs(_run(art.path, x.numpy()) - res.sim(x).detach().numpy()).max() <= 2 * lsb + 1e-6


# --- onnx-qdq-w4 --------------------------------------------------------------------------
def test_int4_weights_exact_in_int4_containers(calib_batch, tmp_path):
    x, y = calib_batch
    res = quantize(_model("tiny-dsnet"), "minmax", "W4A8", x, y)
    first, last = res.placement.first_layer, res.placement.last_layer
    art = _export("onnx-qdq-w4", res, x, tmp_path)
    assert art.codes_exact and art.unmatched == [], art.info
    n = len(res.params.weights)
    assert sorted(art.info["int4_layers"]) == sorted(set(res.params.weights) - {first, last})
    assert art.info["weight_containers"] == {"INT4": n - 2, "INT8": 2}
    assert onnx.load(str(art.path)).opset_import[0].version == 21
    codes = read_onnx_codes(art.path)
    assert codes_match(res.params, codes)[0]
    # the file stores two codes per byte: smaller than the int8 QDQ file of the same model
    qdq = _export("onnx-qdq", res, x, tmp_path / "int8")
    assert art.size_bytes < qdq.size_bytes
    # onnxruntime executes INT4 Q/DQ exactly: same outputs as the int8-container file
    out = _run(art.path, x.numpy())
    lsb = res.params.acts[res.placement.output_point].scale
    assert np.abs(out - res.sim(x).detach().numpy()).max() <= 4 * lsb + 1e-6
    assert np.abs(out - _run(qdq.path, x.numpy())).max() <= 2 * lsb + 1e-6
    # int8 kernels stay for the 8-bit first/last layers; every layer is a conv of some kind
    assert art.op_counts["int8_convs"] >= 2
    assert art.op_counts["int8_convs"] + art.op_counts["float_convs"] == n


def test_int4_read_back_catches_a_changed_code(calib_batch, tmp_path):
    x, y = calib_batch
    res = quantize(_model("tiny-dsnet"), "minmax", "W4A8", x, y)
    art = _export("onnx-qdq-w4", res, x, tmp_path)
    m = onnx.load(str(art.path))
    for init in m.graph.initializer:
        if init.data_type == onnx.TensorProto.INT4 and len(init.dims) >= 2:
            arr = numpy_helper.to_array(init).astype(np.int8)
            arr.flat[0] = 1 if arr.flat[0] != 1 else 2
            packed = onnx.helper.make_tensor(init.name, onnx.TensorProto.INT4, arr.shape, arr.flatten().tolist())
            init.CopyFrom(packed)
            break
    bad = tmp_path / "tampered.onnx"
    onnx.save(m, str(bad))
    ok, missing = codes_match(res.params, read_onnx_codes(bad))
    assert not ok and len(missing) == 1


def test_w8_model_has_no_int4_layers(calib_batch, tmp_path):
    x, y = calib_batch
    res = quantize(_model("tiny-dsnet"), "minmax", "W8A8", x, y)
    art = _export("onnx-qdq-w4", res, x, tmp_path)
    assert art.info["int4_layers"] == [] and "INT4" not in art.info["weight_containers"]
    assert art.codes_exact and art.op_counts["int8_convs"] == len(res.params.weights)


# --- tflite-fp16 --------------------------------------------------------------------------
def test_tflite_fp16_runs_and_matches_float_within_fp16(calib_batch, tmp_path):
    x, y = calib_batch
    res = quantize(_model("tiny-dsnet"), "fp32", None, x, y)
    art = _export("tflite-fp16", res, x, tmp_path)
    fp32 = _export("tflite-fp32", res, x, tmp_path)
    n_layers = len([m for m in res.folded.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))])
    assert art.info["float16_tensors"] == n_layers
    assert art.op_counts["ops"].get("DEQUANTIZE") == n_layers and art.op_counts["int8_convs"] == 0
    assert art.size_bytes < 0.7 * fp32.size_bytes
    out = _run(art.path, x.numpy())
    # the same model with its weights rounded to float16, computed in float32
    half = copy.deepcopy(res.folded)
    for m in half.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            m.weight.data = m.weight.data.half().float()
    ref_half = half(x).detach().numpy()
    ref = res.folded(x).detach().numpy()
    assert np.abs(out - ref_half).max() < 1e-4
    assert np.abs(out - ref).max() < 1e-2 * max(1.0, float(np.abs(ref).max()))
    assert np.abs(out - ref).max() > 0  # it really holds float16 weights


# --- tflite-dynamic -----------------------------------------------------------------------
@pytest.mark.parametrize("detector,bits", [("tiny-dsnet", "W8A8"), ("tiny-resnet", "W4A8")])
def test_tflite_dynamic_keeps_codes_in_hybrid_kernels(detector, bits, calib_batch, tmp_path):
    x, y = calib_batch
    res = quantize(_model(detector), "minmax", bits, x, y)
    art = _export("tflite-dynamic", res, x, tmp_path)
    n = len(res.params.weights)
    assert art.codes_exact and art.info["weights_replaced"] == n, art.info
    assert tflite_codes_match(res.params, read_tflite_codes(art.path))[0]
    assert art.op_counts["hybrid_convs"] == n and art.op_counts["float_convs"] == 0
    out = _run(art.path, x.numpy())
    # weights exact; activations quantized on the fly per inference instead of on our grids
    wfloat = with_dequantized_weights(res.folded, res.params)(x).detach().numpy()
    p_out, p_sim = _probs(out), _probs(res.sim(x).detach().numpy())
    assert np.abs(out - wfloat).max() < 0.02 * max(1.0, float(np.abs(wfloat).max()))
    assert np.abs(p_out - p_sim).max() < 0.02
    assert np.mean((p_out >= 0.5) == (p_sim >= 0.5)) >= 0.95


def test_tflite_dynamic_refuses_narrow_activations(calib_batch, tmp_path):
    x, y = calib_batch
    res = quantize(_model("tiny-dsnet"), "minmax", "W4A4", x, y)
    with pytest.raises(CannotRepresent, match="4"):
        _export("tflite-dynamic", res, x, tmp_path)


def test_tflite_dynamic_read_back_catches_a_changed_code(calib_batch):
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    x, y = calib_batch
    res = quantize(_model("tiny-dsnet"), "minmax", "W8A8", x, y)
    with tempfile.TemporaryDirectory() as tmp:
        art = _export("tflite-dynamic", res, x, Path(tmp))
        model = flatbuffer_utils.read_model(str(art.path))
        t = next(t for t in model.subgraphs[0].tensors if t.type == schema.TensorType.INT8 and len(t.shape) == 4)
        data = np.array(model.buffers[t.buffer].data, dtype=np.uint8)
        data[0] = (int(data[0]) + 1) % 256
        model.buffers[t.buffer].data = data
        bad = Path(tmp) / "tampered.tflite"
        flatbuffer_utils.write_model(model, str(bad))
        ok, missing = tflite_codes_match(res.params, read_tflite_codes(bad))
    assert not ok and len(missing) == 1


def test_quantized_formats_refuse_fp32_results(calib_batch, tmp_path):
    x, y = calib_batch
    res = quantize(_model("tiny-dsnet"), "fp32", None, x, y)
    for fmt in ("onnx-qdq-trt", "onnx-qdq-w4", "tflite-dynamic"):
        with pytest.raises(CannotRepresent, match="quantization parameters"):
            _export(fmt, res, x, tmp_path)


def test_litert_same_scale_refusal_becomes_a_reason():
    """The converter's refusal of two grids across a reshape (SPSL's phase branch) is a
    representational limit: CannotRepresent with the ops and both grids; other errors are not."""
    from harness.export.tflite_export import same_scale_violation

    msg = ("Failed to run converter passes: <unknown>:0: error: loc(fused[\"m.Phase;\"(\"mul\"), \"m.Phase;\"(\"sub\")]): "
           "'tfl.reshape' op quantization parameters violate the same scale constraint: "
           "!quant.uniform<i8:f32, 0.93142455816268921:-4> vs. !quant.uniform<i8:f32, 58.022815704345703:-128>")
    reason = same_scale_violation(msg)
    assert reason is not None and "RESHAPE" in reason and "mul, sub" in reason and "0.9314" in reason and "58.02" in reason
    assert same_scale_violation("Failed to run converter passes: 'tfl.conv_2d' op is neither a custom op nor a flex op") is None
