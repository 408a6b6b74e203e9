"""ONNX artifacts: float32, and QDQ variants that keep our integer codes and activation grids.

Every QDQ variant hands our numbers to onnxruntime's own `quantize_static` through
`TensorQuantOverrides` (per-channel weight scales, per-tensor activation scale/zero point):
onnxruntime then lays out QDQ exactly as its fusions expect (QLinearConv, QLinearAdd,
QGemm ...), so our artifacts run at the runtime's native int8 speed.

- `onnx-qdq`: int8 weights, uint8 activations (onnxruntime's fast u8s8 path on x86).
- `onnx-qdq-trt`: int8 weights, int8 activations with zero point 0, Q/DQ on every input of
  Add and nothing uint8 -- the explicit-quantization layout TensorRT builds int8 engines from.
  Needs symmetric activation grids (methods produce them with option `act_symmetric: true`).
- `onnx-qdq-w4`: as `onnx-qdq`, but layers whose channels all fit 4 bits store their codes in
  INT4 initializers (opset 21, two codes per byte); first/last 8-bit layers stay int8.

Activation grids narrower than 8 bits are stored in an 8-bit container with their own scale
and zero point, followed by a Clip to the grid's range and a second Q/DQ pair (see
insert_clips): the deployed file computes exactly the b-bit grid and its convolutions stay
QLinearConv (uint4 Q/DQ would be tidier, but onnxruntime 1.2x-1.3x fuses uint4 activation QDQ
into QLinearConv and rejects the graph).
"""

from __future__ import annotations

import copy
import logging
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from quant import ActQuant, QuantParams, with_dequantized_weights

from .base import Artifact, CannotRepresent, ExportRequest, register_exporter, sha256_file
from .match import ValueIndex, weight_owner

OPSET = 17
OPSET_INT4 = 21  # first opset whose QuantizeLinear/DequantizeLinear take INT4
INT8_KERNELS = ("QLinearConv", "QGemm", "QLinearMatMul", "ConvInteger", "MatMulInteger")
FLOAT_KERNELS = ("Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul")
# Ops whose output is a monotone clamp of their input onto a range containing 0: quantizing
# their input on their output's grid changes nothing (Q(relu(v)) == relu(Q(v)) for such grids).
GRID_TRANSPARENT = ("Relu", "Clip")


@dataclass(frozen=True)
class QDQVariant:
    name: str
    signed_acts: bool  # int8 activations with zero point 0 (TensorRT) instead of uint8
    int4_weights: bool  # INT4 initializers for layers whose codes all fit 4 bits


VARIANTS = {
    "onnx-qdq": QDQVariant("onnx-qdq", signed_acts=False, int4_weights=False),
    "onnx-qdq-trt": QDQVariant("onnx-qdq-trt", signed_acts=True, int4_weights=False),
    "onnx-qdq-w4": QDQVariant("onnx-qdq-w4", signed_acts=False, int4_weights=True),
}


def export_float_onnx(model: torch.nn.Module, input_size: int, path: Path, opset: int = OPSET) -> Path:
    x = torch.zeros(1, 3, input_size, input_size)
    torch.onnx.export(
        model.eval(),
        (x,),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=opset,
        dynamo=False,
        do_constant_folding=True,
    )
    return path


def onnx_op_counts(path: Path) -> dict:
    """Op types of the graph as onnxruntime runs it (extended optimisations: fusions visible,
    no hardware-specific layout rewrites)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        g = onnx.load(so.optimized_model_filepath).graph
        counts = Counter(n.op_type for n in g.node)
    int8 = sum(counts.get(k, 0) for k in INT8_KERNELS)
    flt = sum(counts.get(k, 0) for k in FLOAT_KERNELS)
    # "convs" = every conv / fully-connected layer, as for TFLite's CONV_2D/DEPTHWISE/FULLY_CONNECTED
    return {"ops": dict(sorted(counts.items())), "int8_convs": int8, "float_convs": flt}


@register_exporter("onnx-fp32", "onnx", ".onnx", quantized=False, description="ONNX float32 (opset 17)")
def onnx_fp32(req: ExportRequest) -> Artifact:
    path = export_float_onnx(req.result.folded, req.input_size, req.out_path.with_suffix(".onnx"))
    return Artifact(path, "onnx-fp32", "onnx", sha256_file(path), path.stat().st_size, op_counts=onnx_op_counts(path))


def _all_tensor_values(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every intermediate float tensor of a float ONNX model on input `x`."""
    import onnxruntime as ort

    m = copy.deepcopy(model)
    existing = {o.name for o in m.graph.output}
    inits = {i.name for i in m.graph.initializer}
    for node in m.graph.node:
        for out in node.output:
            if out and out not in existing and out not in inits:
                m.graph.output.append(onnx.helper.make_empty_tensor_value_info(out))
                existing.add(out)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(names, {sess.get_inputs()[0].name: x})
    return {n: v for n, v in zip(names, outs) if isinstance(v, np.ndarray) and v.dtype == np.float32}


def _check_act_bits(bits: int) -> None:
    if not 2 <= bits <= 8:
        raise CannotRepresent(f"{bits}-bit activations have no ONNX container (8-bit Q/DQ holds 2..8-bit grids)")


def _act_override(aq: ActQuant, variant: QDQVariant) -> dict:
    """Scale, zero point and container of one activation grid (narrow grids: same container)."""
    from onnxruntime.quantization import QuantType

    _check_act_bits(aq.bits)
    if variant.signed_acts:
        # int8 holds the grid q - 2^(b-1) in [-2^(b-1), 2^(b-1)-1]: zero point 0 for symmetric grids
        return {"scale": np.array(aq.scale, np.float32), "zero_point": np.array(aq.zero_point - (1 << (aq.bits - 1)), np.int8),
                "quant_type": QuantType.QInt8}
    return {"scale": np.array(aq.scale, np.float32), "zero_point": np.array(aq.zero_point, np.uint8), "quant_type": QuantType.QUInt8}


def check_symmetric(params: QuantParams, fmt: str) -> None:
    """TensorRT's explicit quantization takes int8 activations with zero point 0 only."""
    asym = [a for a in params.acts.values() if not a.symmetric]
    if asym:
        ex = ", ".join(f"{a.name} (zero point {a.zero_point} of {a.qmax + 1} levels)" for a in asym[:3])
        raise CannotRepresent(
            f"{fmt} needs symmetric activation grids (int8 zero point 0, as TensorRT requires), but "
            f"{len(asym)} of {len(params.acts)} quant points are asymmetric, e.g. {ex}; quantize with option "
            "act_symmetric: true"
        )


def int4_layers(params: QuantParams) -> set[str]:
    """Modules whose every channel fits 4 bits (eliminated bits=0 channels included)."""
    return {name for name, wq in params.weights.items() if int(wq.bits.max()) <= 4}


class _Reader:
    def __init__(self, x: np.ndarray, name: str, batch: int = 16):
        self.batches = iter([{name: x[i : i + batch]} for i in range(0, len(x), batch)])

    def get_next(self):
        return next(self.batches, None)


@dataclass
class Overrides:
    tensors: dict[str, list[dict]]  # TensorQuantOverrides
    owners: dict[str, str]  # weight initializer -> module
    acts: dict[str, str]  # activation tensor -> quant point
    clips: dict[str, tuple[float, float]]  # narrow-grid tensors -> the grid's range
    int4: list[str]  # modules stored as INT4
    grids: dict[str, ActQuant] = field(default_factory=dict)  # activation tensor -> grid written
    keep_clamps: bool = False  # some Relu/Clip is not a no-op on its output grid: keep them all


def build_overrides(float_model: onnx.ModelProto, params: QuantParams, index: ValueIndex, probe: np.ndarray,
                    variant: QDQVariant = VARIANTS["onnx-qdq"]) -> Overrides:
    """TensorQuantOverrides for every weight and every matchable activation tensor."""
    from onnxruntime.quantization import QuantType

    ov = Overrides({}, {}, {}, {}, [])
    narrow_weights = int4_layers(params) if variant.int4_weights else set()
    for init in float_model.graph.initializer:
        value = numpy_helper.to_array(init)
        if value.ndim < 2:
            continue
        owner, axis = weight_owner(params, value), 0
        if owner is None and value.ndim == 2:  # nn.Linear on a 3-D input exports as MatMul(x, W^T)
            owner, axis = weight_owner(params, value.T), 1
        if owner is None:
            continue
        wq = params.weights[owner]
        qtype = QuantType.QInt4 if owner in narrow_weights else QuantType.QInt8
        if owner in narrow_weights:
            ov.int4.append(owner)
        ov.owners[init.name] = owner
        ov.tensors[init.name] = [
            {"axis": axis, "scale": np.array(s, np.float32), "zero_point": np.array(0, np.int8), "quant_type": qtype}
            for s in wq.scale
        ]

    def add_act(tensor: str, aq: ActQuant, clip: tuple[float, float] | None = None) -> None:
        ov.tensors[tensor] = [_act_override(aq, variant)]
        ov.acts[tensor] = aq.name
        ov.grids[tensor] = aq
        if clip is not None or aq.bits < 8:
            ov.clips[tensor] = clip or aq.range

    consumers = Counter(i for n in float_model.graph.node for i in n.input)
    relu_input = {n.output[0]: n.input[0] for n in float_model.graph.node if n.op_type == "Relu"}
    in_name = float_model.graph.input[0].name
    values = {in_name: probe, **_all_tensor_values(float_model, probe)}
    for name, value in values.items():
        node = index.match(value)
        aq = params.act_for_node(node) if node is not None else None
        if aq is None:
            continue
        if name in relu_input and aq.zero_point > 0 and not variant.signed_acts:
            # A Relu on a grid that holds negatives (it shares its input's grid): its values are
            # the grid's non-negative points, i.e. the same scale with zero point 0, on which
            # the Relu is the Q's own saturation and onnxruntime folds it, as in its own files.
            # If quantize_static removes the Relu (single consumer), the producer's values are
            # quantized here directly: clip them to the original grid's top.
            top = (aq.qmax - aq.zero_point) * aq.scale
            clip = (0.0, top) if consumers[relu_input[name]] == 1 else None
            add_act(name, ActQuant(aq.name, aq.scale, 0, aq.bits), clip)
        else:
            add_act(name, aq)
    # quantize_static drops a Relu/Clip in front of a Q when activations are asymmetric, trusting
    # the Q's saturation to clamp; that is only exact when the grid lies inside the clamp range
    # (a symmetric grid after a Relu keeps negative values). Otherwise keep the clamps.
    ov.keep_clamps = variant.signed_acts or any(
        not _grid_inside_clamp(ov.grids[n.output[0]], n, float_model)
        for n in float_model.graph.node
        if n.op_type in GRID_TRANSPARENT and n.output[0] in ov.acts
    )
    if ov.keep_clamps:
        # A kept clamp's input is quantized too; give it the clamp's output grid: exact (the
        # clamp commutes with rounding onto a grid holding 0), and Conv fuses with that Q.
        for node in float_model.graph.node:
            src, dst = (node.input[0], node.output[0]) if node.input else ("", "")
            if node.op_type in GRID_TRANSPARENT and dst in ov.acts and src not in ov.acts and consumers[src] == 1:
                add_act(src, ov.grids[dst], ov.clips.get(dst))
    return ov


def _grid_inside_clamp(aq: ActQuant, node: onnx.NodeProto, model: onnx.ModelProto) -> bool:
    """The grid's range lies within the clamp's (unknown, run-time bounds: assume not)."""
    lo, hi = aq.range
    if node.op_type == "Relu":
        return lo >= 0.0
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    bounds = []
    for i, default in zip(list(node.input[1:3]) + ["", ""], (-np.inf, np.inf)):
        if i and i not in consts:
            return False
        bounds.append(float(consts[i]) if i else default)
    return lo >= bounds[0] and hi <= bounds[1]


def read_onnx_weights(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Integer weight codes stored in a QDQ model (INT8 / INT4 initializers feeding a
    DequantizeLinear) with their scales: initializer name -> (int32 codes, output channels
    first; float32 scale per channel)."""
    m = onnx.load(str(path))
    inits = {i.name: i for i in m.graph.initializer}
    out = {}
    for node in m.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        init = inits[node.input[0]]
        if init.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT4) and len(init.dims) >= 2:
            codes = numpy_helper.to_array(init).astype(np.int32)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            if codes.ndim == 2 and axis == 1:  # MatMul weights [in, out], channels on axis 1
                codes = codes.T
            scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32).reshape(-1)
            out[node.input[0]] = (codes, scale)
    return out


def read_onnx_codes(path: Path) -> dict[str, np.ndarray]:
    """Integer weight codes stored in a QDQ model: initializer name -> int32 array."""
    return {k: c for k, (c, _) in read_onnx_weights(path).items()}


def weights_match(params: QuantParams, stored: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[bool, list[str]]:
    """Every module's codes and per-channel scales appear in the file exactly."""
    problems = []
    for name, wq in params.weights.items():
        if not any(c.shape == wq.codes.shape and np.array_equal(c, wq.codes.astype(np.int32)) and s.shape == wq.scale.shape
                   and np.allclose(s, wq.scale, rtol=1e-6, atol=0) for c, s in stored.values()):
            problems.append(name)
    return not problems, problems


def onnx_weight_containers(path: Path) -> dict[str, int]:
    """How many weight initializers use each integer type (e.g. {"INT8": 2, "INT4": 9})."""
    m = onnx.load(str(path))
    inits = {i.name: i for i in m.graph.initializer}
    deq = {n.input[0] for n in m.graph.node if n.op_type == "DequantizeLinear"}
    return dict(Counter(onnx.TensorProto.DataType.Name(inits[n].data_type) for n in deq if n in inits and len(inits[n].dims) >= 2))


def codes_match(params: QuantParams, stored: dict[str, np.ndarray]) -> tuple[bool, list[str]]:
    """Every module's codes appear in the file exactly (and nothing else carries weights)."""
    problems = []
    pool = list(stored.values())
    for name, wq in params.weights.items():
        if not any(a.shape == wq.codes.shape and np.array_equal(a, wq.codes.astype(np.int32)) for a in pool):
            problems.append(name)
    return not problems, problems


# What onnxruntime may quantize: exactly the simulation's int8 ops (conv / linear with our
# weights, adds of two activations) and the ops that carry a grid through. Everything else runs
# in float between Q/DQ pairs, as in the simulation and in LiteRT's PT2E graph.
QUANTIZED_OPS = ["Conv", "ConvTranspose", "Gemm", "MatMul", "Add"]
GRID_OPS = ["MaxPool", "GlobalAveragePool", "AveragePool", "Relu", "Clip", "Flatten", "Reshape", "Transpose",
            "Squeeze", "Unsqueeze", "Pad", "Resize"]


def float_nodes(model: onnx.ModelProto, ov: Overrides) -> list[str]:
    """Nodes onnxruntime must leave in float: convs / matmuls without one of our weights (F3Net's
    DCT, SPSL's DFT, attention products), adds with a constant or off the simulation's grids,
    and grid-carrying ops whose input the simulation keeps in float."""
    constants = {i.name for i in model.graph.initializer} | {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    producer = {o: n for n in model.graph.node for o in n.output}
    users: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    gridded = set(ov.acts)
    out = []
    for node in model.graph.node:
        op = node.op_type
        if op in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            if not any(i in ov.owners for i in node.input[:2]):
                out.append(node.name)
        elif op == "Add":
            fused = [u for u in users.get(node.output[0], []) if u.op_type == "Relu"]
            on_grid = node.output[0] in gridded or (len(users.get(node.output[0], [])) == 1 and fused and fused[0].output[0] in gridded)
            if any(i in constants for i in node.input) or not on_grid:
                out.append(node.name)
        elif op in GRID_OPS and node.input:
            src = node.input[0]
            if src in gridded:
                continue
            prod = producer.get(src)
            quantized_producer = prod is not None and prod.op_type in QUANTIZED_OPS and prod.name not in out
            if op in ("Relu", "Clip") and quantized_producer:
                continue  # the conv/add's fused activation: onnxruntime quantizes after it
            out.append(node.name)
    return out


def trt_problems(path: Path) -> list[str]:
    """What stops TensorRT's explicit-quantization parser from taking this file as int8
    end to end: uint8 tensors, non-zero zero points, Add inputs without DequantizeLinear."""
    m = onnx.load(str(path))
    inits = {i.name: i for i in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    out = []
    for node in m.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zp = inits.get(node.input[2])
            if zp is not None and zp.data_type == onnx.TensorProto.UINT8:
                out.append(f"{node.name}: uint8 zero point")
            elif zp is not None and np.any(numpy_helper.to_array(zp).astype(np.int32) != 0):
                out.append(f"{node.name}: zero point != 0")
        if node.op_type == "Add":
            for i in node.input:
                if i not in inits and (i not in producer or producer[i].op_type != "DequantizeLinear"):
                    out.append(f"{node.name}: input {i} has no DequantizeLinear")
    return out


def _qdq_export(req: ExportRequest, variant: QDQVariant) -> Artifact:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    params = req.result.params
    if params is None:
        raise CannotRepresent(f"{variant.name} exports quantized models; {req.result.method} has no quantization parameters")
    for a in params.acts.values():
        _check_act_bits(a.bits)  # raises CannotRepresent early
    if variant.signed_acts:
        check_symmetric(params, variant.name)
    final = req.out_path.with_suffix(".onnx")
    model = with_dequantized_weights(req.result.folded, params)
    with tempfile.TemporaryDirectory() as tmp:
        fpath = export_float_onnx(model, req.input_size, Path(tmp) / "float.onnx")
        float_model = onnx.load(str(fpath))
        if variant.int4_weights:  # INT4 Q/DQ are standard from opset 21 on (else com.microsoft ops)
            float_model = onnx.version_converter.convert_version(float_model, OPSET_INT4)
            onnx.save(float_model, str(fpath))
        index = ValueIndex.build(model, params, req.probe)
        ov = build_overrides(float_model, params, index, req.probe.numpy(), variant)
        exclude = float_nodes(float_model, ov)
        logging.getLogger("root").setLevel(logging.ERROR)  # quantize_static's pre-processing advice
        quantize_static(
            str(fpath),
            str(final),
            _Reader(req.calib_x[:64], float_model.graph.input[0].name),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QInt8 if variant.signed_acts else QuantType.QUInt8,
            calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=QUANTIZED_OPS + GRID_OPS,
            nodes_to_exclude=exclude,
            extra_options={
                "TensorQuantOverrides": ov.tensors,
                "QDQDisableWeightAdjustForInt32Bias": True,
                "WeightSymmetric": True,
                "ActivationSymmetric": variant.signed_acts,
                "QDQKeepRemovableActivations": ov.keep_clamps,
            },
        )
    q = onnx.load(str(final))
    constants = {n.output[0] for n in q.graph.node if n.op_type == "Constant"} | {i.name for i in q.graph.initializer}
    # constants (e.g. Pad's fill value) are not activations; only tensors computed at run time count
    quantized_acts = {_original_name(n.input[0]) for n in q.graph.node
                      if n.op_type == "QuantizeLinear" and n.input[0] not in constants}
    foreign = sorted(set(read_onnx_weights(final)) - {f"{w}_quantized" for w in ov.owners})
    if ov.clips:
        insert_clips(q, ov.clips)
        onnx.save(q, str(final))
    unmatched = sorted(t for t in quantized_acts if t not in ov.acts)
    exact, missing = weights_match(params, read_onnx_weights(final))
    containers = onnx_weight_containers(final)
    info = {"weights_overridden": len(set(ov.owners.values())), "acts_overridden": len(ov.acts), "clipped": len(ov.clips),
            "codes_missing": missing, "weight_containers": containers,
            # constant tensors the runtime quantized that are not our layers' weights (fixed
            # transforms such as DCT / SRM kernels): the simulation keeps those in float
            "foreign_weights": foreign}
    if variant.int4_weights:
        info["int4_layers"] = sorted(ov.int4)
        exact = exact and containers.get("INT4", 0) == len(ov.int4)
    if variant.signed_acts:
        info["trt_problems"] = trt_problems(final)
    return Artifact(
        final,
        variant.name,
        "onnx",
        sha256_file(final),
        final.stat().st_size,
        packed_bytes=req.result.stats.get("packed_bytes"),
        codes_exact=exact,
        op_counts=onnx_op_counts(final),
        unmatched=unmatched,
        info=info,
    )


@register_exporter("onnx-qdq", "onnx", ".onnx", quantized=True,
                   description="ONNX QDQ: int8 per-channel weights, uint8 per-tensor activations (2..8-bit grids)",
                   version="2")  # 2: clamps kept where a grid needs them; narrow grids clipped after Q/DQ
def onnx_qdq(req: ExportRequest) -> Artifact:
    return _qdq_export(req, VARIANTS["onnx-qdq"])


@register_exporter("onnx-qdq-trt", "onnx", ".onnx", quantized=True,
                   description="ONNX QDQ for TensorRT: int8 weights and int8 activations with zero point 0")
def onnx_qdq_trt(req: ExportRequest) -> Artifact:
    return _qdq_export(req, VARIANTS["onnx-qdq-trt"])


@register_exporter("onnx-qdq-w4", "onnx", ".onnx", quantized=True,
                   description="ONNX QDQ opset 21: INT4 weights where a layer fits 4 bits, uint8 activations")
def onnx_qdq_w4(req: ExportRequest) -> Artifact:
    return _qdq_export(req, VARIANTS["onnx-qdq-w4"])


def _original_name(tensor: str) -> str:
    # quantize_static renames a graph output `y` it quantizes to `y_QuantizeLinear_Input`
    return tensor.removesuffix("_QuantizeLinear_Input")


def insert_clips(model: onnx.ModelProto, clips: dict[str, tuple[float, float]]) -> None:
    """Restrict every narrow-grid tensor to its b-bit range after its 8-bit Q/DQ pair:
    Q -> DQ becomes Q -> DQ -> Clip(lo, hi) -> Q -> DQ with the same scale and zero point.

    Exact: lo and hi are grid points and rounding is monotone, so clamping the dequantized
    8-bit code equals quantizing the clamped value. The producer keeps its `DQ -> Conv -> Q`
    shape, so onnxruntime still fuses it into QLinearConv; only the clamp runs in float."""
    q_of = {n.output[0]: n for n in model.graph.node if n.op_type == "QuantizeLinear"}
    new_nodes = []
    for k, node in enumerate(model.graph.node):
        new_nodes.append(node)
        q = q_of.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        key = _original_name(q.input[0]) if q is not None else None
        if key not in clips:
            continue
        lo, hi = clips[key]
        out = node.output[0]
        wide, clipped, requant = f"{out}_wide{k}", f"{out}_clipped{k}", f"{out}_requant{k}"
        lo_name, hi_name = f"{clipped}_min", f"{clipped}_max"
        model.graph.initializer.extend(
            [numpy_helper.from_array(np.array(lo, np.float32), lo_name), numpy_helper.from_array(np.array(hi, np.float32), hi_name)]
        )
        node.output[0] = wide
        new_nodes.append(onnx.helper.make_node("Clip", [wide, lo_name, hi_name], [clipped], name=f"{clipped}_Clip"))
        new_nodes.append(onnx.helper.make_node("QuantizeLinear", [clipped, *q.input[1:]], [requant], name=f"{requant}_Q"))
        new_nodes.append(onnx.helper.make_node("DequantizeLinear", [requant, *node.input[1:]], [out], name=f"{requant}_DQ"))
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
