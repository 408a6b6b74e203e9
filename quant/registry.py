"""The method registry and the context every method receives (plain data in, QuantParams out)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import fx

from .graph import Placement
from .qparams import QuantParams


@dataclass
class MethodContext:
    folded: fx.GraphModule  # BN-folded float model
    placement: Placement
    calib_x: torch.Tensor  # calibration frames (normalised, NCHW)
    calib_y: torch.Tensor  # their labels (0 real, 1 fake)
    weight_bits: dict[str, int]  # the uniform plan: bits per conv/linear module
    act_bits: dict[str, int]  # bits per quant point
    options: dict
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = 64
    budget_bits: int = 0  # packed weight bits of the uniform plan (mixed methods must fit it)
    log: Callable[[str], None] = print

    def batches(self, x: torch.Tensor | None = None) -> list[torch.Tensor]:
        x = self.calib_x if x is None else x
        return [x[i : i + self.batch_size].to(self.device) for i in range(0, len(x), self.batch_size)]


@dataclass
class MethodInfo:
    name: str
    fn: Callable[[MethodContext], QuantParams | None]
    family: str  # "fp32", "baseline", "defakeq", "ablation"
    defaults: dict
    description: str
    quantizes: bool = True


METHODS: dict[str, MethodInfo] = {}


def register(name: str, *, family: str = "baseline", defaults: dict | None = None, quantizes: bool = True):
    def deco(fn: Callable[[MethodContext], QuantParams | None]):
        if name in METHODS:
            raise ValueError(f"method {name!r} registered twice")
        METHODS[name] = MethodInfo(name, fn, family, dict(defaults or {}), (fn.__doc__ or "").strip(), quantizes)
        return fn

    return deco
