"""DeFakeQ (HAQ + VEFT) and its ablations, each a preset of DeFakeQ's switches.

    defakeq            haq + elimination + veft + contrastive term (every switch is an option)
    defakeq-nohaq      uniform plan, VEFT with the contrastive term
    defakeq-noveft     HAQ (bits, elimination, clipping, activation bits), nearest rounding
    defakeq-nocontrast HAQ + VEFT without the contrastive term
    defakeq-noelim     HAQ without channel elimination + VEFT
    defakeq-layer      HAQ at per-layer granularity (one bit-width per layer) + VEFT
"""

from dataclasses import asdict

from ..defakeq import DefakeqConfig, run
from ..qparams import QuantParams
from ..registry import MethodContext, register

DEFAULTS = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(DefakeqConfig()).items()}


def _method(name: str, family: str, preset: dict, doc: str):
    def fn(ctx: MethodContext) -> QuantParams:
        params = run(ctx, DefakeqConfig.from_options(ctx.options))
        params.method = name
        return params

    fn.__doc__ = doc
    fn.__name__ = name.replace("-", "_")
    return register(name, family=family, defaults={**DEFAULTS, **preset})(fn)


defakeq = _method("defakeq", "defakeq", {}, "DeFakeQ: HAQ (per-channel bits, elimination, activation bits) + VEFT "
                  "(block-wise fine-tuning with a progressive contrastive term).")
defakeq_nohaq = _method("defakeq-nohaq", "ablation", {"haq": False}, "DeFakeQ without HAQ (uniform plan) + VEFT.")
defakeq_noveft = _method("defakeq-noveft", "ablation", {"veft": False}, "DeFakeQ's HAQ alone (nearest rounding).")
defakeq_nocontrast = _method("defakeq-nocontrast", "ablation", {"contrast": False},
                             "DeFakeQ without VEFT's contrastive term.")
defakeq_noelim = _method("defakeq-noelim", "ablation", {"elim": False}, "DeFakeQ without channel elimination.")
defakeq_layer = _method("defakeq-layer", "ablation", {"granularity": "layer"},
                        "DeFakeQ with one bit-width per layer (runtimes that cannot mix within a layer).")
