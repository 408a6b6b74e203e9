"""AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization").

Layer by layer, in execution order, learn whether each weight rounds up or down:
    min_V || f(W x) - f(W~(V) x~) ||^2 + lambda * sum_i (1 - |2 h(V_i) - 1|^beta)
with W~ = s * clip(floor(W/s) + h(V)), h the rectified sigmoid, x~ the layer's input in the
quantized model (asymmetric reconstruction) and f the fused ReLU; beta is annealed 20 -> 2
after a 20% warm-up; the layer's own output grid is not part of the loss. Weight grids:
per-channel MSE-clipped; activation grids: MSE-clipped on the calibration frames, not learned.
Published: 10k iterations per layer, batch 32, 1024 images, Adam (lr 1e-3), lambda 0.01.
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

PAPER = {"iters": 10000, "samples": 1024}
FAST = {"iters": 300, "lr_round": 0.1}  # as BRECQ/QDrop's fast preset (see brecq.FAST)


@register("adaround", defaults={"preset": "fast", "act_symmetric": False})
def adaround(ctx: MethodContext) -> QuantParams:
    """AdaRound: layer-wise learned rounding (Nagel 2020); MSE-clipped grids."""
    base = ReconConfig(learn_round=True, learn_act=False, act_quant=True, quant_output=False)
    if ctx.options.get("preset", "fast") == "fast":
        base = replace(base, lr_round=FAST["lr_round"])
    cfg = recon_config(ctx, base, PAPER["iters"], PAPER["samples"], FAST["iters"])
    cfg = replace(cfg, learn_round=True, learn_act=False)
    with deterministic(ctx.device):
        gm = uniform_start(ctx)
        units = partition(gm, "layer")
        hist = reconstruct(gm, units, cfg, ctx.calib_x, ctx.calib_y, ctx.device, ctx.seed, log=ctx.log)
    params = to_params(gm, ctx.placement, "adaround")
    params.info = {"recon": cfg.as_info(), "units": [u.name for u in units], "history": hist}
    return params
