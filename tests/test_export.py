"""Export keeps OUR integer codes and grids: codes read back from the files, parity with the
simulation, fused int8 kernels kept, and honest refusal where a format cannot hold a model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import randomize_bn

from devices.runner.defakeq_runner import open_model, score_all
from harness.detectors import DETECTORS
from harness.export import EXPORTERS, CannotRepresent, ExportRequest
from harness.export.onnx_export import read_onnx_codes
from harness.export.tflite_export import read_tflite_codes
from quant import quantize


def _model(name: str):
    torch.manual_seed(1)
    return randomize_bn(DETECTORS[name].build(), seed=1)


def _export(fmt: str, result, calib_x: torch.Tensor, tmp: Path):
    req = ExportRequest(result, calib_x.numpy(), calib_x[:4], 64, tmp / fmt)
    return EXPORTERS[fmt].fn(req)


def _run(path: Path, runtime: str, x: np.ndarray) -> np.ndarray:
    return score_all(open_model(str(path), runtime, 0), x, 16 if runtime.startswith("onnx") else 1)


@pytest.mark.parametrize("detector", ["tiny-resnet", "tiny-dsnet"])
def test_float_exports_match_torch(detector, calib_batch, tmp_path):
    x, y = calib_batch
    res = quantize(_model(detector), "fp32", None, x, y)
    ref = res.folded(x[:8]).detach().numpy()
    for fmt, rt in (("onnx-fp32", "onnxruntime-cpu"), ("tflite-fp32", "litert")):
        art = _export(fmt, res, x, tmp_path)
        assert np.abs(_run(art.path, rt, x[:8].numpy()) - ref).max() < 1e-4, fmt
        assert art.op_counts["int8_convs"] == 0


@pytest.mark.parametrize("detector", ["tiny-resnet", "tiny-dsnet"])
@pytest.mark.parametrize("bits", ["W8A8", "W4A8"])
def test_int8_exports_keep_codes_and_fusions(detector, bits, calib_batch, tmp_path):
    x, y = calib_batch
    res = quantize(_model(detector), "minmax", bits, x, y)
    n_layers = len(res.params.weights)
    sim = res.sim(x).detach().numpy()
    logit_lsb = res.params.acts[res.placement.output_point].scale
    for fmt, rt in (("onnx-qdq", "onnxruntime-cpu"), ("tflite-int8", "litert")):
        art = _export(fmt, res, x, tmp_path)
        assert art.codes_exact, (fmt, art.info)
        assert art.unmatched == [], fmt  # every tensor the runtime quantizes got our grid
        # every conv / linear runs in an int8 kernel
        assert art.op_counts["int8_convs"] == n_layers and art.op_counts["float_convs"] == 0, art.op_counts
        out = _run(art.path, rt, x.numpy())
        # requantization rounding inside the runtime may flip a rare code: a few logit LSBs at most
        assert np.abs(out - sim).max() <= 4 * logit_lsb + 1e-6, fmt


def test_codes_read_back_from_both_files_equal_the_quantizers(calib_batch, tmp_path):
    x, y = calib_batch
    res = quantize(_model("tiny-dsnet"), "minmax", "W4A8", x, y)
    onnx_art = _export("onnx-qdq", res, x, tmp_path)
    tfl_art = _export("tflite-int8", res, x, tmp_path)
    onnx_codes = list(read_onnx_codes(onnx_art.path).values())
    tfl_codes = read_tflite_codes(tfl_art.path)
    for name, wq in res.params.weights.items():
        assert any(np.array_equal(c, wq.codes.astype(np.int32)) for c in onnx_codes), name
        assert any(np.array_equal(c, wq.codes) and np.allclose(s, wq.scale, rtol=1e-6) for c, s in tfl_codes), name
        if int(wq.bits.max()) == 4:
            assert np.abs(wq.codes).max() <= 7  # 4-bit codes inside the int8 container


def test_a_changed_code_is_detected(calib_batch, tmp_path):
    """The read-back check can fail: flip one stored code and it must notice."""
    from harness.export.onnx_export import codes_match

    x, y = calib_batch
    res = quantize(_model("tiny-dsnet"), "minmax", "W8A8", x, y)
    art = _export("onnx-qdq", res, x, tmp_path)
    m = onnx.load(str(art.path))
    for init in m.graph.initializer:
        if init.name.endswith("weight_quantized"):
            arr = onnx.numpy_helper.to_array(init).copy()
            arr.flat[0] = arr.flat[0] + 1 if arr.flat[0] < 127 else arr.flat[0] - 1
            init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
            break
    bad = tmp_path / "tampered.onnx"
    onnx.save(m, str(bad))
    ok, missing = codes_match(res.params, read_onnx_codes(bad))
    assert not ok and len(missing) == 1


def test_4bit_activations_onnx_exact_tflite_refuses(calib_batch, tmp_path):
    x, y = calib_batch
    res = quantize(_model("tiny-dsnet"), "minmax", "W4A4", x, y)
    art = _export("onnx-qdq", res, x, tmp_path)
    assert art.codes_exact and art.info["clipped"] > 0
    out = _run(art.path, "onnxruntime-cpu", x.numpy())
    sim = res.sim(x).detach().numpy()
    p_out = torch.softmax(torch.from_numpy(out), 1)[:, 1].numpy()
    p_sim = torch.softmax(torch.from_numpy(sim), 1)[:, 1].numpy()
    # float convolutions between Q/DQ pairs: rare boundary flips only
    assert np.abs(p_out - p_sim).max() < 0.05
    assert np.mean((p_out >= 0.5) == (p_sim >= 0.5)) >= 0.95
    with pytest.raises(CannotRepresent, match="4"):
        _export("tflite-int8", res, x, tmp_path)
