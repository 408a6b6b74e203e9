"""ViT-B/16 classifier with CLIP's vision tower (224 input), no DeepfakeBench v1.0.1 fixture.

Key layout (our choice, documented because no fixture pins it): it mirrors DeepfakeBench's
`clip` detector of later releases -- `backbone` = Hugging Face transformers'
`CLIPVisionTransformer` (the `vision_model` of openai/clip-vit-base-patch16) and
`head` = Linear(768, 2) on the pooled output -- so such a checkpoint, or transformers'
CLIP vision weights under a `backbone.` prefix, load strictly:

    backbone.embeddings.class_embedding                 [768]
    backbone.embeddings.patch_embedding.weight          [768, 3, 16, 16]   (no bias)
    backbone.embeddings.position_embedding.weight       [197, 768]
    backbone.pre_layrnorm.{weight,bias}                 (sic, transformers' spelling)
    backbone.encoder.layers.{i}.self_attn.{k,v,q,out}_proj.{weight,bias}   (that order)
    backbone.encoder.layers.{i}.layer_norm1.{weight,bias}
    backbone.encoder.layers.{i}.mlp.fc1.{weight,bias}   [3072, 768]
    backbone.encoder.layers.{i}.mlp.fc2.{weight,bias}   [768, 3072]
    backbone.encoder.layers.{i}.layer_norm2.{weight,bias}     i = 0..11
    backbone.post_layernorm.{weight,bias}
    head.{weight,bias}                                  [2, 768]

transformers keeps `position_ids` as a non-persistent buffer (>= 4.31); checkpoints saved
with older versions carry `backbone.embeddings.position_ids` -- drop it before loading.
Forward (pre-LN transformer, QuickGELU x*sigmoid(1.702x), LayerNorm eps 1e-5): patches +
[CLS] + positions -> pre_layrnorm -> 12 layers -> post_layernorm([CLS]) -> head.
Attention is written with plain Linear / matmul / softmax so that it traces and exports.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..base import DetectorInfo, register_detector
from ._common import NORM_05, check_options, check_variant


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ClipAttention(nn.Module):
    def __init__(self, dim: int, heads: int, tokens: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"ClipAttention: dim {dim} is not divisible by heads {heads}")
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.softmax = nn.Softmax(dim=-1)
        self.shape = (tokens, heads, dim // heads)
        self.scale = (dim // heads) ** -0.5

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        t, h, d = self.shape
        return x.reshape(-1, t, h, d).permute(0, 2, 1, 3)  # [B, heads, T, d]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, h, d = self.shape
        q = self._split(self.q_proj(x))
        k = self._split(self.k_proj(x))
        v = self._split(self.v_proj(x))
        att = self.softmax(torch.matmul(q, k.transpose(-1, -2)) * self.scale)
        out = torch.matmul(att, v).permute(0, 2, 1, 3).reshape(-1, t, h * d)
        return self.out_proj(out)


class ClipMLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = QuickGELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ClipEncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, tokens: int, eps: float):
        super().__init__()
        self.self_attn = ClipAttention(dim, heads, tokens)
        self.layer_norm1 = nn.LayerNorm(dim, eps=eps)
        self.mlp = ClipMLP(dim, hidden)
        self.layer_norm2 = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class ClipEncoder(nn.Module):
    def __init__(self, depth: int, **kw):
        super().__init__()
        self.layers = nn.ModuleList([ClipEncoderLayer(**kw) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class ClipVisionEmbeddings(nn.Module):
    def __init__(self, dim: int, patch: int, image_size: int):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.randn(dim) * dim**-0.5)
        self.patch_embedding = nn.Conv2d(3, dim, patch, patch, bias=False)
        self.num_positions = (image_size // patch) ** 2 + 1
        self.position_embedding = nn.Embedding(self.num_positions, dim)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(x).flatten(2).transpose(1, 2)  # [B, N, D]
        cls = self.class_embedding.reshape(1, 1, self.dim).expand(patches.shape[0], 1, self.dim)
        # the position table is added whole (no index gather): positions are 0..N in order
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight


class ClipVisionTransformer(nn.Module):
    def __init__(self, image_size: int = 224, patch: int = 16, dim: int = 768, depth: int = 12,
                 heads: int = 12, hidden: int = 3072, eps: float = 1e-5):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"ClipVisionTransformer: image_size {image_size} is not a multiple of patch {patch}")
        self.embeddings = ClipVisionEmbeddings(dim, patch, image_size)
        self.pre_layrnorm = nn.LayerNorm(dim, eps=eps)
        self.encoder = ClipEncoder(depth, dim=dim, heads=heads, hidden=hidden,
                                   tokens=self.embeddings.num_positions, eps=eps)
        self.post_layernorm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled output: post_layernorm of the [CLS] token, [B, dim]."""
        h = self.encoder(self.pre_layrnorm(self.embeddings(x)))
        return self.post_layernorm(h[:, 0, :])


class ClipDetector(nn.Module):
    def __init__(self, backbone: ClipVisionTransformer, dim: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(dim, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build_vit_b16(variant: str = "full", **options) -> nn.Module:
    check_variant(variant)
    check_options("vit-b16", options, ())
    if variant == "full":
        return ClipDetector(ClipVisionTransformer(), 768)
    # small: 8x8 patches of a 64x64 input (64 tokens + CLS), 4 layers of width 64
    return ClipDetector(ClipVisionTransformer(image_size=64, patch=8, dim=64, depth=4, heads=4, hidden=128), 64)


register_detector(DetectorInfo(
    "vit-b16", build_vit_b16, 224, **NORM_05, keys_fixture=None,
    description="ViT-B/16 (CLIP vision tower, transformers naming) + linear head; 224 input",
))
