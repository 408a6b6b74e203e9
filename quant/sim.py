"""The PyTorch simulation of a quantized model: a folded graph with fake-quant modules.

The simulation is what methods optimise and what parity is measured against: weights hold
their dequantized codes, and an `ActFakeQuant` sits after every quant point of the placement.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn as nn
from torch import fx

from .graph import Placement, compute_modules
from .qparams import ActQuant, QuantParams
from .quantizer import fake_quant_act


class ActFakeQuant(nn.Module):
    """Per-tensor asymmetric fake quantization; `scale` may be learnable (LSQ-style)."""

    def __init__(self, scale: float, zero_point: int, bits: int, learnable: bool = False):
        super().__init__()
        self.bits = int(bits)
        t = torch.tensor(float(scale))
        if learnable:
            self.scale = nn.Parameter(t)
        else:
            self.register_buffer("scale", t)
        self.register_buffer("zero_point", torch.tensor(float(zero_point)))
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        return fake_quant_act(x, self.scale.abs() + 1e-12, self.zero_point, self.bits)

    def to_params(self, name: str) -> ActQuant:
        return ActQuant(name, float(np.float32(abs(float(self.scale)))), int(self.zero_point), self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, scale={float(self.scale):.4g}, zp={int(self.zero_point)}"


def aq_name(point: str) -> str:
    return f"actq_{point}"


def insert_act_quantizers(
    gm: fx.GraphModule,
    placement: Placement,
    acts: dict[str, ActQuant],
    learnable: bool = False,
    reround: bool = True,
) -> fx.GraphModule:
    """Copy of `gm` with an ActFakeQuant after each quant point (and each re-rounding node)."""
    gm = copy.deepcopy(gm)
    for point in placement.points:
        a = acts[point]
        gm.add_submodule(aq_name(point), ActFakeQuant(a.scale, a.zero_point, a.bits, learnable))
    targets = {p: p for p in placement.points}
    if reround:
        targets.update({r: placement.grid_of[r] for r in placement.reround})
    for node in list(gm.graph.nodes):
        owner = targets.get(node.name)
        if owner is None:
            continue
        with gm.graph.inserting_after(node):
            q = gm.graph.call_module(aq_name(owner), (node,))
        node.replace_all_uses_with(q, delete_user_cb=lambda u, q=q: u is not q)
    gm.graph.lint()
    gm.recompile()
    return gm


def act_quantizers(gm: nn.Module) -> dict[str, ActFakeQuant]:
    return {
        name[len("actq_"):]: m
        for name, m in gm.named_children()
        if isinstance(m, ActFakeQuant)
    }


@contextlib.contextmanager
def float_activations(gm: nn.Module) -> Iterator[nn.Module]:
    """Temporarily disable activation quantization (weights stay quantized)."""
    qs = act_quantizers(gm)
    old = {k: q.enabled for k, q in qs.items()}
    for q in qs.values():
        q.enabled = False
    try:
        yield gm
    finally:
        for k, q in qs.items():
            q.enabled = old[k]


def input_points(gm: fx.GraphModule, params: QuantParams) -> dict[str, str]:
    """Conv/linear module -> the quant point owning the grid of its input."""
    out: dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target in params.weights:
            arg = node.args[0]
            if isinstance(arg, fx.Node) and arg.name in params.grid_of:
                out[node.target] = params.grid_of[arg.name]
    return out


def _load_codes(gm: fx.GraphModule, params: QuantParams, inputs: dict[str, str]) -> None:
    """Dequantized weight codes, and biases rounded onto the int32 grid s_in * s_w that int8
    runtimes store them on (at coarse activation grids that grid is coarse too)."""
    mods = compute_modules(gm)
    for name, wq in params.weights.items():
        mod = mods[name]
        mod.weight.data = torch.from_numpy(wq.dequantize()).to(mod.weight.dtype)
        if name in params.biases:
            if mod.bias is None:
                mod.bias = torch.nn.Parameter(torch.zeros(mod.weight.shape[0], dtype=mod.weight.dtype))
            mod.bias.data = torch.from_numpy(np.asarray(params.biases[name], np.float32)).to(mod.weight.dtype)
        point = inputs.get(name)
        if mod.bias is not None and point in params.acts:
            s_b = np.float32(params.acts[point].scale) * wq.scale.astype(np.float32)
            s_b = np.where(s_b > 0, s_b, np.float32(1.0))
            b = mod.bias.detach().cpu().numpy().astype(np.float32)
            q = np.round(b / s_b)
            mod.bias.data = torch.from_numpy((q * s_b).astype(np.float32)).to(mod.bias.dtype)


def build_sim(folded: fx.GraphModule, placement: Placement, params: QuantParams) -> fx.GraphModule:
    """The simulation of `params` on the folded float graph."""
    sim = insert_act_quantizers(folded, placement, params.acts)
    _load_codes(sim, params, input_points(folded, params))  # inputs read off the unquantized graph
    return sim.eval()


def with_dequantized_weights(folded: fx.GraphModule, params: QuantParams) -> fx.GraphModule:
    """The folded float graph carrying dequantized weight codes (and grid biases) and no
    activation quantizers: what exporters hand to a runtime's own quantizer, which then
    recovers the codes exactly."""
    gm = copy.deepcopy(folded)
    _load_codes(gm, params, input_points(folded, params))
    return gm.eval()


class ActivationStats:
    """Min/max and a bounded, seeded reservoir of values per quant point (for percentile/MSE)."""

    def __init__(self, reservoir: int = 1 << 18, seed: int = 0):
        self.reservoir = reservoir
        self.gen = torch.Generator().manual_seed(seed)
        self.lo: dict[str, float] = {}
        self.hi: dict[str, float] = {}
        self.samples: dict[str, list[torch.Tensor]] = {}
        self._count: dict[str, int] = {}

    def update(self, name: str, x: torch.Tensor) -> None:
        x = x.detach().float().reshape(-1)
        self.lo[name] = min(self.lo.get(name, float("inf")), float(x.min()))
        self.hi[name] = max(self.hi.get(name, float("-inf")), float(x.max()))
        keep = max(1, self.reservoir // 64)  # values kept per batch; 64 batches fill the reservoir
        if x.numel() > keep:
            idx = torch.randint(0, x.numel(), (keep,), generator=self.gen)
            x = x[idx]
        lst = self.samples.setdefault(name, [])
        lst.append(x.clone())
        self._count[name] = self._count.get(name, 0) + x.numel()
        while self._count[name] > self.reservoir and len(lst) > 1:
            self._count[name] -= lst.pop(0).numel()

    def values(self, name: str) -> torch.Tensor:
        return torch.cat(self.samples[name])


@torch.no_grad()
def collect_activation_stats(
    gm: fx.GraphModule,
    placement: Placement,
    batches: list[torch.Tensor],
    seed: int = 0,
) -> ActivationStats:
    """Run `gm` (float or partially quantized) and record the value at every quant point."""
    placeholder = {p: ActQuant(p, 1.0, 0, 8) for p in placement.points}
    probe = insert_act_quantizers(gm, placement, placeholder, reround=False)
    stats = ActivationStats(seed=seed)
    handles = []
    for name, q in act_quantizers(probe).items():
        q.enabled = False
        handles.append(q.register_forward_pre_hook(lambda m, args, name=name: stats.update(name, args[0])))
    try:
        for xb in batches:
            probe(xb)
    finally:
        for h in handles:
            h.remove()
    return stats
