"""The block-reconstruction engine: partition, soft rounding -> hard codes, Adam, baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import randomize_bn

from harness.detectors import DETECTORS
from quant import fold_bn, place, quantize
from quant.graph import compute_modules
from quant.recon import (
    Adam,
    ReconConfig,
    WeightQuantizer,
    build_qmodel,
    extract_unit,
    modes,
    mse_acts,
    mse_weight_scale,
    partition,
    reconstruct,
    to_params,
)
from quant.sim import collect_activation_stats


def _calib(n: int = 32, size: int = 32):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 2, (n,), generator=g)


def _working(det: str, bits: int = 4, act_bits: int = 4):
    torch.manual_seed(0)
    folded = fold_bn(randomize_bn(DETECTORS[det].build()))
    p = place(folded)
    init = {}
    for name, mod in compute_modules(folded).items():
        b = torch.full((mod.weight.shape[0],), bits, dtype=torch.int64)
        init[name] = (mse_weight_scale(mod.weight, b), b)
    stats = collect_activation_stats(folded, p, [_calib(16)[0]])
    acts = mse_acts(stats, p, {pt: act_bits for pt in p.points})
    return folded, p, build_qmodel(folded, p, init, acts)


def test_partition_blocks_and_chain():
    folded, p, gm = _working("tiny-resnet")
    units = partition(gm, "block")
    assert [u.layers for u in units] == [
        ["stem.0"], ["stem2.0"],
        ["blocks.0.conv1", "blocks.0.conv2", "blocks.0.shortcut.0"],
        ["blocks.1.conv1", "blocks.1.conv2", "blocks.1.shortcut.0"],
        ["blocks.2.conv1", "blocks.2.conv2", "blocks.2.shortcut.0"],
        ["fc"],
    ]
    for a, b in zip(units, units[1:]):
        assert b.input == a.output and a.output.startswith("actq_")  # blocks end on their grid
    x, _ = _calib(4)
    for wf, acts in ((True, False), (False, True)):
        with torch.no_grad(), modes(gm, weights_float=wf, acts=acts):
            h = x
            for u in units:
                h = extract_unit(gm, u)(h)
            assert torch.equal(h, gm(x))
    with torch.no_grad(), modes(gm, weights_float=True, acts=False):
        assert torch.allclose(gm(x), folded(x), atol=1e-6)
    # depthwise-separable blocks group dw + pw
    folded2, _, gm2 = _working("tiny-dsnet")
    layers = [u.layers for u in partition(gm2, "block")]
    assert layers[1] == ["features.0.dw.0", "features.0.pw.0"] and layers[-1] == ["fc"]
    assert [u.layers[0] for u in partition(gm2, "layer")] == list(compute_modules(folded2))


def test_soft_rounding_ends_in_hard_codes_within_bit_ranges():
    torch.manual_seed(0)
    w = torch.randn(6, 5, 3, 3)
    bits = torch.tensor([2, 3, 4, 6, 8, 0])
    q = WeightQuantizer(w, mse_weight_scale(w, bits), bits)
    ratio = w / q.s0.reshape(-1, 1, 1, 1)
    q.mode = "soft"
    assert torch.allclose(q(), torch.clamp(ratio, -q.qmax, q.qmax) * q.s0.reshape(-1, 1, 1, 1), atol=1e-5)
    q.alpha.requires_grad_(True)
    opt = Adam([{"params": [q.alpha], "lr": 0.05}], 200)
    target = torch.randn_like(w) * 0.1
    for t in range(200):
        loss = (q() - w - target).pow(2).sum() + 1.0 * q.round_reg(20 - 18 * t / 200)
        opt.zero_grad()
        loss.backward()
        opt.step()
    q.mode = "hard"
    codes = q.codes()
    qmax = torch.tensor([1, 3, 7, 31, 127, 0]).reshape(-1, 1, 1, 1)
    assert bool((codes.abs() <= qmax).all())
    assert torch.equal(codes, torch.round(codes))
    inside = ratio.abs() < qmax  # away from the clip, codes are floor or ceil of w / s0
    assert bool(((codes - ratio).abs() < 1 + 1e-6)[inside.expand_as(codes)].all())
    assert torch.equal(codes[5], torch.zeros_like(codes[5]))  # 0 bits: eliminated
    assert torch.allclose(q(), codes * q.s0.reshape(-1, 1, 1, 1))
    h = torch.sigmoid(q.alpha) * 1.2 - 0.1
    assert float(((h[:5] > 0.05) & (h[:5] < 0.95)).float().mean()) < 0.05  # the regulariser made it binary


def test_adam_matches_the_textbook_update():
    torch.manual_seed(0)
    a = torch.randn(5, requires_grad=True)
    b = a.detach().clone()
    m, v = torch.zeros(5), torch.zeros(5)
    mine = Adam([{"params": [a], "lr": 0.1}], 10)
    for t in range(1, 11):
        mine.zero_grad()
        (a - 3).pow(3).abs().sum().backward()
        mine.step()
        g = 3 * (b - 3).pow(2) * torch.sign(b - 3)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        b = b - 0.1 * (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
    assert torch.allclose(a.detach(), b, atol=1e-5)
    # cosine groups decay to zero learning rate at the end
    c = torch.zeros(1, requires_grad=True)
    opt = Adam([{"params": [c], "lr": 1.0, "cosine": True}], 2)
    for _ in range(2):
        opt.zero_grad()
        (c - 10).sum().backward()
        opt.step()
    assert float(c) == pytest.approx(-1.5, abs=1e-3)  # Adam steps of ~lr: 1, then 0.5 (cosine)


def test_reconstruction_lowers_block_error_and_exports_what_it_learned():
    folded, p, gm = _working("tiny-dsnet", bits=3)
    x, y = _calib(48)
    units = partition(gm, "block")
    cfg = ReconConfig(iters=40, batch=16, lr_round=1e-2, learn_act=True, lr_act=1e-3)
    hist = reconstruct(gm, units, cfg, x, y, torch.device("cpu"), seed=0)
    assert len(hist) == len(units)
    interior = hist[1:-1]  # interior 3-bit blocks
    # never worse than the start (a pass that ends worse keeps its start), better overall
    assert all(h["loss_after"] <= h["loss_before"] for h in hist)
    assert all(h["kept_start"] == (h["loss_after"] == h["loss_before"]) for h in interior)
    assert sum(h["loss_after"] for h in interior) < 0.95 * sum(h["loss_before"] for h in interior)
    assert sum(not h["kept_start"] for h in interior) >= 2
    params = to_params(gm, p, "test")
    from quant import build_sim

    sim = build_sim(folded, p, params)
    with torch.no_grad():
        assert torch.allclose(sim(x), gm(x), atol=1e-5)  # the QuantParams reproduce the model
        assert sim(x).std(dim=0).max() > 0  # and it is not a collapsed (constant) output


@pytest.mark.parametrize("method", ["adaround", "brecq", "qdrop"])
def test_baselines_complete_and_deterministic(method):
    torch.manual_seed(0)
    model = randomize_bn(DETECTORS["tiny-resnet"].build())
    x, y = _calib(32)
    runs = [quantize(model, method, "W3A4", x, y, options={"iters": 4}, seed=s, device="cpu") for s in (0, 0, 1)]
    a, b, c = runs
    assert a.params.code_hash() == b.params.code_hash()
    assert a.stats["packed_weight_bits"] == a.stats["budget_bits"]
    assert a.params.info["recon"] and a.params.info["units"]
    assert set(a.params.acts) == set(a.placement.points)
    assert c.params.method == method
    w = a.params.weights["blocks.1.conv2"]
    assert int(np.abs(w.codes).max()) <= 3 and set(np.unique(w.bits)) == {3}
    with torch.no_grad():
        assert torch.isfinite(a.sim(x)).all()
