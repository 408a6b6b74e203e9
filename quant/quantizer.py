"""Uniform affine quantizers: the numerics every method shares.

Weights are symmetric per output channel with a restricted range (zero point 0, codes in
[-(2^(b-1)-1), 2^(b-1)-1]) because that is what int8 runtimes require of weights; activations
are asymmetric per tensor with 2^b levels.
"""

from __future__ import annotations

import numpy as np
import torch


def weight_qmax(bits: int | torch.Tensor) -> int | torch.Tensor:
    """Largest code magnitude of a b-bit restricted-range symmetric weight (b=1 -> binary +-1)."""
    if isinstance(bits, torch.Tensor):
        return torch.where(bits <= 1, bits.clamp(min=0), 2 ** (bits - 1) - 1)
    return 0 if bits <= 0 else (1 if bits == 1 else 2 ** (bits - 1) - 1)


def round_half_even(x: torch.Tensor) -> torch.Tensor:
    # torch.round rounds half to even, like onnxruntime QuantizeLinear.
    return torch.round(x)


def channel_view(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v.reshape((-1,) + (1,) * (ndim - 1))


def quantize_weight(w: torch.Tensor, scale: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Integer codes (as float tensor) of `w` under per-channel `scale` and `bits`."""
    qmax = channel_view(weight_qmax(bits).to(w.dtype), w.ndim)
    s = channel_view(scale, w.ndim)
    q = round_half_even(w / s)
    return torch.maximum(torch.minimum(q, qmax), -qmax)


def fake_quant_weight(w: torch.Tensor, scale: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    return quantize_weight(w, scale, bits) * channel_view(scale, w.ndim)


def minmax_weight_scale(w: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Per-channel scale mapping max|w| onto the largest code."""
    amax = w.detach().abs().reshape(w.shape[0], -1).amax(dim=1)
    qmax = weight_qmax(bits).to(w.dtype).clamp(min=1)
    return torch.clamp(amax / qmax, min=1e-12)


def weight_error_per_channel(w: torch.Tensor, scale: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Sum of squared quantization error per output channel."""
    err = fake_quant_weight(w, scale, bits) - w
    return err.reshape(w.shape[0], -1).pow(2).sum(dim=1)


def act_qparams(lo: float, hi: float, bits: int, symmetric: bool = False) -> tuple[float, int]:
    """Scale and zero point of a 2^b-level grid covering [lo, hi] (which is widened to hold 0).

    Zero must be exactly representable (padding and ReLU outputs are exact zeros). Symmetric
    grids put the zero point at 2^(b-1) (int8 zero point 0, what TensorRT wants): the range
    becomes [-2^(b-1) s, (2^(b-1) - 1) s] with s = max(|lo|, |hi|) / (2^(b-1) - 1)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    qmax = (1 << bits) - 1
    if hi - lo < 1e-12:
        return 1e-8, (1 << (bits - 1)) if symmetric else 0
    if symmetric:
        half = (1 << (bits - 1)) - 1
        return float(np.float32(max(-lo, hi) / half)), 1 << (bits - 1)
    scale = (hi - lo) / qmax
    zp = int(np.clip(np.round(-lo / scale), 0, qmax))
    return float(np.float32(scale)), zp


def fake_quant_act(x: torch.Tensor, scale: float | torch.Tensor, zero_point: float | torch.Tensor, bits: int) -> torch.Tensor:
    """Fake-quantize an activation; differentiable in x (straight-through) and in scale (LSQ-style)."""
    qmax = float((1 << bits) - 1)
    q = torch.clamp(ste_round(x / scale) + zero_point, 0.0, qmax)
    return (q - zero_point) * scale


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # noqa: D102
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        return g


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """Round with a straight-through gradient."""
    return _RoundSTE.apply(x)
