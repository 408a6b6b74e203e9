"""TFLite / LiteRT artifacts via litert-torch: float32, float16, and full-integer int8 that keeps
our integer codes and activation grids exactly.

The int8 path runs litert-torch's own PT2E quantizer (its annotation decides where Q/DQ go,
which is what the LiteRT converter fuses into int8 kernels; restricted to the simulation's
int8 ops, see _sim_aligned_quantizer) and then replaces every observer
by one holding OUR range: per-channel weight ranges +-127*s (eps 1e-12 — litert's default
2**-12 floor changes small channel scales) and activation ranges that reproduce our scale and
zero point. Observed tensors are matched to the simulation by value (see match.py).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from quant import QuantParams, with_dequantized_weights

from .base import Artifact, CannotRepresent, ExportRequest, register_exporter, sha256_file
from .match import ValueIndex, weight_owner


@contextlib.contextmanager
def _quiet():
    """litert-torch prints progress lines and absl logs on every conversion."""
    logging.getLogger("absl").setLevel(logging.ERROR)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        yield


def _convert(model: torch.nn.Module, example: torch.Tensor, path: Path, **kwargs) -> Path:
    import litert_torch

    if not isinstance(model, torch.fx.GraphModule) or "quant_config" not in kwargs:
        model = model.eval()  # PT2E-converted graphs refuse .eval(); they are eval already
    with _quiet():
        edge = litert_torch.convert(model, (example,), **kwargs)
        edge.export(str(path))
    return path


CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
# quantized (output-channel) dimension of each op's filter in LiteRT's layout
FILTER_CHANNEL_DIM = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 0}


def tflite_op_counts(path: Path) -> dict:
    """Op names, and how many convolutions / FC run with int8 inputs (int8_convs), with float
    inputs and int8 filters (hybrid_convs: dynamic-range kernels) or entirely in float."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    details = {t["index"]: t for t in it.get_tensor_details()}
    ops = it._get_ops_details()
    counts = Counter(op["op_name"] for op in ops)
    int8_convs = hybrid_convs = float_convs = 0
    for op in ops:
        if op["op_name"] in CONV_OPS:
            dtype = details[op["inputs"][0]]["dtype"] if op["inputs"].size else None
            fdtype = details[op["inputs"][1]]["dtype"] if op["inputs"].size > 1 else None
            if dtype in (np.int8, np.uint8):
                int8_convs += 1
            elif fdtype in (np.int8, np.uint8):
                hybrid_convs += 1
            else:
                float_convs += 1
    return {"ops": dict(sorted(counts.items())), "int8_convs": int8_convs, "hybrid_convs": hybrid_convs,
            "float_convs": float_convs}


def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def _read_model(path: Path):
    from ai_edge_litert.tools import flatbuffer_utils

    return flatbuffer_utils.read_model(str(path))


def _tensors(path: Path) -> list:
    return [t for sg in _read_model(path).subgraphs for t in sg.tensors]


def _op_name(model, op) -> str:
    from ai_edge_litert.tools import flatbuffer_utils

    return flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) or ""


@register_exporter("tflite-fp32", "tflite", ".tflite", quantized=False, description="LiteRT float32")
def tflite_fp32(req: ExportRequest) -> Artifact:
    path = _convert(req.result.folded, req.probe[:1], req.out_path.with_suffix(".tflite"))
    return Artifact(path, "tflite-fp32", "tflite", sha256_file(path), path.stat().st_size, op_counts=tflite_op_counts(path))


@register_exporter("tflite-fp16", "tflite", ".tflite", quantized=False,
                   description="LiteRT float16 weights (DEQUANTIZE to float32 at load), float32 compute",
                   version="2")  # 2: ai-edge-quantizer float casting (1 needed TensorFlow)
def tflite_fp16(req: ExportRequest) -> Artifact:
    """The float32 flatbuffer with conv/FC weights cast to float16 by ai-edge-quantizer's
    float-casting recipe (the LiteRT stack's own fp16 path; no TensorFlow needed)."""
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer import quantizer as aeq

    path = req.out_path.with_suffix(".tflite")
    fp32 = _convert(req.result.folded, req.probe[:1], req.out_path.with_name(req.out_path.name + "-fp32.tflite"))
    q = aeq.Quantizer(str(fp32))
    q.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=16,
                             algorithm_key=aeq.AlgorithmName.FLOAT_CASTING)
    with _quiet():
        q.quantize().export_model(str(path), overwrite=True)
    fp32.unlink()
    f16 = sum(1 for t in _tensors(path) if t.type == _schema().TensorType.FLOAT16)
    return Artifact(path, "tflite-fp16", "tflite", sha256_file(path), path.stat().st_size, op_counts=tflite_op_counts(path),
                    info={"float16_tensors": f16})


def _observer_groups(prepared: torch.fx.GraphModule) -> dict[int, list[str]]:
    """Observer module names grouped by instance: shared-qparams ops (pooling, flatten) reuse
    their input's observer, so one instance may sit under several names."""
    groups: dict[int, list[str]] = {}
    for node in prepared.graph.nodes:
        if node.op == "call_module" and "activation_post_process" in str(node.target):
            groups.setdefault(id(prepared.get_submodule(node.target)), []).append(node.target)
    return groups


def _observer_inputs(prepared: torch.fx.GraphModule, probe: torch.Tensor) -> dict[int, np.ndarray]:
    """What each observer instance first sees in a forward pass, over the probe batch (the
    export is specialised to batch 1: samples run one at a time and concatenate)."""
    groups = _observer_groups(prepared)
    per_call: dict[int, np.ndarray] = {}
    seen: dict[int, list[np.ndarray]] = {k: [] for k in groups}

    def hook(module, args):
        per_call.setdefault(id(module), args[0].detach().float().numpy())

    handles = [prepared.get_submodule(names[0]).register_forward_pre_hook(hook) for names in groups.values()]
    try:
        with torch.no_grad():
            for i in range(len(probe)):
                per_call.clear()
                prepared(probe[i : i + 1])
                for k, v in per_call.items():
                    seen[k].append(v)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for k, vals in seen.items():
        same = all(v.shape == vals[0].shape and np.array_equal(v, vals[0]) for v in vals)
        out[k] = vals[0] if same and len(vals) > 1 else np.concatenate(vals)  # constants: once
    return out


def _fixed_observers(prepared: torch.fx.GraphModule, params: QuantParams, index: ValueIndex, probe: torch.Tensor) -> dict:
    """Swap every observer for a min/max observer pinned to our range; returns match stats."""
    from torchao.quantization.pt2e.observer import MinMaxObserver, PerChannelMinMaxObserver

    groups = _observer_groups(prepared)
    seen = _observer_inputs(prepared, probe)
    stats = {"weights": 0, "acts": 0, "unmatched": []}
    for key, names in groups.items():
        value = seen[key]
        old = prepared.get_submodule(names[0])
        per_channel = getattr(old, "qscheme", None) in (torch.per_channel_symmetric, torch.per_channel_affine)
        owner = weight_owner(params, value) if value.ndim >= 2 else None
        if owner is not None:
            if not per_channel:
                raise CannotRepresent(f"litert quantizer chose per-tensor weights for {owner}; our codes are per-channel")
            wq = params.weights[owner]
            obs = PerChannelMinMaxObserver(
                ch_axis=getattr(old, "ch_axis", 0), dtype=torch.int8, quant_min=-127, quant_max=127,
                qscheme=torch.per_channel_symmetric, eps=1e-12,
            )
            s = torch.from_numpy(wq.scale.astype(np.float32))
            obs.min_val = -127 * s
            obs.max_val = 127 * s
            stats["weights"] += 1
        else:
            node = index.match(value)
            aq = params.act_for_node(node) if node else None
            if aq is None:
                stats["unmatched"].append(names[0])
                continue  # keep the runtime's own calibration for this tensor
            if aq.bits != 8:
                raise CannotRepresent(f"{aq.bits}-bit activations: LiteRT int8 kernels cannot keep a {aq.bits}-bit grid")
            obs = MinMaxObserver(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_affine, eps=1e-12)
            lo, hi = aq.range
            obs.min_val = torch.tensor(float(lo))
            obs.max_val = torch.tensor(float(hi))
            stats["acts"] += 1
        for name in names:
            _replace_module(prepared, name, obs)
    return stats


def _replace_module(gm: torch.nn.Module, qualname: str, module: torch.nn.Module) -> None:
    parent, _, leaf = qualname.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, leaf, module)


def read_tflite_codes(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(int8 codes in OIHW / [out, in] layout, per-channel scales) of every per-channel
    quantized constant filter tensor, read from the flatbuffer itself."""
    schema = _schema()
    model = _read_model(path)
    out = []
    for sg in model.subgraphs:
        for t in sg.tensors:
            q = t.quantization
            data = model.buffers[t.buffer].data if t.buffer < len(model.buffers) else None
            if q is None or q.scale is None or len(q.scale) < 1 or data is None or len(data) == 0:
                continue
            if t.type != schema.TensorType.INT8 or len(t.shape) < 2 or len(q.scale) != t.shape[q.quantizedDimension]:
                continue
            arr = np.frombuffer(bytes(bytearray(data)), np.int8).reshape(t.shape)
            out.append((_to_torch_layout(arr, q.quantizedDimension), np.asarray(q.scale, np.float32)))
    return out


def _to_torch_layout(arr: np.ndarray, dim: int) -> np.ndarray:
    if arr.ndim == 4 and dim == 0:  # CONV_2D: OHWI -> OIHW
        return arr.transpose(0, 3, 1, 2)
    if arr.ndim == 4 and dim == 3:  # DEPTHWISE_CONV_2D: 1HWO -> O1HW
        return arr.transpose(3, 0, 1, 2)
    return arr


def _from_torch_layout(arr: np.ndarray, dim: int, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of _to_torch_layout onto a LiteRT filter of `shape` (conv1d codes [O, I, K]
    become [O, 1, K, I] filters: same order once transposed)."""
    if len(shape) == 4 and dim == 0:
        o, h, w, i = shape
        return arr.reshape(o, i, h, w).transpose(0, 2, 3, 1)
    if len(shape) == 4 and dim == 3:
        _, h, w, o = shape
        return arr.reshape(o, 1, h, w).transpose(1, 2, 3, 0)
    return arr.reshape(shape)


def _same_codes(stored: np.ndarray, codes: np.ndarray) -> bool:
    """Equal codes, allowing the reshape a converter applies (conv1d filters gain an axis)."""
    if stored.shape != codes.shape:
        if stored.size != codes.size or stored.shape[0] != codes.shape[0]:
            return False
        stored = stored.reshape(codes.shape)
    return np.array_equal(stored, codes)


def tflite_codes_match(params: QuantParams, stored: list[tuple[np.ndarray, np.ndarray]]) -> tuple[bool, list[str]]:
    missing = []
    for name, wq in params.weights.items():
        ok = any(
            _same_codes(c, wq.codes) and s.shape == wq.scale.shape and np.allclose(s, wq.scale, rtol=1e-6, atol=0)
            for c, s in stored
        )
        if not ok:
            missing.append(name)
    return not missing, missing


def _float_owner(params: QuantParams, value: np.ndarray) -> str | None:
    """The module whose dequantized codes equal this float filter exactly (any reshape)."""
    for name, wq in params.weights.items():
        if wq.codes.size == value.size and wq.codes.shape[0] == value.shape[0]:
            if np.array_equal(wq.dequantize().reshape(-1), value.reshape(-1).astype(np.float32)):
                return name
    return None


@register_exporter("tflite-dynamic", "tflite", ".tflite", quantized=True,
                   description="LiteRT dynamic-range: our per-channel int8 weight codes, float activations")
def tflite_dynamic(req: ExportRequest) -> Artifact:
    """The float32 flatbuffer of the model carrying our dequantized codes, with every conv / FC
    filter replaced by those codes (INT8, our per-channel scales, zero point 0): LiteRT runs such
    ops in its hybrid kernels (int8 weights x activations quantized on the fly). Weights are
    exact; activations are float between ops, so sub-8-bit activation grids are not kept."""
    from ai_edge_litert.tools import flatbuffer_utils

    schema = _schema()
    params = req.result.params
    if params is None:
        raise CannotRepresent(f"tflite-dynamic exports quantized models; {req.result.method} has no quantization parameters")
    narrow = sorted({a.bits for a in params.acts.values() if a.bits < 8})
    if narrow:
        raise CannotRepresent(f"{narrow}-bit activations: tflite-dynamic keeps activations in float (quantized to 8 bits "
                              "on the fly inside hybrid kernels), so the simulation's sub-8-bit grids are lost")
    path = req.out_path.with_suffix(".tflite")
    fp32 = _convert(with_dequantized_weights(req.result.folded, params), req.probe[:1],
                    req.out_path.with_name(req.out_path.name + "-fp32.tflite"))
    model = _read_model(fp32)
    fp32.unlink()
    done: dict[tuple[int, int], str] = {}
    for sgi, sg in enumerate(model.subgraphs):
        for op in sg.operators:
            kind = _op_name(model, op)
            if kind not in FILTER_CHANNEL_DIM or len(op.inputs) < 2 or (sgi, op.inputs[1]) in done:
                continue
            t = sg.tensors[op.inputs[1]]
            data = model.buffers[t.buffer].data
            if t.type != schema.TensorType.FLOAT32 or data is None or len(data) == 0:
                continue  # a filter computed at run time: stays float (reported as a float conv)
            dim = FILTER_CHANNEL_DIM[kind]
            value = np.frombuffer(bytes(bytearray(data)), np.float32).reshape(t.shape)
            owner = _float_owner(params, _to_torch_layout(value, dim))
            if owner is None:
                continue
            wq = params.weights[owner]
            buf = schema.BufferT()
            buf.data = np.frombuffer(_from_torch_layout(wq.codes.astype(np.int8), dim, tuple(t.shape)).tobytes(), np.uint8)
            model.buffers.append(buf)
            t.buffer = len(model.buffers) - 1  # a new buffer: the converter may share constant buffers
            t.type = schema.TensorType.INT8
            qp = schema.QuantizationParametersT()
            qp.scale = [float(v) for v in wq.scale.astype(np.float32)]
            qp.zeroPoint = [0] * len(qp.scale)
            qp.quantizedDimension = dim
            t.quantization = qp
            done[(sgi, op.inputs[1])] = owner
    used = {t.buffer for sg in model.subgraphs for t in sg.tensors}
    for i, buf in enumerate(model.buffers):
        if i not in used:
            buf.data = None  # the float filters just replaced
    flatbuffer_utils.write_model(model, str(path))
    exact, missing = tflite_codes_match(params, read_tflite_codes(path))
    return Artifact(
        path,
        "tflite-dynamic",
        "tflite",
        sha256_file(path),
        path.stat().st_size,
        packed_bytes=req.result.stats.get("packed_bytes"),
        codes_exact=exact and len(set(done.values())) == len(params.weights),
        op_counts=tflite_op_counts(path),
        info={"weights_replaced": len(done), "codes_missing": missing},
    )


def same_scale_violation(message: str) -> str | None:
    """The reason, if the LiteRT converter refused a graph because an op that must keep one
    grid (RESHAPE, CONCATENATION ...) got two: the simulation has different grids on its two
    sides and the converter inserts no requantization, so LiteRT int8 cannot hold the model."""
    m = re.search(r"loc\((.{0,600}?)\): 'tfl\.(\w+)' op quantization parameters violate the same scale constraint: "
                  r"!quant\.uniform<i8:f32, ([\d.e+-]+):(-?\d+)> vs\. !quant\.uniform<i8:f32, ([\d.e+-]+):(-?\d+)>", message, re.DOTALL)
    if m is None:
        return None
    ops = ", ".join(dict.fromkeys(re.findall(r'\("([\w.]+)"\)', m.group(1)))) or "?"
    where = re.search(r'"([\w.]+?)(?:;|")', m.group(1))
    return (f"LiteRT int8 keeps one grid across {m.group(2).upper()}, but the simulation has two there "
            f"(scale {float(m.group(3)):.4g} zero point {m.group(4)} vs scale {float(m.group(5)):.4g} zero point {m.group(6)}; "
            f"ops {ops}{' in ' + where.group(1) if where else ''}) and the converter adds no requantization")


def _sim_aligned_quantizer():
    """litert-torch's PT2E quantizer, annotating only what the simulation quantizes: conv /
    linear, adds of two activations, and pooling on a quantized input. Mul, concat, sigmoid and
    softmax (whose fixed 1/256 grid the simulation does not have) stay float between
    DEQUANTIZE / QUANTIZE, as they do in the simulation and the ONNX export; a tensor a
    quantized op consumes is still quantized, on the simulation's grid."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer
    from litert_torch.quantize.pt2e_quantizer_utils import propagate_annotation

    class SimAligned(PT2EQuantizer):
        STATIC_OPS = [op for op in PT2EQuantizer.STATIC_OPS if op not in ("mul", "mul_relu", "cat", "fixed_qparams")]

        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            self._annotate_for_static_quantization_config(model)
            for node in model.graph.nodes:
                if node.target not in (torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor):
                    continue
                args = node.args[:2]
                if any(not isinstance(a, torch.fx.Node) or a.op == "get_attr" for a in args) or not any(
                    _quantized_output(a) for a in args
                ):
                    # adds of a constant, or of two float tensors, are float in the simulation
                    node.meta.pop("quantization_annotation", None)
                    for user in node.users:
                        if user.target in (torch.ops.aten.relu.default, torch.ops.aten.relu_.default):
                            user.meta.pop("quantization_annotation", None)
            propagate_annotation(model)
            return model

    return SimAligned()


_VIEWS = ("view", "reshape", "flatten", "permute", "transpose", "squeeze", "unsqueeze", "clone", "contiguous", "dropout")


def _quantized_output(node: torch.fx.Node) -> bool:
    """The annotated graph quantizes this tensor (looking through view-like ops)."""
    while True:
        ann = node.meta.get("quantization_annotation")
        if ann is not None and ann.output_qspec is not None:
            return True
        name = getattr(node.target, "__name__", str(node.target))
        if node.op != "call_function" or name.split(".")[0] not in _VIEWS or not node.args:
            return False
        node = node.args[0]
        if not isinstance(node, torch.fx.Node):
            return False


@register_exporter("tflite-int8", "tflite", ".tflite", quantized=True,
                   description="LiteRT full-integer int8 (int8 I/O), per-channel weights, our codes")
def tflite_int8(req: ExportRequest) -> Artifact:
    from litert_torch.quantize.pt2e_quantizer import get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    params = req.result.params
    assert params is not None
    narrow = sorted({a.bits for a in params.acts.values() if a.bits != 8})
    if narrow:
        raise CannotRepresent(f"{narrow}-bit activations: LiteRT int8 kernels cannot keep sub-8-bit activation grids")
    model = with_dequantized_weights(req.result.folded, params)
    index = ValueIndex.build(model, params, req.probe)
    example = req.probe[:1]
    quantizer = _sim_aligned_quantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    with _quiet():
        exported = torch.export.export(model, (example,)).module()
        prepared = prepare_pt2e(exported, quantizer)
        stats = _fixed_observers(prepared, params, index, req.probe)
        converted = convert_pt2e(prepared, fold_quantize=False)
    try:
        path = _convert(converted, example, req.out_path.with_suffix(".tflite"), quant_config=QuantConfig(pt2e_quantizer=quantizer))
    except ValueError as exc:
        reason = same_scale_violation(str(exc))
        if reason is None:
            raise
        raise CannotRepresent(reason) from exc
    exact, missing = tflite_codes_match(params, read_tflite_codes(path))
    return Artifact(
        path,
        "tflite-int8",
        "tflite",
        sha256_file(path),
        path.stat().st_size,
        packed_bytes=req.result.stats.get("packed_bytes"),
        codes_exact=exact,
        op_counts=tflite_op_counts(path),
        unmatched=stats["unmatched"],
        info={"weights_pinned": stats["weights"], "acts_pinned": stats["acts"], "codes_missing": missing},
    )
