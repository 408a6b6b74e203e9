"""F3Net (FAD branch) and SPSL: Xception behind an export-friendly frequency front-end.

- F3Net (DeepfakeBench `f3net`): FAD head (DCT -> four band filters -> inverse DCT, 12
  channels) then Xception with 12 input channels and a Sequential(Dropout 0.5, Linear) head.
  State dict: `backbone.*` first, then `FAD_head.*` (DCT matrices and band bases are frozen
  parameters, sized for the 256 input).
- SPSL (DeepfakeBench `spsl`): phase-only reconstruction of the gray image appended as a
  4th channel, cat(image, phase) -> Xception with 4 input channels. The phase channel is
  computed per image (as DeepfakeBench's current code does); the v1.0.1 code took the FFT
  over the whole [B, 1, H, W] batch, which equals this for batch size 1 only.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..base import DetectorInfo, register_detector
from ..frequency import FADHead, PhaseOnlyReconstruction
from ._common import NORM_05, check_options, check_variant
from .xception import Xception, xception_spec


class F3netDetector(nn.Module):
    def __init__(self, variant: str):
        super().__init__()
        size = 256 if variant == "full" else 64
        self.backbone = Xception(xception_spec(variant, in_channels=12, head_dropout=0.5))
        self.FAD_head = FADHead(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.FAD_head(x))


class SpslDetector(nn.Module):
    def __init__(self, variant: str):
        super().__init__()
        size = 256 if variant == "full" else 64
        self.backbone = Xception(xception_spec(variant, in_channels=4))
        self.phase = PhaseOnlyReconstruction(size)  # buffers only, nothing in the state dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(torch.cat((x, self.phase(x)), dim=1))


def build_f3net(variant: str = "full", **options) -> nn.Module:
    check_variant(variant)
    check_options("f3net", options, ())
    return F3netDetector(variant)


def build_spsl(variant: str = "full", **options) -> nn.Module:
    check_variant(variant)
    check_options("spsl", options, ())
    return SpslDetector(variant)


register_detector(DetectorInfo(
    "f3net", build_f3net, 256, **NORM_05, keys_fixture="f3net.json",
    description="F3Net FAD branch: DCT band decomposition (matmuls) + Xception (12 ch)",
))
register_detector(DetectorInfo(
    "spsl", build_spsl, 256, **NORM_05, keys_fixture="spsl.json",
    description="SPSL: phase-spectrum channel (DFT as matmuls) + Xception (4 ch)",
))
