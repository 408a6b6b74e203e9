"""Compression at equal size: prune, then int8 — two baselines sized to the W{b} budget.

`prune-l2+int8` removes whole output channels with the smallest L2 norm (Li et al. 2017,
"Pruning Filters for Efficient ConvNets", with the L2 criterion of He et al. 2018, "Soft Filter
Pruning"): removed channels are 0-bit channels of QuantParams, so quant.size counts exactly the
kept int8 channels. `prune-magnitude+int8` zeroes the individual weights of smallest magnitude
(Han et al. 2015, "Learning both Weights and Connections"; uniform per-layer sparsity as in Zhu &
Gupta 2017); its size is that of a bitmap-sparse layout, packed for real by `pack_sparse`: one
mask bit per weight, then the int8 codes of the kept weights, then quant.size's per-channel
header (float32 scale + uint8 bit-width).

The sparsity is chosen so that each pruned layer's packed bits equal (never exceed) its share of
`ctx.budget_bits`, the packed weight bits of the uniform W{b} plan: layers the plan keeps at 8
bits (first/last) stay dense int8; the others share the rest in proportion to their size.
Removed weights shift each layer's mean output; `bias_correction` (default on) restores it from
the calibration frames (Nagel et al. 2019's empirical bias correction, as in nagel.py).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

from ..calibrate import acts_from_ranges, bits_tensor, make_weight_quant
from ..clipping import act_ranges, choose
from ..graph import compute_modules
from ..qparams import QuantParams, WeightQuant
from ..quantizer import minmax_weight_scale
from ..registry import MethodContext, register
from ..sim import collect_activation_stats
from .nagel import empirical_bias_correction, load_weights, module_biases

DENSE_BITS = 8


def layer_budgets(ctx: MethodContext) -> dict[str, int]:
    """Packed-bit budget of each layer: 8 bits per weight for the layers the plan keeps at 8
    bits, the rest of `ctx.budget_bits` shared by the others in proportion to their size."""
    mods = compute_modules(ctx.folded)
    sizes = {n: m.weight.numel() for n, m in mods.items()}
    fixed = [n for n in mods if ctx.weight_bits[n] >= DENSE_BITS]
    free = [n for n in mods if n not in fixed]
    out = {n: DENSE_BITS * sizes[n] for n in fixed}
    rest = ctx.budget_bits - sum(out.values())
    n_free = sum(sizes[n] for n in free)
    if free and rest < 0:
        raise ValueError(
            f"budget of {ctx.budget_bits} bits is below the 8-bit first/last layers alone"
        )
    for n in free:
        out[n] = (rest * sizes[n]) // n_free  # integer arithmetic: exact for whole-bit plans
    return out


# --- unstructured magnitude pruning and its bitmap-sparse layout --------------------------


def sparse_layer_bits(n_weights: int, n_kept: int) -> int:
    """Payload bits of a layer stored bitmap-sparse (mask + int8 kept codes)."""
    return n_weights + DENSE_BITS * n_kept


def layer_payload_bits(wq: WeightQuant) -> int:
    """Payload bits of a layer in the cheaper of the dense and the bitmap-sparse layouts (a kept
    weight that rounds to code 0 is stored as a zero of the mask)."""
    dense = wq.packed_bits
    if int(wq.bits.min()) != DENSE_BITS or int(wq.bits.max()) != DENSE_BITS:
        return dense
    return min(dense, sparse_layer_bits(wq.codes.size, int(np.count_nonzero(wq.codes))))


def pack_sparse(wq: WeightQuant) -> bytes:
    """Bitmap-sparse packing of an int8 layer: mask bits (LSB first), kept codes, header."""
    flat = wq.codes.reshape(-1)
    mask = flat != 0
    head = wq.scale.astype("<f4").tobytes() + wq.bits.astype(np.uint8).tobytes()
    return (
        np.packbits(mask, bitorder="little").tobytes() + flat[mask].astype(np.int8).tobytes() + head
    )


def unpack_sparse(data: bytes, shape: tuple[int, ...]) -> WeightQuant:
    n, c = int(np.prod(shape)), shape[0]
    mask_bytes = (n + 7) // 8
    mask = np.unpackbits(np.frombuffer(data[:mask_bytes], np.uint8), bitorder="little")[:n].astype(
        bool
    )
    k = int(mask.sum())
    codes = np.zeros(n, np.int8)
    codes[mask] = np.frombuffer(data[mask_bytes : mask_bytes + k], np.int8)
    head = data[mask_bytes + k :]
    scale = np.frombuffer(head[: 4 * c], "<f4").astype(np.float32)
    bits = np.frombuffer(head[4 * c : 5 * c], np.uint8).astype(np.int8)
    return WeightQuant("", codes.reshape(shape), scale, bits)


def magnitude_keep(n_weights: int, budget: int) -> int:
    """Weights a layer keeps within `budget` bits (all of them when dense int8 fits)."""
    if budget >= DENSE_BITS * n_weights:
        return n_weights
    return max(0, min(n_weights, (budget - n_weights) // DENSE_BITS))


def magnitude_mask(w: torch.Tensor, keep: int) -> torch.Tensor:
    """The `keep` largest-|w| entries (ties: lower flat index first, deterministic)."""
    flat = w.detach().abs().reshape(-1).cpu()
    order = torch.argsort(-flat, stable=True)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[order[:keep]] = True
    return mask.reshape(w.shape).to(w.device)


def magnitude_weights(
    ctx: MethodContext, budgets: dict[str, int]
) -> tuple[dict[str, WeightQuant], dict]:
    weights: dict[str, WeightQuant] = {}
    info: dict = {"sparsity": {}, "payload_bits": 0}
    for name, mod in compute_modules(ctx.folded).items():
        w = mod.weight.detach().float()
        n = w.numel()
        bits = bits_tensor(w.shape[0], DENSE_BITS).to(w.device)
        keep = magnitude_keep(n, budgets[name])
        pruned = w * magnitude_mask(w, keep)
        wq = make_weight_quant(name, pruned, minmax_weight_scale(pruned, bits), bits)
        weights[name] = wq
        info["sparsity"][name] = 1.0 - keep / n
        info["payload_bits"] += layer_payload_bits(wq)  # what pack_sparse / pack_codes store
    return weights, info


# --- structured (output channel) L2 pruning ------------------------------------------------


def l2_keep(out_channels: int, per_channel: int, budget: int) -> int:
    return max(0, min(out_channels, budget // (DENSE_BITS * per_channel)))


def l2_weights(ctx: MethodContext, budgets: dict[str, int]) -> tuple[dict[str, WeightQuant], dict]:
    weights: dict[str, WeightQuant] = {}
    info: dict = {"sparsity": {}, "channels_kept": {}, "payload_bits": 0}
    for name, mod in compute_modules(ctx.folded).items():
        w = mod.weight.detach().float()
        c, per = w.shape[0], w[0].numel()
        keep = l2_keep(c, per, budgets[name])
        norms = w.reshape(c, -1).norm(dim=1).cpu()
        order = torch.argsort(-norms, stable=True)
        bits = torch.zeros(c, dtype=torch.int64)
        bits[order[:keep]] = DENSE_BITS
        bits = bits.to(w.device)
        # an eliminated channel keeps an 8-bit scale: runtimes want positive scales everywhere
        scale = minmax_weight_scale(w, bits_tensor(c, DENSE_BITS).to(w.device))
        weights[name] = make_weight_quant(name, w, scale, bits)
        info["sparsity"][name] = 1.0 - keep / c
        info["channels_kept"][name] = keep
        info["payload_bits"] += weights[name].packed_bits
    return weights, info


def _finish(
    ctx: MethodContext, name: str, weights: dict[str, WeightQuant], info: dict
) -> QuantParams:
    """Bias correction and activation ranges on the pruned int8 model."""
    act_clip = choose(ctx, "act_clip", ("minmax", "mse"))
    reference = copy.deepcopy(ctx.folded).to(ctx.device).eval()
    pruned = copy.deepcopy(reference)
    load_weights(pruned, weights)
    batches = ctx.batches()
    biases: dict[str, np.ndarray] = {}
    if ctx.options.get("bias_correction", True):
        empirical_bias_correction(reference, pruned, batches)
        biases = module_biases(pruned)
    stats = collect_activation_stats(pruned, ctx.placement, batches, seed=ctx.seed)
    acts = acts_from_ranges(ctx, act_ranges(ctx, stats, act_clip))
    info = {
        **info,
        "budget_bits": ctx.budget_bits,
        "payload_bytes": math.ceil(info["payload_bits"] / 8),
    }
    return QuantParams(name, "", weights, acts, biases=biases, info=info)


_DEFAULTS = {"act_clip": "minmax", "bias_correction": True, "act_symmetric": False}


@register("prune-magnitude+int8", defaults=dict(_DEFAULTS))
def prune_magnitude_int8(ctx: MethodContext) -> QuantParams:
    """Unstructured magnitude pruning (Han et al. 2015), uniform sparsity per layer, then int8
    per-channel min-max codes; the sparsity makes each layer's bitmap-sparse packed size equal
    its share of the W{b} plan's budget (info: sparsity, payload_bits). Options: `act_clip`
    (minmax | mse), `bias_correction` (mean output restored, Nagel et al. 2019)."""
    weights, info = magnitude_weights(ctx, layer_budgets(ctx))
    info["layout"] = "bitmap-sparse int8"
    return _finish(ctx, "prune-magnitude+int8", weights, info)


@register("prune-l2+int8", defaults=dict(_DEFAULTS))
def prune_l2_int8(ctx: MethodContext) -> QuantParams:
    """Output-channel pruning by L2 norm (Li et al. 2017; He et al. 2018), uniform ratio per
    layer, removed channels as 0-bit codes, kept channels int8 per-channel min-max; the ratio
    makes each layer's packed size (quant.size) equal its share of the W{b} plan's budget.
    Options: `act_clip` (minmax | mse), `bias_correction` (a removed channel then outputs its
    calibration mean; Nagel et al. 2019)."""
    weights, info = l2_weights(ctx, layer_budgets(ctx))
    info["layout"] = "dense, 0-bit channels"
    return _finish(ctx, "prune-l2+int8", weights, info)
