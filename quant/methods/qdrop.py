"""QDrop (Wei et al. 2022, "QDrop: Randomly Dropping Quantization for Extremely Low-bit
Post-Training Quantization").

BRECQ's block reconstruction done in one pass with activation quantization on, where each
activation element of the block (its input and its quantizers) keeps its float value with
probability p = 0.5: the rounding is learned for a flatter neighbourhood of the quantized
activations. Rounding (AdaRound) and activation steps (LSQ) are learned jointly.
Published: 20k iterations per block, batch 32, 1024 images, p 0.5, lambda 0.01, beta 20 -> 2,
warm-up 20%, Adam lr 1e-3 (rounding) / 4e-5 (steps).
"""

from dataclasses import replace

from ..qparams import QuantParams
from ..recon import (
    ReconConfig,
    deterministic,
    partition,
    recon_config,
    reconstruct,
    to_params,
    uniform_start,
)
from ..registry import MethodContext, register
from .brecq import FAST, PAPER, fast_base


@register("qdrop", defaults={"preset": "fast", "drop_p": 0.5, "act_symmetric": False})
def qdrop(ctx: MethodContext) -> QuantParams:
    """QDrop: block reconstruction with activation quantization dropped at random (Wei 2022)."""
    base = fast_base(ctx, ReconConfig(learn_round=True, learn_act=True, act_quant=True, drop_p=0.5))
    cfg = recon_config(ctx, base, PAPER["iters"], PAPER["samples"], FAST["iters"])
    cfg = replace(cfg, learn_round=True, learn_act=True, act_quant=True)
    with deterministic(ctx.device):
        gm = uniform_start(ctx)
        units = partition(gm, "block")
        hist = reconstruct(gm, units, cfg, ctx.calib_x, ctx.calib_y, ctx.device, ctx.seed, log=ctx.log)
    params = to_params(gm, ctx.placement, "qdrop")
    params.info = {"recon": cfg.as_info(), "units": [u.name for u in units], "history": hist}
    return params
