"""Two small detectors for the synthetic benchmark, trainable on 2 CPU cores in minutes.

Both start with a 2x2 stride-2 convolution: space-to-depth (2x) followed by a 1x1 mixing
conv, fused into one op that every int8 runtime supports; it quarters the pixels the rest of
the network sees, which is what makes CPU training fast.
"""

from __future__ import annotations

import torch.nn as nn

from .base import DetectorInfo, register_detector


def conv_bn_relu(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, padding=k // 2 if k > 2 else 0, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=False),
    )


class BasicBlock(nn.Module):
    """ResNet basic block; the projection shortcut appears only where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )
        self.relu2 = nn.ReLU()

    def forward(self, x):
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu2(y + self.shortcut(x))


class TinyResNet(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (24, 32, 48, 64)):
        super().__init__()
        self.stem = conv_bn_relu(3, widths[0], 2, stride=2)
        self.stem2 = conv_bn_relu(widths[0], widths[0], 3)
        blocks, cin = [], widths[0]
        for w in widths[1:]:
            blocks.append(BasicBlock(cin, w, 2))
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, 2)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.blocks(self.stem2(self.stem(x))))))


class DSBlock(nn.Module):
    """Depthwise 3x3 + pointwise 1x1 (MobileNet-v1 style), each with BN + ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.dw = conv_bn_relu(cin, cin, 3, stride, groups=cin)
        self.pw = conv_bn_relu(cin, cout, 1)

    def forward(self, x):
        return self.pw(self.dw(x))


class TinyDSNet(nn.Module):
    def __init__(self, plan: tuple[tuple[int, int], ...] = ((32, 1), (48, 2), (64, 2), (96, 2), (96, 1))):
        super().__init__()
        self.stem = conv_bn_relu(3, 24, 2, stride=2)
        layers, cin = [], 24
        for cout, stride in plan:
            layers.append(DSBlock(cin, cout, stride))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, 2)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.features(self.stem(x)))))


def _build(cls):
    def build(variant: str = "small", **options) -> nn.Module:
        # These nets exist only at the small scale; 'full' is accepted for uniformity.
        return cls(**options)

    return build


_NORM = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
register_detector(DetectorInfo("tiny-resnet", _build(TinyResNet), 64, **_NORM, small_input_size=64,
                               description="ResNet-style, 4 stages, basic blocks, s2d stem"))
register_detector(DetectorInfo("tiny-dsnet", _build(TinyDSNet), 64, **_NORM, small_input_size=64,
                               description="depthwise-separable (MobileNet-v1 style), s2d stem"))
