"""Range setting shared by the baselines: min-max, percentile and MSE clipping searches.

Weights are clipped per output channel (or per tensor) on the restricted symmetric grid of
quant/quantizer.py; activations per tensor on the asymmetric 2^b-level grid that
`act_qparams` builds. Searches evaluate exactly the grid that will be stored (zero point
rounding and float32 scales included), vectorised over channels and over candidates.

Sources: percentile calibration (McKinstry et al. 2019, Wu et al. 2020 "Integer Quantization
for Deep Learning Inference"); MSE range setting (Banner et al. 2019; Nagel et al. 2021,
"A White Paper on Neural Network Quantization", section 3.4).
"""

from __future__ import annotations

import torch

from .qparams import WeightQuant
from .quantizer import minmax_weight_scale, weight_qmax
from .registry import MethodContext
from .sim import ActivationStats

WEIGHT_CLIPS = ("minmax", "percentile", "mse")
ACT_CLIPS = ("minmax", "percentile", "mse")
GRANULARITIES = ("per-channel", "per-tensor")


def choose(ctx: MethodContext, key: str, allowed: tuple[str, ...]) -> str:
    """Option `key` of the running method, checked against `allowed` (clear error otherwise)."""
    value = ctx.options.get(key)
    if value not in allowed:
        raise ValueError(f"option {key}={value!r}: allowed values are {list(allowed)}")
    return str(value)


def percentile_option(ctx: MethodContext, key: str = "percentile") -> float:
    p = float(ctx.options.get(key, 99.99))
    if not 50.0 < p <= 100.0:
        raise ValueError(f"option {key}={p}: must lie in (50, 100]")
    return p


def quantile(x: torch.Tensor, q: float, dim: int = -1) -> torch.Tensor:
    """Linear-interpolation quantile (numpy's default) along `dim`, without torch.quantile's
    16M-element limit."""
    xs = torch.sort(x.float(), dim=dim).values
    n = xs.shape[dim]
    pos = q * (n - 1)
    i0 = int(pos)
    i1 = min(i0 + 1, n - 1)
    frac = pos - i0
    a, b = xs.select(dim, i0), xs.select(dim, i1)
    return a + (b - a) * frac


# --- weights ----------------------------------------------------------------------------


def _per_channel(err: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """[candidates, out] errors; per tensor, every channel gets the tensor's total."""
    return err if per_channel else err.sum(dim=1, keepdim=True).expand_as(err)


def percentile_weight_scale(
    w: torch.Tensor, bits: torch.Tensor, p: float, per_channel: bool = True
) -> torch.Tensor:
    """Scale putting the p-th percentile of |w| (per channel, or of the tensor) on the top code."""
    a = w.detach().float().abs().reshape(w.shape[0], -1)
    amax = (
        quantile(a, p / 100.0, dim=1)
        if per_channel
        else quantile(a.reshape(1, -1), p / 100.0, dim=1).expand(w.shape[0])
    )
    qmax = weight_qmax(bits.to(w.device)).to(torch.float32).clamp(min=1)
    return torch.clamp(amax / qmax, min=1e-12)


def mse_weight_scale(
    w: torch.Tensor,
    bits: torch.Tensor,
    per_channel: bool = True,
    grid: int = 100,
    min_frac: float = 0.05,
) -> torch.Tensor:
    """Scale minimising ||w - Q(w)||^2 over clipping ranges alpha * max|w|, alpha on a grid of
    `grid` values from 1 down to `min_frac` (ties keep the widest range, i.e. min-max)."""
    w = w.detach().float()
    bits = bits.to(w.device)
    base = minmax_weight_scale(w, bits)
    if not per_channel:
        base = torch.full_like(base, float(base.max()))
    alphas = torch.linspace(1.0, min_frac, grid, device=w.device)
    flat = w.reshape(1, w.shape[0], -1)
    qmax = weight_qmax(bits).to(torch.float32)[None, :, None]
    errs = []
    chunk = max(1, (1 << 24) // max(w.numel(), 1))  # candidates per step: ~64 MB temporaries
    for i in range(0, grid, chunk):  # [chunk, out, fan-in] at a time
        s = (base[None, :] * alphas[i : i + chunk, None])[:, :, None]
        q = torch.maximum(torch.minimum(torch.round(flat / s), qmax), -qmax)
        errs.append((q * s - flat).pow(2).sum(dim=2))
    errs = _per_channel(torch.cat(errs), per_channel)  # [grid, out]
    best = torch.argmin(errs, dim=0)  # first minimum = widest range among ties
    return torch.clamp(base * alphas[best], min=1e-12)


def weight_scale(
    w: torch.Tensor, bits: torch.Tensor, clip: str, per_channel: bool, percentile: float = 99.99
) -> torch.Tensor:
    """Per-channel scale of `w` under clipping rule `clip` (all channels equal if per tensor)."""
    if clip == "minmax":
        s = minmax_weight_scale(w.detach().float(), bits.to(w.device))
        return s if per_channel else torch.full_like(s, float(s.max()))
    if clip == "percentile":
        return percentile_weight_scale(w, bits, percentile, per_channel)
    if clip == "mse":
        return mse_weight_scale(w, bits, per_channel)
    raise ValueError(f"weight clipping {clip!r}: allowed {list(WEIGHT_CLIPS)}")


def clipped_weights(
    modules: dict[str, torch.nn.Module],
    ctx: MethodContext,
    clip: str,
    per_channel: bool,
    percentile: float = 99.99,
) -> dict[str, WeightQuant]:
    """Round-to-nearest weight codes of every module under `clip`, at the plan's bit-widths."""
    from .calibrate import bits_tensor, make_weight_quant

    out: dict[str, WeightQuant] = {}
    for name, mod in modules.items():
        w = mod.weight.detach().float()
        bits = bits_tensor(w.shape[0], ctx.weight_bits[name]).to(w.device)
        out[name] = make_weight_quant(
            name, w, weight_scale(w, bits, clip, per_channel, percentile), bits
        )
    return out


# --- activations --------------------------------------------------------------------------


def act_grids(
    lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Vectorised `act_qparams`: (scale, zero point) of each candidate range [lo_i, hi_i]."""
    lo, hi = torch.clamp(lo.double(), max=0.0), torch.clamp(hi.double(), min=0.0)
    qmax = (1 << bits) - 1
    if symmetric:
        half = (1 << (bits - 1)) - 1
        scale = (torch.maximum(-lo, hi) / half).float().double()
        zp = torch.full_like(scale, float(1 << (bits - 1)))
    else:
        raw = (hi - lo) / qmax
        zp = torch.clamp(torch.round(-lo / raw.clamp(min=1e-30)), 0, qmax)
        scale = raw.float().double()
    degenerate = (hi - lo) < 1e-12
    return torch.where(degenerate, torch.full_like(scale, 1e-8), scale), zp


def act_grid_error(
    x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool, chunk: int = 10
) -> torch.Tensor:
    """Sum of squared fake-quantization error of `x` under each candidate grid [lo_i, hi_i]."""
    scale, zp = act_grids(lo, hi, bits, symmetric)
    scale, zp = scale.float(), zp.float()
    x = x.float().reshape(1, -1)
    qmax = float((1 << bits) - 1)
    out = []
    for i in range(0, len(scale), chunk):
        s, z = scale[i : i + chunk, None], zp[i : i + chunk, None]
        q = torch.clamp(torch.round(x / s) + z, 0.0, qmax)
        out.append(((q - z) * s - x).double().pow(2).sum(dim=1))
    return torch.cat(out)


def mse_act_range(
    x: torch.Tensor, bits: int, symmetric: bool = False, grid: int = 100, min_frac: float = 0.05
) -> tuple[float, float]:
    """Range [lo, hi] whose grid minimises the squared error on samples `x`: a joint shrink of
    the min-max range (alpha on a `grid`-point grid from 1 down to `min_frac`; ties keep the
    widest), then for signed tensors lo and hi refined one at a time on the same grid."""
    x = x.detach().float().reshape(-1)
    lo0, hi0 = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    if hi0 - lo0 < 1e-12:
        return lo0, hi0
    alphas = torch.linspace(1.0, min_frac, grid, dtype=torch.float64, device=x.device)
    err = act_grid_error(x, lo0 * alphas, hi0 * alphas, bits, symmetric)
    a = float(alphas[int(torch.argmin(err))])
    lo, hi = lo0 * a, hi0 * a
    if lo0 < 0 < hi0 and not symmetric:
        err = act_grid_error(x, lo0 * alphas, torch.full_like(alphas, hi), bits, symmetric)
        lo = lo0 * float(alphas[int(torch.argmin(err))])
        err = act_grid_error(x, torch.full_like(alphas, lo), hi0 * alphas, bits, symmetric)
        hi = hi0 * float(alphas[int(torch.argmin(err))])
    return lo, hi


def act_ranges(
    ctx: MethodContext, stats: ActivationStats, clip: str, percentile: float = 99.99
) -> dict[str, tuple[float, float]]:
    """[lo, hi] of every quant point from calibration statistics under rule `clip`."""
    symmetric = bool(ctx.options.get("act_symmetric", False))
    out: dict[str, tuple[float, float]] = {}
    for point in ctx.placement.points:
        lo, hi = stats.lo[point], stats.hi[point]
        if clip == "percentile":
            v = stats.values(point)
            lo = max(lo, float(quantile(v, 1.0 - percentile / 100.0, dim=0)))
            hi = min(hi, float(quantile(v, percentile / 100.0, dim=0)))
        elif clip == "mse":
            v = stats.values(point)
            # the reservoir may miss the extremes; search from the exact min/max
            v = torch.cat([v, torch.tensor([lo, hi], device=v.device)])
            lo, hi = mse_act_range(v, ctx.act_bits[point], symmetric)
        elif clip != "minmax":
            raise ValueError(f"activation clipping {clip!r}: allowed {list(ACT_CLIPS)}")
        out[point] = (lo, hi)
    return out
