"""Percentile calibration: activation ranges clip the calibration tails.

Source: McKinstry et al. 2019 ("Discovering Low-Precision Networks Close to Full-Precision
Networks for Efficient Embedded Inference") and Wu et al. 2020 ("Integer Quantization for Deep
Learning Inference: Principles and Empirical Evaluation", NVIDIA), section 4.1.
"""

from ..calibrate import acts_from_ranges, float_activation_stats
from ..clipping import GRANULARITIES, act_ranges, choose, clipped_weights, percentile_option
from ..graph import compute_modules
from ..qparams import QuantParams
from ..registry import MethodContext, register


@register(
    "percentile",
    defaults={
        "percentile": 99.99,
        "weight_clip": "minmax",
        "granularity": "per-channel",
        "act_symmetric": False,
    },
)
def percentile(ctx: MethodContext) -> QuantParams:
    """Activations: per tensor, [100-p, p] percentiles of the calibration values (p = 99.99 by
    default; McKinstry et al. 2019, Wu et al. 2020). Weights: per output channel (or per tensor)
    max|w| (`weight_clip: minmax`, default) or the p-th percentile of |w| (`weight_clip:
    percentile`)."""
    p = percentile_option(ctx)
    per_channel = choose(ctx, "granularity", GRANULARITIES) == "per-channel"
    clip = choose(ctx, "weight_clip", ("minmax", "percentile"))
    weights = clipped_weights(compute_modules(ctx.folded), ctx, clip, per_channel, p)
    stats = float_activation_stats(ctx)
    acts = acts_from_ranges(ctx, act_ranges(ctx, stats, "percentile", p))
    return QuantParams("percentile", "", weights, acts, info={"percentile": p})
