"""MesoNet: Meso4 and MesoInception4 as DeepfakeBench builds them (meso4 / meso4Inception).

Facts (MesoNet paper; DeepfakeBench `networks/mesonet.py`, re-implemented):
- Meso4: conv 3x3 (8) -> ReLU -> BN -> pool2; conv 5x5 (8) -> ReLU -> the SAME BN -> pool2;
  conv 5x5 (16) -> ReLU -> BN2 -> pool2; conv 5x5 (16) -> ReLU -> BN2 again -> pool4.
  BN sits after the ReLU, so it cannot be folded into the conv. Convs have no bias.
- MesoInception4: two inception layers (branches 1x1 | 1x1-3x3 | 1x1-3x3 dil 2 |
  1x1-3x3 dil 3, concatenated, BN, pool2 -- no ReLU inside), then conv 5x5 -> ReLU -> bn1 ->
  pool2 and conv 5x5 -> ReLU -> bn1 (shared) -> pool4.
- classifier: dropout -> fc1 (16*(S/32)^2 -> 16) -> LeakyReLU(0.1) -> dropout -> fc2.
The pools divide the side by 32, so the input side must be a multiple of 32 (256 in
DeepfakeBench: fc1 sees 1024 features; 64 for the small variant: same network, 64 features).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..base import DetectorInfo, register_detector
from ._common import NORM_05, check_options, check_variant


def _check_size(name: str, input_size: int) -> None:
    if input_size < 32 or input_size % 32:
        raise ValueError(f"{name}: input_size must be a positive multiple of 32, got {input_size}")


class _MesoHead(nn.Module):
    """Shared classifier of both MesoNets (DeepfakeBench applies Dropout2d to a 2-D tensor,
    which PyTorch treats as plain dropout)."""

    def _build_head(self, features: int, num_classes: int) -> None:
        self.dropout = nn.Dropout(0.5)
        self.fc1 = nn.Linear(features, 16)
        self.leakyrelu = nn.LeakyReLU(0.1)
        self.dropout2 = nn.Dropout(0.5)
        self.fc2 = nn.Linear(16, num_classes)
        self.flatten = nn.Flatten(1)

    def classifier(self, feature: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout2(self.leakyrelu(self.fc1(self.dropout(feature)))))


class Meso4(_MesoHead):
    def __init__(self, input_size: int = 256, inc: int = 3, num_classes: int = 2):
        super().__init__()
        _check_size("meso4", input_size)
        self.conv1 = nn.Conv2d(inc, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 5, padding=2, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(8, 16, 5, padding=2, bias=False)
        self.relu3 = nn.ReLU()
        self.conv4 = nn.Conv2d(16, 16, 5, padding=2, bias=False)
        self.relu4 = nn.ReLU()
        self.maxpooling1 = nn.MaxPool2d(2)
        self.maxpooling2 = nn.MaxPool2d(4)
        self._build_head(16 * (input_size // 32) ** 2, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpooling1(self.bn1(self.relu1(self.conv1(x))))
        x = self.maxpooling1(self.bn1(self.relu2(self.conv2(x))))
        x = self.maxpooling1(self.bn2(self.relu3(self.conv3(x))))
        x = self.maxpooling2(self.bn2(self.relu4(self.conv4(x))))
        return self.flatten(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MesoInception4(_MesoHead):
    def __init__(self, input_size: int = 256, inc: int = 3, num_classes: int = 2):
        super().__init__()
        _check_size("meso4Inception", input_size)
        self._inception(1, inc, (1, 4, 4, 2))
        self._inception(2, 11, (2, 4, 4, 2))
        self.conv1 = nn.Conv2d(12, 16, 5, padding=2, bias=False)
        self.relu1 = nn.ReLU()
        self.bn1 = nn.BatchNorm2d(16)
        self.maxpooling1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 16, 5, padding=2, bias=False)
        self.relu2 = nn.ReLU()
        self.maxpooling2 = nn.MaxPool2d(4)
        self._build_head(16 * (input_size // 32) ** 2, num_classes)

    def _inception(self, k: int, cin: int, widths: tuple[int, int, int, int]) -> None:
        a, b, c, d = widths
        p = f"Incption{k}_"
        setattr(self, p + "conv1", nn.Conv2d(cin, a, 1, padding=0, bias=False))
        setattr(self, p + "conv2_1", nn.Conv2d(cin, b, 1, padding=0, bias=False))
        setattr(self, p + "conv2_2", nn.Conv2d(b, b, 3, padding=1, bias=False))
        setattr(self, p + "conv3_1", nn.Conv2d(cin, c, 1, padding=0, bias=False))
        setattr(self, p + "conv3_2", nn.Conv2d(c, c, 3, padding=2, dilation=2, bias=False))
        setattr(self, p + "conv4_1", nn.Conv2d(cin, d, 1, padding=0, bias=False))
        setattr(self, p + "conv4_2", nn.Conv2d(d, d, 3, padding=3, dilation=3, bias=False))
        setattr(self, p + "bn", nn.BatchNorm2d(a + b + c + d))

    def inception_layer(self, k: int, x: torch.Tensor) -> torch.Tensor:
        p = f"Incption{k}_"
        m = self.get_submodule
        x1 = m(p + "conv1")(x)
        x2 = m(p + "conv2_2")(m(p + "conv2_1")(x))
        x3 = m(p + "conv3_2")(m(p + "conv3_1")(x))
        x4 = m(p + "conv4_2")(m(p + "conv4_1")(x))
        return self.maxpooling1(m(p + "bn")(torch.cat((x1, x2, x3, x4), dim=1)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inception_layer(2, self.inception_layer(1, x))
        x = self.maxpooling1(self.bn1(self.relu1(self.conv1(x))))
        x = self.maxpooling2(self.bn1(self.relu2(self.conv2(x))))
        return self.flatten(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MesoDetector(nn.Module):
    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


def build_meso4(variant: str = "full", **options) -> nn.Module:
    check_variant(variant)
    check_options("meso4", options, ())
    return MesoDetector(Meso4(256 if variant == "full" else 64))


def build_meso4_inception(variant: str = "full", **options) -> nn.Module:
    check_variant(variant)
    check_options("meso4inception", options, ())
    return MesoDetector(MesoInception4(256 if variant == "full" else 64))


register_detector(DetectorInfo(
    "meso4", build_meso4, 256, **NORM_05, keys_fixture="meso4.json",
    description="Meso4 (DeepfakeBench meso4_best.pth layout); small = same net at 64x64",
))
register_detector(DetectorInfo(
    "meso4inception", build_meso4_inception, 256, **NORM_05, keys_fixture="meso4Inception.json",
    description="MesoInception4 (DeepfakeBench meso4Incep_best.pth layout); small = same net at 64x64",
))
