"""Helpers shared by methods: turning scales and ranges into QuantParams entries."""

from __future__ import annotations

import numpy as np
import torch

from .graph import compute_modules
from .qparams import ActQuant, WeightQuant
from .quantizer import act_qparams, minmax_weight_scale, quantize_weight
from .registry import MethodContext
from .sim import ActivationStats, collect_activation_stats


class StopForward(Exception):
    """Raised by a hook once the layer of interest has run (the rest of the net is not needed)."""


def run_hooked(model: torch.nn.Module, batches, handles: list) -> None:
    """Run `model` on every batch (a hook may cut a pass short with StopForward); then remove
    the hooks' `handles`."""
    try:
        for xb in batches:
            try:
                model(xb)
            except StopForward:
                pass
    finally:
        for h in handles:
            h.remove()


def bits_tensor(n: int, bits: int) -> torch.Tensor:
    return torch.full((n,), int(bits), dtype=torch.int64)


def make_weight_quant(name: str, w: torch.Tensor, scale: torch.Tensor, bits: torch.Tensor) -> WeightQuant:
    """Codes of `w` under per-channel `scale`/`bits` as plain data (scale rounded to float32 first,
    so that the codes are exactly what a runtime computes from the stored scale)."""
    scale = scale.detach().float().cpu()
    bits = bits.detach().cpu().to(torch.int64)
    codes = quantize_weight(w.detach().float().cpu(), scale, bits)
    return WeightQuant(
        module=name,
        codes=codes.numpy().astype(np.int8),
        scale=scale.numpy().astype(np.float32),
        bits=bits.numpy().astype(np.int8),
    )


def minmax_weights(ctx: MethodContext, per_channel: bool = True) -> dict[str, WeightQuant]:
    out: dict[str, WeightQuant] = {}
    for name, mod in compute_modules(ctx.folded).items():
        w = mod.weight.detach().float().cpu()
        bits = bits_tensor(w.shape[0], ctx.weight_bits[name])
        scale = minmax_weight_scale(w, bits)
        if not per_channel:
            scale = torch.full_like(scale, float(scale.max()))
        out[name] = make_weight_quant(name, w, scale, bits)
    return out


def float_activation_stats(ctx: MethodContext) -> ActivationStats:
    return collect_activation_stats(ctx.folded.to(ctx.device), ctx.placement, ctx.batches(), seed=ctx.seed)


def acts_from_ranges(ctx: MethodContext, ranges: dict[str, tuple[float, float]]) -> dict[str, ActQuant]:
    """Activation grids from ranges; option `act_symmetric` (TensorRT-style int8) centres them."""
    out: dict[str, ActQuant] = {}
    symmetric = bool(ctx.options.get("act_symmetric", False))
    for point in ctx.placement.points:
        lo, hi = ranges[point]
        bits = ctx.act_bits[point]
        scale, zp = act_qparams(lo, hi, bits, symmetric=symmetric)
        out[point] = ActQuant(point, scale, zp, bits)
    return out
