"""TFLite / LiteRT artifacts via litert-torch: float32, float16, and full-integer int8 that keeps
our integer codes and activation grids exactly.

The int8 path runs litert-torch's own PT2E quantizer (its annotation decides where Q/DQ go,
which is what the LiteRT converter fuses into int8 kernels) and then replaces every observer
by one holding OUR range: per-channel weight ranges +-127*s (eps 1e-12 — litert's default
2**-12 floor changes small channel scales) and activation ranges that reproduce our scale and
zero point. Observed tensors are matched to the simulation by value (see match.py).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
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


def tflite_op_counts(path: Path) -> dict:
    """Op names, and how many convolutions / FC run with int8 inputs."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    details = {t["index"]: t for t in it.get_tensor_details()}
    ops = it._get_ops_details()
    counts = Counter(op["op_name"] for op in ops)
    int8_convs = float_convs = 0
    for op in ops:
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            dtype = details[op["inputs"][0]]["dtype"] if op["inputs"].size else None
            if dtype in (np.int8, np.uint8):
                int8_convs += 1
            else:
                float_convs += 1
    return {"ops": dict(sorted(counts.items())), "int8_convs": int8_convs, "float_convs": float_convs}


@register_exporter("tflite-fp32", "tflite", ".tflite", quantized=False, description="LiteRT float32")
def tflite_fp32(req: ExportRequest) -> Artifact:
    path = _convert(req.result.folded, req.probe[:1], req.out_path.with_suffix(".tflite"))
    return Artifact(path, "tflite-fp32", "tflite", sha256_file(path), path.stat().st_size, op_counts=tflite_op_counts(path))


@register_exporter("tflite-fp16", "tflite", ".tflite", quantized=False, description="LiteRT float16 weights")
def tflite_fp16(req: ExportRequest) -> Artifact:
    path = req.out_path.with_suffix(".tflite")
    model = req.result.folded.eval()
    # litert-torch takes converter flags through _ai_edge_converter_flags
    import tensorflow as tf  # noqa: F401  (only present where float16 export is wanted)

    _convert(model, req.probe[:1], path, _ai_edge_converter_flags={"target_spec": {"supported_types": ["float16"]}})
    return Artifact(path, "tflite-fp16", "tflite", sha256_file(path), path.stat().st_size, op_counts=tflite_op_counts(path))


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
    quantized constant tensor, read from the flatbuffer itself."""
    from ai_edge_litert import schema_py_generated as schema

    buf = Path(path).read_bytes()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(buf, 0))
    out = []
    for sg in model.subgraphs:
        for t in sg.tensors:
            q = t.quantization
            data = model.buffers[t.buffer].data if t.buffer < len(model.buffers) else None
            if q is None or q.scale is None or len(q.scale) < 2 or data is None or len(data) == 0:
                continue
            if t.type != schema.TensorType.INT8:
                continue
            arr = np.frombuffer(bytes(bytearray(data)), np.int8).reshape(t.shape)
            dim = q.quantizedDimension
            out.append((_to_torch_layout(arr, dim), np.asarray(q.scale, np.float32)))
    return out


def _to_torch_layout(arr: np.ndarray, dim: int) -> np.ndarray:
    if arr.ndim == 4 and dim == 0:  # CONV_2D: OHWI -> OIHW
        return arr.transpose(0, 3, 1, 2)
    if arr.ndim == 4 and dim == 3:  # DEPTHWISE_CONV_2D: 1HWO -> O1HW
        return arr.transpose(3, 0, 1, 2)
    return arr


def tflite_codes_match(params: QuantParams, stored: list[tuple[np.ndarray, np.ndarray]]) -> tuple[bool, list[str]]:
    missing = []
    for name, wq in params.weights.items():
        ok = any(
            c.shape == wq.codes.shape and np.array_equal(c, wq.codes) and np.allclose(s, wq.scale, rtol=1e-6, atol=0)
            for c, s in stored
        )
        if not ok:
            missing.append(name)
    return not missing, missing


@register_exporter("tflite-int8", "tflite", ".tflite", quantized=True,
                   description="LiteRT full-integer int8 (int8 I/O), per-channel weights, our codes")
def tflite_int8(req: ExportRequest) -> Artifact:
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )
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
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    with _quiet():
        exported = torch.export.export(model, (example,)).module()
        prepared = prepare_pt2e(exported, quantizer)
        stats = _fixed_observers(prepared, params, index, req.probe)
        converted = convert_pt2e(prepared, fold_quantize=False)
    path = _convert(converted, example, req.out_path.with_suffix(".tflite"), quant_config=QuantConfig(pt2e_quantizer=quantizer))
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
