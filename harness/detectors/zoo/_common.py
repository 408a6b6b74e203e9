"""Small helpers shared by the zoo's family modules."""

from __future__ import annotations

from collections import OrderedDict

import torch.nn as nn

VARIANTS = ("full", "small")

# DeepfakeBench normalises every detector's input with mean = std = 0.5 (x in [-1, 1])
NORM_05 = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"unknown detector variant {variant!r}; allowed: {', '.join(VARIANTS)}")
    return variant


def check_options(name: str, options: dict, allowed: tuple[str, ...]) -> None:
    bad = sorted(set(options) - set(allowed))
    if bad:
        raise TypeError(
            f"detector {name!r}: unknown build option(s) {', '.join(bad)}; "
            f"allowed: {', '.join(allowed) if allowed else 'none'}"
        )


def alias_keys(module: nn.Module, aliases: dict[str, str]) -> None:
    """Expose `module`'s entries under other names in its state_dict, in place.

    `aliases` maps checkpoint name -> our name, both relative to `module`, e.g.
    {"kernel": "filter.conv.weight"}: DeepfakeBench keeps a fixed SRM kernel as a bare
    parameter, we keep it inside an nn.Conv2d (so quantizers see a conv). Saving renames our
    key back to the checkpoint name at the same position; loading renames it forward first."""

    def save_hook(mod: nn.Module, state: OrderedDict, prefix: str, local_metadata) -> None:
        renames = {prefix + ours: prefix + theirs for theirs, ours in aliases.items()}
        if not any(k in state for k in renames):
            return
        items = [(renames.get(k, k), v) for k, v in state.items()]
        state.clear()
        state.update(items)

    def load_hook(mod: nn.Module, state: dict, prefix: str, *args) -> None:
        for theirs, ours in aliases.items():
            if prefix + theirs in state:
                state[prefix + ours] = state.pop(prefix + theirs)

    module.register_state_dict_post_hook(save_hook)
    module.register_load_state_dict_pre_hook(load_hook)
