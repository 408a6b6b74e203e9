"""UCF (Yan et al., "UCF: Uncovering Common Features for Generalizable Deepfake Detection")
as DeepfakeBench's `ucf` detector builds it.

Facts (paper; DeepfakeBench `detectors/ucf_detector.py`, re-implemented):
- two Xception encoders in mode 'adjust_channel' (features -> 1x1 conv 2048->512 + BN + ReLU):
  `encoder_f` (forgery) and `encoder_c` (content);
- `block_sha` / `block_spe`: 1x1 convs 512->256->256->256 with LeakyReLU(0.01) between;
- `head_sha`: GAP -> Linear 256->512 -> LeakyReLU -> Linear 512->2 (the `cls` logits);
  `head_spe` the same with 5 outputs (forgery-method classes);
- `con_gan`: an AdaIN-conditioned decoder reconstructing images from (fingerprint, content)
  pairs -- training only.
At inference `cls` depends only on encoder_f -> block_sha -> head_sha, so `forward` runs that
path; encoder_c, block_spe, head_spe and con_gan are built (their weights load strictly) but
not run -- the exported graph would prune them anyway. The small variant keeps only the
inference path.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..base import DetectorInfo, register_detector
from ._common import NORM_05, check_options, check_variant
from .xception import Xception, xception_spec


class Conv2d1x1(nn.Module):
    def __init__(self, in_f: int, hidden_dim: int, out_f: int):
        super().__init__()
        self.conv2d = nn.Sequential(
            nn.Conv2d(in_f, hidden_dim, 1, 1), nn.LeakyReLU(),
            nn.Conv2d(hidden_dim, hidden_dim, 1, 1), nn.LeakyReLU(),
            nn.Conv2d(hidden_dim, out_f, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2d(x)


class Head(nn.Module):
    def __init__(self, in_f: int, hidden_dim: int, out_f: int):
        super().__init__()
        self.do = nn.Dropout(0.2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.mlp = nn.Sequential(nn.Linear(in_f, hidden_dim), nn.LeakyReLU(), nn.Linear(hidden_dim, out_f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.do(self.mlp(self.flatten(self.pool(x))))


class AdaIN(nn.Module):
    """Re-normalise x to y's per-channel mean/std (unbiased variance + eps, as UCF does)."""

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        xf, yf = x.flatten(2), y.flatten(2)
        x_mean, y_mean = xf.mean(-1)[..., None, None], yf.mean(-1)[..., None, None]
        x_std = (xf.var(-1) + self.eps).sqrt()[..., None, None]
        y_std = (yf.var(-1) + self.eps).sqrt()[..., None, None]
        return (x - x_mean) / x_std * y_std + y_mean


def r_double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU())


class ConditionalUNet(nn.Module):
    """UCF's reconstruction decoder (training only): forward(c, x) with c the fingerprint
    features (style) and x the content features, [B, 512, h, w] -> image [B, 3, 32h, 32w]."""

    def __init__(self):
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.dropout = nn.Dropout(p=0.3)
        self.adain3, self.adain2, self.adain1 = AdaIN(), AdaIN(), AdaIN()
        self.dconv_up3 = r_double_conv(512, 256)
        self.dconv_up2 = r_double_conv(256, 128)
        self.dconv_up1 = r_double_conv(128, 64)
        self.conv_last = nn.Conv2d(64, 3, 1)
        self.up_last = nn.Upsample(scale_factor=4, mode="bilinear", align_corners=True)
        self.activation = nn.Tanh()

    def forward(self, c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = self.dconv_up3(self.dropout(self.upsample(self.adain3(x, c))))
        c = self.dconv_up3(self.dropout(self.upsample(c)))
        x = self.dconv_up2(self.dropout(self.upsample(self.adain2(x, c))))
        c = self.dconv_up2(self.dropout(self.upsample(c)))
        x = self.dconv_up1(self.dropout(self.upsample(self.adain1(x, c))))
        return self.activation(self.up_last(self.conv_last(x)))


class UCFDetector(nn.Module):
    def __init__(self, variant: str, spe_classes: int = 5):
        super().__init__()
        full = variant == "full"
        feat = 512 if full else 64
        half = feat // 2
        spec = xception_spec(variant, adjust_channels=feat, adjust_mode=True,
                             num_classes=2 if full else None)
        self.encoder_f = Xception(spec)
        if full:
            self.encoder_c = Xception(spec)
            self.con_gan = ConditionalUNet()
            self.head_spe = Head(half, feat, spe_classes)
        self.head_sha = Head(half, feat, 2)
        if full:
            self.block_spe = Conv2d1x1(feat, half, half)
        self.block_sha = Conv2d1x1(feat, half, half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_sha(self.block_sha(self.encoder_f.features(x)))


def build_ucf(variant: str = "full", **options) -> nn.Module:
    check_variant(variant)
    check_options("ucf", options, ())
    return UCFDetector(variant)


register_detector(DetectorInfo(
    "ucf", build_ucf, 256, **NORM_05, keys_fixture="ucf.json",
    description="UCF: shared-feature branch (encoder_f -> block_sha -> head_sha) of two Xceptions",
))
