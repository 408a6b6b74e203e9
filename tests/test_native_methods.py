"""ort-static and pt2e-native: the runtimes' own calibration, read back as QuantParams. Their
scales are compared with what onnxruntime and litert-torch's PT2E observers compute here."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
import torch
from conftest import randomize_bn
from onnx import numpy_helper
from torch import fx

import harness.native_methods  # noqa: F401  (registers ort-static, pt2e-native)
from harness.detectors import DETECTORS
from harness.export.onnx_export import export_float_onnx
from quant import quantize
from quant.graph import compute_modules
from quant.quantizer import act_qparams
from quant.sim import collect_activation_stats

NATIVE = ["ort-static", "pt2e-native"]


def _detector(name: str) -> torch.nn.Module:
    torch.manual_seed(1)
    return randomize_bn(DETECTORS[name].build(), seed=1)


@pytest.fixture(scope="module")
def calib():
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 2, (16,), generator=g)


@pytest.fixture(scope="module")
def runs(calib):
    x, y = calib
    out = {}
    for det in ("tiny-resnet", "tiny-dsnet"):
        model = _detector(det)
        for method in NATIVE:
            for bits in ("W8A8", "W4A4"):
                out[(det, method, bits)] = (model, quantize(model, method, bits, x, y, seed=0))
    return out


def test_ort_static_equals_onnxruntime_quantize_static(runs, calib, tmp_path):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    x, _ = calib
    model, res = runs[("tiny-resnet", "ort-static", "W8A8")]
    assert res.params.info["fallback_points"] == []
    path = export_float_onnx(res.folded, 32, tmp_path / "f.onnx")

    class Reader:
        def __init__(self):
            self.it = iter([{"input": x.numpy()}])

        def get_next(self):
            return next(self.it, None)

    logging.getLogger("root").setLevel(logging.ERROR)
    quantize_static(
        str(path),
        str(tmp_path / "q.onnx"),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"WeightSymmetric": True},
    )
    inits = {
        i.name: numpy_helper.to_array(i)
        for i in onnx.load(str(tmp_path / "q.onnx")).graph.initializer
    }
    # weights: onnxruntime's own per-channel scales and int8 codes, bit for bit
    for name, wq in res.params.weights.items():
        assert np.array_equal(wq.scale, inits[f"{name}.weight_scale"]), name
        assert np.array_equal(wq.codes, inits[f"{name}.weight_quantized"]), name
    acts = res.params.acts
    assert (acts["x"].scale, acts["x"].zero_point) == (
        float(inits["input_scale"]),
        int(inits["input_zero_point"]),
    )
    out = acts[res.placement.output_point]
    assert (out.scale, out.zero_point) == (
        float(inits["logits_scale"]),
        int(inits["logits_zero_point"]),
    )
    # every point: onnxruntime's MinMax rule on the tensor's calibration min / max
    stats = collect_activation_stats(res.folded, res.placement, [x])
    for point, a in acts.items():
        zp, scale = compute_scale_zp(
            np.float32(stats.lo[point]), np.float32(stats.hi[point]), np.uint8(0), np.uint8(255)
        )
        assert a.scale == pytest.approx(float(scale), rel=1e-5) and a.zero_point == int(zp), point


def _node_outputs(gm: fx.GraphModule, names: set[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}

    class Capture(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.name in names:
                seen[n.name] = out.detach()
            return out

    with torch.no_grad():
        Capture(gm).run(x)
    return seen


def _observer(spec):
    """The observer prepare_pt2e builds from a litert QuantizationSpec."""
    kwargs = {
        "dtype": spec.dtype,
        "quant_min": spec.quant_min,
        "quant_max": spec.quant_max,
        "qscheme": spec.qscheme,
    }
    if spec.qscheme in (torch.per_channel_symmetric, torch.per_channel_affine):
        kwargs["ch_axis"] = spec.ch_axis
    return spec.observer_or_fake_quant_ctr.with_args(**kwargs)()


def test_pt2e_native_equals_litert_observers(runs, calib):
    from litert_torch.quantize.pt2e_quantizer import get_symmetric_quantization_config

    x, _ = calib
    cfg = get_symmetric_quantization_config(is_per_channel=True)
    floored = 0
    for det in ("tiny-resnet", "tiny-dsnet"):
        model, res = runs[(det, "pt2e-native", "W8A8")]
        assert res.params.info["fallback_points"] == []
        mods = compute_modules(res.folded)
        for name, wq in res.params.weights.items():
            obs = _observer(cfg.weight)  # per-channel symmetric, eps 2**-12
            obs(mods[name].weight.detach())
            scale = obs.calculate_qparams()[0].numpy()
            assert np.array_equal(wq.scale, scale.astype(np.float32)), name
            floored += int((scale == 2.0**-12).sum())
        values = _node_outputs(res.folded, set(res.placement.points), x)
        for point, a in res.params.acts.items():
            obs = _observer(cfg.input_activation)  # HistogramObserver
            obs(values[point])
            scale, zp = obs.calculate_qparams()
            assert a.scale == pytest.approx(float(scale), rel=1e-5), (det, point)
            assert a.zero_point == int(zp) + 128, (
                det,
                point,
            )  # int8 grid in our uint8 representation
    assert floored > 0  # the eps floor really applies to some channels of these nets


@pytest.mark.parametrize("method", NATIVE)
def test_sub_8_bit_plans_regrid_the_runtime_ranges(runs, method):
    _, r8 = runs[("tiny-dsnet", method, "W8A8")]
    _, r4 = runs[("tiny-dsnet", method, "W4A4")]
    edges = {r4.placement.first_layer, r4.placement.last_layer}
    for name, wq in r4.params.weights.items():
        if name in edges:
            assert np.array_equal(wq.scale, r8.params.weights[name].scale)
        else:
            expect = (r8.params.weights[name].scale.astype(np.float64) * 127 / 7).astype(np.float32)
            assert np.array_equal(wq.scale, expect) and np.abs(wq.codes).max() <= 7, name
    io = set(r4.placement.inputs) | {r4.placement.output_point}
    for point, a in r4.params.acts.items():
        a8 = r8.params.acts[point]
        if point in io:
            assert (a.scale, a.zero_point, a.bits) == (a8.scale, a8.zero_point, 8)
        else:
            assert (a.scale, a.zero_point) == act_qparams(*a8.range, 4) and a.bits == 4, point


@pytest.mark.parametrize("det", ["tiny-resnet", "tiny-dsnet"])
@pytest.mark.parametrize("method", NATIVE)
def test_native_methods_give_complete_params_close_to_float(runs, calib, det, method):
    x, y = calib
    for bits in ("W8A8", "W4A4"):
        model, res = runs[(det, method, bits)]
        assert set(res.params.weights) == set(compute_modules(res.folded))
        assert set(res.params.acts) == set(res.placement.points)
        out = res.sim(x)
        assert torch.isfinite(out).all()
        if bits == "W8A8":
            assert float((out - model(x)).abs().max()) < 0.01
    if det == "tiny-dsnet":  # deterministic: the runtimes' calibration has no randomness
        again = quantize(model, method, "W4A4", x, y, seed=0)
        assert again.params.code_hash() == runs[(det, method, "W4A4")][1].params.code_hash()


def test_unknown_option_values_are_rejected(calib):
    x, y = calib
    with pytest.raises(ValueError, match="calibrate_method"):
        quantize(
            _detector("tiny-dsnet"), "ort-static", "W8A8", x, y, options={"calibrate_method": "KL"}
        )
    with pytest.raises(ValueError, match="granularity"):
        quantize(
            _detector("tiny-dsnet"), "pt2e-native", "W8A8", x, y, options={"granularity": "per-row"}
        )


def test_renamed_runtime_weights_are_matched_by_dequantized_value():
    from harness.native_methods import _dequantized_owner

    torch.manual_seed(0)
    mods = {"a": torch.nn.Conv2d(3, 4, 3), "b": torch.nn.Conv2d(3, 4, 3)}
    w = mods["b"].weight.detach().numpy()
    s = np.abs(w).reshape(4, -1).max(1) / 127
    codes = np.round(w / s.reshape(-1, 1, 1, 1)).astype(np.int8)
    assert _dequantized_owner(mods, codes, s) == "b"
    assert _dequantized_owner(mods, codes[::-1].copy(), s) is None
