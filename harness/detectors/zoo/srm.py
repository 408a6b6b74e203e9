"""SRM (Luo et al., "Generalizing face forgery detection with high-frequency features"):
two Xception streams, RGB and SRM-noise, as DeepfakeBench's `srm` detector builds them.

Facts (paper; DeepfakeBench `detectors/srm_detector.py`, re-implemented):
- srm = Hardtanh(-3,3)(SRM filters(x)) (3 filters summed over RGB), the noise stream's input.
- after each stem conv the RGB features are SRM-filtered per channel (depthwise, 3 filters
  per channel), truncated, mixed by 1x1 conv + BN + ReLU and added to the noise stream, then
  ReLU (`srm_conv1` after conv1, `srm_conv2` after conv2).
- pixel attention: SRM filters applied AGAIN to `srm`, conv3x3/2 -> BN -> ReLU -> conv3x3 ->
  BN -> ReLU -> spatial attention (7x7 conv on [mean, max] over channels -> sigmoid);
  rgb = rgb * att + rgb -> BN -> ReLU (`srm_sa_post`).
- dual cross-modal attention after blocks 1-3 and after blocks 4-7 (728 ch, 16x16 = 256
  positions at 256 input): energy = K1(x)^T K2(y) (shared 1x1 after 728->91 1x1s), row-wise
  `linear1`/`linear2` over the 256 positions + softmax, gated by learnable gamma1/gamma2.
- fusion: cat(rgb, srm) -> 1x1 conv -> BN -> ReLU, times channel attention (shared MLP on
  avg- and max-pooled, sigmoid of the sum). Logits: `backbone_rgb.classifier`.
- `blur` (7x7 Gaussian, sigma 0.8, a buffer) and the noise stream's `last_linear` /
  both `adjust_channel`s are in the checkpoint but unused at inference.
Fixed SRM kernels are frozen `nn.Conv2d`s here; their checkpoint names (`*.kernel`) are
mapped onto the conv weight on save/load (see `alias_keys`).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..base import DetectorInfo, register_detector
from ..frequency import SRMFilter
from ._common import NORM_05, alias_keys, check_options, check_variant
from .xception import Xception, xception_sizes, xception_spec


class SRMConv2dSimple(nn.Module):
    """SRM filters over all input channels (3 outputs) + truncation; checkpoint key `kernel`."""

    def __init__(self, inc: int = 3):
        super().__init__()
        self.filter = SRMFilter(inc, separate=False)
        alias_keys(self, {"kernel": "filter.conv.weight"})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.filter(x)


class SRMConv2dSeparate(nn.Module):
    """Depthwise SRM filters (3 per channel) + truncation, then 1x1 conv -> BN -> ReLU."""

    def __init__(self, inc: int, outc: int):
        super().__init__()
        self.filter = SRMFilter(inc, separate=True)
        self.out_conv = nn.Sequential(nn.Conv2d(3 * inc, outc, 1, 1, 0, bias=False),
                                      nn.BatchNorm2d(outc), nn.ReLU())
        alias_keys(self, {"kernel": "filter.conv.weight"})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_conv(self.filter(x))


class GaussianSmoothing(nn.Module):
    """Depthwise Gaussian blur (training-time augmentation; identity in eval), buffer `weight`."""

    def __init__(self, channels: int = 3, kernel_size: int = 7, sigma: float = 0.8):
        super().__init__()
        grid = torch.arange(kernel_size, dtype=torch.float32)
        mean = (kernel_size - 1) / 2
        g = torch.exp(-(((grid - mean) / sigma) ** 2) / 2) / (sigma * math.sqrt(2 * math.pi))
        k = g[:, None] * g[None, :]
        k = k / k.sum()
        self.register_buffer("weight", k.expand(channels, 1, kernel_size, kernel_size).contiguous())
        self.channels = channels
        self.pad = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        return F.conv2d(x, self.weight, padding=self.pad, groups=self.channels)


class SpatialAttention(nn.Module):
    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = torch.mean(x, dim=1, keepdim=True)
        mx = torch.amax(x, dim=1, keepdim=True)
        return self.sigmoid(self.conv(torch.cat([avg, mx], dim=1)))


class SRMPixelAttention(nn.Module):
    def __init__(self, in_channels: int, widths: tuple[int, int]):
        super().__init__()
        self.srm = SRMConv2dSimple()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 2, 0, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(),
            nn.Conv2d(widths[0], widths[1], 3, bias=False), nn.BatchNorm2d(widths[1]), nn.ReLU(),
        )
        self.pa = SpatialAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pa(self.conv(self.srm(x)))


class DualCrossModalAttention(nn.Module):
    """Cross attention between the two streams at a fixed `size` x `size` resolution."""

    def __init__(self, in_dim: int, size: int, ratio: int = 8):
        super().__init__()
        self.gamma1 = nn.Parameter(torch.zeros(1))
        self.gamma2 = nn.Parameter(torch.zeros(1))
        k = in_dim // ratio
        self.key_conv1 = nn.Conv2d(in_dim, k, 1)
        self.key_conv2 = nn.Conv2d(in_dim, k, 1)
        self.key_conv_share = nn.Conv2d(k, k, 1)
        self.linear1 = nn.Linear(size * size, size * size)
        self.linear2 = nn.Linear(size * size, size * size)
        self.value_conv1 = nn.Conv2d(in_dim, in_dim, 1)
        self.value_conv2 = nn.Conv2d(in_dim, in_dim, 1)
        self.softmax = nn.Softmax(dim=-1)
        self.shape = (in_dim, size, size)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c, h, w = self.shape
        key1 = self.key_conv_share(self.key_conv1(x)).flatten(2).permute(0, 2, 1)  # B, HW, C'
        key2 = self.key_conv_share(self.key_conv2(y)).flatten(2)  # B, C', HW
        energy = torch.bmm(key1, key2)  # B, HW, HW
        att_y_on_x = self.softmax(self.linear1(energy))
        att_x_on_y = self.softmax(self.linear2(energy.permute(0, 2, 1)))
        value_y = self.value_conv2(y).flatten(2)  # B, C, HW
        out_y_on_x = torch.bmm(value_y, att_y_on_x.permute(0, 2, 1)).reshape(-1, c, h, w)
        out_x = self.gamma1 * out_y_on_x + x
        value_x = self.value_conv1(x).flatten(2)
        out_x_on_y = torch.bmm(value_x, att_x_on_y.permute(0, 2, 1)).reshape(-1, c, h, w)
        out_y = self.gamma2 * out_x_on_y + y
        return out_x, out_y


class GlobalMaxPool(nn.Module):
    """AdaptiveMaxPool2d(1) as a reduce-max (the LiteRT converter has no adaptive max-pool)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.amax(x, dim=(2, 3), keepdim=True)


class ChannelAttention(nn.Module):
    def __init__(self, in_planes: int, ratio: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = GlobalMaxPool()
        self.sharedMLP = nn.Sequential(
            nn.Conv2d(in_planes, in_planes // ratio, 1, bias=False), nn.ReLU(),
            nn.Conv2d(in_planes // ratio, in_planes, 1, bias=False),
        )
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sigmoid(self.sharedMLP(self.avg_pool(x)) + self.sharedMLP(self.max_pool(x)))


class FeatureFusionModule(nn.Module):
    def __init__(self, in_chan: int, out_chan: int):
        super().__init__()
        self.convblk = nn.Sequential(nn.Conv2d(in_chan, out_chan, 1, 1, 0, bias=False),
                                     nn.BatchNorm2d(out_chan), nn.ReLU())
        self.ca = ChannelAttention(out_chan, ratio=16)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fuse = self.convblk(torch.cat((x, y), dim=1))
        return fuse * self.ca(fuse)


class SRMDetector(nn.Module):
    def __init__(self, variant: str):
        super().__init__()
        size = 256 if variant == "full" else 64
        # small: two streams, so each is narrower than the single-stream small Xception
        spec = xception_spec(variant) if variant == "full" else xception_spec(
            "small", stem=(8, 8), entry=(16, 32, 48), exit=(64, 80, 96))
        s0, s1 = spec.stem
        mid, top = spec.entry[2], spec.exit[2]
        self.backbone_rgb = Xception(spec)
        # the noise stream's classifier is never run; the small variant leaves it out
        self.backbone_srm = Xception(spec if variant == "full" else replace(spec, num_classes=None))
        self.blur = GaussianSmoothing(channels=3, kernel_size=7, sigma=0.8)
        self.srm_conv0 = SRMConv2dSimple(inc=3)
        self.srm_conv1 = SRMConv2dSeparate(s0, s0)
        self.srm_conv2 = SRMConv2dSeparate(s1, s1)
        self.relu = nn.ReLU()
        self.relu2 = nn.ReLU()
        self.srm_sa = SRMPixelAttention(3, (s0, s1))
        self.srm_sa_post = nn.Sequential(nn.BatchNorm2d(s1), nn.ReLU())
        cma_size = xception_sizes(size)["block3"]
        self.dual_cma0 = DualCrossModalAttention(in_dim=mid, size=cma_size)
        self.dual_cma1 = DualCrossModalAttention(in_dim=mid, size=cma_size)
        self.fusion = FeatureFusionModule(2 * top, top)

    def features(self, image: torch.Tensor) -> torch.Tensor:
        rgb_net, srm_net = self.backbone_rgb, self.backbone_srm
        srm = self.srm_conv0(image)
        x = rgb_net.fea_part1_0(image)
        y = self.relu(srm_net.fea_part1_0(srm) + self.srm_conv1(x))
        x = rgb_net.fea_part1_1(x)
        y = self.relu2(srm_net.fea_part1_1(y) + self.srm_conv2(x))
        att = self.srm_sa(srm)
        x = self.srm_sa_post(x * att + x)
        x, y = self.dual_cma0(rgb_net.fea_part2(x), srm_net.fea_part2(y))
        x, y = self.dual_cma1(rgb_net.fea_part3(x), srm_net.fea_part3(y))
        x = rgb_net.fea_part5(rgb_net.fea_part4(x))
        y = srm_net.fea_part5(srm_net.fea_part4(y))
        return self.fusion(x, y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone_rgb.classifier(self.features(x))


def build_srm(variant: str = "full", **options) -> nn.Module:
    check_variant(variant)
    check_options("srm", options, ())
    return SRMDetector(variant)


register_detector(DetectorInfo(
    "srm", build_srm, 256, **NORM_05, keys_fixture="srm.json",
    description="SRM: RGB + SRM-noise Xception streams, cross-modal attention, fusion",
))
