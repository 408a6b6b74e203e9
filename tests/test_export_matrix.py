"""Every registered method and every zoo detector through the formats that deploy them.

The lists are read at collection time, so methods (quant/methods/*) and detectors
(harness/detectors/zoo/*) added later are covered without touching this file:
- every quantizing method x {onnx-qdq, tflite-int8} on tiny-dsnet at W8A8 (iteration-like
  options shrunk so that each method runs in seconds);
- every zoo detector's small variant x {onnx-fp32, tflite-fp32, onnx-qdq, tflite-int8} with
  min-max W8A8.
For each: codes read back exactly, parity with the simulation (float: max |logit diff| <= 1e-4;
int8: decision agreement >= 0.95 and max |p diff| <= 0.02), op counts with int8 kernels. A
format may refuse a model only for a known representational limit (LEGITIMATE_AT_W8A8; the
trial is then simulated-only): such a case is reported as skipped with the exporter's reason.
The onnx-qdq rows of the methods are the default run; LiteRT conversions and the zoo are slow.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomize_bn

from devices.runner.defakeq_runner import open_model, score_all
from harness.detectors import DETECTORS
from harness.export import EXPORTERS, CannotRepresent, ExportRequest
from quant import METHODS, QuantResult, quantize
from quant.graph import compute_modules

QUANT_METHODS = sorted(m for m, info in METHODS.items() if info.quantizes)
FAST_LIMIT = 8  # iterations / steps / epochs per method in this matrix
_cache: dict[tuple, QuantResult] = {}


def fast_options(defaults: dict) -> dict:
    """Shrink every iteration-like integer option (iters, steps, epochs ...) of a method;
    reconstruction methods (a `preset` option) take `iters` too (quant/recon.recon_config)."""
    out = {"iters": FAST_LIMIT} if "preset" in defaults else {}
    for key, value in defaults.items():
        if isinstance(value, bool) or not isinstance(value, int):
            continue
        if re.search(r"iter|step|epoch", key, re.IGNORECASE) and value > FAST_LIMIT:
            out[key] = FAST_LIMIT
    return out


def test_fast_options_shrinks_only_iteration_counts():
    got = fast_options({"iters": 20000, "warmup_steps": 3, "epochs": 50, "lr": 1e-3, "bits_search": True, "n": 100})
    assert got == {"iters": FAST_LIMIT, "epochs": FAST_LIMIT}
    assert fast_options({"preset": "fast", "drop_p": 0.5}) == {"iters": FAST_LIMIT}


def _calib(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, 3, size, size, generator=g), torch.randint(0, 2, (64,), generator=g)


def _quantized(detector: str, method: str) -> tuple[QuantResult, torch.Tensor]:
    """One quantization per (detector, method), shared by its formats."""
    small = not detector.startswith("tiny-")
    size = DETECTORS[detector].small_input_size if small else 64
    x, y = _calib(size)
    key = (detector, method)
    if key not in _cache:
        torch.manual_seed(1)
        model = DETECTORS[detector].build(variant="small") if small else DETECTORS[detector].build()
        model = randomize_bn(model, seed=1)
        options = fast_options(METHODS[method].defaults) if method != "fp32" else None
        _cache[key] = quantize(model, method, None if method == "fp32" else "W8A8", x, y, options=options)
    return _cache[key], x


def _probs(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(np.asarray(logits, np.float32)), 1)[:, 1].numpy()


# CannotRepresent reasons that a W8A8 model may legitimately meet (recorded simulated-only);
# any other refusal fails the test
LEGITIMATE_AT_W8A8 = re.compile(r"LiteRT int8 keeps one grid across")


def check(res: QuantResult, x: torch.Tensor, fmt: str, tmp: Path) -> None:
    try:
        art = EXPORTERS[fmt].fn(ExportRequest(res, x.numpy(), x[:4], x.shape[-1], tmp / fmt))
    except CannotRepresent as exc:
        if not LEGITIMATE_AT_W8A8.search(str(exc)):
            raise
        pytest.skip(f"simulated-only: {exc}")
    onnx_file = art.family == "onnx"
    out = score_all(open_model(str(art.path), "onnxruntime-cpu" if onnx_file else "litert", 0), x.numpy(), 16 if onnx_file else 1)
    n_layers = len(compute_modules(res.folded))
    ctx = f"{fmt}: op counts {art.op_counts}, unmatched {art.unmatched[:5]}, info {art.info}"
    if not EXPORTERS[fmt].quantized:
        ref = res.folded(x).detach().numpy()
        assert np.abs(out - ref).max() <= 1e-4, ctx
        # converters may merge layers of a float graph (SRM's attention projections): no count
        assert art.op_counts["int8_convs"] == 0 and art.op_counts["float_convs"] > 0, ctx
        return
    assert art.codes_exact, ctx
    assert art.packed_bytes == res.stats["packed_bytes"] > 0, ctx  # the record carries both sizes
    # every conv / linear layer of ours runs in an int8 kernel (extra fixed transforms may too)
    assert art.op_counts["int8_convs"] >= n_layers, ctx
    p_out, p_sim = _probs(out), _probs(res.sim(x).detach().numpy())
    assert np.mean((p_out >= 0.5) == (p_sim >= 0.5)) >= 0.95, ctx
    assert np.abs(p_out - p_sim).max() <= 0.02, ctx


@pytest.mark.parametrize("method", QUANT_METHODS)
def test_method_exports_to_onnx_qdq(method, tmp_path):
    res, x = _quantized("tiny-dsnet", method)
    check(res, x, "onnx-qdq", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("method", QUANT_METHODS)
def test_method_exports_to_tflite_int8(method, tmp_path):
    res, x = _quantized("tiny-dsnet", method)
    check(res, x, "tflite-int8", tmp_path)


# The zoo's exports are checked on TRAINED small variants in tests/test_zoo_pipeline.py (AUC
# parity needs a detector that separates the classes); their float exports in test_zoo_small.py.
