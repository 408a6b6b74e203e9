"""Xception as DeepfakeBench uses it, plus the plain Xception detectors (xception, core).

Facts (from the Xception paper and DeepfakeBench's `networks/xception.py`, re-implemented):
entry conv1 3x3/2 (no padding) -> bn -> relu -> conv2 3x3 (no padding) -> bn -> relu;
blocks 1-3 (64->128->256->728, stride 2, first without a leading ReLU), eight middle blocks
(728, three separable convs each), block 12 (728->1024, stride 2, grows last); then separable
conv3 (1536) -> bn -> relu -> separable conv4 (2048) -> bn. The classifier is ReLU -> global
average pool -> `last_linear`. A block's `rep` is a Sequential of [ReLU, SeparableConv, BN]*
(the leading ReLU dropped in block 1) then a 3x3/2 max-pool when strided; its shortcut is a
1x1 conv + BN where the shape changes. `adjust_channel` (1x1 conv 2048->512 + BN + ReLU) is
always built and used only in mode 'adjust_channel' (UCF).

`XceptionSpec` scales every width/depth, so the small variants run the same code.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from ..base import DetectorInfo, register_detector
from ._common import NORM_05, check_options, check_variant


class SeparableConv2d(nn.Module):
    """Depthwise conv (`conv1`) then pointwise 1x1 (`pointwise`), no bias."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cin, k, stride, padding, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, 1, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.conv1(x))


class XceptionBlock(nn.Module):
    """`rep(x) + shortcut(x)`; the layout of `rep` decides the checkpoint indices."""

    def __init__(self, cin: int, cout: int, reps: int, stride: int = 1,
                 start_with_relu: bool = True, grow_first: bool = True):
        super().__init__()
        if cout != cin or stride != 1:
            self.skip = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
            self.skipbn = nn.BatchNorm2d(cout)
        else:
            self.skip = None
            self.skipbn = None
        layers: list[nn.Module] = []
        width = cin
        if grow_first:
            layers += [nn.ReLU(), SeparableConv2d(cin, cout), nn.BatchNorm2d(cout)]
            width = cout
        for _ in range(reps - 1):
            layers += [nn.ReLU(), SeparableConv2d(width, width), nn.BatchNorm2d(width)]
        if not grow_first:
            layers += [nn.ReLU(), SeparableConv2d(cin, cout), nn.BatchNorm2d(cout)]
        if not start_with_relu:
            layers = layers[1:]
        if stride != 1:
            layers.append(nn.MaxPool2d(3, stride, 1))
        self.rep = nn.Sequential(*layers)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        x = self.rep(inp)
        skip = self.skipbn(self.skip(inp)) if self.skip is not None else inp
        return x + skip


@dataclass(frozen=True)
class XceptionSpec:
    in_channels: int = 3
    stem: tuple[int, int] = (32, 64)
    entry: tuple[int, int, int] = (128, 256, 728)
    middle_blocks: int = 8  # blocks 4 .. 3+middle_blocks; SRM/RECCE need 8 (split 4 + 4)
    middle_reps: int = 3
    exit: tuple[int, int, int] = (1024, 1536, 2048)
    num_classes: int | None = 2  # None: no classifier (a backbone whose head is never run)
    head_dropout: float | None = None  # DeepfakeBench: Sequential(Dropout, Linear) -> keys `.1.`
    head_name: str = "last_linear"  # timm's legacy Xception calls it `fc`
    adjust_channels: int | None = 512  # DeepfakeBench builds it in every mode
    adjust_mode: bool = False  # features() ends with adjust_channel (UCF)


FULL_SPEC = XceptionSpec()
SMALL_SPEC = XceptionSpec(stem=(8, 16), entry=(32, 48, 64), middle_reps=1, exit=(96, 112, 128),
                          adjust_channels=None)


def xception_sizes(input_size: int) -> dict[str, int]:
    """Spatial side after each stage for a square input (convs without padding, 3x3/2 pools)."""
    s1 = (input_size - 3) // 2 + 1
    s2 = s1 - 2
    b1 = (s2 - 1) // 2 + 1
    b2 = (b1 - 1) // 2 + 1
    b3 = (b2 - 1) // 2 + 1
    b12 = (b3 - 1) // 2 + 1
    return {"conv1": s1, "conv2": s2, "block1": b1, "block2": b2, "block3": b3, "block12": b12}


class Xception(nn.Module):
    """DeepfakeBench's Xception backbone (module tree and forward), width-scalable."""

    def __init__(self, spec: XceptionSpec = FULL_SPEC):
        super().__init__()
        if spec.middle_blocks < 1:
            raise ValueError(f"XceptionSpec.middle_blocks must be >= 1, got {spec.middle_blocks}")
        self.spec = spec
        s0, s1 = spec.stem
        e1, e2, e3 = spec.entry
        x1, x2, x3 = spec.exit
        self.conv1 = nn.Conv2d(spec.in_channels, s0, 3, 2, 0, bias=False)
        self.bn1 = nn.BatchNorm2d(s0)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(s0, s1, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(s1)
        self.relu2 = nn.ReLU()
        self.block1 = XceptionBlock(s1, e1, 2, 2, start_with_relu=False, grow_first=True)
        self.block2 = XceptionBlock(e1, e2, 2, 2)
        self.block3 = XceptionBlock(e2, e3, 2, 2)
        self.n_blocks = 4 + spec.middle_blocks
        for i in range(4, 4 + spec.middle_blocks):
            setattr(self, f"block{i}", XceptionBlock(e3, e3, spec.middle_reps, 1))
        setattr(self, f"block{self.n_blocks}", XceptionBlock(e3, x1, 2, 2, grow_first=False))
        self.conv3 = SeparableConv2d(x1, x2)
        self.bn3 = nn.BatchNorm2d(x2)
        self.relu3 = nn.ReLU()
        self.conv4 = SeparableConv2d(x2, x3)
        self.bn4 = nn.BatchNorm2d(x3)
        if spec.num_classes is not None:
            linear = nn.Linear(x3, spec.num_classes)
            if spec.head_dropout:
                linear = nn.Sequential(nn.Dropout(spec.head_dropout), linear)
            setattr(self, spec.head_name, linear)
        if spec.adjust_channels:
            self.adjust_channel = nn.Sequential(
                nn.Conv2d(x3, spec.adjust_channels, 1, 1), nn.BatchNorm2d(spec.adjust_channels), nn.ReLU()
            )
        self.head_relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)

    @property
    def feature_channels(self) -> int:
        return self.spec.adjust_channels if self.spec.adjust_mode else self.spec.exit[2]

    def block(self, i: int) -> XceptionBlock:
        return getattr(self, f"block{i}")

    # the stage split DeepfakeBench uses (SRM interleaves two backbones at these points)
    def fea_part1_0(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn1(self.conv1(x)))

    def fea_part1_1(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu2(self.bn2(self.conv2(x)))

    def fea_part2(self, x: torch.Tensor) -> torch.Tensor:
        return self.block3(self.block2(self.block1(x)))

    def fea_part3(self, x: torch.Tensor) -> torch.Tensor:
        half = 4 + self.spec.middle_blocks // 2
        for i in range(4, half):
            x = self.block(i)(x)
        return x

    def fea_part4(self, x: torch.Tensor) -> torch.Tensor:
        half = 4 + self.spec.middle_blocks // 2
        for i in range(half, self.n_blocks + 1):
            x = self.block(i)(x)
        return x

    def fea_part5(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu3(self.bn3(self.conv3(x)))
        return self.bn4(self.conv4(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fea_part1_1(self.fea_part1_0(x))
        x = self.fea_part5(self.fea_part4(self.fea_part3(self.fea_part2(x))))
        if self.spec.adjust_mode:
            x = self.adjust_channel(x)
        return x

    def classifier(self, features: torch.Tensor) -> torch.Tensor:
        if self.spec.num_classes is None:
            raise RuntimeError("this Xception was built without a classifier (num_classes=None)")
        x = self.flatten(self.pool(self.head_relu(features)))
        return getattr(self, self.spec.head_name)(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class XceptionDetector(nn.Module):
    """`backbone` = Xception; logits = backbone.classifier(backbone.features(x))."""

    def __init__(self, spec: XceptionSpec = FULL_SPEC):
        super().__init__()
        self.backbone = Xception(spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


def xception_spec(variant: str, **changes) -> XceptionSpec:
    check_variant(variant)
    return replace(FULL_SPEC if variant == "full" else SMALL_SPEC, **changes)


def build_xception(variant: str = "full", **options) -> nn.Module:
    check_variant(variant)
    check_options("xception", options, ())
    return XceptionDetector(xception_spec(variant))


register_detector(DetectorInfo(
    "xception", build_xception, 256, **NORM_05, keys_fixture="xception.json",
    description="Xception (DeepfakeBench xception_best.pth layout)",
))
register_detector(DetectorInfo(
    "core", build_xception, 256, **NORM_05, keys_fixture="core.json",
    description="CORE: Xception trained with a consistency loss (same inference graph)",
))
