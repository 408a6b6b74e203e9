"""EfficientNet-B4 in efficientnet_pytorch naming, as DeepfakeBench's `efficientnetb4` holds it.

Facts (EfficientNet paper; efficientnet_pytorch 0.7.1 module tree; DeepfakeBench wrapper),
re-implemented here:
- B0 stages (expand, kernel, stride, in, out, repeats): (1,3,1,32,16,1) (6,3,2,16,24,2)
  (6,5,2,24,40,2) (6,3,2,40,80,3) (6,5,1,80,112,3) (6,5,2,112,192,4) (6,3,1,192,320,1);
  B4 scales widths by 1.4 (rounded to multiples of 8) and repeats by 1.8 (ceil): 32 blocks.
- MBConv block: [1x1 expand -> BN -> swish] -> depthwise kxk -> BN -> swish -> squeeze-excite
  (GAP -> 1x1 reduce (in*0.25) -> swish -> 1x1 expand -> sigmoid, multiply) -> 1x1 project
  -> BN, + input when stride 1 and in == out. BN eps 1e-3. Swish = x * sigmoid(x).
- "Static same" padding computed for image_size 380 (not the 256 used): stride-1 convs pad
  (k-1)/2 on every side; stride-2 depthwise convs may pad asymmetrically (left/top smaller).
  Symmetric pads live in the conv's `padding`; asymmetric ones are an explicit ZeroPad2d
  (`_depthwise_pad`, no state) before a padding-0 conv.
- DeepfakeBench replaces `_conv_stem` by a plain Conv2d(3, 48, 3, stride 2, padding 0) and
  `_fc` by Identity; the head is GAP -> `backbone.last_layer` (1792 -> 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..base import DetectorInfo, register_detector
from ._common import NORM_05, check_options, check_variant

BN_EPS = 1e-3
BN_MOMENTUM = 0.01


@dataclass(frozen=True)
class StageArgs:
    expand: int
    kernel: int
    stride: int
    cin: int
    cout: int
    repeats: int
    se_ratio: float = 0.25


B0_STAGES = (
    StageArgs(1, 3, 1, 32, 16, 1),
    StageArgs(6, 3, 2, 16, 24, 2),
    StageArgs(6, 5, 2, 24, 40, 2),
    StageArgs(6, 3, 2, 40, 80, 3),
    StageArgs(6, 5, 1, 80, 112, 3),
    StageArgs(6, 5, 2, 112, 192, 4),
    StageArgs(6, 3, 1, 192, 320, 1),
)


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    f = filters * width
    new = max(divisor, int(f + divisor / 2) // divisor * divisor)
    if new < 0.9 * f:
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(depth * repeats))


def same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TF 'SAME' for one axis of length `size`."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


@dataclass(frozen=True)
class BlockArgs:
    expand: int
    kernel: int
    stride: int
    cin: int
    cout: int
    se_ratio: float
    pad: tuple[int, int]  # depthwise (before, after), from the static image size


def expand_stages(stages, width: float, depth: float, image_size: int) -> list[BlockArgs]:
    """Per-block arguments, padding computed the efficientnet_pytorch way (stem stride 2,
    then ceil(size / stride) after each stage's first block)."""
    size = math.ceil(image_size / 2)
    blocks = []
    for st in stages:
        cin, cout = round_filters(st.cin, width), round_filters(st.cout, width)
        for r in range(round_repeats(st.repeats, depth)):
            stride = st.stride if r == 0 else 1
            blocks.append(BlockArgs(st.expand, st.kernel, stride, cin if r == 0 else cout, cout,
                                    st.se_ratio, same_pad(size, st.kernel, stride)))
            if r == 0:
                size = math.ceil(size / st.stride)
    return blocks


class MBConvBlock(nn.Module):
    def __init__(self, a: BlockArgs):
        super().__init__()
        self.args = a
        mid = a.cin * a.expand
        if a.expand != 1:
            self._expand_conv = nn.Conv2d(a.cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM)
            self._expand_act = nn.SiLU()
        before, after = a.pad
        if before == after:
            self._depthwise_pad = nn.Identity()
            pad = before
        else:
            self._depthwise_pad = nn.ZeroPad2d((before, after, before, after))
            pad = 0
        self._depthwise_conv = nn.Conv2d(mid, mid, a.kernel, a.stride, pad, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._depthwise_act = nn.SiLU()
        squeezed = max(1, int(a.cin * a.se_ratio))
        self._se_pool = nn.AdaptiveAvgPool2d(1)
        self._se_reduce = nn.Conv2d(mid, squeezed, 1)
        self._se_act = nn.SiLU()
        self._se_expand = nn.Conv2d(squeezed, mid, 1)
        self._se_gate = nn.Sigmoid()
        self._project_conv = nn.Conv2d(mid, a.cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(a.cout, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.residual = a.stride == 1 and a.cin == a.cout

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.args.expand != 1:
            x = self._expand_act(self._bn0(self._expand_conv(x)))
        x = self._depthwise_act(self._bn1(self._depthwise_conv(self._depthwise_pad(x))))
        s = self._se_expand(self._se_act(self._se_reduce(self._se_pool(x))))
        x = self._se_gate(s) * x
        x = self._bn2(self._project_conv(x))
        if self.residual:
            x = x + inputs
        return x


class EfficientNet(nn.Module):
    """efficientnet_pytorch's tree: _conv_stem, _bn0, _blocks, _conv_head, _bn1."""

    def __init__(self, blocks: list[BlockArgs], stem: int, head: int, inc: int = 3):
        super().__init__()
        self._conv_stem = nn.Conv2d(inc, stem, 3, 2, 0, bias=False)  # DeepfakeBench's plain stem
        self._bn0 = nn.BatchNorm2d(stem, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._stem_act = nn.SiLU()
        self._blocks = nn.ModuleList([MBConvBlock(a) for a in blocks])
        self._conv_head = nn.Conv2d(blocks[-1].cout, head, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(head, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._head_act = nn.SiLU()

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._stem_act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self._head_act(self._bn1(self._conv_head(x)))


class EfficientNetBackbone(nn.Module):
    def __init__(self, efficientnet: EfficientNet, features: int, num_classes: int = 2):
        super().__init__()
        self.efficientnet = efficientnet
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.last_layer = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(self.flatten(self.pool(self.efficientnet.extract_features(x))))


class EfficientDetector(nn.Module):
    def __init__(self, backbone: EfficientNetBackbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


def b4_blocks() -> list[BlockArgs]:
    return expand_stages(B0_STAGES, width=1.4, depth=1.8, image_size=380)


# small: five MBConv stages with SE and swish, static same padding for 64x64
SMALL_STAGES = (
    StageArgs(1, 3, 1, 16, 8, 1),
    StageArgs(4, 3, 2, 8, 16, 1),
    StageArgs(4, 5, 2, 16, 24, 2),
    StageArgs(4, 3, 2, 24, 40, 2),
    StageArgs(4, 5, 1, 40, 56, 1),
)


def build_efficientnet_b4(variant: str = "full", **options) -> nn.Module:
    check_variant(variant)
    check_options("efficientnet-b4", options, ())
    if variant == "full":
        net = EfficientNet(b4_blocks(), stem=round_filters(32, 1.4), head=round_filters(1280, 1.4))
        return EfficientDetector(EfficientNetBackbone(net, round_filters(1280, 1.4)))
    net = EfficientNet(expand_stages(SMALL_STAGES, 1.0, 1.0, 64), stem=16, head=128)
    return EfficientDetector(EfficientNetBackbone(net, 128))


register_detector(DetectorInfo(
    "efficientnet-b4", build_efficientnet_b4, 256, **NORM_05, keys_fixture="efficientnetb4.json",
    description="EfficientNet-B4 (efficientnet_pytorch naming, DeepfakeBench effnb4_best.pth layout)",
))
