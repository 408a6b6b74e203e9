"""Min-max calibration: the simplest post-training quantization baseline."""

from ..calibrate import acts_from_ranges, float_activation_stats, minmax_weights
from ..qparams import QuantParams
from ..registry import MethodContext, register


@register("minmax", defaults={"granularity": "per-channel", "act_symmetric": False})
def minmax(ctx: MethodContext) -> QuantParams:
    """Weights: max|w| per output channel (or per tensor); activations: observed min/max on the
    calibration frames."""
    per_channel = ctx.options.get("granularity", "per-channel") == "per-channel"
    weights = minmax_weights(ctx, per_channel=per_channel)
    stats = float_activation_stats(ctx)
    acts = acts_from_ranges(ctx, {p: (stats.lo[p], stats.hi[p]) for p in ctx.placement.points})
    return QuantParams("minmax", "", weights, acts)
