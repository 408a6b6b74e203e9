"""Export-friendly frequency operators for the frequency-aware detectors.

Every transform here is a product with constant matrices or a convolution with a constant
kernel, never `torch.fft`: ONNX opset 17 and the LiteRT converter both lower MatMul / Conv,
neither lowers complex FFTs, and int8 runtimes can fuse or quantize them.

- `dct_matrix` / `FADHead`: F3Net's frequency-aware decomposition (2-D DCT-II, four band
  filters with learnable offsets, inverse DCT), keyed like DeepfakeBench's `FAD_Head`.
- `dft_matrices` / `PhaseOnlyReconstruction`: SPSL's phase spectrum, i.e.
  real(ifft2(exp(i * angle(fft2(gray))))) with the DFT written as cos/sin matrix products.
- `srm_kernels` / `SRMFilter`: the three fixed SRM high-pass residual filters as a frozen
  `nn.Conv2d` (optionally followed by the Hardtanh truncation that SRM-based nets use).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn


def dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix D (rows = frequencies): dct(x) = D @ x, idct(y) = D.T @ y.

    Built in float64 and rounded once, like F3Net's `DCT_mat`."""
    if n < 1:
        raise ValueError(f"dct_matrix: size must be >= 1, got {n}")
    i = np.arange(n, dtype=np.float64)[:, None]
    j = np.arange(n, dtype=np.float64)[None, :]
    scale = np.where(i == 0, math.sqrt(1.0 / n), math.sqrt(2.0 / n))
    return torch.from_numpy(scale * np.cos((j + 0.5) * math.pi * i / n)).float()


def band_mask(start: float, end: float, n: int) -> torch.Tensor:
    """F3Net's base band mask: 1 where start <= i + j <= end (both ends inclusive), else 0."""
    ij = np.arange(n)[:, None] + np.arange(n)[None, :]
    return torch.from_numpy(((ij >= start) & (ij <= end)).astype(np.float32))


class BandFilter(nn.Module):
    """A DCT-domain band filter: x * (base + 2 * sigmoid(learnable) - 1).

    `base` is a frozen parameter (DeepfakeBench stores it in the checkpoint); `learnable`
    is the trained offset. At inference the mask is a constant that exporters fold."""

    def __init__(self, size: int, band_start: float, band_end: float):
        super().__init__()
        self.base = nn.Parameter(band_mask(band_start, band_end, size), requires_grad=False)
        self.learnable = nn.Parameter(torch.empty(size, size).normal_(0.0, 0.1))

    def mask(self) -> torch.Tensor:
        return self.base + (2.0 * torch.sigmoid(self.learnable) - 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask()


class FADHead(nn.Module):
    """F3Net frequency-aware decomposition: [N, C, S, S] -> [N, 4C, S, S].

    Bands (on i + j of the DCT index): low [0, S//2.82], middle [S//2.82, S//2],
    high [S//2, 2S], all [0, 2S] -- the thresholds of the F3Net reference code."""

    def __init__(self, size: int):
        super().__init__()
        d = dct_matrix(size)
        self._DCT_all = nn.Parameter(d.clone(), requires_grad=False)
        self._DCT_all_T = nn.Parameter(d.t().contiguous(), requires_grad=False)
        low, mid = size // 2.82, size // 2
        self.filters = nn.ModuleList([
            BandFilter(size, 0, low),
            BandFilter(size, low, mid),
            BandFilter(size, mid, size * 2),
            BandFilter(size, 0, size * 2),
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        freq = torch.matmul(torch.matmul(self._DCT_all, x), self._DCT_all_T)
        bands = [
            torch.matmul(torch.matmul(self._DCT_all_T, f(freq)), self._DCT_all) for f in self.filters
        ]
        return torch.cat(bands, dim=1)


def dft_matrices(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin parts of the n-point DFT matrix: W = C - iS with W[k, m] = exp(-2pi i km/n)."""
    if n < 1:
        raise ValueError(f"dft_matrices: size must be >= 1, got {n}")
    k = np.arange(n, dtype=np.int64)
    angle = 2.0 * math.pi * ((k[:, None] * k[None, :]) % n) / n  # mod n keeps the angle exact
    return torch.from_numpy(np.cos(angle)).float(), torch.from_numpy(np.sin(angle)).float()


class PhaseOnlyReconstruction(nn.Module):
    """SPSL's phase channel: gray = mean over RGB, then real(ifft2(exp(i*angle(fft2(gray))))).

    Output [N, 1, H, W]. The 2-D DFT of a real image is C g C - S g S - i(S g C + C g S);
    the unit phasor is X / |X|; the inverse keeps only the real part. The matrices are
    non-persistent buffers: DeepfakeBench's SPSL checkpoint has no such entries.
    Where |X| underflows (an exactly empty frequency) the phasor is 0 rather than torch's 1;
    real frames never hit this."""

    def __init__(self, height: int, width: int | None = None, eps: float = 1e-20):
        super().__init__()
        width = height if width is None else width
        ch, sh = dft_matrices(height)
        cw, sw = dft_matrices(width)
        self.register_buffer("cos_h", ch, persistent=False)
        self.register_buffer("sin_h", sh, persistent=False)
        self.register_buffer("cos_w", cw, persistent=False)
        self.register_buffer("sin_w", sw, persistent=False)
        # the inverse transform's 1/(H*W) folded into the last matrices
        self.register_buffer("cos_w_inv", cw / float(height * width), persistent=False)
        self.register_buffer("sin_w_inv", sw / float(height * width), persistent=False)
        self.eps = float(eps)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        gray = torch.mean(img, dim=1, keepdim=True)
        g_c = torch.matmul(gray, self.cos_w)
        g_s = torch.matmul(gray, self.sin_w)
        re = torch.matmul(self.cos_h, g_c) - torch.matmul(self.sin_h, g_s)
        im = -(torch.matmul(self.sin_h, g_c) + torch.matmul(self.cos_h, g_s))
        inv_mag = torch.rsqrt(re * re + im * im + self.eps)
        u_re = re * inv_mag
        u_im = im * inv_mag
        # (C + iS) U (C + iS), real part: P C - Q S with P = C Ur - S Ui, Q = S Ur + C Ui
        p = torch.matmul(self.cos_h, u_re) - torch.matmul(self.sin_h, u_im)
        q = torch.matmul(self.sin_h, u_re) + torch.matmul(self.cos_h, u_im)
        return torch.matmul(p, self.cos_w_inv) - torch.matmul(q, self.sin_w_inv)


def srm_kernels() -> torch.Tensor:
    """The three 5x5 SRM residual filters used by SRM-based detectors, [3, 5, 5]:
    the 3x3 'KV'-like second-order filter /4, the 5x5 KV filter /12, the horizontal
    second-order filter /2."""
    f1 = np.array([[0, 0, 0, 0, 0],
                   [0, -1, 2, -1, 0],
                   [0, 2, -4, 2, 0],
                   [0, -1, 2, -1, 0],
                   [0, 0, 0, 0, 0]], dtype=np.float64) / 4.0
    f2 = np.array([[-1, 2, -2, 2, -1],
                   [2, -6, 8, -6, 2],
                   [-2, 8, -12, 8, -2],
                   [2, -6, 8, -6, 2],
                   [-1, 2, -2, 2, -1]], dtype=np.float64) / 12.0
    f3 = np.array([[0, 0, 0, 0, 0],
                   [0, 0, 0, 0, 0],
                   [0, 1, -2, 1, 0],
                   [0, 0, 0, 0, 0],
                   [0, 0, 0, 0, 0]], dtype=np.float64) / 2.0
    return torch.from_numpy(np.stack([f1, f2, f3])).float()


def srm_weight(in_channels: int, separate: bool) -> torch.Tensor:
    """Conv weight of the SRM filter bank.

    separate=False: [3, in, 5, 5], filter k summed over all input channels (3 outputs).
    separate=True: [3*in, 1, 5, 5] for a depthwise conv with groups=in, filter order
    (f1 x in, f2 x in, f3 x in) -- DeepfakeBench's `SRMConv2d_Separate` layout."""
    k = srm_kernels()
    if separate:
        return k.repeat_interleave(in_channels, dim=0).unsqueeze(1).contiguous()
    return k.unsqueeze(1).repeat(1, in_channels, 1, 1).contiguous()


class SRMFilter(nn.Module):
    """Fixed SRM residual filters as a frozen `nn.Conv2d` (padding 2), then Hardtanh(-3, 3).

    Kept as a conv module (not a functional call) so that quantizers see it as a compute
    layer and runtimes fuse the truncation into it."""

    def __init__(self, in_channels: int = 3, separate: bool = False, truncate: bool = True):
        super().__init__()
        w = srm_weight(in_channels, separate)
        self.conv = nn.Conv2d(in_channels, w.shape[0], 5, 1, 2, groups=in_channels if separate else 1, bias=False)
        self.conv.weight = nn.Parameter(w, requires_grad=False)
        self.truc = nn.Hardtanh(-3.0, 3.0) if truncate else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.truc(self.conv(x))
