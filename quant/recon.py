"""Block partition of a folded fx graph and the block-wise reconstruction engine.

Shared by AdaRound (layer units), BRECQ and QDrop (block units) and DeFakeQ's VEFT.

The working model is a copy of the folded graph in which every conv/linear is a `QLayer`
(frozen float weight + a `WeightQuantizer`: per-channel symmetric codes with AdaRound soft
rounding and an optional learnable step) and every quant point carries an `ActQ` (per-tensor
asymmetric fake quantization with a learnable step, optionally dropped at random as in
QDrop). The same modules run in float mode to give the full-precision targets.

Units: `partition(gm, "block")` cuts the graph where exactly one tensor is live (a residual
block never is cut inside), drops cut segments without a conv/linear into their neighbour and
merges neighbours whose layers belong to the same child of a Sequential (a DSBlock, a ResNet
block). `partition(gm, "layer")` gives one unit per conv/linear (+ its fused ReLU and output
quantizer). Each unit is a sub-GraphModule with one input and one output that shares its
modules with the working model, so what a unit learns is what the model uses.

Reconstruction of unit k (Nagel 2020, Li 2021, Wei 2022):
    min  || f_k^q(x_k^q) - f_k(x_k) ||^2  (summed over channels, averaged over the rest)
         + lambda * sum_i (1 - |2 h(V_i) - 1|^beta)           (rounding regulariser, beta annealed)
         [+ extra(out_q, out_fp, labels)]                        (VEFT's contrastive term)
with x_k^q the input of unit k in the quantized model (units < k already finalised) and x_k,
f_k the full-precision input and function. After a unit: codes = floor(w/s0) + 1[V >= 0].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx

from .graph import (
    COMPUTE_MODULES,
    RELU_FUNCS,
    RELU_METHODS,
    RELU_MODULES,
    Placement,
    compute_modules,
)
from .qparams import ActQuant, QuantParams, WeightQuant
from .quantizer import act_qparams, channel_view, fake_quant_act, weight_qmax
from .registry import MethodContext
from .sim import ActivationStats, aq_name, collect_activation_stats, insert_act_quantizers

ZETA, GAMMA = 1.1, -0.1  # stretch of AdaRound's rectified sigmoid


# --- quantizer modules ---------------------------------------------------------------------
def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


class WeightQuantizer(nn.Module):
    """Per-output-channel symmetric weight fake quantization.

    Codes are `floor(w / s0) + r` with r the rounding choice: nearest (`round(w / s0)`), soft
    (`h(V)` in [0, 1], AdaRound) or hard (`1[V >= 0]`); the dequantized weight is
    `codes * s` with `s = s0 * exp(g)` (g learnable in VEFT, zero otherwise). Learning `g`
    changes the step without moving the integer grid the codes are defined on, so codes and
    scales stay plain data at the end.
    """

    def __init__(self, w: torch.Tensor, scale: torch.Tensor, bits: torch.Tensor):
        super().__init__()
        w = w.detach().float()
        self.register_buffer("w", w.clone())
        self.register_buffer("bits", bits.detach().to(torch.int64).clone())
        self.mode = "nearest"  # nearest | soft | hard
        self.gain = nn.Parameter(torch.zeros(w.shape[0], device=w.device), requires_grad=False)
        self.alpha = nn.Parameter(torch.zeros_like(w), requires_grad=False)
        self.register_buffer("s0", torch.ones(w.shape[0], device=w.device))
        self.register_buffer("base", torch.zeros_like(w))
        self.set_scale(scale)

    def set_scale(self, scale: torch.Tensor) -> None:
        """(Re)define the grid: scale, integer floor and the soft rounding's starting point."""
        s0 = scale.detach().float().to(self.w.device).clamp(min=1e-12)
        self.s0.copy_(s0)
        ratio = self.w / channel_view(s0, self.w.ndim)
        self.base.copy_(torch.floor(ratio))
        rest = (ratio - self.base).clamp(1e-4, 1 - 1e-4)
        # h(alpha) = rest: soft rounding starts at the float weight itself
        self.alpha.data.copy_(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))
        self.gain.data.zero_()

    def restart_from_codes(self) -> None:
        """Soft rounding that starts at the current hard codes (h(alpha) = 1 - eps or eps)."""
        up = (self.alpha >= 0).to(self.w.dtype)
        rest = up * (1 - 1e-2) + (1 - up) * 1e-2
        self.alpha.data.copy_(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))

    def set_weight(self, w: torch.Tensor) -> None:
        self.w.copy_(w.detach().float())
        self.set_scale(self.s0.clone())

    @property
    def qmax(self) -> torch.Tensor:
        return channel_view(weight_qmax(self.bits).to(self.w.dtype), self.w.ndim)

    @property
    def scale(self) -> torch.Tensor:
        return self.s0 * torch.exp(self.gain)

    def codes(self) -> torch.Tensor:
        """Integer codes (float tensor) under the current rounding mode (hard for soft)."""
        if self.mode == "nearest":
            q = torch.round(self.w / channel_view(self.s0, self.w.ndim))
        else:
            q = self.base + (self.alpha >= 0).to(self.w.dtype)
        return torch.maximum(torch.minimum(q, self.qmax), -self.qmax).detach()

    def forward(self) -> torch.Tensor:
        s = channel_view(self.scale, self.w.ndim)
        if self.mode == "soft":
            q = self.base + rectified_sigmoid(self.alpha)
            q = torch.maximum(torch.minimum(q, self.qmax), -self.qmax)
        else:
            q = self.codes()
        return q * s

    def round_reg(self, beta: float) -> torch.Tensor:
        h = rectified_sigmoid(self.alpha)
        live = (self.bits > 0).to(h.dtype)
        return ((1 - (2 * h - 1).abs().pow(beta)) * channel_view(live, h.ndim)).sum()


class QLayer(nn.Module):
    """A conv/linear computing with a quantized weight (or its float original in float mode)."""

    def __init__(self, layer: nn.Module, scale: torch.Tensor, bits: torch.Tensor):
        super().__init__()
        if not isinstance(layer, COMPUTE_MODULES):
            raise TypeError(f"QLayer wraps Conv1d/Conv2d/Linear, got {type(layer).__name__}")
        self.kind = type(layer).__name__
        self.conf = {k: getattr(layer, k) for k in ("stride", "padding", "dilation", "groups") if hasattr(layer, k)}
        w = layer.weight.detach().float()
        self.register_buffer("w_fp", w.clone())
        b = layer.bias.detach().float() if layer.bias is not None else torch.zeros(w.shape[0], device=w.device)
        self.register_buffer("b_fp", b.clone())
        self.register_buffer("bias", b.clone())
        self.has_bias = layer.bias is not None
        self.wq = WeightQuantizer(w, scale, bits)
        self.float_mode = False
        self.in_act: list[ActQ] = []  # the quantizer of the input grid (a list: not a child)

    def quant_bias(self) -> torch.Tensor:
        """The bias on the int32 grid s_in * s_w that int8 runtimes (and quant.sim) store."""
        if not self.in_act:
            return self.bias
        s_b = (self.in_act[0].scale.detach().abs() * self.wq.scale.detach()).float()
        s_b = torch.where(s_b > 0, s_b, torch.ones_like(s_b))
        return torch.round(self.bias / s_b) * s_b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = (self.w_fp, self.b_fp) if self.float_mode else (self.wq(), self.quant_bias())
        if self.kind == "Linear":
            return F.linear(x, w, b)
        conv = F.conv2d if self.kind == "Conv2d" else F.conv1d
        return conv(x, w, b, **self.conf)


class ActQ(nn.Module):
    """Per-tensor asymmetric activation fake quantization with a learnable step (LSQ-style);
    `drop_p` > 0 keeps each element's float value with that probability (QDrop)."""

    def __init__(self, scale: float, zero_point: int, bits: int):
        super().__init__()
        self.bits = int(bits)
        self.scale = nn.Parameter(torch.tensor(float(scale)), requires_grad=False)
        self.register_buffer("zero_point", torch.tensor(float(zero_point)))
        self.enabled = True
        self.drop_p = 0.0
        self.gen: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        q = fake_quant_act(x, self.scale.abs() + 1e-12, self.zero_point, self.bits)
        if self.drop_p > 0:
            keep_float = torch.rand(x.shape, generator=self.gen, device=x.device) < self.drop_p
            q = torch.where(keep_float, x, q)
        return q

    def to_params(self, name: str) -> ActQuant:
        return ActQuant(name, float(np.float32(abs(float(self.scale)))), int(self.zero_point), self.bits)


# --- the working model -----------------------------------------------------------------------
def build_qmodel(
    folded: fx.GraphModule,
    placement: Placement,
    weight_init: dict[str, tuple[torch.Tensor, torch.Tensor]],
    acts: dict[str, ActQuant],
) -> fx.GraphModule:
    """Copy of `folded` with QLayers (`weight_init[name] = (scale, bits)`) and ActQ modules."""
    gm = insert_act_quantizers(folded, placement, acts)
    for point in placement.points:
        a = acts[point]
        setattr(gm, aq_name(point), ActQ(a.scale, a.zero_point, a.bits).to(_device_of(folded)))
    inputs = {n.target: n.args[0].name for n in folded.graph.nodes
              if n.op == "call_module" and n.target in placement.weights and isinstance(n.args[0], fx.Node)}
    for name in placement.weights:
        layer = gm.get_submodule(name)
        scale, bits = weight_init[name]
        q = QLayer(layer, scale.to(layer.weight.device), bits.to(layer.weight.device))
        point = placement.grid_of.get(inputs.get(name, ""))
        if point is not None:
            q.in_act.append(getattr(gm, aq_name(point)))
        _set_module(gm, name, q)
    gm.recompile()
    return gm.eval()


def _device_of(m: nn.Module) -> torch.device:
    p = next(iter(m.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _set_module(gm: nn.Module, qualname: str, module: nn.Module) -> None:
    parent, _, name = qualname.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)


def qlayers(gm: nn.Module) -> dict[str, QLayer]:
    return {n: m for n, m in gm.named_modules() if isinstance(m, QLayer)}


def actqs(gm: nn.Module) -> dict[str, ActQ]:
    return {n[len("actq_"):]: m for n, m in gm.named_children() if isinstance(m, ActQ)}


@contextmanager
def modes(gm: nn.Module, weights_float: bool = False, acts: bool = True) -> Iterator[None]:
    """Temporarily run `gm` with float weights and/or with activation quantization off."""
    layers, aqs = list(qlayers(gm).values()), list(actqs(gm).values())
    old = [m.float_mode for m in layers], [q.enabled for q in aqs]
    for m in layers:
        m.float_mode = weights_float
    for q in aqs:
        q.enabled = acts
    try:
        yield
    finally:
        for m, v in zip(layers, old[0]):
            m.float_mode = v
        for q, v in zip(aqs, old[1]):
            q.enabled = v


def to_params(gm: nn.Module, placement: Placement, method: str = "") -> QuantParams:
    """Plain-data QuantParams of the working model's current (hard/nearest) state."""
    weights: dict[str, WeightQuant] = {}
    biases: dict[str, np.ndarray] = {}
    layers = qlayers(gm)
    for name in placement.weights:
        m = layers[name]
        weights[name] = WeightQuant(
            module=name,
            codes=m.wq.codes().cpu().numpy().astype(np.int8),
            scale=m.wq.scale.detach().float().cpu().numpy().astype(np.float32),
            bits=m.wq.bits.cpu().numpy().astype(np.int8),
        )
        if not torch.equal(m.bias, m.b_fp):
            biases[name] = m.bias.detach().cpu().numpy().astype(np.float32)
    aqs = actqs(gm)
    acts = {p: aqs[p].to_params(p) for p in placement.points}
    return QuantParams(method, "", weights, acts, dict(placement.grid_of), {}, biases)


# --- partition -------------------------------------------------------------------------------
@dataclass
class Unit:
    """A single-input, single-output piece of the working graph."""

    name: str
    nodes: list[str]  # node names, in graph order
    input: str  # the node feeding the unit
    output: str  # the node whose value the unit produces
    layers: list[str]  # conv/linear modules inside


def _module_key(name: str) -> str:
    """The block a module belongs to: its name up to the first numeric component (an index
    into a Sequential: `features.0` of `features.0.dw.0`, `blocks.1` of `blocks.1.conv2`), or
    the whole name. Traced graphs keep module paths but not container types, hence names."""
    parts = name.split(".")
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join(parts[: i + 1])
    return name


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(node.target), RELU_MODULES)
    if node.op == "call_function":
        return node.target in RELU_FUNCS
    return node.op == "call_method" and node.target in RELU_METHODS


def partition(gm: fx.GraphModule, granularity: str = "block") -> list[Unit]:
    """Units of the working graph `gm` (built by `build_qmodel`): 'block' or 'layer'."""
    if granularity == "layer":
        return _layer_units(gm)
    if granularity != "block":
        raise ValueError(f"granularity {granularity!r}: allowed 'block' or 'layer'")
    nodes = [n for n in gm.graph.nodes if n.op not in ("output", "get_attr")]
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ValueError(f"block reconstruction needs a single-input model; inputs {[n.name for n in placeholders]}")
    pos = {n: i for i, n in enumerate(nodes)}
    end = len(nodes)
    last_use = {n: max((pos.get(u, end) for u in n.users), default=-1) for n in nodes}
    modules = dict(gm.named_modules())
    # cut after node i when it is the only value still needed later
    cuts: list[int] = []
    live: set[fx.Node] = set()
    for i, n in enumerate(nodes):
        if last_use[n] > i:
            live.add(n)
        live = {m for m in live if last_use[m] > i}
        if live == {n}:
            cuts.append(i)
    if not cuts or cuts[-1] != end - 1:
        cuts.append(end - 1)
    segments: list[list[fx.Node]] = []
    start = 0
    for c in cuts:
        segments.append(nodes[start : c + 1])
        start = c + 1

    def layers_of(seg: list[fx.Node]) -> list[str]:
        return [n.target for n in seg if n.op == "call_module" and isinstance(modules[n.target], QLayer)]

    # segments without a layer join the previous segment until it ends on a quantizer (its
    # ReLU and output quantizer); the rest (input quantizer, pooling) join the next one
    def ends_quantized(seg: list[fx.Node]) -> bool:
        last = seg[-1]
        return last.op == "call_module" and isinstance(modules.get(last.target), ActQ)

    merged: list[list[fx.Node]] = []
    lead: list[fx.Node] = []
    for seg in segments:
        if layers_of(seg):
            merged.append(lead + seg)
            lead = []
        elif merged and not lead and not ends_quantized(merged[-1]):
            merged[-1] += seg
        else:
            lead += seg
    if not merged:
        raise ValueError("the model has no conv/linear layer to reconstruct")
    merged[-1] += lead
    # neighbours whose layers share a block key form one unit
    grouped: list[list[fx.Node]] = []
    keys: list[set[str]] = []
    for seg in merged:
        k = {_module_key(layer) for layer in layers_of(seg)}
        if grouped and k & keys[-1]:
            grouped[-1] += seg
            keys[-1] |= k
        else:
            grouped.append(seg)
            keys.append(k)
    units: list[Unit] = []
    prev = placeholders[0].name
    for i, seg in enumerate(grouped):
        inp = prev if i else placeholders[0].name
        names = [n.name for n in seg if n.op != "placeholder"]
        units.append(Unit(f"block{i}:{sorted(keys[i])[0]}", names, inp, seg[-1].name, layers_of(seg)))
        prev = seg[-1].name
    return units


def _layer_units(gm: fx.GraphModule) -> list[Unit]:
    modules = dict(gm.named_modules())
    units: list[Unit] = []
    for n in gm.graph.nodes:
        if not (n.op == "call_module" and isinstance(modules[n.target], QLayer)):
            continue
        chain = [n]
        while len(chain[-1].users) == 1:
            u = next(iter(chain[-1].users))
            is_aq = u.op == "call_module" and isinstance(modules.get(u.target), ActQ)
            if is_aq or (_is_relu(u, modules) and len(chain) == 1):
                chain.append(u)
                if is_aq:
                    break
            else:
                break
        arg = n.args[0]
        if not isinstance(arg, fx.Node):
            raise ValueError(f"layer {n.target}: its input is not a graph value")
        units.append(Unit(f"layer:{n.target}", [c.name for c in chain], arg.name, chain[-1].name, [n.target]))
    return units


# --- sub-graphs and taps ----------------------------------------------------------------------
def extract_unit(gm: fx.GraphModule, unit: Unit) -> fx.GraphModule:
    """The unit as a GraphModule taking its input tensor; shares modules with `gm`."""
    names = set(unit.nodes)
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    by_name = {n.name: n for n in gm.graph.nodes}
    env[by_name[unit.input]] = g.placeholder("unit_input")
    for n in gm.graph.nodes:
        if n.name not in names:
            continue
        for a in n.all_input_nodes:
            if a not in env:
                if a.op == "get_attr":
                    env[a] = g.node_copy(a, lambda x: env[x])
                else:
                    raise ValueError(f"unit {unit.name}: node {n.name} reads {a.name} from outside the unit")
        env[n] = g.node_copy(n, lambda x: env[x])
    g.output(env[by_name[unit.output]])
    return fx.GraphModule(gm, g)


def tap(gm: fx.GraphModule, names: list[str]) -> fx.GraphModule:
    """A GraphModule returning the values of nodes `names` (in order), sharing gm's modules;
    nodes not needed for them are dropped."""
    g = fx.Graph()
    val: dict[fx.Node, fx.Node] = {}
    g.graph_copy(gm.graph, val)
    by_name = {n.name: n for n in gm.graph.nodes}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise KeyError(f"no graph nodes {missing}")
    g.output(tuple(val[by_name[n]] for n in names))
    out = fx.GraphModule(gm, g)
    out.graph.eliminate_dead_code()
    out.recompile()
    return out


@torch.no_grad()
def run_tap(t: fx.GraphModule, x: torch.Tensor, device: torch.device, batch: int = 64,
            store: torch.device | None = None) -> list[torch.Tensor]:
    """Values of a tap over all frames, concatenated (on `store`, default `device`)."""
    outs: list[list[torch.Tensor]] = []
    for i in range(0, len(x), batch):
        r = t(x[i : i + batch].to(device))
        outs.append([v.detach().to(store or device) for v in r])
    return [torch.cat([o[j] for o in outs]) for j in range(len(outs[0]))]


# --- grid initialisation ----------------------------------------------------------------------
def mse_weight_scale(w: torch.Tensor, bits: torch.Tensor, importance: torch.Tensor | None = None,
                     grid: int = 40, lo: float = 0.3) -> torch.Tensor:
    """Per-channel scale `alpha * max|w| / qmax` with alpha in [lo, 1] minimising the
    (importance-weighted) squared rounding error of each channel."""
    w = w.detach().float()
    flat = w.reshape(w.shape[0], -1)
    imp = None if importance is None else importance.reshape(w.shape[0], -1).to(w)
    qmax = weight_qmax(bits.to(w.device)).to(w.dtype).clamp(min=1).unsqueeze(1)
    amax = flat.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
    best_err = torch.full((w.shape[0], 1), float("inf"), device=w.device)
    best = amax / qmax
    for a in torch.linspace(1.0, lo, grid).tolist():
        s = a * amax / qmax
        q = torch.clamp(torch.round(flat / s), -qmax, qmax) * s
        e = (q - flat).pow(2)
        err = (e * imp if imp is not None else e).sum(dim=1, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, s, best)
    return best.squeeze(1)


def mse_act_grid(values: torch.Tensor, lo: float, hi: float, bits: int, symmetric: bool = False,
                 grid: int = 40, lo_frac: float = 0.2) -> tuple[float, int]:
    """Scale and zero point whose range (the observed one shrunk by a factor in [lo_frac, 1])
    minimises the squared quantization error of the sampled values."""
    v = values.detach().float()
    best, best_err = act_qparams(lo, hi, bits, symmetric), float("inf")
    for f in torch.linspace(1.0, lo_frac, grid).tolist():
        s, zp = act_qparams(lo * f, hi * f, bits, symmetric)
        err = float((fake_quant_act(v, s, zp, bits) - v).pow(2).mean())
        if err < best_err:
            best, best_err = (s, zp), err
    return best


def mse_acts(stats: ActivationStats, placement: Placement, act_bits: dict[str, int],
             symmetric: bool = False) -> dict[str, ActQuant]:
    out: dict[str, ActQuant] = {}
    for p in placement.points:
        s, zp = mse_act_grid(stats.values(p), stats.lo[p], stats.hi[p], act_bits[p], symmetric)
        out[p] = ActQuant(p, s, zp, act_bits[p])
    return out


# --- the engine -------------------------------------------------------------------------------
@dataclass
class ReconConfig:
    """One reconstruction pass; defaults are the published AdaRound/BRECQ/QDrop values."""

    iters: int = 20000  # per unit
    batch: int = 32
    learn_round: bool = True  # AdaRound soft rounding of the weights
    learn_act: bool = False  # LSQ step of the unit's activation quantizers
    learn_wscale: bool = False  # per-channel weight step (VEFT)
    act_quant: bool = True  # activation quantization on during the pass (inputs and unit)
    lr_round: float = 1e-3
    lr_act: float = 4e-5
    lr_wscale: float = 1e-4
    round_weight: float = 0.01  # lambda of the rounding regulariser
    beta: tuple[float, float] = (20.0, 2.0)
    warmup: float = 0.2  # share of iterations without the regulariser
    drop_p: float = 0.0  # QDrop: probability of keeping an activation unquantized
    quant_output: bool = True  # the unit's own output quantizer inside the loss
    fisher: bool = False  # weight the squared error by the squared loss gradient (BRECQ FIM)
    cache_limit_mb: float = 2048.0  # cached unit inputs/targets above this stay on the CPU

    def as_info(self) -> dict:
        return asdict(self)


# extra(unit index, number of units, out_q, out_fp, labels) -> scalar loss (or None)
ExtraLoss = Callable[[int, int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor | None]


def _owned_actqs(gm: fx.GraphModule, unit: Unit) -> list[ActQ]:
    """ActQ modules whose quant point lies in the unit (re-rounding uses of a grid elsewhere
    call the owner's module and do not make the unit its owner)."""
    first_call: dict[str, str] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module" and n.target.startswith("actq_"):
            first_call.setdefault(n.target, n.name)
    names = set(unit.nodes)
    return [gm.get_submodule(t) for t, node in first_call.items() if node in names]


def _beta(cfg: ReconConfig, t: int) -> float | None:
    """Annealed beta of the regulariser; None during warm-up (no regulariser)."""
    warm = int(cfg.warmup * cfg.iters)
    if t < warm:
        return None
    rel = (t - warm) / max(cfg.iters - warm, 1)
    b0, b1 = cfg.beta
    return b1 + (b0 - b1) * max(0.0, 1.0 - rel)


class Adam:
    """Adam (Kingma & Ba) with per-group learning rates and optional cosine decay per group.

    Plain tensor arithmetic, numerically torch.optim.Adam's default update; used instead of
    torch.optim because creating the first torch optimizer imports the compiler stack, seconds
    that a 2-core CPU run cannot spare."""

    def __init__(self, groups: list[dict], total: int, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.groups, self.total, self.betas, self.eps, self.t = groups, max(total, 1), betas, eps, 0
        self.state = {id(p): (torch.zeros_like(p), torch.zeros_like(p)) for g in groups for p in g["params"]}

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        for g in self.groups:
            lr = g["lr"]
            if g.get("cosine"):
                lr = lr * 0.5 * (1 + math.cos(math.pi * (self.t - 1) / self.total))
            for p in g["params"]:
                if p.grad is None:
                    continue
                m, v = self.state[id(p)]
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                p.sub_(lr * (m / c1) / ((v / c2).sqrt() + self.eps))

    def zero_grad(self) -> None:
        for g in self.groups:
            for p in g["params"]:
                p.grad = None


class _Values:
    """Calibration values of graph nodes: full-precision ones computed once, quantized ones
    handed from unit to unit along a chain of blocks (or tapped when a unit starts elsewhere)."""

    def __init__(self, gm: fx.GraphModule, units: list[Unit], x: torch.Tensor, device: torch.device,
                 cfg: ReconConfig, batch: int):
        self.gm, self.x, self.device, self.cfg, self.batch = gm, x, device, cfg, batch
        names = list(dict.fromkeys(n for u in units for n in (u.input, u.output)))
        with torch.no_grad(), modes(gm, weights_float=True, acts=False):
            sizes = [v[0].numel() for v in tap(gm, names)(x[:1].to(device))]
        mb = sum(sizes) * len(x) * 4 / 2**20
        self.store = device if mb <= cfg.cache_limit_mb else torch.device("cpu")
        self.fp: dict[str, torch.Tensor] = {}
        if mb <= 2 * cfg.cache_limit_mb:  # one pass for all units; else one per unit
            with modes(gm, weights_float=True, acts=False):
                self.fp = dict(zip(names, run_tap(tap(gm, names), x, device, batch, self.store)))
        self.quant: dict[str, torch.Tensor] = {}

    def float_values(self, unit: Unit) -> tuple[torch.Tensor, torch.Tensor]:
        if unit.input in self.fp and unit.output in self.fp:
            return self.fp[unit.input], self.fp[unit.output]
        with modes(self.gm, weights_float=True, acts=False):
            a, b = run_tap(tap(self.gm, [unit.input, unit.output]), self.x, self.device, self.batch, self.store)
        return a, b

    def quant_input(self, unit: Unit) -> torch.Tensor:
        if unit.input in self.quant:
            return self.quant.pop(unit.input)
        self.quant.clear()
        with modes(self.gm, weights_float=False, acts=self.cfg.act_quant):
            (v,) = run_tap(tap(self.gm, [unit.input]), self.x, self.device, self.batch, self.store)
        return v

    @torch.no_grad()
    def hand_on(self, unit: Unit, sub: fx.GraphModule, q_in: torch.Tensor) -> None:
        """The finished unit's quantized output: the next unit's input when they chain."""
        with modes(self.gm, weights_float=False, acts=self.cfg.act_quant):
            outs = [sub(q_in[i : i + self.batch].to(self.device)).to(self.store) for i in range(0, len(q_in), self.batch)]
        self.quant[unit.output] = torch.cat(outs)


def reconstruct(
    gm: fx.GraphModule,
    units: list[Unit],
    cfg: ReconConfig,
    calib_x: torch.Tensor,
    calib_y: torch.Tensor,
    device: torch.device,
    seed: int = 0,
    extra: ExtraLoss | None = None,
    log: Callable[[str], None] = lambda s: None,
    batch_eval: int = 128,
    eval_frames: int = 256,
) -> list[dict]:
    """Reconstruct the units in order. Returns per unit the reconstruction loss before and
    after (on the first `eval_frames` frames, no regulariser, no extra term)."""
    gen = torch.Generator(device=device).manual_seed(int(seed))
    labels = calib_y.to(device).long()
    for q in actqs(gm).values():
        q.gen = gen
    values = _Values(gm, units, calib_x, device, cfg, batch_eval)
    history: list[dict] = []
    for k, unit in enumerate(units):
        sub = extract_unit(gm, unit)
        layers = [gm.get_submodule(n) for n in unit.layers]
        owned = _owned_actqs(gm, unit)
        q_in = values.quant_input(unit)
        fp_in, fp_out = values.float_values(unit)
        grad_w = _fisher(gm, unit, calib_x, labels, device, batch_eval, values.store) if cfg.fisher else None
        groups = [
            {"params": ps, "lr": lr, "cosine": cos}
            for ps, lr, cos in (
                ([m.wq.alpha for m in layers] if cfg.learn_round else [], cfg.lr_round, False),
                ([m.wq.gain for m in layers] if cfg.learn_wscale else [], cfg.lr_wscale, True),
                ([q.scale for q in owned] if cfg.learn_act and cfg.act_quant else [], cfg.lr_act, True),
            )
            if ps
        ]
        learned = [p for g in groups for p in g["params"]]
        unit_modes = _unit_modes(gm, owned, cfg)
        n_eval = min(eval_frames, len(q_in))

        def evaluate(sub=sub, q_in=q_in, fp_out=fp_out, grad_w=grad_w, unit_modes=unit_modes, n=n_eval) -> float:
            tot = 0.0
            with torch.no_grad(), unit_modes():
                for i in range(0, n, batch_eval):
                    sl = slice(i, min(i + batch_eval, n))
                    gw = grad_w[sl].to(device) if grad_w is not None else None
                    out = sub(q_in[sl].to(device))
                    tot += float(_rec_loss(out, fp_out[sl].to(device), gw)) * out.shape[0]
            return tot / n

        before = evaluate()  # the starting point: current rounding (nearest or earlier passes)
        start = _snapshot(layers, owned)
        if cfg.learn_round:
            for m in layers:
                if m.wq.mode == "hard":  # an earlier pass rounded: restart soft from its codes
                    m.wq.restart_from_codes()
                m.wq.mode = "soft"
        if learned and cfg.iters > 0:
            for p in learned:
                p.requires_grad_(True)
            opt = Adam(groups, cfg.iters)
            with unit_modes():
                for q in owned:
                    q.drop_p = cfg.drop_p
                try:
                    for t in range(cfg.iters):
                        idx = torch.randint(0, len(q_in), (min(cfg.batch, len(q_in)),), generator=gen, device=device)
                        idx_s = idx.to(values.store)
                        xin = q_in[idx_s].to(device)
                        if cfg.drop_p > 0:
                            mix = torch.rand(xin.shape, generator=gen, device=device) < cfg.drop_p
                            xin = torch.where(mix, fp_in[idx_s].to(device), xin)
                        out = sub(xin)
                        tgt = fp_out[idx_s].to(device)
                        loss = _rec_loss(out, tgt, grad_w[idx_s].to(device) if grad_w is not None else None)
                        b = _beta(cfg, t)
                        if cfg.learn_round and b is not None:
                            loss = loss + cfg.round_weight * sum(m.wq.round_reg(b) for m in layers)
                        if extra is not None:
                            e = extra(k, len(units), out, tgt, labels[idx])
                            if e is not None:
                                loss = loss + e
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
                finally:
                    for q in owned:
                        q.drop_p = 0.0
                    for p in learned:
                        p.requires_grad_(False)
                        p.grad = None
        if cfg.learn_round:
            for m in layers:
                m.wq.mode = "hard"
        after = evaluate()
        kept_start = after > before
        if kept_start:
            # Few iterations can end with a hard rounding worse than where the unit started (the
            # soft-to-hard gap): keep the start instead, so a pass never makes a unit worse on
            # the calibration frames it is judged on.
            _restore(layers, owned, start)
            after = evaluate()
        if k + 1 < len(units) and units[k + 1].input == unit.output:
            values.hand_on(unit, sub, q_in)
        history.append({"unit": unit.name, "layers": unit.layers, "loss_before": before, "loss_after": after,
                        "kept_start": kept_start})
        log(f"  {unit.name}: reconstruction loss {before:.4g} -> {after:.4g}")
    return history


def _snapshot(layers: list[nn.Module], owned: list[ActQ]) -> tuple:
    return ([(m.wq.mode, m.wq.alpha.detach().clone(), m.wq.gain.detach().clone()) for m in layers],
            [(q.scale.detach().clone(), q.zero_point.clone()) for q in owned])


def _restore(layers: list[nn.Module], owned: list[ActQ], snap: tuple) -> None:
    for m, (mode, alpha, gain) in zip(layers, snap[0]):
        m.wq.mode = mode
        m.wq.alpha.data.copy_(alpha)
        m.wq.gain.data.copy_(gain)
    for q, (scale, zp) in zip(owned, snap[1]):
        q.scale.data.copy_(scale)
        q.zero_point.copy_(zp)


def _unit_modes(gm: fx.GraphModule, owned: list[ActQ], cfg: ReconConfig) -> Callable:
    """Quantized weights; activation quantization as the pass wants it (the unit's own
    quantizers off when `quant_output` is False, AdaRound's loss before the output grid)."""

    @contextmanager
    def ctx() -> Iterator[None]:
        with modes(gm, weights_float=False, acts=cfg.act_quant):
            old = [q.enabled for q in owned]
            if not cfg.quant_output:
                for q in owned:
                    q.enabled = False
            try:
                yield
            finally:
                for q, v in zip(owned, old):
                    q.enabled = v

    return ctx


def _rec_loss(out: torch.Tensor, tgt: torch.Tensor, grad_w: torch.Tensor | None) -> torch.Tensor:
    """Squared error summed over channels (dim 1), averaged over samples and positions."""
    e = (out - tgt).pow(2)
    if grad_w is not None:
        e = e * grad_w
    return e.sum(dim=1).mean() if e.ndim > 1 else e.mean()


def _fisher(gm: fx.GraphModule, unit: Unit, x: torch.Tensor, y: torch.Tensor, device: torch.device,
            batch: int, store: torch.device) -> torch.Tensor:
    """Squared gradient of the detector's cross-entropy w.r.t. the unit output (full precision),
    normalised to mean 1 so the loss keeps its scale."""
    out_node = _output_name(gm)
    t = tap(gm, [out_node, unit.output])
    chunks = []
    with modes(gm, weights_float=True, acts=False):
        for i in range(0, len(x), batch):
            logits, h = t(x[i : i + batch].to(device))
            (g,) = torch.autograd.grad(F.cross_entropy(logits, y[i : i + batch], reduction="sum"), h)
            chunks.append(g.detach().pow(2).to(store))
    g2 = torch.cat(chunks)
    return g2 / g2.mean().clamp(min=1e-30)


def _output_name(gm: fx.GraphModule) -> str:
    for n in gm.graph.nodes:
        if n.op == "output":
            out = n.args[0]
            out = out[0] if isinstance(out, (tuple, list)) else out
            return out.name
    raise ValueError("graph has no output")


# --- presets shared by the baselines ----------------------------------------------------------
@dataclass
class Schedule:
    """Iterations per unit: 'paper' scales the published count to the calibration size
    (same number of passes over the data); 'fast' is a fixed small count for CPUs."""

    preset: str = "fast"
    iters: int | None = None  # explicit override

    def resolve(self, paper_iters: int, paper_samples: int, n_calib: int, fast_iters: int) -> int:
        if self.iters is not None:
            return int(self.iters)
        if self.preset == "paper":
            return max(1, int(math.ceil(paper_iters * n_calib / paper_samples)))
        if self.preset == "fast":
            return fast_iters
        raise ValueError(f"preset {self.preset!r}: allowed 'fast' or 'paper'")


def uniform_start(ctx: MethodContext) -> fx.GraphModule:
    """The working model of the uniform plan: per-channel MSE-clipped weight scales and
    MSE-clipped activation grids on the float model's calibration activations."""
    weight_init: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, mod in compute_modules(ctx.folded).items():
        w = mod.weight.detach().float()
        bits = torch.full((w.shape[0],), int(ctx.weight_bits[name]), dtype=torch.int64, device=w.device)
        weight_init[name] = (mse_weight_scale(w, bits), bits)
    stats = collect_activation_stats(ctx.folded.to(ctx.device), ctx.placement, ctx.batches(), seed=ctx.seed)
    acts = mse_acts(stats, ctx.placement, ctx.act_bits, bool(ctx.options.get("act_symmetric", False)))
    return build_qmodel(ctx.folded, ctx.placement, weight_init, acts)


RECON_KEYS = {f.name for f in fields(ReconConfig)}


def recon_config(ctx: MethodContext, base: ReconConfig, paper_iters: int, paper_samples: int,
                 fast_iters: int) -> ReconConfig:
    """`base` with the method's options applied (any ReconConfig field by name; `preset`
    'fast' | 'paper' and `iters` choose the iteration count)."""
    opts = dict(ctx.options)
    sched = Schedule(str(opts.pop("preset", "fast")), opts.pop("iters", None))
    unknown = sorted(set(opts) - RECON_KEYS - {"act_symmetric"})
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; allowed: {sorted(RECON_KEYS | {'preset', 'act_symmetric'})}")
    known = {k: v for k, v in opts.items() if k in RECON_KEYS}
    cfg = replace(base, **{k: (tuple(v) if k == "beta" else v) for k, v in known.items()})
    return replace(cfg, iters=sched.resolve(paper_iters, paper_samples, len(ctx.calib_x), fast_iters))


@contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
    """cuDNN in deterministic mode while a method runs (same seed => same codes on CUDA)."""
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old
