"""What the runtimes would do on their own, as QuantParams: two methods registered into quant's
registry from the harness side, because they need the runtimes' own quantizers.

- `ort-static`: onnxruntime's `quantize_static` (QDQ, MinMax calibration by default) on the
  folded float model exported to ONNX; its per-channel weight scales and its activation
  scale / zero points are read back from the quantized file.
- `pt2e-native`: litert-torch's PT2E quantizer (per-channel symmetric weights with its
  eps = 2**-12 floor, HistogramObserver activations) calibrated on the same frames; the scales
  are read from its observers.

The runtime's tensors are mapped onto our placement's quant points by value on a probe batch
(as harness/export/match.py does for export). At 8 bits the grids are the runtime's exactly;
narrower plan entries (W4A4: interior layers) keep the runtime's calibrated range and re-grid
it at the plan's bit-width with the same formulas (restricted-range symmetric weights, min/max
activation grid), since neither runtime calibrates sub-8-bit grids itself. Quant points the
runtime leaves unquantized fall back to min-max on the calibration frames (listed in
`info["fallback_points"]`). The runtimes calibrate on the CPU whatever `ctx.device` is.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import fx

from quant import ActQuant, MethodContext, QuantParams, WeightQuant, register
from quant.calibrate import bits_tensor, float_activation_stats, make_weight_quant
from quant.graph import Placement, compute_modules
from quant.quantizer import act_qparams, weight_qmax

from .export.match import ValueIndex

RUNTIME_WEIGHT_QMAX = 127  # both runtimes: restricted-range int8 weights


# --- mapping runtime grids onto our placement ------------------------------------------------


def weight_quant_from_runtime(
    name: str, w: torch.Tensor, scale8: np.ndarray, bits: int
) -> WeightQuant:
    """Our codes of `w` under the runtime's int8 per-channel scales (re-gridded below 8 bits)."""
    s = np.broadcast_to(np.asarray(scale8, np.float32).reshape(-1), (w.shape[0],)).astype(
        np.float64
    )
    if bits != 8:
        s = s * RUNTIME_WEIGHT_QMAX / max(weight_qmax(bits), 1)
    scale = torch.from_numpy(s.astype(np.float32))
    return make_weight_quant(name, w.detach().float().cpu(), scale, bits_tensor(w.shape[0], bits))


def act_quant_from_runtime(
    point: str, scale: float, zp_uint8: int, bits: int, symmetric: bool
) -> ActQuant:
    """Our grid at `point` from the runtime's uint8 (scale, zero point) on the same tensor."""
    if bits == 8:
        return ActQuant(point, float(np.float32(scale)), int(zp_uint8), 8)
    lo, hi = (0 - zp_uint8) * scale, (255 - zp_uint8) * scale
    s, zp = act_qparams(lo, hi, bits, symmetric=symmetric)
    return ActQuant(point, s, zp, bits)


def grids_by_point(
    placement: Placement, found: dict[str, tuple[float, int]]
) -> dict[str, tuple[float, int]]:
    """Runtime grid of each quant point: the one found at the point itself, else at a node that
    keeps its grid (flatten, max-pool), else at a re-rounding node (average pooling)."""
    out: dict[str, tuple[float, int]] = {}
    for point in placement.points:
        if point in found:
            out[point] = found[point]
            continue
        owned = [n for n in found if placement.grid_of.get(n) == point]
        owned.sort(key=lambda n: n in placement.reround)  # pass-through nodes first
        if owned:
            out[point] = found[owned[0]]
    return out


def finish_params(
    ctx: MethodContext,
    name: str,
    weights: dict[str, WeightQuant],
    found: dict[str, tuple[float, int]],
    info: dict,
) -> QuantParams:
    """Activation grids from the runtime's (by point), min-max fallback elsewhere."""
    symmetric = bool(ctx.options.get("act_symmetric", False))
    grids = grids_by_point(ctx.placement, found)
    acts: dict[str, ActQuant] = {}
    fallback = [p for p in ctx.placement.points if p not in grids]
    stats = float_activation_stats(ctx) if fallback else None
    for point in ctx.placement.points:
        bits = ctx.act_bits[point]
        if point in grids:
            acts[point] = act_quant_from_runtime(point, *grids[point], bits, symmetric)
        else:
            s, zp = act_qparams(stats.lo[point], stats.hi[point], bits, symmetric=symmetric)
            acts[point] = ActQuant(point, s, zp, bits)
    missing = sorted(set(compute_modules(ctx.folded)) - set(weights))
    if missing:
        raise RuntimeError(f"{name}: the runtime's quantizer left layers unquantized: {missing}")
    return QuantParams(name, "", weights, acts, info={**info, "fallback_points": fallback})


def _value_index(folded: fx.GraphModule, placement: Placement, probe: torch.Tensor) -> ValueIndex:
    return ValueIndex.build(folded, QuantParams("", "", grid_of=dict(placement.grid_of)), probe)


def _weight_owner(mods: dict[str, torch.nn.Module], value: np.ndarray) -> str | None:
    for name, mod in mods.items():
        w = mod.weight.detach().cpu().numpy()
        if w.shape == value.shape and np.array_equal(w, value):
            return name
    return None


def _dequantized_owner(
    mods: dict[str, torch.nn.Module], codes: np.ndarray, scale: np.ndarray
) -> str | None:
    s = np.asarray(scale, np.float32).reshape((-1,) + (1,) * (codes.ndim - 1))
    deq = codes.astype(np.float32) * s
    for name, mod in mods.items():
        w = mod.weight.detach().cpu().numpy()
        if w.shape == deq.shape and (np.abs(w - deq) <= 0.5001 * s + 1e-12).all():
            return name
    return None


def _cpu_batches(ctx: MethodContext) -> list[torch.Tensor]:
    x = ctx.calib_x.detach().float().cpu()
    return [x[i : i + ctx.batch_size] for i in range(0, len(x), ctx.batch_size)]


# --- onnxruntime quantize_static ----------------------------------------------------------


class _Reader:
    """onnxruntime CalibrationDataReader over fixed batches."""

    def __init__(self, batches: list[np.ndarray], name: str):
        self.batches = iter([{name: b} for b in batches])

    def get_next(self):
        return next(self.batches, None)


def ort_quantize(
    model: torch.nn.Module, batches: list[torch.Tensor], tmp: Path, options: dict
) -> tuple:
    """(float ONNX model, onnxruntime's QDQ model) of `model` calibrated on `batches`."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from .export.onnx_export import export_float_onnx

    x = batches[0]
    if x.ndim != 4 or x.shape[2] != x.shape[3]:
        raise ValueError(
            f"ort-static: calibration frames must be square NCHW, got {tuple(x.shape)}"
        )
    methods = {
        "MinMax": CalibrationMethod.MinMax,
        "Entropy": CalibrationMethod.Entropy,
        "Percentile": CalibrationMethod.Percentile,
    }
    method = options.get("calibrate_method", "MinMax")
    if method not in methods:
        raise ValueError(
            f"option calibrate_method={method!r}: allowed values are {sorted(methods)}"
        )
    granularity = options.get("granularity", "per-channel")
    if granularity not in ("per-channel", "per-tensor"):
        raise ValueError(
            f"option granularity={granularity!r}: allowed values are ['per-channel', 'per-tensor']"
        )
    fpath = export_float_onnx(model, int(x.shape[-1]), tmp / "float.onnx")
    float_model = onnx.load(str(fpath))
    logging.getLogger("root").setLevel(logging.ERROR)  # quantize_static's pre-processing advice
    quantize_static(
        str(fpath),
        str(tmp / "qdq.onnx"),
        _Reader([b.numpy() for b in batches], float_model.graph.input[0].name),
        quant_format=QuantFormat.QDQ,
        per_channel=granularity == "per-channel",
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
        calibrate_method=methods[method],
        extra_options={
            "WeightSymmetric": True,
            "ActivationSymmetric": bool(options.get("act_symmetric", False)),
        },
    )
    return float_model, onnx.load(str(tmp / "qdq.onnx"))


def read_ort_qdq(
    qdq,
) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], dict[str, tuple[float, int]]]:
    """Weights [(float initializer name, int8 codes, scales)] and activations
    {float tensor name: (scale, uint8 zero point)} of an onnxruntime QDQ model."""
    from onnx import numpy_helper

    from .export.onnx_export import _original_name

    inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    weights, acts = [], {}
    for node in qdq.graph.node:
        src = node.input[0]
        if node.op_type == "DequantizeLinear" and src in inits and inits[src].ndim >= 2:
            orig = src[: -len("_quantized")] if src.endswith("_quantized") else src
            weights.append((orig, inits[src], inits[node.input[1]]))
        elif node.op_type == "QuantizeLinear" and src not in inits:
            zp = inits[node.input[2]]
            if zp.dtype != np.uint8:
                raise RuntimeError(
                    f"ort-static: activation {src} quantized as {zp.dtype}, expected uint8"
                )
            acts[_original_name(src)] = (float(inits[node.input[1]]), int(zp))
    return weights, acts


@register(
    "ort-static",
    family="baseline",
    defaults={"granularity": "per-channel", "calibrate_method": "MinMax", "act_symmetric": False},
)
def ort_static(ctx: MethodContext) -> QuantParams:
    """onnxruntime quantize_static on its own (QDQ, symmetric per-channel int8 weights, uint8
    activations, `calibrate_method` MinMax by default): its scales read back from the file and
    mapped onto our quant points by value; sub-8-bit plan entries re-grid the runtime's ranges."""
    from onnx import numpy_helper

    from .export.onnx_export import _all_tensor_values

    model = copy.deepcopy(ctx.folded).cpu().eval()
    batches = _cpu_batches(ctx)
    with tempfile.TemporaryDirectory() as tmp:
        float_model, qdq = ort_quantize(model, batches, Path(tmp), ctx.options)
    float_inits = {i.name: numpy_helper.to_array(i) for i in float_model.graph.initializer}
    mods = compute_modules(model)
    weights: dict[str, WeightQuant] = {}
    runtime_weights, runtime_acts = read_ort_qdq(qdq)
    for orig, codes, scale in runtime_weights:
        owner = _weight_owner(mods, float_inits[orig]) if orig in float_inits else None
        if owner is None:  # renamed initializer: the codes dequantize to within half a step
            owner = _dequantized_owner(mods, codes, scale)
        if owner is not None:
            weights[owner] = weight_quant_from_runtime(
                owner, mods[owner].weight, scale, ctx.weight_bits[owner]
            )
    probe = batches[0][:16]
    index = _value_index(model, ctx.placement, probe)
    values = _all_tensor_values(float_model, probe.numpy())
    values[float_model.graph.input[0].name] = probe.numpy()
    found: dict[str, tuple[float, int]] = {}
    for tensor, grid in runtime_acts.items():
        node = index.match(values[tensor]) if tensor in values else None
        if node is not None and node not in found:
            found[node] = grid
    return finish_params(
        ctx, "ort-static", weights, found, {"runtime": "onnxruntime quantize_static"}
    )


# --- litert-torch PT2E --------------------------------------------------------------------


def pt2e_prepare(
    model: torch.nn.Module, example: torch.Tensor, per_channel: bool = True
) -> fx.GraphModule:
    """litert-torch's PT2E quantizer (its symmetric config) inserted into `model`, batch dynamic."""
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    quantizer = PT2EQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=per_channel)
    )
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    exported = torch.export.export(model, (example,), dynamic_shapes=({0: batch},)).module()
    return prepare_pt2e(exported, quantizer)


def observers(prepared: fx.GraphModule) -> dict[int, tuple[str, torch.nn.Module]]:
    """Observer instances (shared-qparams ops reuse one instance under several names)."""
    out: dict[int, tuple[str, torch.nn.Module]] = {}
    for node in prepared.graph.nodes:
        if node.op == "call_module" and "activation_post_process" in str(node.target):
            mod = prepared.get_submodule(node.target)
            out.setdefault(id(mod), (node.target, mod))
    return out


@torch.no_grad()
def observed_values(prepared: fx.GraphModule, probe: torch.Tensor) -> dict[int, np.ndarray]:
    """What each observer sees on `probe` (call after reading the qparams: this observes too)."""
    seen: dict[int, np.ndarray] = {}

    def hook(module, args) -> None:  # returning a value would replace the observer's input
        seen.setdefault(id(module), args[0].detach().float().numpy())

    handles = [mod.register_forward_pre_hook(hook) for _, mod in observers(prepared).values()]
    try:
        prepared(probe)
    finally:
        for h in handles:
            h.remove()
    return seen


@register("pt2e-native", family="baseline", defaults={"granularity": "per-channel"})
def pt2e_native(ctx: MethodContext) -> QuantParams:
    """litert-torch PT2E on its own (per-channel symmetric int8 weights with eps 2**-12,
    HistogramObserver int8 activations) calibrated on the frames; observer qparams mapped onto
    our quant points by value; sub-8-bit plan entries re-grid the runtime's ranges."""
    granularity = ctx.options.get("granularity", "per-channel")
    if granularity not in ("per-channel", "per-tensor"):
        raise ValueError(
            f"option granularity={granularity!r}: allowed values are ['per-channel', 'per-tensor']"
        )
    model = copy.deepcopy(ctx.folded).cpu().eval()
    batches = _cpu_batches(ctx)
    prepared = pt2e_prepare(model, batches[0], granularity == "per-channel")
    with torch.no_grad():
        for xb in batches:
            prepared(xb)
    qparams = {}
    for key, (_, obs) in observers(prepared).items():
        scale, zp = obs.calculate_qparams()
        qparams[key] = (
            scale.detach().float().numpy().reshape(-1),
            zp.detach().numpy().reshape(-1),
            obs,
        )
    probe = batches[0][:16]
    seen = observed_values(prepared, probe)
    mods = compute_modules(model)
    index = _value_index(model, ctx.placement, probe)
    weights: dict[str, WeightQuant] = {}
    found: dict[str, tuple[float, int]] = {}
    for key, (scale, zp, obs) in qparams.items():
        value = seen.get(key)
        if value is None:
            continue
        owner = _weight_owner(mods, value) if value.ndim >= 2 else None
        if owner is not None:
            weights[owner] = weight_quant_from_runtime(
                owner, mods[owner].weight, scale, ctx.weight_bits[owner]
            )
            continue
        node = index.match(value)
        if node is not None and node not in found and obs.dtype == torch.int8:
            found[node] = (
                float(scale[0]),
                int(zp[0]) + 128,
            )  # int8 grid -> our uint8 representation
    return finish_params(ctx, "pt2e-native", weights, found, {"runtime": "litert-torch PT2E"})
