"""GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers"; the Optimal Brain Quantization solver of Frantar & Alistarh 2022).

Each conv/linear layer is a matrix problem min ||W X - Q X||^2 over the calibration inputs X:
convolutions become matrices through `unfold` (one column per input patch), grouped and
depthwise convolutions become one independent problem per group (batched), and the Hessian
H = 2 X X^T / n is accumulated in float32 on the method's device. Columns are quantized one at
a time with the remaining ones updated through the Cholesky factor of H^-1, in lazy blocks of
`block_size` columns; `damp` (0.01 = 1% of the mean diagonal) keeps H invertible and
`act_order` processes columns by decreasing Hessian diagonal. Layers run sequentially: each
layer's Hessian comes from inputs produced by the already quantized layers before it.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..calibrate import StopForward, acts_from_ranges, bits_tensor, run_hooked
from ..clipping import GRANULARITIES, act_ranges, choose, weight_scale
from ..graph import compute_modules
from ..qparams import QuantParams, WeightQuant
from ..quantizer import weight_qmax
from ..registry import MethodContext, register
from ..sim import collect_activation_stats


def layer_columns(mod: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The layer's input as matrix columns [groups, d, n] (d = fan-in of one group), so that
    output = W_g @ X_g for each group g."""
    if isinstance(mod, nn.Linear):
        return x.reshape(-1, x.shape[-1]).t().unsqueeze(0), 1
    if isinstance(mod, nn.Conv1d):
        x = x.unsqueeze(2)
        k, s, d, p = (1, mod.kernel_size[0]), (1, mod.stride[0]), (1, mod.dilation[0]), mod.padding
        pad = p if isinstance(p, str) else (0, p[0])
    elif isinstance(mod, nn.Conv2d):
        k, s, d, pad = mod.kernel_size, mod.stride, mod.dilation, mod.padding
    else:
        raise TypeError(f"GPTQ: unsupported layer type {type(mod).__name__}")
    if getattr(mod, "padding_mode", "zeros") != "zeros":  # reflect / replicate / circular
        x = F.pad(x, mod._reversed_padding_repeated_twice, mode=mod.padding_mode)
        pad = (0, 0)
    elif isinstance(pad, str):  # 'valid' / 'same': pad explicitly, as the conv does
        total = [dd * (kk - 1) for dd, kk in zip(d, k)] if pad == "same" else [0, 0]
        x = F.pad(
            x, (total[1] // 2, total[1] - total[1] // 2, total[0] // 2, total[0] - total[0] // 2)
        )
        pad = (0, 0)
    cols = F.unfold(x, k, dilation=d, padding=pad, stride=s)  # [N, C*kh*kw, L]
    g = mod.groups
    n, dim, length = cols.shape
    cols = cols.transpose(0, 1).reshape(g, dim // g, n * length)
    return cols, g


@torch.no_grad()
def layer_hessian(
    model: nn.Module, name: str, batches: list[torch.Tensor], chunk_elems: int = 1 << 25
) -> torch.Tensor:
    """H = 2 X X^T / n of module `name`'s input, per group: [groups, d, d] float32."""
    mod = model.get_submodule(name)
    acc: dict[str, torch.Tensor | int] = {"H": 0, "n": 0}

    def hook(module, args):
        x = args[0].float()
        # bound the unfolded matrix: chunks of samples
        per_sample = max(1, x[:1].numel() * int(np.prod(getattr(module, "kernel_size", (1,)))))
        step = max(1, chunk_elems // per_sample)
        for i in range(0, x.shape[0], step):
            cols, _ = layer_columns(module, x[i : i + step])
            acc["H"] = acc["H"] + torch.bmm(cols, cols.transpose(1, 2))
            acc["n"] = int(acc["n"]) + cols.shape[2]
        raise StopForward

    run_hooked(model, batches, [mod.register_forward_pre_hook(hook)])
    return 2.0 * acc["H"] / max(int(acc["n"]), 1)  # type: ignore[operator]


def _batched_perm(m: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """m[g][perm[g]][:, perm[g]] for every group g."""
    g, d, _ = m.shape
    rows = torch.gather(m, 1, perm[:, :, None].expand(g, d, d))
    return torch.gather(rows, 2, perm[:, None, :].expand(g, d, d))


def _inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) I)^-1, raising the damping if needed."""
    eye = torch.eye(h.shape[-1], device=h.device, dtype=h.dtype)
    mean_diag = torch.diagonal(h, dim1=-2, dim2=-1).mean(-1)
    for attempt in range(6):
        hd = h + (damp * 10**attempt) * mean_diag[:, None, None] * eye
        chol, info = torch.linalg.cholesky_ex(hd)
        if int(info.max()) == 0:
            inv = torch.cholesky_inverse(chol)
            up, info = torch.linalg.cholesky_ex(inv, upper=True)
            if int(info.max()) == 0:
                return up
    raise RuntimeError("GPTQ: Hessian not positive definite even with 10^5 x damping")


@torch.no_grad()
def gptq_quantize(
    w: torch.Tensor,
    h: torch.Tensor,
    scale: torch.Tensor,
    qmax: torch.Tensor,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
) -> torch.Tensor:
    """Integer codes of w [G, R, d] (G independent problems of R rows) given Hessians h [G, d, d],
    per-row scales and code limits [G, R]; the OBQ/GPTQ column sweep with lazy block updates."""
    w = w.float().clone()
    h = h.float().clone()
    g, r, d = w.shape
    scale, qmax = scale.float(), qmax.float()
    diag = torch.diagonal(h, dim1=-2, dim2=-1)
    dead = diag == 0  # inputs that are always zero: their weights do not matter
    diag[dead] = 1.0
    w.masked_fill_(dead[:, None, :], 0.0)
    perm = None
    if act_order:
        perm = torch.argsort(
            torch.diagonal(h, dim1=-2, dim2=-1), dim=1, descending=True, stable=True
        )
        w = torch.gather(w, 2, perm[:, None, :].expand(g, r, d))
        h = _batched_perm(h, perm)
    hinv = _inverse_cholesky(h, damp)
    q = torch.zeros_like(w)
    s, lim = scale[:, :, None], qmax[:, :, None]
    for i1 in range(0, d, block_size):
        i2 = min(i1 + block_size, d)
        w1 = w[:, :, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[:, i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, :, i : i + 1]
            code = torch.clamp(torch.round(col / s), -lim, lim)
            q[:, :, i1 + i : i1 + i + 1] = code
            e = (col - code * s) / hinv1[:, i, i][:, None, None]
            w1[:, :, i:] -= e * hinv1[:, i : i + 1, i:]
            err1[:, :, i : i + 1] = e
        w[:, :, i2:] -= torch.bmm(err1, hinv[:, i1:i2, i2:])
    if perm is not None:
        inv = torch.argsort(perm, dim=1)
        q = torch.gather(q, 2, inv[:, None, :].expand(g, r, d))
    return q


def quantize_layer(
    mod: nn.Module, h: torch.Tensor, scale: torch.Tensor, bits: torch.Tensor, opts: dict
) -> torch.Tensor:
    """GPTQ codes of one conv/linear module, in the weight's own shape."""
    wt = mod.weight.detach()
    groups = h.shape[0]
    w = wt.reshape(groups, wt.shape[0] // groups, -1)
    qmax = weight_qmax(bits.to(wt.device)).reshape(groups, -1)
    codes = gptq_quantize(
        w,
        h,
        scale.reshape(groups, -1),
        qmax,
        block_size=int(opts.get("block_size", 128)),
        damp=float(opts.get("damp", 0.01)),
        act_order=bool(opts.get("act_order", False)),
    )
    return codes.reshape(wt.shape)


@register(
    "gptq",
    defaults={
        "granularity": "per-channel",
        "weight_clip": "minmax",
        "act_clip": "minmax",
        "block_size": 128,
        "damp": 0.01,
        "act_order": False,
        "act_symmetric": False,
    },
)
def gptq(ctx: MethodContext) -> QuantParams:
    """GPTQ weights (Frantar et al. 2022): per-layer Hessians of unfolded conv / linear inputs in
    float32 on the device, sequential over layers, lazy block updates (`block_size` 128),
    damping `damp` 0.01, optional `act_order`; groups and depthwise convs are per-group problems.
    Scales per output channel (or per tensor) from `weight_clip` (minmax as in the paper, or
    mse). Activations: `act_clip` minmax (default) or mse, observed on the GPTQ-weight model."""
    per_channel = choose(ctx, "granularity", GRANULARITIES) == "per-channel"
    clip = choose(ctx, "weight_clip", ("minmax", "mse"))
    act_clip = choose(ctx, "act_clip", ("minmax", "mse"))
    if float(ctx.options.get("damp", 0.01)) <= 0 or int(ctx.options.get("block_size", 128)) < 1:
        raise ValueError("options damp (> 0) and block_size (>= 1) must be positive")
    model = copy.deepcopy(ctx.folded).to(ctx.device).eval()
    batches = ctx.batches()
    weights: dict[str, WeightQuant] = {}
    for name, mod in compute_modules(model).items():
        w = mod.weight.detach().float()
        bits = bits_tensor(w.shape[0], ctx.weight_bits[name]).to(w.device)
        scale = weight_scale(w, bits, clip, per_channel).float()
        h = layer_hessian(model, name, batches)
        codes = quantize_layer(mod, h, scale, bits, ctx.options)
        weights[name] = WeightQuant(
            name,
            codes.cpu().numpy().astype(np.int8),
            scale.cpu().numpy().astype(np.float32),
            bits.cpu().numpy().astype(np.int8),
        )
        mod.weight.data = torch.from_numpy(weights[name].dequantize()).to(
            device=w.device, dtype=mod.weight.dtype
        )
    stats = collect_activation_stats(model, ctx.placement, batches, seed=ctx.seed)
    acts = acts_from_ranges(ctx, act_ranges(ctx, stats, act_clip))
    return QuantParams("gptq", "", weights, acts)
