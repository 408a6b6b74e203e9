"""BRECQ (Li et al. 2021, "BRECQ: Pushing the Limit of Post-Training Quantization by Block
Reconstruction").

Block by block (residual blocks, depthwise-separable blocks, lone layers), in two passes as in
the published code: (1) AdaRound soft rounding of every weight of the block, activations
float, loss || f_q(x~) - f(x) ||^2 on the block output (optionally weighted by the squared
gradient of the loss, the diagonal Fisher); (2) activation steps learned by LSQ with the
weights fixed, activations quantized. Published: 20k iterations per block, batch 32, 1024
images, lambda 0.01, beta 20 -> 2, warm-up 20%, Adam lr 1e-3 (rounding) / 4e-5 (steps).
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

PAPER = {"iters": 20000, "samples": 1024}
# The fast preset (the default): 300 iterations per block. Fewer iterations need larger steps:
# the activation-step rate keeps the published lr x iterations (4e-5 x 20k / 300 ~ 2.7e-3);
# the rounding rate is 0.1 because the published product (1e-3 x 20k / 300 ~ 0.067) still
# leaves a few % of the rounding variables undecided after 300 iterations (measured), and
# AdaRound's soft-to-hard step then costs accuracy.
FAST = {"iters": 300, "lr_round": 0.1, "lr_act": 2.7e-3}


def fast_base(ctx: MethodContext, base: ReconConfig) -> ReconConfig:
    """The fast preset's learning rates (see FAST); 'paper' keeps the published ones."""
    if ctx.options.get("preset", "fast") != "fast":
        return base
    return replace(base, lr_round=FAST["lr_round"], lr_act=FAST["lr_act"])


@register("brecq", defaults={"preset": "fast", "fisher": False, "act_symmetric": False})
def brecq(ctx: MethodContext) -> QuantParams:
    """BRECQ: block reconstruction (Li 2021): rounding pass, then LSQ activation pass."""
    base = fast_base(ctx, ReconConfig())
    cfg = recon_config(ctx, base, PAPER["iters"], PAPER["samples"], FAST["iters"])
    w_cfg = replace(cfg, learn_round=True, learn_act=False, act_quant=False)
    a_cfg = replace(cfg, learn_round=False, learn_act=True, act_quant=True)
    with deterministic(ctx.device):
        gm = uniform_start(ctx)
        units = partition(gm, "block")
        h1 = reconstruct(gm, units, w_cfg, ctx.calib_x, ctx.calib_y, ctx.device, ctx.seed, log=ctx.log)
        h2 = reconstruct(gm, units, a_cfg, ctx.calib_x, ctx.calib_y, ctx.device, ctx.seed + 1, log=ctx.log)
    params = to_params(gm, ctx.placement, "brecq")
    params.info = {"recon": {"weights": w_cfg.as_info(), "acts": a_cfg.as_info()},
                   "units": [u.name for u in units], "history": {"weights": h1, "acts": h2}}
    return params
