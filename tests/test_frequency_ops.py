"""The export-friendly frequency ops against torch.fft-based references (max abs <= 1e-4)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import fx

from harness.detectors.frequency import (
    FADHead,
    PhaseOnlyReconstruction,
    SRMFilter,
    band_mask,
    dct_matrix,
    srm_kernels,
    srm_weight,
)

TOL = 1e-4


# ---- torch.fft references -------------------------------------------------------------------

def dct_ref(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Orthonormal DCT-II along `dim` via one FFT (Makhoul's reordering), float64."""
    x = x.double().movedim(dim, -1)
    n = x.shape[-1]
    v = torch.cat([x[..., ::2], x[..., 1::2].flip(-1)], dim=-1)
    k = torch.arange(n, dtype=torch.float64)
    y = (torch.fft.fft(v) * torch.exp(-1j * math.pi * k / (2 * n))).real
    y = y * torch.where(k == 0, math.sqrt(1.0 / n), math.sqrt(2.0 / n))
    return y.movedim(-1, dim)


def idct_ref(y: torch.Tensor, dim: int) -> torch.Tensor:
    """Inverse of `dct_ref` (orthonormal DCT-III) via one inverse FFT, float64."""
    y = y.double().movedim(dim, -1)
    n = y.shape[-1]
    k = torch.arange(n, dtype=torch.float64)
    c = y / torch.where(k == 0, math.sqrt(1.0 / n), math.sqrt(2.0 / n))
    # V_k = exp(i pi k / 2N) (c_k - i c_{N-k}), c_N = 0; then v = ifft(V), x = unshuffle(v)
    c_rev = torch.cat([torch.zeros_like(c[..., :1]), c[..., 1:].flip(-1)], dim=-1)
    v = torch.fft.ifft(torch.exp(1j * math.pi * k / (2 * n)) * (c - 1j * c_rev)).real
    x = torch.empty_like(v)
    half = (n + 1) // 2
    x[..., ::2] = v[..., :half]
    x[..., 1::2] = v[..., half:].flip(-1)
    return x.movedim(-1, dim)


def dct2_ref(x: torch.Tensor) -> torch.Tensor:
    return dct_ref(dct_ref(x, -1), -2)


def idct2_ref(x: torch.Tensor) -> torch.Tensor:
    return idct_ref(idct_ref(x, -1), -2)


def phase_ref(img: torch.Tensor) -> torch.Tensor:
    """SPSL's phase-only reconstruction, per image (DeepfakeBench's current code)."""
    gray = img.double().mean(dim=1, keepdim=True)
    spec = torch.fft.fft2(gray)
    return torch.fft.ifft2(torch.exp(1j * torch.angle(spec))).real


def conv_same_ref(x: torch.Tensor, w: torch.Tensor, groups: int) -> torch.Tensor:
    """Zero-padded 'same' cross-correlation of [B, C, H, W] with [O, C/g, k, k] via FFTs."""
    b, c, h, wd = x.shape
    o, cg, k, _ = w.shape
    p = k // 2
    size = (h + k - 1, wd + k - 1)
    xf = torch.fft.rfft2(x.double(), s=size)
    wf = torch.fft.rfft2(w.double().flip(-1, -2), s=size)  # correlation = convolution with the flip
    out_per_group = o // groups
    outs = []
    for oc in range(o):
        g = oc // out_per_group
        acc = (xf[:, g * cg:(g + 1) * cg] * wf[oc][None]).sum(dim=1)
        outs.append(torch.fft.irfft2(acc, s=size)[:, p:p + h, p:p + wd])
    return torch.stack(outs, dim=1)


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


# ---- DCT / F3Net ---------------------------------------------------------------------------

@pytest.mark.parametrize("n", [8, 17, 64, 256])
def test_dct_matrix_matches_fft_dct(n):
    x = torch.rand(2, 3, n, n, generator=torch.Generator().manual_seed(n)) * 2 - 1
    d = dct_matrix(n)
    ours = d @ x @ d.t()
    assert _max_abs(ours, dct2_ref(x)) <= TOL
    assert _max_abs(d.t() @ ours @ d, x) <= TOL  # the inverse used by FAD
    assert _max_abs(d @ d.t(), torch.eye(n)) <= 1e-5  # orthonormal


def test_idct_reference_inverts_dct_reference():
    x = torch.rand(2, 1, 32, 32, dtype=torch.float64)
    assert _max_abs(idct2_ref(dct2_ref(x)), x) <= 1e-10


def test_band_mask_uses_f3net_thresholds():
    m = band_mask(0, 256 // 2.82, 256)  # low band: i + j <= 90
    assert m[0, 0] == 1 and m[45, 45] == 1 and m[45, 46] == 0
    mid = band_mask(256 // 2.82, 256 // 2, 256)
    assert mid[0, 89] == 0 and mid[0, 90] == 1 and mid[64, 64] == 1 and mid[64, 65] == 0
    assert band_mask(0, 512, 256).sum() == 256 * 256
    assert m.dtype == torch.float32


@pytest.mark.parametrize("size", [64, 256])
def test_fad_head_matches_fft_reference(size):
    torch.manual_seed(size)
    head = FADHead(size).eval()
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        ours = head(x)
        freq = dct2_ref(x)
        ref = torch.cat([idct2_ref(freq * f.mask().double()) for f in head.filters], dim=1)
    assert ours.shape == (2, 12, size, size)
    assert _max_abs(ours, ref) <= TOL


def test_fad_all_band_without_offset_is_identity():
    head = FADHead(32)
    with torch.no_grad():
        head.filters[3].learnable.zero_()  # 2*sigmoid(0) - 1 = 0: the all-pass band
        x = torch.randn(1, 3, 32, 32)
        out = head(x)
    assert _max_abs(out[:, 9:12], x) <= 1e-5


# ---- DFT phase / SPSL ----------------------------------------------------------------------

@pytest.mark.parametrize("size", [64, 256])
def test_phase_only_reconstruction_matches_fft(size):
    img = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size)) * 2 - 1
    with torch.no_grad():
        ours = PhaseOnlyReconstruction(size)(img)
    ref = phase_ref(img)
    assert ours.shape == (2, 1, size, size)
    assert _max_abs(ours, ref) <= TOL


def test_phase_only_output_has_unit_spectrum():
    img = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = PhaseOnlyReconstruction(64)(img)
    mag = torch.fft.fft2(out.double()).abs()
    assert float((mag - 1).abs().max()) <= 1e-3


def test_phase_batch_of_one_equals_deepfakebench_v101_fftn():
    """v1.0.1 called fftn/ifftn over all dims of [B, 1, H, W]: per-image only when B == 1."""
    img = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4)) * 2 - 1
    gray = img.double().mean(dim=1, keepdim=True)
    v101 = torch.fft.ifftn(torch.exp(1j * torch.angle(torch.fft.fftn(gray)))).real
    with torch.no_grad():
        assert _max_abs(PhaseOnlyReconstruction(64)(img), v101) <= TOL


def test_phase_rectangular_input():
    img = torch.rand(1, 3, 48, 80, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert _max_abs(PhaseOnlyReconstruction(48, 80)(img), phase_ref(img)) <= TOL


# ---- SRM fixed filters ---------------------------------------------------------------------

def test_srm_kernels_are_high_pass():
    k = srm_kernels()
    assert k.shape == (3, 5, 5)
    assert torch.allclose(k.sum(dim=(1, 2)), torch.zeros(3), atol=1e-6)  # zero DC response
    assert float(k[1, 2, 2]) == pytest.approx(-1.0) and float(k[0, 2, 2]) == pytest.approx(-1.0)


@pytest.mark.parametrize("separate,cin", [(False, 3), (True, 3), (True, 8)])
def test_srm_filter_matches_fft_convolution(separate, cin):
    f = SRMFilter(cin, separate=separate, truncate=False).eval()
    x = torch.rand(2, cin, 40, 40, generator=torch.Generator().manual_seed(cin)) * 2 - 1
    with torch.no_grad():
        ours = f(x)
    ref = conv_same_ref(x, srm_weight(cin, separate), groups=cin if separate else 1)
    assert ours.shape == ref.shape == (2, 3 * cin if separate else 3, 40, 40)
    assert _max_abs(ours, ref) <= TOL
    assert not f.conv.weight.requires_grad


def test_srm_filter_truncates_to_pm3():
    f = SRMFilter(3).eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 20
    with torch.no_grad():
        out = f(x)
        raw = F.conv2d(x, srm_weight(3, False), padding=2)
    assert float(out.abs().max()) == pytest.approx(3.0)
    assert float(raw.abs().max()) > 3.0


def test_separate_layout_is_filter_major():
    w = srm_weight(4, separate=True)
    k = srm_kernels()
    assert w.shape == (12, 1, 5, 5)
    for i in range(12):
        assert torch.equal(w[i, 0], k[i // 4])


# ---- export friendliness -------------------------------------------------------------------

@pytest.mark.parametrize("module,shape", [
    (FADHead(32), (1, 3, 32, 32)),
    (PhaseOnlyReconstruction(32), (1, 3, 32, 32)),
    (SRMFilter(3), (1, 3, 32, 32)),
])
def test_ops_trace_without_fft(module, shape):
    gm = fx.symbolic_trace(module.eval())
    targets = [str(n.target) for n in gm.graph.nodes]
    assert not any("fft" in t for t in targets), targets
    x = torch.randn(*shape)
    with torch.no_grad():
        assert torch.equal(gm(x), module(x))


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="size"):
        dct_matrix(0)
    with pytest.raises(ValueError, match="size"):
        PhaseOnlyReconstruction(0)
