"""MSE range setting: clipping ranges that minimise the squared quantization error.

Source: Banner et al. 2019 ("Post-training 4-bit quantization of convolutional networks for
rapid-deployment") and Nagel et al. 2021 ("A White Paper on Neural Network Quantization"),
section 3.4: weights per channel minimise ||w - Q(w)||^2, activations minimise
||x - Q(x)||^2 over calibration samples.
"""

from ..calibrate import acts_from_ranges
from ..clipping import GRANULARITIES, act_ranges, choose, clipped_weights
from ..graph import compute_modules
from ..qparams import QuantParams
from ..registry import MethodContext, register
from ..sim import collect_activation_stats, with_dequantized_weights


@register(
    "mse",
    defaults={"granularity": "per-channel", "act_symmetric": False, "acts_after_weights": True},
)
def mse(ctx: MethodContext) -> QuantParams:
    """Weights: per output channel (or per tensor) clip alpha * max|w| minimising
    ||w - Q(w)||^2 (alpha on a 100-point grid). Activations: per tensor, the range minimising
    ||x - Q(x)||^2 on the calibration values (reservoir of quant/sim.ActivationStats), observed
    on the model with quantized weights (`acts_after_weights`, default) or on the float model.
    Banner et al. 2019; Nagel et al. 2021, section 3.4."""
    per_channel = choose(ctx, "granularity", GRANULARITIES) == "per-channel"
    weights = clipped_weights(compute_modules(ctx.folded), ctx, "mse", per_channel)
    params = QuantParams("mse", "", weights)
    model = (
        with_dequantized_weights(ctx.folded, params)
        if ctx.options.get("acts_after_weights", True)
        else ctx.folded
    )
    stats = collect_activation_stats(
        model.to(ctx.device), ctx.placement, ctx.batches(), seed=ctx.seed
    )
    params.acts = acts_from_ranges(ctx, act_ranges(ctx, stats, "mse"))
    return params
