"""HAQ: horizontal (within-layer, across output channels) adaptive quantization of DeFakeQ.

1. Statistics, from the labelled calibration frames and the full-precision detector:
   - saliency  S_c = E_n[(sum_p a_{n,c,p} dL_n/da_{n,c,p})^2]  (first-order Taylor estimate of
     the loss change when channel c is perturbed; L = cross-entropy on the real/fake labels);
   - redundancy R_c = max_{c' != c} |corr(a_c, a_c')| over frames and positions (a constant
     channel is fully redundant: the next layer's bias can absorb it);
   - input energy E[x_i^2] of every layer input channel (the diagonal of the layer Hessian).
2. Weight bits per channel from a candidate set (0 = eliminated) minimising
      sum_c S~_c * eps_c(b_c)   subject to   sum_c b_c * n_c <= budget
   with eps_c(b) the relative output error of channel c at b bits after a per-channel clipping
   search, eps_c(0) = 1 - R_c^2, S~_c = S_c + floor * mean_layer(S); solved exactly by dynamic
   programming over the budget (coarsened when the budget is huge; sizes rounded up, so the
   budget always holds), then topped up greedily.
3. Elimination: a channel may get 0 bits when it is redundant and not salient and its layer
   feeds exactly one dense conv/linear through channel-wise ops; that next layer's float weights
   and bias are then refitted by least squares on the calibration inputs with the channel gone.
4. Activation bits per quant point (per tensor) from a candidate set, raised where the measured
   sensitivity (KL of the detector output when only that point is quantized) is highest,
   under the plan's average activation bits.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx

from ..graph import (
    COMPUTE_MODULES,
    PASS_FUNCS,
    PASS_MODULES,
    REROUND_FUNCS,
    REROUND_METHODS,
    REROUND_MODULES,
    Placement,
)
from ..quantizer import channel_view, weight_qmax
from ..recon import mse_weight_scale, run_tap, tap


# --- statistics ------------------------------------------------------------------------------
@dataclass
class ChannelStats:
    """Per-layer channel statistics of the full-precision model on the calibration frames."""

    saliency: dict[str, torch.Tensor] = field(default_factory=dict)  # [C_out]
    redundancy: dict[str, torch.Tensor] = field(default_factory=dict)  # [C_out]
    abs_corr: dict[str, torch.Tensor] = field(default_factory=dict)  # [C_out, C_out], diag 0
    in_energy: dict[str, torch.Tensor] = field(default_factory=dict)  # [C_in] E[x^2]
    fisher: dict[str, torch.Tensor] = field(default_factory=dict)  # [C_out] E_n[sum_p (dL/da)^2]
    out_energy: dict[str, torch.Tensor] = field(default_factory=dict)  # [C_out] E[a^2]


def layer_nodes(gm: fx.GraphModule, names: list[str]) -> dict[str, tuple[str, str]]:
    """layer -> (node of its input, node of its output after a directly following ReLU)."""
    modules = dict(gm.named_modules())
    out: dict[str, tuple[str, str]] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module" and n.target in names:
            arg = n.args[0]
            res = n
            if len(n.users) == 1:
                u = next(iter(n.users))
                if _channelwise(u, modules) == "relu":
                    res = u
            out[n.target] = (arg.name, res.name)
    return out


def _channelwise(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """'relu' / 'pass' for ops that act on each channel separately, else None."""
    from ..graph import RELU_FUNCS, RELU_METHODS, RELU_MODULES

    if node.op == "call_module":
        m = modules.get(node.target)
        if isinstance(m, RELU_MODULES):
            return "relu"
        if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.Dropout, nn.Identity, *REROUND_MODULES)):
            return "pass"
        if isinstance(m, nn.Flatten) or isinstance(m, PASS_MODULES) and not isinstance(m, nn.Unflatten):
            return "pass"
        return None
    if node.op == "call_function":
        if node.target in RELU_FUNCS:
            return "relu"
        if node.target in (PASS_FUNCS | REROUND_FUNCS) - {torch.reshape}:
            return "pass"
        return None
    if node.op == "call_method":
        if node.target in RELU_METHODS:
            return "relu"
        if node.target in (REROUND_METHODS | {"flatten", "contiguous"}):
            return "pass"
    return None


def channel_statistics(
    gm: fx.GraphModule,
    layers: list[str],
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    batch: int = 64,
) -> ChannelStats:
    """Saliency, redundancy and input energy of `layers` of the float graph `gm`."""
    nodes = layer_nodes(gm, layers)
    out_node = _output_node(gm)
    names = [out_node] + list(dict.fromkeys(n for io in nodes.values() for n in io))
    t = tap(gm, names)
    sal = {k: 0.0 for k in layers}
    fis = {k: 0.0 for k in layers}
    s1: dict[str, torch.Tensor] = {}
    s2: dict[str, torch.Tensor] = {}
    cnt: dict[str, int] = {}
    e_in: dict[str, torch.Tensor] = {}
    n_in: dict[str, int] = {}
    y = y.to(device).long()
    for i in range(0, len(x), batch):
        vals = dict(zip(names, t(x[i : i + batch].to(device))))
        outs = list(dict.fromkeys(nodes[k][1] for k in layers))
        grads = dict(zip(outs, torch.autograd.grad(F.cross_entropy(vals[out_node], y[i : i + batch], reduction="sum"), [vals[o] for o in outs])))
        with torch.no_grad():
            for k in layers:
                a, g = vals[nodes[k][1]].detach(), grads[nodes[k][1]].detach()
                per = (a * g).reshape(a.shape[0], a.shape[1], -1).sum(dim=2)  # [N, C]
                sal[k] = sal[k] + per.double().pow(2).sum(dim=0)
                fis[k] = fis[k] + g.double().pow(2).reshape(g.shape[0], g.shape[1], -1).sum(dim=(0, 2))
                flat = a.transpose(0, 1).reshape(a.shape[1], -1).double()  # [C, N*P]
                s1[k] = s1.get(k, 0) + flat.sum(dim=1)
                s2[k] = s2.get(k, 0) + flat @ flat.T
                cnt[k] = cnt.get(k, 0) + flat.shape[1]
                xin = vals[nodes[k][0]].detach()
                xin = xin.transpose(0, 1).reshape(xin.shape[1], -1).double() if xin.ndim > 2 else xin.T.double()
                e_in[k] = e_in.get(k, 0) + xin.pow(2).sum(dim=1)
                n_in[k] = n_in.get(k, 0) + xin.shape[1]
    stats = ChannelStats()
    for k in layers:
        stats.saliency[k] = (sal[k] / len(x)).float().cpu()
        mean = s1[k] / cnt[k]
        cov = s2[k] / cnt[k] - torch.outer(mean, mean)
        var = cov.diagonal().clamp(min=0)
        const = var <= 1e-10 * float(var.max().clamp(min=1e-30))
        sd = var.sqrt().clamp(min=1e-30)
        corr = (cov / torch.outer(sd, sd)).abs().clamp(max=1.0)
        corr[const, :] = 0
        corr[:, const] = 0
        corr.fill_diagonal_(0)
        red = corr.max(dim=1).values if corr.shape[0] > 1 else torch.zeros(1, dtype=corr.dtype)
        red[const] = 1.0
        stats.redundancy[k] = red.float().cpu()
        stats.abs_corr[k] = corr.float().cpu()
        stats.in_energy[k] = (e_in[k] / n_in[k]).float().cpu()
        stats.fisher[k] = (fis[k] / len(x)).float().cpu()
        stats.out_energy[k] = (s2[k].diagonal() / cnt[k]).float().cpu()
    return stats


def _output_node(gm: fx.GraphModule) -> str:
    for n in gm.graph.nodes:
        if n.op == "output":
            out = n.args[0]
            return (out[0] if isinstance(out, (tuple, list)) else out).name
    raise ValueError("graph has no output")


def weight_importance(mod: nn.Module, in_energy: torch.Tensor) -> torch.Tensor:
    """E[x^2] of the input each weight multiplies, broadcast to the weight's shape."""
    w = mod.weight
    groups = getattr(mod, "groups", 1)
    out_c, in_per = w.shape[0], w.shape[1]
    per_group = out_c // groups
    idx = (torch.arange(out_c) // per_group).unsqueeze(1) * in_per + torch.arange(in_per).unsqueeze(0)
    e = in_energy.to(w.device)[idx.to(w.device)]  # [O, I/g]
    return e.reshape(out_c, in_per, *([1] * (w.ndim - 2))).expand_as(w).float()


# --- error tables and the bit-allocation solver ----------------------------------------------
def error_table(w: torch.Tensor, importance: torch.Tensor, cands: list[int], grid: int = 40
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Relative output error eps[c, j] of channel c at cands[j] bits (after the per-channel
    clipping search) and the chosen scales [c, j]; eps = sum imp*dw^2 / sum imp*w^2, i.e. the
    output noise variance per position relative to the channel's output energy E[(w.x)^2]
    under uncorrelated inputs (`output_energy` gives the denominator)."""
    w = w.detach().float()
    imp = importance.to(w.device)
    norm = (imp * w.pow(2)).reshape(w.shape[0], -1).sum(dim=1).clamp(min=1e-30)
    errs, scales = [], []
    for b in cands:
        bits = torch.full((w.shape[0],), b, dtype=torch.int64, device=w.device)
        if b == 0:
            errs.append(torch.ones(w.shape[0], device=w.device))
            scales.append(torch.ones(w.shape[0], device=w.device))
            continue
        s = mse_weight_scale(w, bits, imp, grid=grid)
        qmax = channel_view(weight_qmax(bits).to(w.dtype), w.ndim)
        q = torch.clamp(torch.round(w / channel_view(s, w.ndim)), -qmax, qmax) * channel_view(s, w.ndim)
        errs.append((imp * (q - w).pow(2)).reshape(w.shape[0], -1).sum(dim=1) / norm)
        scales.append(s)
    return torch.stack(errs, dim=1).cpu(), torch.stack(scales, dim=1).cpu()


def allocate(cost: np.ndarray, sizes: np.ndarray, cands: list[int], budget: int,
             allowed: np.ndarray | None = None, max_states: int = 1 << 14) -> np.ndarray:
    """Minimise sum_i cost[i, k_i] subject to sum_i sizes[i] * cands[k_i] <= budget.

    Returns the chosen index k_i per item. A multiple-choice knapsack solved by dynamic
    programming over the budget: exact when the budget divided by the gcd of the item weights
    fits in `max_states` states; otherwise weights are rounded up to a coarser unit (still
    feasible, near-optimal) and the leftover budget is spent greedily on the best upgrades."""
    cost = np.asarray(cost, np.float64)
    sizes = np.asarray(sizes, np.int64)
    n, k = cost.shape
    allowed = np.ones_like(cost, bool) if allowed is None else np.asarray(allowed, bool)
    weights = sizes[:, None] * np.asarray(cands, np.int64)[None, :]  # [n, k]
    cheapest = np.where(allowed, weights, np.iinfo(np.int64).max).min(axis=1)
    if cheapest.sum() > budget:
        raise ValueError(f"bit allocation: even the smallest choices need {int(cheapest.sum())} bits > budget {budget}")
    g = int(np.gcd.reduce(np.concatenate([weights[allowed].ravel(), [budget]]))) or 1
    unit = max(g, int(math.ceil(budget / max_states)))
    if unit > g:  # coarse: round item weights up so the solution stays feasible
        unit = int(math.ceil(unit / g) * g)
    w_units = -(-weights // unit)
    cap = int(budget // unit)
    best = np.zeros(cap + 1)  # best[b]: least cost with total weight <= b (items so far)
    choice = np.zeros((n, cap + 1), np.int8)
    cand = np.empty(cap + 1)
    better = np.empty(cap + 1, bool)
    for i in range(n):
        new = np.full(cap + 1, np.inf)
        arg = choice[i]
        for j in range(k):
            wj = int(w_units[i, j])
            if not allowed[i, j] or wj > cap:
                continue
            cand[:wj] = np.inf
            np.add(best[: cap + 1 - wj], cost[i, j], out=cand[wj:])
            np.less(cand, new, out=better)
            np.copyto(new, cand, where=better)
            np.copyto(arg, j, where=better)
        best = new
    if not np.isfinite(best[cap]):
        raise ValueError("bit allocation: no feasible choice within the budget")
    out = np.zeros(n, np.int64)
    b = cap
    for i in range(n - 1, -1, -1):
        j = int(choice[i, b])
        out[i] = j
        b -= int(w_units[i, j])
    if unit > 1:
        out = _top_up(cost, weights, allowed, out, budget)
    return out


def _top_up(cost: np.ndarray, weights: np.ndarray, allowed: np.ndarray, out: np.ndarray, budget: int) -> np.ndarray:
    """Spend the leftover budget on the upgrades with the best cost decrease per bit."""
    rows = np.arange(len(out))
    while True:
        left = budget - int(weights[rows, out].sum())
        extra = weights - weights[rows, out][:, None]
        gain = cost[rows, out][:, None] - cost
        ok = allowed & (gain > 0) & (extra > 0) & (extra <= left)
        if not ok.any():
            return out
        ratio = np.where(ok, gain / np.maximum(extra, 1), -np.inf)
        i, j = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
        out[i] = j


def brute_force(cost: np.ndarray, sizes: np.ndarray, cands: list[int], budget: int,
                allowed: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Exhaustive reference for small instances (tests): the optimum cost and a choice."""
    n, k = cost.shape
    allowed = np.ones_like(cost, bool) if allowed is None else allowed
    best, arg = math.inf, None
    for combo in itertools.product(range(k), repeat=n):
        if not all(allowed[i, j] for i, j in enumerate(combo)):
            continue
        if sum(sizes[i] * cands[j] for i, j in enumerate(combo)) > budget:
            continue
        c = sum(cost[i, j] for i, j in enumerate(combo))
        if c < best:
            best, arg = c, np.array(combo)
    if arg is None:
        raise ValueError("no feasible choice")
    return best, arg


def output_energy(w: torch.Tensor, importance: torch.Tensor) -> torch.Tensor:
    """sum_i imp_i w_i^2 per output channel (the denominator of `error_table`'s eps)."""
    return (importance.to(w.device) * w.detach().float().pow(2)).reshape(w.shape[0], -1).sum(dim=1).cpu()


# --- elimination and least-squares compensation ----------------------------------------------
def consumers(gm: fx.GraphModule, layers: list[str]) -> dict[str, str]:
    """producer -> the single dense conv/linear its output reaches through channel-wise ops
    only (ReLU, pooling, flatten), each step with one user: channels of such a producer can be
    removed and compensated in that consumer."""
    modules = dict(gm.named_modules())
    out: dict[str, str] = {}
    for n in gm.graph.nodes:
        if not (n.op == "call_module" and n.target in layers):
            continue
        cur = n
        while len(cur.users) == 1:
            u = next(iter(cur.users))
            if u.op == "call_module" and isinstance(modules.get(u.target), COMPUTE_MODULES):
                m = modules[u.target]
                if getattr(m, "groups", 1) == 1 and u.args[0] is cur:
                    out[n.target] = u.target
                break
            if _channelwise(u, modules) is None:
                break
            cur = u
    return out


def elimination_candidates(saliency: torch.Tensor, abs_corr: torch.Tensor, redundancy: torch.Tensor,
                           threshold: float, salient_quantile: float) -> list[int]:
    """Channels that may be removed: not salient (saliency at or below the layer's quantile)
    and redundant (|corr| >= threshold with a channel that stays, or constant), taken in
    order of increasing saliency so that of two duplicates one always stays."""
    limit = float(torch.quantile(saliency.double(), salient_quantile))
    keep = torch.ones(len(saliency), dtype=torch.bool)
    picked: list[int] = []
    for c in torch.argsort(saliency, stable=True).tolist():
        if float(saliency[c]) > limit:
            break
        if len(picked) + 1 >= len(saliency):
            break
        const = float(redundancy[c]) >= 1.0 and float(abs_corr[c].abs().sum()) == 0.0  # constant channel
        others = abs_corr[c][keep & (torch.arange(len(saliency)) != c)]
        if const or (others.numel() and float(others.max()) >= threshold):
            picked.append(c)
            keep[c] = False
    return picked


@torch.no_grad()
def compensate(
    gm: fx.GraphModule,
    consumer: str,
    x: torch.Tensor,
    device: torch.device,
    forward_eliminated: Callable[[], fx.GraphModule],
    batch: int = 64,
    ridge: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares refit of `consumer` (weights, bias) so that on the inputs it receives after
    the elimination it reproduces the output it computed before:
        min_{W', b'} sum || W' * x' + b' - (W * x + b) ||^2  (x' inputs with channels removed)
    `forward_eliminated()` returns the graph whose producer has its channels removed."""
    nodes = layer_nodes(gm, [consumer])
    node_in = nodes[consumer][0]
    mod = gm.get_submodule(consumer)
    t_orig = tap(gm, [node_in])
    t_elim = tap(forward_eliminated(), [node_in])
    gram = None
    rhs = None
    for i in range(0, len(x), batch):
        xb = x[i : i + batch].to(device)
        (xin,) = t_orig(xb)
        (xin2,) = t_elim(xb)
        y = mod(xin).double()
        phi = _features(mod, xin2)  # [rows, D+1]
        yy = _rows(y)
        gram = phi.T @ phi if gram is None else gram + phi.T @ phi
        rhs = phi.T @ yy if rhs is None else rhs + phi.T @ yy
    assert gram is not None and rhs is not None
    d = gram.shape[0]
    lam = ridge * float(gram.diagonal().mean()) + 1e-12
    sol = torch.linalg.solve(gram + lam * torch.eye(d, dtype=gram.dtype, device=gram.device), rhs)  # [D+1, O]
    w = sol[:-1].T.reshape(mod.weight.shape).float()
    b = sol[-1].float()
    return w, b


def _features(mod: nn.Module, xin: torch.Tensor) -> torch.Tensor:
    """Rows of the consumer's receptive fields (im2col) plus a column of ones."""
    xin = xin.double()
    if isinstance(mod, nn.Linear):
        rows = xin.reshape(-1, xin.shape[-1])
    else:
        conv2d = isinstance(mod, nn.Conv2d)
        x4 = xin if conv2d else xin.unsqueeze(2)
        k = mod.kernel_size if conv2d else (1, mod.kernel_size[0])
        pad = mod.padding if conv2d else (0, mod.padding[0])
        st = mod.stride if conv2d else (1, mod.stride[0])
        dil = mod.dilation if conv2d else (1, mod.dilation[0])
        if isinstance(pad, str):
            raise ValueError(f"least-squares compensation: padding={pad!r} is not supported")
        cols = F.unfold(x4, k, dilation=dil, padding=pad, stride=st)  # [N, C*k, P]
        rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return torch.cat([rows, torch.ones(rows.shape[0], 1, dtype=rows.dtype, device=rows.device)], dim=1)


def _rows(y: torch.Tensor) -> torch.Tensor:
    if y.ndim == 2:
        return y
    return y.reshape(y.shape[0], y.shape[1], -1).transpose(1, 2).reshape(-1, y.shape[1])  # rows (n, position)


# --- activations -------------------------------------------------------------------------------
@torch.no_grad()
def act_sensitivity(
    gm: fx.GraphModule,
    placement: Placement,
    values: dict[str, torch.Tensor],
    ranges: dict[str, tuple[float, float]],
    points: list[str],
    cands: list[int],
    x: torch.Tensor,
    device: torch.device,
    symmetric: bool = False,
    batch: int = 64,
) -> dict[str, dict[int, float]]:
    """KL(p_fp || p_q) of the detector's output when only point p is quantized at b bits
    (grid by MSE on the sampled values `values[p]`), for every p in `points` and b in `cands`."""
    from ..recon import mse_act_grid

    out_node = _output_node(gm)
    fp = run_tap(tap(gm, [out_node]), x, device, batch)[0]
    logp_fp = F.log_softmax(fp.float(), dim=-1)
    res: dict[str, dict[int, float]] = {}
    for p in points:
        res[p] = {}
        for b in cands:
            s, zp = mse_act_grid(values[p], ranges[p][0], ranges[p][1], b, symmetric)
            q = _quantize_point(gm, placement, p, s, zp, b)
            lq = run_tap(tap(q, [_output_node(q)]), x, device, batch)[0]
            kl = (logp_fp.exp() * (logp_fp - F.log_softmax(lq.float(), dim=-1))).sum(dim=-1).mean()
            res[p][b] = max(float(kl), 0.0)
    return res


def _quantize_point(gm: fx.GraphModule, placement: Placement, point: str, scale: float, zp: int, bits: int) -> fx.GraphModule:
    """Copy of the float graph with one fake quantizer after `point` (and its re-rounding uses)."""
    from ..qparams import ActQuant
    from ..sim import insert_act_quantizers

    acts = {p: ActQuant(p, scale, zp, bits) for p in placement.points}
    q = insert_act_quantizers(gm, placement, acts)
    for p in placement.points:
        if p != point:
            getattr(q, f"actq_{p}").enabled = False
    return q
