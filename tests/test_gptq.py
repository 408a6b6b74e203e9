"""GPTQ: convolutions as matrices, the column sweep against brute force and round-to-nearest."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from quant import quantize
from quant.methods.gptq import gptq_quantize, layer_columns, layer_hessian
from quant.quantizer import minmax_weight_scale


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(6, 4, 3, stride=2, padding=1),
        nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=6),  # depthwise
        nn.Conv2d(6, 4, (3, 1), padding="same", groups=2),
        nn.Conv2d(6, 4, 3, padding=1, padding_mode="reflect"),
        nn.Conv1d(6, 4, 5, stride=2, padding=2, groups=2),
        nn.Linear(6, 3),
    ],
    ids=["conv", "depthwise", "grouped-same", "reflect", "conv1d", "linear"],
)
def test_layers_as_matrices(conv):
    torch.manual_seed(0)
    x = (
        torch.randn(3, 6, 9, 9)
        if isinstance(conv, nn.Conv2d)
        else torch.randn(3, 6, 11)
        if isinstance(conv, nn.Conv1d)
        else torch.randn(3, 5, 6)
    )
    cols, groups = layer_columns(conv, x)
    w = conv.weight.detach().reshape(groups, conv.weight.shape[0] // groups, -1)
    out = torch.bmm(w, cols)  # [G, R, n]
    ref = conv(x).detach() - (
        conv.bias.detach().reshape(-1, *([1] * (x.ndim - 2)))
        if not isinstance(conv, nn.Linear)
        else conv.bias.detach()
    )
    if isinstance(conv, nn.Linear):
        assert torch.allclose(out[0].t(), ref.reshape(-1, ref.shape[-1]), atol=1e-5)
    else:
        c = ref.shape[1]
        assert torch.allclose(out.reshape(c, -1), ref.transpose(0, 1).reshape(c, -1), atol=1e-5)


def _problem():
    """2 channels x 3 weights at 2 bits (codes -1, 0, 1), inputs 1 and 2 nearly collinear."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 200, generator=g)
    x = torch.stack([z[0], z[0] + 0.1 * z[1], z[2]])  # [3 inputs, n]
    w = torch.tensor([[0.4, 0.4, 1.0], [-0.7, 0.2, 0.9]])
    scale = minmax_weight_scale(w, torch.tensor([2, 2]))
    return w, x, scale


def _err(w, codes, scale, x):
    return ((w - codes * scale[:, None]) @ x).pow(2).sum(1)


def test_gptq_is_close_to_brute_force_and_beats_round_to_nearest():
    w, x, scale = _problem()
    h = 2 * x @ x.t() / x.shape[1]
    codes = gptq_quantize(w[None], h[None], scale[None], torch.ones(1, 2), damp=0.01)[0]
    rtn = torch.clamp(torch.round(w / scale[:, None]), -1, 1)
    # brute force: all 27 code vectors per channel
    cand = torch.tensor(list(itertools.product([-1.0, 0.0, 1.0], repeat=3)))
    opt = torch.stack(
        [_err(w[r].expand(27, 3), cand, scale[r].expand(27), x).min() for r in range(2)]
    )
    e_gptq, e_rtn = _err(w, codes, scale, x), _err(w, rtn, scale, x)
    # channel 0: rounding 0.4, 0.4 down loses 0.8 * x1; GPTQ carries the first error into the
    # collinear second weight and lands within a few percent of the optimum
    assert e_gptq[0] <= 1.1 * opt[0] and e_rtn[0] > 10 * opt[0]
    # channel 1: round-to-nearest is already optimal and GPTQ finds the same codes
    assert torch.equal(codes[1], rtn[1]) and e_gptq[1] == pytest.approx(float(opt[1]))
    assert e_gptq.sum() < 0.3 * e_rtn.sum()


def test_gptq_random_problems_beat_round_to_nearest_on_average():
    g = torch.Generator().manual_seed(0)
    n_prob, d = 64, 12
    a = torch.randn(n_prob, d, d, generator=g)
    x = a @ torch.randn(n_prob, d, 256, generator=g)  # correlated inputs
    w = torch.randn(n_prob, 4, d, generator=g)
    h = 2 * x @ x.transpose(1, 2) / 256
    scale = torch.stack([minmax_weight_scale(w[i], torch.full((4,), 3)) for i in range(n_prob)])
    qmax = torch.full((n_prob, 4), 3.0)

    def err(codes):
        return ((w - codes * scale[:, :, None]) @ x).pow(2).sum()

    rtn = torch.clamp(torch.round(w / scale[:, :, None]), -3, 3)
    plain = gptq_quantize(w, h, scale, qmax, block_size=5)
    ordered = gptq_quantize(w, h, scale, qmax, block_size=5, act_order=True)
    assert err(plain) < 0.7 * err(rtn) and err(ordered) < 0.7 * err(rtn)
    # lazy blocks change only the order of the updates, not the result
    assert torch.allclose(plain, gptq_quantize(w, h, scale, qmax, block_size=128))


class _Lin(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 8)

    def forward(self, x):
        return self.fc(x)


def test_gptq_method_on_a_linear_layer_has_lower_output_error_than_rtn():
    torch.manual_seed(0)
    model = _Lin().eval()
    z = torch.randn(256, 4)
    x = z @ torch.randn(4, 16) + 0.05 * torch.randn(256, 16)  # low-rank inputs: GPTQ's best case
    out = {}
    for method in ("minmax", "gptq"):
        res = quantize(model, method, "W3A8", x, torch.zeros(256), first_last_bits=None)
        q = torch.from_numpy(res.params.weights["fc"].dequantize())
        out[method] = float((x @ (q - model.fc.weight.detach()).t()).pow(2).mean())
        assert int(res.params.weights["fc"].bits.max()) == 3
    assert out["gptq"] < 0.5 * out["minmax"]


def test_depthwise_groups_are_independent_problems():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=4)
    model = nn.Sequential(conv).eval()
    x = torch.randn(16, 4, 8, 8)
    h = layer_hessian(model, "0", [x[:8], x[8:]])
    assert h.shape == (4, 9, 9)
    for c in range(4):  # channel c's Hessian is built from its own input channel only
        cols = F.unfold(x[:, c : c + 1], 3, padding=1).transpose(0, 1).reshape(9, -1)
        assert torch.allclose(h[c], 2 * cols @ cols.t() / cols.shape[1], rtol=1e-4, atol=1e-5)
    w = conv.weight.detach().reshape(4, 1, 9)
    scale = minmax_weight_scale(conv.weight.detach(), torch.full((4,), 3)).reshape(4, 1)
    both = gptq_quantize(w, h, scale, torch.full((4, 1), 3.0))
    for c in range(4):
        alone = gptq_quantize(w[c : c + 1], h[c : c + 1], scale[c : c + 1], torch.full((1, 1), 3.0))
        assert torch.equal(both[c], alone[0])


def test_dead_inputs_get_zero_codes_and_no_nan():
    w = torch.tensor([[[0.5, -0.3, 0.9]]])
    x = torch.tensor([[1.0, 2.0, -1.0], [0.0, 0.0, 0.0], [0.5, -1.0, 2.0]])  # input 1 always zero
    h = (2 * x @ x.t() / 3)[None]
    codes = gptq_quantize(w, h, torch.tensor([[0.9 / 7]]), torch.tensor([[7.0]]))
    assert torch.isfinite(codes).all() and codes[0, 0, 1] == 0
    assert np.abs(codes.numpy()).max() <= 7
