"""quant/ core numerics on hand-computed cases: quantizers, placement, BN folding, packing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from quant import BitSpec, QuantParams, fold_bn, place, quantize
from quant.quantizer import (
    act_qparams,
    fake_quant_act,
    minmax_weight_scale,
    quantize_weight,
    weight_qmax,
)
from quant.size import pack_codes, packed_layer_bytes, unpack_codes


def test_bitspec_parse_and_errors():
    assert BitSpec.parse("W4A8") == BitSpec(4.0, 8)
    assert BitSpec.parse("W3.5A8").label == "W3.5A8"
    assert BitSpec.parse("W8A8").label == "W8A8"
    for bad in ("W4", "A8W4", "W9A8", "W4A1", "4/8"):
        with pytest.raises(ValueError, match="bits"):
            BitSpec.parse(bad)


def test_weight_qmax_restricted_range():
    assert [weight_qmax(b) for b in (0, 1, 2, 3, 4, 8)] == [0, 1, 1, 3, 7, 127]


def test_per_channel_weight_quantization_hand_case():
    w = torch.tensor([[0.7, -0.35, 0.1, 0.0], [2.0, -1.0, 0.5, 0.26]])
    bits = torch.tensor([4, 2])
    scale = minmax_weight_scale(w, bits)
    # channel 0: max 0.7 / 7 = 0.1; channel 1 (2 bits -> codes -1..1): 2.0 / 1
    assert torch.allclose(scale, torch.tensor([0.1, 2.0]))
    codes = quantize_weight(w, scale, bits)
    assert codes.tolist() == [[7, -4, 1, 0], [1, -0.0, 0, 0]]  # -0.35/0.1 = -3.5 -> -4 (half to even)


def test_activation_qparams_hand_case():
    scale, zp = act_qparams(-1.0, 3.0, 8)
    assert scale == pytest.approx(4.0 / 255, rel=1e-6)
    assert zp == 64  # round(1 / (4/255)) = round(63.75)
    # ranges that exclude zero are widened to hold it (padding and ReLU zeros stay exact)
    s2, z2 = act_qparams(0.5, 2.0, 4)
    assert z2 == 0 and s2 == pytest.approx(2.0 / 15, rel=1e-6)
    x = torch.tensor([-2.0, -1.0, 0.0, 0.013, 3.0, 9.0])
    y = fake_quant_act(x, scale, zp, 8)
    assert y[0].item() == pytest.approx(-1.0, abs=scale)  # clipped to the range
    assert y[2].item() == 0.0  # zero is exact
    assert y[-1].item() == pytest.approx((255 - 64) * scale)


def test_fake_quant_act_straight_through_gradient():
    x = torch.tensor([0.1, 0.5, 5.0], requires_grad=True)
    fake_quant_act(x, 0.1, 0, 4).sum().backward()  # range [0, 1.5]
    assert x.grad.tolist() == [1.0, 1.0, 0.0]  # clipped inputs get no gradient


@pytest.mark.parametrize("seed", [0, 1])
def test_pack_unpack_roundtrip_and_counted_size(seed):
    rng = np.random.default_rng(seed)
    bits = rng.choice([0, 2, 3, 4, 6, 8], size=16).astype(np.int8)
    codes = np.zeros((16, 8, 3, 3), np.int8)
    for c, b in enumerate(bits.astype(int)):
        if b:
            m = weight_qmax(b)
            codes[c] = rng.integers(-m, m + 1, size=(8, 3, 3))
    data = pack_codes(codes, bits)
    assert np.array_equal(unpack_codes(data, bits, codes.shape), codes)
    assert len(data) == (int(bits.astype(int).sum()) * 72 + 7) // 8
    with pytest.raises(ValueError, match="do not fit"):
        pack_codes(np.full((1, 4), 5, np.int8), np.array([3], np.int8))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.r1 = nn.ReLU()
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.r2 = nn.ReLU()
        self.mp = nn.MaxPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = self.r1(self.bn(self.c1(x)))
        y = self.c2(x)
        x = self.r2(x + y)
        return self.fc(self.gap(self.mp(x)).flatten(1))


def _net() -> _Net:
    torch.manual_seed(0)
    m = _Net().eval()
    m.bn.running_mean.uniform_(-1, 1)
    m.bn.running_var.uniform_(0.5, 2)
    m.bn.weight.data.uniform_(0.5, 1.5)
    return m


def test_bn_folding_is_exact():
    m = _net()
    folded = fold_bn(m)
    assert not any(isinstance(x, nn.BatchNorm2d) for x in folded.modules())
    x = torch.randn(4, 3, 16, 16)
    assert torch.allclose(folded(x), m(x), atol=1e-5)


def test_placement_follows_runtime_rules():
    p = place(fold_bn(_net()))
    # input; c1+relu fused -> r1; c2 output; add+relu fused -> r2; fc output
    assert p.points == ["x", "r1", "c2", "r2", "fc"]
    assert p.grid_of["mp"] == "r2" and p.grid_of["gap"] == "r2" and p.grid_of["flatten"] == "r2"
    assert p.reround == ["gap"]  # average pooling is re-rounded onto its input's grid
    assert p.weights == ["c1", "c2", "fc"] and p.output_point == "fc"


def test_minmax_is_deterministic_and_complete():
    m = _net()
    x, y = torch.randn(32, 3, 16, 16), torch.randint(0, 2, (32,))
    a = quantize(m, "minmax", "W4A8", x, y, seed=0)
    b = quantize(m, "minmax", "W4A8", x, y, seed=0)
    assert a.params.code_hash() == b.params.code_hash()
    # first/last layers keep 8 bits; the middle layer has 4-bit codes
    assert int(a.params.weights["c2"].bits.max()) == 4 and int(np.abs(a.params.weights["c2"].codes).max()) == 7
    assert int(a.params.weights["c1"].bits.max()) == 8 and int(np.abs(a.params.weights["c1"].codes).max()) == 127
    # the simulation is close to float at 8-bit activations and serialisation is exact
    assert (a.sim(x) - m(x)).abs().max() < 0.2
    again = QuantParams.from_bytes(a.params.to_bytes())
    assert again.code_hash() == a.params.code_hash()
    n = a.params.weights["c2"].codes.size
    # c1: 216 weights at 8 bits, c2: 576 at 4 bits, fc: 16 at 8 bits
    assert a.stats["packed_weight_bits"] == 8 * 216 + 4 * n + 8 * 16
    assert packed_layer_bytes(a.params.weights["c2"]) == (4 * n + 7) // 8 + 8 * 5


def test_lower_bits_hurt_more():
    m = _net()
    x, y = torch.randn(64, 3, 16, 16), torch.randint(0, 2, (64,))
    ref = m(x)
    errs = [(quantize(m, "minmax", b, x, y).sim(x) - ref).abs().mean().item() for b in ("W8A8", "W4A4", "W2A2")]
    assert errs[0] < errs[1] < errs[2]


def test_unknown_method_lists_registered():
    with pytest.raises(KeyError, match="registered"):
        quantize(_net(), "nope", "W8A8", torch.zeros(1, 3, 8, 8), torch.zeros(1))
