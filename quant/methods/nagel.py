"""The standard PTQ pipeline of Nagel et al. 2021 ("A White Paper on Neural Network
Quantization", section 4.1): cross-layer equalisation, then weight range setting (MSE), bias
correction from calibration data, and activation range setting (MSE).

Cross-layer equalisation and bias correction follow Nagel et al. 2019 ("Data-Free Quantization
Through Weight Equalization and Bias Correction", DFQ): for every conv -> ReLU -> conv pair the
i-th output channel of the first layer is divided by s_i and the i-th input channel of the
second multiplied by s_i, s_i = sqrt(r1_i r2_i) / r2_i, which equalises the two per-channel
weight ranges and leaves the float function unchanged (ReLU is positive homogeneous). Bias
correction here is DFQ's empirical variant: each layer's bias absorbs E[W x] - E[Q(W) x~], the
mean output error over the calibration frames, with x~ the input produced by the already
quantized and corrected layers in front of it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx

from ..calibrate import StopForward, acts_from_ranges, run_hooked
from ..clipping import GRANULARITIES, act_ranges, choose, clipped_weights
from ..graph import compute_modules
from ..qparams import QuantParams, WeightQuant
from ..registry import MethodContext, register
from ..sim import collect_activation_stats

# Ops between the pair that commute with a positive per-channel scaling.
_HOMOGENEOUS = (
    nn.ReLU,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.Dropout,
    nn.Identity,
    nn.Flatten,
)
_HOMOGENEOUS_FUNCS = {
    F.relu,
    torch.relu,
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    F.dropout,
    torch.flatten,
}


@dataclass(frozen=True)
class CLEPair:
    first: str  # conv/linear whose output channels are divided by s
    second: str  # conv/linear whose input channels are multiplied by s


def _homogeneous(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], _HOMOGENEOUS)
    if node.op == "call_function":
        return node.target in _HOMOGENEOUS_FUNCS
    if node.op == "call_method":
        return node.target in ("relu", "relu_", "flatten")
    return False


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return type(modules[node.target]) is nn.ReLU
    if node.op == "call_function":
        return node.target in (F.relu, torch.relu)
    return node.op == "call_method" and node.target in ("relu", "relu_")


def find_cle_pairs(gm: fx.GraphModule) -> list[CLEPair]:
    """conv/linear -> ReLU -> (pooling / flatten)* -> conv/linear chains with no branching:
    the pairs cross-layer equalisation may rescale without changing the function."""
    modules = dict(gm.named_modules())
    compute = (nn.Conv1d, nn.Conv2d, nn.Linear)
    pairs: list[CLEPair] = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], compute):
            continue
        cur, saw_relu = node, False
        while len(cur.users) == 1:
            nxt = next(iter(cur.users))
            if nxt.args[0] is not cur or any(
                isinstance(a, fx.Node) for a in list(nxt.args[1:]) + list(nxt.kwargs.values())
            ):
                break  # the tensor enters in a second role (e.g. a residual add)
            if nxt.op == "call_module" and isinstance(modules[nxt.target], compute):
                first, second = modules[node.target], modules[nxt.target]
                channels = first.weight.shape[0]
                cin = second.weight.shape[1] * getattr(second, "groups", 1)
                if saw_relu and channels == cin:
                    pairs.append(CLEPair(node.target, nxt.target))
                break
            if not _homogeneous(nxt, modules):
                break
            saw_relu = saw_relu or _is_relu(nxt, modules)
            cur = nxt
    return pairs


def input_channel_view(w: torch.Tensor, groups: int) -> torch.Tensor:
    """[in channels, everything touching that channel] view of a conv/linear weight (a copy)."""
    if w.ndim == 2:
        return w.t().contiguous()
    cout, cin_g = w.shape[:2]
    r = cout // groups
    v = w.reshape(groups, r, cin_g, -1).permute(0, 2, 1, 3)  # [G, cin_g, R, k]
    return v.reshape(groups * cin_g, -1)


def scale_input_channels(w: torch.Tensor, s: torch.Tensor, groups: int) -> torch.Tensor:
    """w with input channel i multiplied by s_i."""
    if w.ndim == 2:
        return w * s[None, :]
    cout, cin_g = w.shape[:2]
    r = cout // groups
    v = w.reshape(groups, r, cin_g, -1) * s.reshape(groups, 1, cin_g, 1)
    return v.reshape(w.shape)


def equalize_pair(first: nn.Module, second: nn.Module) -> torch.Tensor:
    """One DFQ step on a pair; returns the scales s applied."""
    w1 = first.weight.detach()
    r1 = w1.abs().reshape(w1.shape[0], -1).amax(dim=1)
    groups = getattr(second, "groups", 1)
    r2 = input_channel_view(second.weight.detach(), groups).abs().amax(dim=1)
    ok = (r1 > 0) & (r2 > 0)
    s = torch.where(ok, torch.sqrt(r1 * r2) / r2.clamp(min=1e-30), torch.ones_like(r1))
    with torch.no_grad():
        first.weight.div_(s.reshape((-1,) + (1,) * (w1.ndim - 1)))
        if first.bias is not None:
            first.bias.div_(s)
        second.weight.copy_(scale_input_channels(second.weight, s, groups))
    return s


def cross_layer_equalize(gm: fx.GraphModule, iters: int = 20, tol: float = 1e-6) -> list[CLEPair]:
    """Equalise every pair of `gm` in place, sweeping until the scales stop changing (chains such
    as depthwise-separable blocks share layers between pairs)."""
    pairs = find_cle_pairs(gm)
    mods = dict(gm.named_modules())
    for _ in range(iters):
        worst = 0.0
        for p in pairs:
            s = equalize_pair(mods[p.first], mods[p.second])
            worst = max(worst, float(s.log().abs().max()))
        if worst < tol:
            break
    return pairs


# --- bias correction ------------------------------------------------------------------------


def _channel_mean(y: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum over everything but the channel axis (1 for conv maps, last for linear outputs)."""
    if y.ndim == 2:
        return y.double().sum(0), y.shape[0]
    c = y.shape[1]
    flat = y.double().transpose(0, 1).reshape(c, -1)
    return flat.sum(1), flat.shape[1]


@torch.no_grad()
def output_means(
    model: nn.Module, names: list[str], batches: list[torch.Tensor], stop_after: str | None = None
) -> dict[str, torch.Tensor]:
    """Per-channel mean output of modules `names` over the calibration batches."""
    mods = dict(model.named_modules())
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name):
        def fn(module, args, out):
            s, n = _channel_mean(out)
            sums[name] = sums.get(name, 0) + s
            counts[name] = counts.get(name, 0) + n
            if name == stop_after:
                raise StopForward

        return fn

    run_hooked(model, batches, [mods[n].register_forward_hook(hook(n)) for n in names])
    return {n: sums[n] / counts[n] for n in names if n in sums}


@torch.no_grad()
def empirical_bias_correction(
    reference: nn.Module, quantized: nn.Module, batches: list[torch.Tensor]
) -> dict[str, np.ndarray]:
    """Correct, in `quantized` (same graph, quantized weights) and in order, every conv/linear
    bias so that its mean output over `batches` equals the one of `reference`; returns the new
    float biases. Layers run sequentially: each sees the already corrected layers before it."""
    names = list(compute_modules(quantized))
    target = output_means(reference, names, batches)
    qmods = compute_modules(quantized)
    out: dict[str, np.ndarray] = {}
    for name in names:
        mod = qmods[name]
        got = output_means(quantized, [name], batches, stop_after=name)[name]
        delta = (target[name] - got).to(mod.weight.dtype)
        if mod.bias is None:
            mod.bias = nn.Parameter(
                torch.zeros(mod.weight.shape[0], dtype=mod.weight.dtype, device=mod.weight.device)
            )
        mod.bias.add_(delta)
        out[name] = mod.bias.detach().float().cpu().numpy().copy()
    return out


def load_weights(model: nn.Module, weights: dict[str, WeightQuant]) -> None:
    """Put the dequantized codes into `model`'s conv/linear layers (on their device)."""
    mods = compute_modules(model)
    for name, wq in weights.items():
        w = mods[name].weight
        w.data = torch.from_numpy(wq.dequantize()).to(device=w.device, dtype=w.dtype)


def module_biases(model: nn.Module) -> dict[str, np.ndarray]:
    return {
        n: m.bias.detach().float().cpu().numpy().copy()
        for n, m in compute_modules(model).items()
        if m.bias is not None
    }


@register(
    "nagel",
    defaults={
        "granularity": "per-channel",
        "cle": True,
        "cle_iters": 20,
        "bias_correction": True,
        "weight_clip": "mse",
        "act_clip": "mse",
        "act_symmetric": False,
    },
)
def nagel(ctx: MethodContext) -> QuantParams:
    """Nagel et al. 2021 white-paper PTQ pipeline: cross-layer equalisation of conv-ReLU-conv
    pairs incl. depthwise (Nagel et al. 2019, DFQ; `cle`, `cle_iters` sweeps), MSE weight ranges
    per channel (`weight_clip`), empirical bias correction E[W x] - E[Q(W) x] from the
    calibration frames (`bias_correction`; corrected biases go to QuantParams.biases), MSE
    activation ranges (`act_clip`) observed on the quantized-weight model."""
    per_channel = choose(ctx, "granularity", GRANULARITIES) == "per-channel"
    weight_clip = choose(ctx, "weight_clip", ("minmax", "mse"))
    act_clip = choose(ctx, "act_clip", ("minmax", "mse"))
    equalized = copy.deepcopy(ctx.folded).to(ctx.device).eval()
    pairs = (
        cross_layer_equalize(equalized, int(ctx.options.get("cle_iters", 20)))
        if ctx.options.get("cle", True)
        else []
    )
    weights = clipped_weights(compute_modules(equalized), ctx, weight_clip, per_channel)
    quantized = copy.deepcopy(equalized)
    load_weights(quantized, weights)
    batches = ctx.batches()
    if ctx.options.get("bias_correction", True):
        empirical_bias_correction(equalized, quantized, batches)
    stats = collect_activation_stats(quantized, ctx.placement, batches, seed=ctx.seed)
    acts = acts_from_ranges(ctx, act_ranges(ctx, stats, act_clip))
    # every bias: CLE rescaled some, bias correction changed all
    biases = module_biases(quantized)
    info = {"cle_pairs": [[p.first, p.second] for p in pairs]}
    return QuantParams("nagel", "", weights, acts, biases=biases, info=info)
