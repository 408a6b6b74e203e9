"""One entry point: quantize(model, method, bits, calibration) -> QuantResult."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch import fx

from .graph import Placement, compute_modules, fold_bn, place
from .methods import METHODS, MethodContext
from .qparams import BitSpec, QuantParams
from .quantizer import weight_qmax
from .sim import build_sim
from .size import packed_model_bytes


@dataclass
class QuantResult:
    method: str
    bits: str  # "fp32" or the BitSpec label
    folded: fx.GraphModule  # BN-folded float model
    placement: Placement
    sim: fx.GraphModule  # what the deployed artifact must compute
    params: QuantParams | None  # None for fp32
    stats: dict = field(default_factory=dict)

    @property
    def quantized(self) -> bool:
        return self.params is not None


def uniform_plan(placement: Placement, folded: fx.GraphModule, spec: BitSpec, first_last_bits: int | None):
    """Per-layer weight bits and per-point activation bits of a uniform W{w}A{a} budget.

    First/last layers and the model input/output keep `first_last_bits` (the BRECQ/QDrop
    convention); every method sees the same plan, so comparisons stay at equal size."""
    w_int = int(round(spec.w))
    weight_bits = {name: w_int for name in compute_modules(folded)}
    act_bits = {p: spec.a for p in placement.points}
    if first_last_bits:
        for name in (placement.first_layer, placement.last_layer):
            if name:
                weight_bits[name] = max(weight_bits[name], first_last_bits)
        for p in list(placement.inputs) + [placement.output_point]:
            if p:
                act_bits[p] = max(act_bits[p], first_last_bits)
    return weight_bits, act_bits


def plan_budget_bits(folded: fx.GraphModule, weight_bits: dict[str, int], avg_bits: float | None = None) -> int:
    """Packed weight bits of a plan; with `avg_bits`, the interior layers get that average."""
    total = 0
    for name, mod in compute_modules(folded).items():
        n = mod.weight.numel()
        total += int(round(n * (avg_bits if avg_bits is not None and weight_bits[name] != 8 else weight_bits[name])))
    return total


def quantize(
    model: nn.Module,
    method: str,
    bits: str | None,
    calib_x: torch.Tensor,
    calib_y: torch.Tensor,
    options: dict | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    first_last_bits: int | None = 8,
    log: Callable[[str], None] | None = None,
) -> QuantResult:
    if method not in METHODS:
        raise KeyError(f"unknown method {method!r}; registered: {sorted(METHODS)}")
    info = METHODS[method]
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    folded = fold_bn(model.cpu().eval())
    placement = place(folded)
    if not info.quantizes:
        stats = {"wall_s": time.perf_counter() - t0, "device": str(dev)}
        return QuantResult(method, "fp32", folded, placement, folded, None, stats)
    if bits is None:
        raise ValueError(f"method {method!r} needs bits (e.g. W8A8)")
    spec = BitSpec.parse(bits)
    weight_bits, act_bits = uniform_plan(placement, folded, spec, first_last_bits)
    options = {**info.defaults, **(options or {})}
    ctx = MethodContext(
        folded=folded.to(dev),
        placement=placement,
        calib_x=calib_x,
        calib_y=calib_y,
        weight_bits=weight_bits,
        act_bits=act_bits,
        options=options,
        seed=seed,
        device=dev,
        budget_bits=plan_budget_bits(folded, weight_bits, spec.w if not float(spec.w).is_integer() else None),
        log=log or (lambda s: None),
    )
    params = info.fn(ctx)
    folded = folded.cpu()
    params.method, params.bits = method, spec.label
    params.grid_of = dict(placement.grid_of)
    params.info = {**params.info, "options": options, "seed": seed, "first_last_bits": first_last_bits}
    _check_params(params, folded, placement)
    sim = build_sim(folded, placement, params)
    n_params = sum(p.numel() for p in folded.parameters())
    dense_bits = sum(w.packed_bits for w in params.weights.values())
    packed_bytes = packed_model_bytes(params, n_params)
    # A method that stores another real layout (e.g. bitmap-sparse after pruning) reports the
    # payload its own packer produced; sizes stay counted, never estimated.
    payload_bits = params.info.get("payload_bits")
    if payload_bits is not None:
        packed_bytes += (int(payload_bits) - dense_bits + 7) // 8
    stats = {
        "wall_s": time.perf_counter() - t0,
        "device": str(dev),
        "peak_rss_mb": max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, rss0) / 1024,
        "packed_bytes": packed_bytes,
        "packed_weight_bits": int(payload_bits) if payload_bits is not None else dense_bits,
        "budget_bits": ctx.budget_bits,
        "avg_weight_bits": params.avg_weight_bits(),
        "code_hash": params.code_hash(),
    }
    if dev.type == "cuda":
        stats["peak_cuda_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return QuantResult(method, spec.label, folded, placement, sim, params, stats)


def _check_params(params: QuantParams, folded: fx.GraphModule, placement: Placement) -> None:
    """Every method's output must be complete and its codes within their bit-widths."""
    mods = compute_modules(folded)
    missing = set(mods) - set(params.weights)
    if missing:
        raise ValueError(f"{params.method}: no weight quantization for {sorted(missing)}")
    for name, wq in params.weights.items():
        if wq.codes.shape != tuple(mods[name].weight.shape):
            raise ValueError(f"{params.method}: codes of {name} have shape {wq.codes.shape}")
        limit = torch.tensor([weight_qmax(int(b)) for b in wq.bits]).numpy().reshape((-1,) + (1,) * (wq.codes.ndim - 1))
        if (abs(wq.codes.astype(int)) > limit).any():
            raise ValueError(f"{params.method}: codes of {name} exceed their bit-widths")
    missing_acts = set(placement.points) - set(params.acts)
    if missing_acts:
        raise ValueError(f"{params.method}: no activation quantization for {sorted(missing_acts)}")
