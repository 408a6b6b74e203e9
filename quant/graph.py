"""Tracing, BN folding and placement of activation quantizers.

Placement follows what int8 runtimes do, so that the simulation computes what a deployed
file computes (onnxruntime QDQ and LiteRT int8 agree on these points):
- every graph input is quantized;
- conv / linear / add outputs are quantized, after a ReLU-like op that directly follows them
  (runtimes fuse it);
- max-pool, flatten, reshape, dropout, unfused ReLU keep their input's grid;
- average pooling re-rounds onto its input's grid (LiteRT ties the scales of AVERAGE_POOL/MEAN);
- any other op produces a fresh quantized tensor.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import fx
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

COMPUTE_MODULES = (nn.Conv1d, nn.Conv2d, nn.Linear)
RELU_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
RELU_FUNCS = {F.relu, torch.relu, F.relu6, F.hardtanh}
RELU_METHODS = {"relu", "relu_"}
ADD_FUNCS = {operator.add, torch.add, operator.iadd}
PASS_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, nn.Dropout, nn.Identity, nn.Unflatten, nn.ZeroPad2d, nn.PixelShuffle, nn.PixelUnshuffle)
PASS_FUNCS = {F.max_pool2d, torch.flatten, F.dropout, operator.getitem, torch.reshape}
PASS_METHODS = {"view", "reshape", "flatten", "contiguous", "permute", "transpose", "squeeze", "unsqueeze"}
REROUND_MODULES = (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool1d)
REROUND_FUNCS = {F.adaptive_avg_pool2d, F.avg_pool2d, torch.mean}
REROUND_METHODS = {"mean"}


def trace(model: nn.Module) -> fx.GraphModule:
    model = model.eval()
    gm = model if isinstance(model, fx.GraphModule) else fx.symbolic_trace(model)
    return gm


def _decompose_silu(gm: fx.GraphModule) -> None:
    """SiLU -> x * sigmoid(x): runtimes quantize the sigmoid and the product separately, so the
    simulation must see both tensors (ONNX exports SiLU as Sigmoid + Mul)."""
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        is_silu = (node.op == "call_module" and isinstance(modules.get(node.target), nn.SiLU)) or (
            node.op == "call_function" and node.target is F.silu)
        if not is_silu:
            continue
        x = node.args[0]
        with gm.graph.inserting_before(node):
            sig = gm.graph.call_function(torch.sigmoid, (x,))
            mul = gm.graph.call_function(operator.mul, (x, sig))
        node.replace_all_uses_with(mul)
        gm.graph.erase_node(node)


@torch.no_grad()
def _fold_constants(gm: fx.GraphModule) -> None:
    """Evaluate subgraphs that depend only on parameters/buffers (e.g. F3Net's filters,
    base + 2*sigmoid(learnable) - 1) into constant buffers: they are weights, not activations,
    and a runtime folds them the same way. Conv/linear modules are left alone (quantized)."""
    env: dict[str, torch.Tensor] = {}
    modules = dict(gm.named_modules())
    count = 0
    for node in list(gm.graph.nodes):
        if node.op == "get_attr":
            value = gm
            for part in node.target.split("."):
                value = getattr(value, part)
            if isinstance(value, torch.Tensor):
                env[node.name] = value
            continue
        if node.op not in ("call_function", "call_method", "call_module"):
            continue
        if node.op == "call_module" and isinstance(modules.get(node.target), COMPUTE_MODULES):
            continue
        inputs = node.all_input_nodes
        if not inputs or any(a.name not in env for a in inputs):
            continue

        def load(a):
            return env[a.name] if isinstance(a, fx.Node) else a

        args = fx.node.map_arg(node.args, load)
        kwargs = fx.node.map_arg(node.kwargs, load)
        if node.op == "call_function":
            value = node.target(*args, **kwargs)
        elif node.op == "call_method":
            value = getattr(args[0], node.target)(*args[1:], **kwargs)
        else:
            value = modules[node.target](*args, **kwargs)
        if not isinstance(value, torch.Tensor):
            continue
        name = f"_folded_const_{count}"
        count += 1
        gm.register_buffer(name, value.detach().clone())
        with gm.graph.inserting_before(node):
            const = gm.graph.get_attr(name)
        node.replace_all_uses_with(const)
        gm.graph.erase_node(node)
        env[const.name] = value
    if count:
        gm.graph.eliminate_dead_code()
        gm.recompile()


def fold_bn(model: nn.Module) -> fx.GraphModule:
    """Trace `model`, fold parameter-only subgraphs into constants and every BatchNorm that
    directly follows a conv/linear into it."""
    gm = copy.deepcopy(trace(model))
    _decompose_silu(gm)
    _fold_constants(gm)
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), (nn.BatchNorm1d, nn.BatchNorm2d)):
            continue
        prev = node.args[0]
        if not (isinstance(prev, fx.Node) and prev.op == "call_module" and len(prev.users) == 1):
            continue
        layer = modules.get(prev.target)
        bn = modules[node.target]
        if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
            fused = fuse_conv_bn_eval(layer.eval(), bn.eval())
        elif isinstance(layer, nn.Linear):
            fused = fuse_linear_bn_eval(layer.eval(), bn.eval())
        else:
            continue
        _set_module(gm, prev.target, fused)
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    _drop_unused_modules(gm)
    return gm.eval()


def _set_module(gm: nn.Module, qualname: str, module: nn.Module) -> None:
    parent, _, name = qualname.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)


def _drop_unused_modules(gm: fx.GraphModule) -> None:
    used = {n.target for n in gm.graph.nodes if n.op in ("call_module", "get_attr")}
    for name, _ in list(gm.named_modules()):
        if name and isinstance(gm.get_submodule(name), (nn.BatchNorm1d, nn.BatchNorm2d)) and name not in used:
            _set_module(gm, name, nn.Identity())


@dataclass
class Placement:
    """Where quantizers sit in a folded graph."""

    points: list[str]  # FX node names whose outputs get their own activation quantizer, in order
    grid_of: dict[str, str]  # FX node -> quant point owning the grid its output lies on
    reround: list[str]  # nodes that re-round onto an inherited grid (avg pooling)
    weights: list[str]  # qualified names of conv/linear modules, in execution order
    inputs: list[str] = field(default_factory=list)
    output_point: str | None = None  # the quant point of the model output (logits)

    @property
    def first_layer(self) -> str | None:
        return self.weights[0] if self.weights else None

    @property
    def last_layer(self) -> str | None:
        return self.weights[-1] if self.weights else None


def _grid_preserving_call(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Zero padding and nearest-neighbour resampling only copy values (zero is on every grid)."""
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, nn.ConstantPad2d):
            return m.value == 0
        if isinstance(m, nn.Upsample):
            return m.mode == "nearest"
        return False
    if node.op == "call_function" and node.target is F.pad:
        mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
        value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else 0.0)
        return mode == "constant" and not value
    if node.op == "call_function" and node.target is F.interpolate:
        return node.kwargs.get("mode", "nearest") == "nearest"
    return False


def _kind(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "placeholder":
        return "input"
    if _grid_preserving_call(node, modules):
        return "pass"
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, COMPUTE_MODULES):
            return "compute"
        if isinstance(m, RELU_MODULES):
            return "relu"
        if isinstance(m, PASS_MODULES):
            return "pass"
        if isinstance(m, REROUND_MODULES):
            return "reround"
        return "other"
    if node.op == "call_function":
        if node.target in ADD_FUNCS:
            return "add"
        if node.target in (F.conv2d, F.linear):
            return "compute"
        if node.target in RELU_FUNCS:
            return "relu"
        if node.target in PASS_FUNCS:
            return "pass"
        if node.target in REROUND_FUNCS:
            return "reround"
        return "other"
    if node.op == "call_method":
        if node.target in RELU_METHODS:
            return "relu"
        if node.target in PASS_METHODS:
            return "pass"
        if node.target in REROUND_METHODS:
            return "reround"
        if node.target == "add":
            return "add"
        return "other"
    return "none"  # get_attr, output


_SHAPE_ATTRS = {"shape", "dtype", "device", "ndim", "is_cuda"}
_SHAPE_METHODS = {"size", "dim", "numel", "type", "get_device", "__len__"}


def non_tensor_nodes(gm: fx.GraphModule) -> set[str]:
    """Nodes computing shapes, sizes or other Python values (e.g. ViT's `x.shape[0]`): they are
    never quantized. A node is non-tensor if it reads a shape, or if all its node inputs are."""
    out: set[str] = set()
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is getattr and len(node.args) > 1 and node.args[1] in _SHAPE_ATTRS:
            out.add(node.name)
        elif node.op == "call_method" and node.target in _SHAPE_METHODS:
            out.add(node.name)
        elif node.op in ("call_function", "call_method"):
            inputs = [a for a in node.all_input_nodes]
            if inputs and all(a.name in out for a in inputs):
                out.add(node.name)
    return out


def _is_constant(node: fx.Node) -> bool:
    return node.op == "get_attr"


def place(gm: fx.GraphModule) -> Placement:
    """Quantized ops are conv/linear (our weights) and adds of two activations, one of them on a
    grid; everything else
    (sigmoid, multiply, matmul with a fixed matrix, concat, attention ...) runs in float, as in
    LiteRT's PT2E graph and in our ONNX export (which tells onnxruntime to leave those alone).
    A tensor gets a grid when a quantized op produces it, or when a quantized op consumes it
    (then it is quantized where it is produced); grid-preserving ops pass grids on."""
    modules = dict(gm.named_modules())
    scalars = non_tensor_nodes(gm)
    nodes = [n for n in gm.graph.nodes if n.name not in scalars]

    def tensor_args(node: fx.Node) -> list[fx.Node]:
        return [a for a in node.all_input_nodes if a.name not in scalars]

    def kind_of(node: fx.Node) -> str:
        kind = _kind(node, modules)
        if kind == "add":  # only adds of two activations run as int8 adds
            args = [a for a in node.args if not isinstance(a, fx.Node) or a.name not in scalars]
            if len(args) != 2 or not all(isinstance(a, fx.Node) and not _is_constant(a) for a in args):
                return "other"
        return kind

    kinds = {n.name: kind_of(n) for n in nodes}
    weights = [n.target for n in nodes if kinds[n.name] == "compute" and n.op == "call_module"]
    fused_into: dict[str, str] = {}  # conv/linear/add -> the ReLU that carries its quantizer
    for n in nodes:
        if kinds[n.name] in ("compute", "add"):
            users = list(n.users)
            if len(users) == 1 and kinds.get(users[0].name) == "relu":
                fused_into[n.name] = users[0].name
    forced: set[str] = set()  # float tensors a quantized op consumes: quantized where produced
    while True:
        points, grid_of, reround = [], {}, []
        quantized: set[str] = set()  # conv/linear and add nodes that run as int8 ops
        for n in nodes:
            kind = kinds[n.name]
            args = tensor_args(n)
            src = args[0] if args else None
            # An add joins the int8 graph only where one of its inputs is already on a grid:
            # adds inside a float island (F3Net's / SPSL's spectra) stay float with the island.
            if kind == "compute" or (kind == "add" and any(a.name in grid_of for a in args)):
                quantized.add(n.name)
            fused_relu = kind == "relu" and src is not None and fused_into.get(src.name) == n.name and src.name in quantized
            if (n.name in quantized and n.name not in fused_into) or fused_relu or n.name in forced:
                points.append(n.name)
                grid_of[n.name] = n.name
            elif kind in ("pass", "relu", "reround") and src is not None and src.name in grid_of:
                grid_of[n.name] = grid_of[src.name]  # same values, or re-rounded onto the same grid
                if kind == "reround":
                    reround.append(n.name)
        missing = {
            a.name
            for n in nodes
            if n.name in quantized
            for a in tensor_args(n)
            if not _is_constant(a) and a.name not in grid_of
        }
        if not missing:
            break
        forced |= missing
    inputs = [n.name for n in nodes if n.op == "placeholder" and n.name in grid_of]
    output_point = None
    for node in gm.graph.nodes:
        if node.op == "output":
            out = node.args[0]
            out = out[0] if isinstance(out, (tuple, list)) else out
            if isinstance(out, fx.Node):
                output_point = grid_of.get(out.name)
    return Placement(points, grid_of, reround, weights, inputs, output_point)


def compute_modules(gm: fx.GraphModule) -> dict[str, nn.Module]:
    """Conv/linear modules of a folded graph in execution order."""
    modules = dict(gm.named_modules())
    out: dict[str, nn.Module] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], COMPUTE_MODULES):
            out[node.target] = modules[node.target]
    return out
