"""DeFakeQ: adaptive bidirectional quantization = HAQ (horizontal: per-channel bits,
elimination with least-squares compensation, activation bits) + VEFT (vertical: block-wise
fine-tuning of the quantization parameters with a progressive contrastive term).

`run(ctx, cfg)` is the whole method; `DefakeqConfig.from_options` reads the method options
(every switch of the ablations is an option). See docs/defakeq.md.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from torch import fx

from ..graph import compute_modules
from ..qparams import QuantParams
from ..recon import (
    ReconConfig,
    build_qmodel,
    deterministic,
    mse_acts,
    mse_weight_scale,
    partition,
    qlayers,
    reconstruct,
    to_params,
)
from ..registry import MethodContext
from ..sim import collect_activation_stats
from . import haq
from .veft import ProgressiveContrast


@dataclass
class DefakeqConfig:
    """Every switch and hyper-parameter of DeFakeQ (the method's options, by field name)."""

    haq: bool = True  # mixed per-channel weight bits + activation bits (else the uniform plan)
    veft: bool = True  # block-wise fine-tuning of the quantization parameters
    contrast: bool = True  # VEFT's progressive contrastive term
    elim: bool = True  # channel elimination (0 bits) with least-squares compensation
    granularity: str = "channel"  # channel | layer (one bit-width per layer; no elimination)
    w_candidates: tuple[int, ...] = (2, 3, 4, 6, 8)
    a_candidates: tuple[int, ...] = (4, 8)  # plus each point's plan bits
    act_keep_io: bool = True  # model input/output keep the plan's bits
    act_sens_frames: int = 256
    redundancy_threshold: float = 0.9
    salient_quantile: float = 0.5
    saliency_floor: float = 0.05  # S~ = S + floor * mean of the layer's S
    cost_model: str = "saliency"  # saliency: S~_c * eps_c | fisher: F_c * eps_c * ||W_c||_H^2
    stats_frames: int = 512
    act_symmetric: bool = False
    # VEFT
    iters: int = 300  # per block
    batch: int = 32
    lr_round: float = 0.1
    lr_wscale: float = 1e-3
    lr_act: float = 5e-3
    round_weight: float = 0.01
    beta: tuple[float, float] = (20.0, 2.0)
    warmup: float = 0.2
    drop_p: float = 0.0
    fisher: bool = False  # weight VEFT's squared error by the squared loss gradient
    contrast_weight: float = 0.05  # gamma (relative to the block's output energy)
    contrast_tau: float = 0.1
    supcon_weight: float = 1.0  # mu
    contrast_power: float = 1.0

    @classmethod
    def from_options(cls, options: dict) -> DefakeqConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise ValueError(f"defakeq: unknown option(s) {unknown}; allowed: {sorted(names)}")
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in options.items()}
        cfg = cls(**kw)
        if cfg.cost_model not in ("saliency", "fisher"):
            raise ValueError(f"defakeq: cost_model {cfg.cost_model!r}; allowed 'saliency' or 'fisher'")
        if cfg.granularity not in ("channel", "layer"):
            raise ValueError(f"defakeq: granularity {cfg.granularity!r}; allowed 'channel' or 'layer'")
        bad = [b for b in cfg.w_candidates if not 0 <= int(b) <= 8]
        if bad or not cfg.w_candidates:
            raise ValueError(f"defakeq: w_candidates {list(cfg.w_candidates)}: bits must lie in [0, 8]")
        bad = [b for b in cfg.a_candidates if not 2 <= int(b) <= 8]
        if bad:
            raise ValueError(f"defakeq: a_candidates {list(cfg.a_candidates)}: bits must lie in [2, 8]")
        return cfg

    @property
    def switches(self) -> dict:
        return {"haq": self.haq, "veft": self.veft, "contrast": self.contrast and self.veft,
                "elim": self.elim and self.haq and self.granularity == "channel", "granularity": self.granularity}


def run(ctx: MethodContext, cfg: DefakeqConfig) -> QuantParams:
    """DeFakeQ on one detector: returns complete QuantParams (+ info on every decision)."""
    with deterministic(ctx.device):
        return _run(ctx, cfg)


def _run(ctx: MethodContext, cfg: DefakeqConfig) -> QuantParams:
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    folded = ctx.folded.to(ctx.device).eval()
    placement = ctx.placement
    mods = compute_modules(folded)
    fixed = [n for n in (placement.first_layer, placement.last_layer) if n]
    interior = [n for n in placement.weights if n not in fixed]
    stats_x = ctx.calib_x[: cfg.stats_frames]
    stats_y = ctx.calib_y[: cfg.stats_frames]
    act_stats = collect_activation_stats(folded, placement, ctx.batches(), seed=ctx.seed)
    info: dict = {"switches": cfg.switches, "config": _jsonable(asdict(cfg))}

    weight_init: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    new_weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # compensated consumers
    zero_bias: dict[str, list[int]] = {}
    if cfg.haq:
        stats = haq.channel_statistics(folded, placement.weights, stats_x, stats_y, ctx.device, ctx.batch_size)
        timings["statistics"] = time.perf_counter() - t0
        bits, scales, elim = _allocate_weights(ctx, cfg, folded, stats, interior, fixed)
        timings["weight_allocation"] = time.perf_counter() - t0 - sum(timings.values())
        for name in placement.weights:
            weight_init[name] = (scales[name], bits[name])
        if elim:
            new_weights = _eliminate(ctx, folded, elim)
            zero_bias = elim
            timings["elimination"] = time.perf_counter() - t0 - sum(timings.values())
        act_bits, act_info = _allocate_acts(ctx, cfg, folded, act_stats)
        timings["act_allocation"] = time.perf_counter() - t0 - sum(timings.values())
        info["allocation"] = {
            "layer_avg_bits": {n: float(weight_init[n][1].float().mean()) for n in placement.weights},
            "eliminated": {p: len(c) for p, c in elim.items()},
            "saliency_total": {n: float(stats.saliency[n].sum()) for n in placement.weights},
            "acts": act_info,
        }
    else:
        for name, mod in mods.items():
            w = mod.weight.detach().float()
            b = torch.full((w.shape[0],), int(ctx.weight_bits[name]), dtype=torch.int64, device=w.device)
            weight_init[name] = (mse_weight_scale(w, b), b)
        act_bits = dict(ctx.act_bits)
    acts = mse_acts(act_stats, placement, act_bits, cfg.act_symmetric)
    gm = build_qmodel(folded, placement, weight_init, acts)
    layers = qlayers(gm)
    for name, (w, b) in new_weights.items():
        layers[name].wq.set_weight(w)
        layers[name].bias.copy_(b)
        imp = haq.weight_importance(mods[name], stats.in_energy[name])
        layers[name].wq.set_scale(mse_weight_scale(w, layers[name].wq.bits, imp))
    for name, chans in zero_bias.items():
        layers[name].bias[chans] = 0.0
    if cfg.veft:
        t1 = time.perf_counter()
        rc = ReconConfig(
            iters=cfg.iters, batch=cfg.batch, learn_round=True, learn_act=True, learn_wscale=True,
            act_quant=True, lr_round=cfg.lr_round, lr_act=cfg.lr_act, lr_wscale=cfg.lr_wscale,
            round_weight=cfg.round_weight, beta=tuple(cfg.beta), warmup=cfg.warmup, drop_p=cfg.drop_p,
            fisher=cfg.fisher,
        )
        extra = (ProgressiveContrast(cfg.contrast_weight, cfg.contrast_tau, cfg.supcon_weight, cfg.contrast_power)
                 if cfg.contrast else None)
        units = partition(gm, "block")
        info["units"] = [u.name for u in units]
        info["history"] = reconstruct(gm, units, rc, ctx.calib_x, ctx.calib_y, ctx.device, ctx.seed,
                                      extra=extra, log=ctx.log)
        timings["veft"] = time.perf_counter() - t1
    params = to_params(gm, placement, "defakeq")
    _check_budgets(ctx, params, cfg)
    info["timings_s"] = timings
    info["packed_weight_bits"] = int(sum(w.packed_bits for w in params.weights.values()))
    info["budget_bits"] = int(ctx.budget_bits)
    info["act_bits"] = {p: a.bits for p, a in params.acts.items()}
    params.info = info
    return params


def _allocate_weights(ctx: MethodContext, cfg: DefakeqConfig, folded: fx.GraphModule, stats: haq.ChannelStats,
                      interior: list[str], fixed: list[str]):
    """Bits and scales per channel of every layer; eliminated channels per producer."""
    mods = compute_modules(folded)
    cands = sorted({int(b) for b in cfg.w_candidates if int(b) > 0})
    use_elim = cfg.elim and cfg.granularity == "channel" and 0 in {int(b) for b in cfg.w_candidates}
    bits: dict[str, torch.Tensor] = {}
    scales: dict[str, torch.Tensor] = {}
    budget = int(ctx.budget_bits)
    for name in fixed:
        w = mods[name].weight.detach().float()
        b = torch.full((w.shape[0],), int(ctx.weight_bits[name]), dtype=torch.int64, device=w.device)
        imp = haq.weight_importance(mods[name], stats.in_energy[name])
        bits[name], scales[name] = b, mse_weight_scale(w, b, imp)
        budget -= int(b.sum()) * w[0].numel()
    producers = haq.consumers(folded, interior) if use_elim else {}
    all_cands = ([0] if use_elim else []) + cands
    items_cost, items_size, items_allowed, owners = [], [], [], []
    tables: dict[str, torch.Tensor] = {}
    for name in interior:
        w = mods[name].weight.detach().float()
        imp = haq.weight_importance(mods[name], stats.in_energy[name])
        eps, sc = haq.error_table(w, imp, cands)
        tables[name] = sc
        if cfg.cost_model == "fisher":  # loss change of incoherent noise: sum_p g_p^2 * var
            sal = stats.fisher[name].double()
            scale = haq.output_energy(w, imp).double()
            scale0 = stats.out_energy[name].double()
        else:  # coherent relative perturbation of the channel: S_c * eps_c
            sal = stats.saliency[name].double()
            scale = scale0 = torch.ones_like(sal)
        weight = sal + cfg.saliency_floor * sal.mean() + 1e-30
        cost = (weight * scale)[:, None] * eps.double()  # [C, K]
        allowed = np.ones((w.shape[0], len(all_cands)), bool)
        if use_elim:
            red = stats.redundancy[name].double()
            c0 = (weight * scale0 * (1 - red.pow(2))).numpy()[:, None]
            cost_np = np.concatenate([c0, cost.numpy()], axis=1)
            allowed[:, 0] = False
            if name in producers:
                for c in haq.elimination_candidates(stats.saliency[name], stats.abs_corr[name], stats.redundancy[name],
                                                    cfg.redundancy_threshold, cfg.salient_quantile):
                    allowed[c, 0] = True
        else:
            cost_np = cost.numpy()
        n_c = w[0].numel()
        if cfg.granularity == "layer":
            items_cost.append(cost_np.sum(axis=0, keepdims=True))
            items_size.append([w.numel()])
            items_allowed.append(allowed[:1])
            owners.append((name, None))
        else:
            items_cost.append(cost_np)
            items_size.append([n_c] * w.shape[0])
            items_allowed.append(allowed)
            owners += [(name, c) for c in range(w.shape[0])]
    choice = haq.allocate(np.concatenate(items_cost), np.concatenate([np.asarray(s, np.int64) for s in items_size]),
                          all_cands, budget, np.concatenate(items_allowed))
    picked: dict[str, list[int]] = {n: [0] * mods[n].weight.shape[0] for n in interior}
    for (name, c), j in zip(owners, choice):
        if c is None:
            picked[name] = [int(j)] * mods[name].weight.shape[0]
        else:
            picked[name][c] = int(j)
    elim: dict[str, list[int]] = {}
    for name in interior:
        idx = torch.tensor(picked[name])
        b = torch.tensor([all_cands[j] for j in picked[name]], dtype=torch.int64)
        col = (idx - (1 if use_elim else 0)).clamp(min=0)
        sc = tables[name].gather(1, col[:, None]).squeeze(1)
        dev = mods[name].weight.device
        bits[name], scales[name] = b.to(dev), sc.to(dev)
        gone = [int(c) for c in torch.nonzero(b == 0).flatten()]
        if gone:
            elim[name] = gone
    return bits, scales, elim


def _eliminate(ctx: MethodContext, folded: fx.GraphModule, elim: dict[str, list[int]]
               ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Zero the eliminated channels (weights and bias) and refit each consumer by least squares."""
    cons = haq.consumers(folded, list(elim))
    work = copy.deepcopy(folded)
    new_weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for producer in [n for n in ctx.placement.weights if n in elim]:
        chans = elim[producer]
        consumer = cons[producer]

        def eliminated(producer=producer, chans=chans) -> fx.GraphModule:
            m = work.get_submodule(producer)
            m.weight.data[chans] = 0
            if m.bias is not None:
                m.bias.data[chans] = 0
            return work

        w, b = haq.compensate(folded, consumer, ctx.calib_x, ctx.device, eliminated, ctx.batch_size)
        cm = work.get_submodule(consumer)
        cm.weight.data.copy_(w)
        if cm.bias is None:
            cm.bias = torch.nn.Parameter(b.clone())
        else:
            cm.bias.data.copy_(b)
        new_weights[consumer] = (w, b)
    return new_weights


def _allocate_acts(ctx: MethodContext, cfg: DefakeqConfig, folded: fx.GraphModule, act_stats):
    """Activation bits per quant point under the plan's average (see haq.act_sensitivity)."""
    placement = ctx.placement
    plan = dict(ctx.act_bits)
    io = set(placement.inputs) | ({placement.output_point} if placement.output_point else set())
    movable = [p for p in placement.points if not (cfg.act_keep_io and p in io)]
    cands = sorted({int(b) for b in cfg.a_candidates} | {plan[p] for p in movable})
    lower = [p for p in movable if any(b < plan[p] for b in cfg.a_candidates)]
    higher = [p for p in movable if any(b > plan[p] for b in cfg.a_candidates)]
    if not lower or not higher:  # raising one point needs lowering another below its plan
        return plan, {"moved": False, "reason": "no candidate below the plan to pay for a raise"}
    x = ctx.calib_x[: cfg.act_sens_frames]
    values = {p: act_stats.values(p) for p in movable}
    ranges = {p: (act_stats.lo[p], act_stats.hi[p]) for p in movable}
    sens = haq.act_sensitivity(folded, placement, values, ranges, movable, cands, x, ctx.device, cfg.act_symmetric,
                               ctx.batch_size)
    sizes = np.ones(len(movable), np.int64)  # the plain average over quant points
    allowed = np.array([[b in set(cfg.a_candidates) | {plan[p]} for b in cands] for p in movable])
    cost = np.array([[sens[p][b] for b in cands] for p in movable])
    budget = int(sum(int(s) * plan[p] for s, p in zip(sizes, movable)))
    choice = haq.allocate(cost, sizes, cands, budget, allowed)
    out = dict(plan)
    for p, j in zip(movable, choice):
        out[p] = cands[int(j)]
    return out, {"moved": True, "sensitivity": {p: {str(b): v for b, v in s.items()} for p, s in sens.items()},
                 "bits": {p: out[p] for p in movable}}


def _check_budgets(ctx: MethodContext, params: QuantParams, cfg: DefakeqConfig) -> None:
    """Mixed precision must fit the uniform plan: packed weight bits and average act bits."""
    packed = sum(w.packed_bits for w in params.weights.values())
    if packed > ctx.budget_bits:
        raise AssertionError(f"defakeq: packed weight bits {packed} exceed the budget {ctx.budget_bits}")
    plan = [ctx.act_bits[p] for p in ctx.placement.points]
    got = [params.acts[p].bits for p in ctx.placement.points]
    if np.mean(got) > np.mean(plan) + 1e-9:
        raise AssertionError(f"defakeq: average activation bits {np.mean(got):.3f} exceed the plan's {np.mean(plan):.3f}")


def _jsonable(d: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

