"""CNN-Aug: ResNet-34 as DeepfakeBench's `resnet34` detector holds it.

DeepfakeBench wraps torchvision's ResNet-34 children (without avgpool/fc) in a Sequential,
so checkpoint keys are `backbone.resnet.{0: conv1, 1: bn1, 2: relu, 3: maxpool, 4..7:
layer1..layer4}`, then `backbone.fc` (512 -> 2) after global average pooling. Facts from the
ResNet paper / torchvision's module tree (re-implemented): 7x7/2 stem, 3x3/2 max-pool, basic
blocks (3x3 conv-BN-ReLU, 3x3 conv-BN, + shortcut, ReLU) with 3, 4, 6, 3 blocks per stage, the
stride and a 1x1 conv + BN `downsample` in the first block of stages 2-4.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..base import DetectorInfo, register_detector
from ._common import NORM_05, check_options, check_variant


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        identity = self.downsample(x) if self.downsample is not None else x
        return self.relu2(out + identity)


def resnet_body(widths: tuple[int, int, int, int], blocks: tuple[int, int, int, int],
                stem_width: int, stem_kernel: int = 7) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(3, stem_width, stem_kernel, 2, stem_kernel // 2, bias=False),
        nn.BatchNorm2d(stem_width),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
    ]
    cin = stem_width
    for i, (w, n) in enumerate(zip(widths, blocks)):
        stage = [BasicBlock(cin, w, 1 if i == 0 else 2)]
        stage += [BasicBlock(w, w) for _ in range(n - 1)]
        layers.append(nn.Sequential(*stage))
        cin = w
    return nn.Sequential(*layers)


class ResNetBackbone(nn.Module):
    def __init__(self, widths=(64, 128, 256, 512), blocks=(3, 4, 6, 3), stem_width=64,
                 stem_kernel: int = 7, num_classes: int = 2):
        super().__init__()
        self.resnet = resnet_body(widths, blocks, stem_width, stem_kernel)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(widths[-1], num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.resnet(x)

    def classifier(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.avgpool(features)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class ResnetDetector(nn.Module):
    def __init__(self, backbone: ResNetBackbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


def build_cnnaug(variant: str = "full", **options) -> nn.Module:
    check_variant(variant)
    check_options("cnnaug", options, ())
    if variant == "full":
        return ResnetDetector(ResNetBackbone())
    # small: same 4-stage basic-block layout, one block per stage, narrow, 3x3 stem
    return ResnetDetector(ResNetBackbone(widths=(16, 32, 64, 80), blocks=(1, 1, 1, 1),
                                         stem_width=16, stem_kernel=3))


register_detector(DetectorInfo(
    "cnnaug", build_cnnaug, 256, **NORM_05, keys_fixture="resnet34.json",
    description="CNN-Aug = ResNet-34 (DeepfakeBench cnnaug_best.pth layout)",
))
