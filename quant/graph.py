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


def fold_bn(model: nn.Module) -> fx.GraphModule:
    """Trace `model` and fold every BatchNorm that directly follows a conv/linear into it."""
    gm = copy.deepcopy(trace(model))
    _decompose_silu(gm)
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


def place(gm: fx.GraphModule) -> Placement:
    modules = dict(gm.named_modules())
    scalars = non_tensor_nodes(gm)
    points: list[str] = []
    grid_of: dict[str, str] = {}
    reround: list[str] = []
    weights: list[str] = []
    inputs: list[str] = []
    fused_into: dict[str, str] = {}  # producer node -> its fused relu node
    for node in gm.graph.nodes:
        if node.name in scalars:
            continue
        kind = _kind(node, modules)
        if kind == "compute" and node.op == "call_module":
            weights.append(node.target)
        if kind in ("compute", "add"):
            users = list(node.users)
            if len(users) == 1 and _kind(users[0], modules) == "relu":
                fused_into[node.name] = users[0].name
                continue  # the relu carries the quantizer
        first_arg = next((a for a in node.args if isinstance(a, fx.Node) and a.name not in scalars), None)
        if kind == "input":
            points.append(node.name)
            inputs.append(node.name)
            grid_of[node.name] = node.name
        elif kind in ("compute", "add", "other"):
            points.append(node.name)
            grid_of[node.name] = node.name
        elif kind == "relu":
            if first_arg is not None and fused_into.get(first_arg.name) == node.name:
                points.append(node.name)
                grid_of[node.name] = node.name
            elif first_arg is not None and first_arg.name in grid_of:
                grid_of[node.name] = grid_of[first_arg.name]  # relu on a grid keeps the grid
            else:
                points.append(node.name)
                grid_of[node.name] = node.name
        elif kind in ("pass", "reround"):
            if first_arg is not None and first_arg.name in grid_of:
                grid_of[node.name] = grid_of[first_arg.name]
                if kind == "reround":
                    reround.append(node.name)
            else:
                points.append(node.name)
                grid_of[node.name] = node.name
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
