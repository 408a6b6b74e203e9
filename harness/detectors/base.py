"""The detector registry and DeepfakeBench checkpoint loading.

Every detector is our own pure-PyTorch module with one contract:
`forward(x)` takes a normalised float batch `[N, 3, S, S]` and returns logits `[N, 2]`
(class 1 = fake); the fake probability is `softmax(logits)[:, 1]` (DeepfakeBench's `prob`).
Modules must be `torch.fx.symbolic_trace`-able (no data-dependent Python control flow) so that
quant/ can fold, place and simulate them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn


@dataclass(frozen=True)
class DetectorInfo:
    name: str
    build: Callable[..., nn.Module]  # build(variant="full"|"small", **options) -> nn.Module
    input_size: int  # full-size input resolution (DeepfakeBench convention)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    small_input_size: int = 64  # resolution of the small variant (synthetic benchmark)
    keys_fixture: str | None = None  # ../shared/fixtures/deepfakebench_keys/<file>
    description: str = ""
    trainable_small: bool = True


DETECTORS: dict[str, DetectorInfo] = {}


def register_detector(info: DetectorInfo) -> DetectorInfo:
    if info.name in DETECTORS:
        raise ValueError(f"detector {info.name!r} registered twice")
    DETECTORS[info.name] = info
    return info


def fake_probability(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.float(), dim=1)[:, 1]


def strip_module_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DataParallel checkpoints prefix every key with `module.`; remove it once, nothing else."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def load_deepfakebench_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a DeepfakeBench `*_best.pth` strictly (after stripping `module.`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    model.load_state_dict(strip_module_prefix(state), strict=True)
    return model
