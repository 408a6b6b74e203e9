"""ONNX artifacts: float32, and QDQ that keeps our integer codes and activation grids exactly.

The QDQ path hands our numbers to onnxruntime's own `quantize_static` through
`TensorQuantOverrides` (per-channel weight scales, per-tensor activation scale/zero point):
onnxruntime then lays out QDQ exactly as its fusions expect (QLinearConv, QLinearAdd,
QGemm ...), so our artifacts run at the runtime's native int8 speed.

Activation grids narrower than 8 bits are stored in a uint8 container with their own scale and
zero point, preceded by a Clip to the grid's range: the deployed file then computes exactly the
b-bit grid (uint4 Q/DQ would be tidier, but onnxruntime 1.2x fuses uint4 QDQ into QLinearConv
and rejects the graph). Those layers run as float convolutions between Q/DQ pairs — the file
says so in its op counts — because no CPU runtime has sub-8-bit activation kernels.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from quant import QuantParams, with_dequantized_weights

from .base import Artifact, CannotRepresent, ExportRequest, register_exporter, sha256_file
from .match import ValueIndex, weight_owner

OPSET = 17


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
    int8 = sum(counts.get(k, 0) for k in ("QLinearConv", "QGemm", "QLinearMatMul", "ConvInteger", "MatMulInteger"))
    flt = sum(counts.get(k, 0) for k in ("Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul"))
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


def _act_quant_type(bits: int):
    from onnxruntime.quantization import QuantType

    if not 2 <= bits <= 8:
        raise CannotRepresent(f"{bits}-bit activations have no ONNX container")
    return QuantType.QUInt8  # narrower grids: same container + a Clip (see module docstring)


class _Reader:
    def __init__(self, x: np.ndarray, name: str, batch: int = 16):
        self.batches = iter([{name: x[i : i + batch]} for i in range(0, len(x), batch)])

    def get_next(self):
        return next(self.batches, None)


def build_overrides(float_model: onnx.ModelProto, params: QuantParams, index: ValueIndex, probe: np.ndarray):
    """TensorQuantOverrides for every weight and every matchable activation tensor."""
    from onnxruntime.quantization import QuantType

    overrides: dict[str, list[dict]] = {}
    owners: dict[str, str] = {}
    for init in float_model.graph.initializer:
        value = numpy_helper.to_array(init)
        if value.ndim < 2:
            continue
        owner = weight_owner(params, value)
        if owner is None:
            continue
        wq = params.weights[owner]
        owners[init.name] = owner
        overrides[init.name] = [
            {"axis": 0, "scale": np.array(s, np.float32), "zero_point": np.array(0, np.int8), "quant_type": QuantType.QInt8}
            for s in wq.scale
        ]
    acts: dict[str, str] = {}
    clips: dict[str, tuple[float, float]] = {}
    for name, value in _all_tensor_values(float_model, probe).items():
        node = index.match(value)
        if node is None:
            continue
        aq = params.act_for_node(node)
        if aq is None:
            continue
        qtype = _act_quant_type(aq.bits)
        zp_dtype = np.uint8
        overrides[name] = [{"scale": np.array(aq.scale, np.float32), "zero_point": np.array(aq.zero_point, zp_dtype), "quant_type": qtype}]
        acts[name] = aq.name
        if aq.bits < 8:
            clips[name] = aq.range
    in_name = float_model.graph.input[0].name
    if in_name not in acts:  # the graph input is always the sim's input point
        aq = params.acts[params.grid_of[next(iter(params.grid_of))]]
        overrides[in_name] = [{"scale": np.array(aq.scale, np.float32), "zero_point": np.array(aq.zero_point, np.uint8), "quant_type": _act_quant_type(aq.bits)}]
        acts[in_name] = aq.name
        if aq.bits < 8:
            clips[in_name] = aq.range
    return overrides, owners, acts, clips


def read_onnx_codes(path: Path) -> dict[str, np.ndarray]:
    """Integer weight codes stored in a QDQ model: initializer name -> int array."""
    m = onnx.load(str(path))
    inits = {i.name: i for i in m.graph.initializer}
    out = {}
    for node in m.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        arr = numpy_helper.to_array(inits[node.input[0]])
        if arr.dtype.kind in "iu" and arr.ndim >= 2:
            out[node.input[0]] = arr.astype(np.int32)
    return out


def codes_match(params: QuantParams, stored: dict[str, np.ndarray]) -> tuple[bool, list[str]]:
    """Every module's codes appear in the file exactly (and nothing else carries weights)."""
    problems = []
    pool = list(stored.values())
    for name, wq in params.weights.items():
        if not any(a.shape == wq.codes.shape and np.array_equal(a, wq.codes.astype(np.int32)) for a in pool):
            problems.append(name)
    return not problems, problems


@register_exporter("onnx-qdq", "onnx", ".onnx", quantized=True,
                   description="ONNX QDQ: int8 per-channel weights, uint8 (or uint4) per-tensor activations")
def onnx_qdq(req: ExportRequest) -> Artifact:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    params = req.result.params
    assert params is not None
    for a in params.acts.values():
        _act_quant_type(a.bits)  # raises CannotRepresent early
    final = req.out_path.with_suffix(".onnx")
    with tempfile.TemporaryDirectory() as tmp:
        fpath = export_float_onnx(with_dequantized_weights(req.result.folded, params), req.input_size, Path(tmp) / "float.onnx")
        float_model = onnx.load(str(fpath))
        index = ValueIndex.build(with_dequantized_weights(req.result.folded, params), params, req.probe)
        overrides, owners, acts, clips = build_overrides(float_model, params, index, req.probe.numpy())
        logging.getLogger("root").setLevel(logging.ERROR)  # quantize_static's pre-processing advice
        quantize_static(
            str(fpath),
            str(final),
            _Reader(req.calib_x[:64], float_model.graph.input[0].name),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={
                "TensorQuantOverrides": overrides,
                "QDQDisableWeightAdjustForInt32Bias": True,
                "WeightSymmetric": True,
                "ActivationSymmetric": False,
            },
        )
    q = onnx.load(str(final))
    if clips:
        insert_clips(q, clips)
        onnx.save(q, str(final))
    quantized_acts = {_original_name(n.input[0]) for n in q.graph.node if n.op_type == "QuantizeLinear"}
    unmatched = sorted(t for t in quantized_acts if t not in acts)
    exact, missing = codes_match(params, read_onnx_codes(final))
    return Artifact(
        final,
        "onnx-qdq",
        "onnx",
        sha256_file(final),
        final.stat().st_size,
        packed_bytes=req.result.stats.get("packed_bytes"),
        codes_exact=exact and len(owners) == len(params.weights),
        op_counts=onnx_op_counts(final),
        unmatched=unmatched,
        info={"weights_overridden": len(owners), "acts_overridden": len(acts), "clipped": len(clips), "codes_missing": missing},
    )


def _original_name(tensor: str) -> str:
    # quantize_static renames a graph output `y` it quantizes to `y_QuantizeLinear_Input`
    for suffix in ("_QuantizeLinear_Input", "_clipped"):
        if tensor.endswith(suffix):
            return tensor[: -len(suffix)]
    return tensor


def insert_clips(model: onnx.ModelProto, clips: dict[str, tuple[float, float]]) -> None:
    """Put Clip(lo, hi) in front of every QuantizeLinear of a narrow-grid tensor."""
    nodes = list(model.graph.node)
    new_nodes = []
    for node in nodes:
        src = node.input[0] if node.op_type == "QuantizeLinear" else None
        key = _original_name(src) if src else None
        if key in clips:
            lo, hi = clips[key]
            clipped = f"{src}_clipped"
            lo_name, hi_name = f"{clipped}_min", f"{clipped}_max"
            model.graph.initializer.extend(
                [numpy_helper.from_array(np.array(lo, np.float32), lo_name), numpy_helper.from_array(np.array(hi, np.float32), hi_name)]
            )
            new_nodes.append(onnx.helper.make_node("Clip", [src, lo_name, hi_name], [clipped], name=f"{clipped}_Clip"))
            node.input[0] = clipped
        new_nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
