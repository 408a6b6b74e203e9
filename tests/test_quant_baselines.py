"""The quantization baselines (percentile, mse, nagel, gptq, pruning) on hand-computed cases, and
every method end to end on the two small detectors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import randomize_bn

from harness.detectors import DETECTORS
from quant import fold_bn, quantize
from quant.calibrate import bits_tensor
from quant.clipping import (
    act_grid_error,
    act_ranges,
    mse_act_range,
    mse_weight_scale,
    percentile_weight_scale,
    quantile,
)
from quant.graph import Placement, compute_modules
from quant.methods.nagel import (
    cross_layer_equalize,
    equalize_pair,
    find_cle_pairs,
    input_channel_view,
    output_means,
)
from quant.methods.prune import pack_sparse, unpack_sparse
from quant.quantizer import (
    act_qparams,
    fake_quant_act,
    minmax_weight_scale,
    quantize_weight,
    weight_error_per_channel,
    weight_qmax,
)
from quant.registry import MethodContext
from quant.sim import ActivationStats
from quant.size import packed_layer_bytes

BASELINES = ["percentile", "mse", "nagel", "gptq", "prune-magnitude+int8", "prune-l2+int8"]


def _ctx(points: list[str], bits: int = 8, **options) -> MethodContext:
    placement = Placement(points=points, grid_of={p: p for p in points}, reround=[], weights=[])
    return MethodContext(
        None, placement, torch.zeros(1), torch.zeros(1), {}, {p: bits for p in points}, options
    )


# --- clipping searches ------------------------------------------------------------------


def test_percentile_clip_of_a_known_vector():
    v = torch.arange(0, 1001, dtype=torch.float32) - 100.0  # -100 .. 900
    assert float(quantile(v, 0.99, dim=0)) == pytest.approx(890.0)  # 0.99 * 1000 - 100
    assert float(quantile(v, 0.01, dim=0)) == pytest.approx(-90.0)
    stats = ActivationStats()
    stats.update("p", v[torch.randperm(1001, generator=torch.Generator().manual_seed(0))])
    ((lo, hi),) = act_ranges(_ctx(["p"]), stats, "percentile", 99.0).values()
    assert (lo, hi) == pytest.approx((-90.0, 890.0))
    assert act_ranges(_ctx(["p"]), stats, "minmax")["p"] == (-100.0, 900.0)
    # interpolation as numpy's default percentile
    r = torch.randn(3, 777, generator=torch.Generator().manual_seed(1))
    assert np.allclose(
        quantile(r, 0.9731, dim=1).numpy(), np.percentile(r.numpy(), 97.31, axis=1), atol=1e-6
    )
    # weights: the 99th percentile of |w| per channel lands on the top code
    w = torch.stack(
        [torch.arange(0, 101, dtype=torch.float32), -2 * torch.arange(0, 101, dtype=torch.float32)]
    )
    s = percentile_weight_scale(w, bits_tensor(2, 8), 99.0)
    assert torch.allclose(s, torch.tensor([99.0, 198.0]) / 127)
    s_t = percentile_weight_scale(w, bits_tensor(2, 8), 99.0, per_channel=False)
    assert torch.allclose(s_t, torch.full((2,), float(np.percentile(w.abs().numpy(), 99)) / 127))


def test_mse_weight_clip_beats_minmax_on_heavy_tails_and_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 1024, generator=g) * torch.rand(4, 1024, generator=g).pow(
        -0.5
    )  # heavy tails
    bits = bits_tensor(4, 3)
    s_mse, s_mm = mse_weight_scale(w, bits), minmax_weight_scale(w, bits)
    e_mse, e_mm = weight_error_per_channel(w, s_mse, bits), weight_error_per_channel(w, s_mm, bits)
    assert (e_mse < 0.9 * e_mm).all() and (s_mse < s_mm).all()
    # brute force over the same 12-point grid, per channel and per tensor
    alphas = torch.linspace(1.0, 0.05, 12)
    small = torch.randn(3, 20, generator=g) ** 3
    b3 = bits_tensor(3, 3)
    base = minmax_weight_scale(small, b3)
    errs = torch.stack([weight_error_per_channel(small, base * a, b3) for a in alphas])
    assert torch.equal(mse_weight_scale(small, b3, grid=12), base * alphas[errs.argmin(0)])
    base_t = torch.full_like(base, float(base.max()))
    tot = torch.stack([weight_error_per_channel(small, base_t * a, b3).sum() for a in alphas])
    assert torch.equal(
        mse_weight_scale(small, b3, per_channel=False, grid=12), base_t * alphas[int(tot.argmin())]
    )


def test_mse_activation_range_equals_brute_force_and_beats_minmax():
    g = torch.Generator().manual_seed(0)
    x = torch.distributions.Exponential(1.0).sample((4000,))  # ReLU-like, heavy right tail
    x[0] = 40.0

    def err(lo, hi, bits=4):
        s, zp = act_qparams(lo, hi, bits)
        return float((fake_quant_act(x, s, zp, bits) - x).pow(2).sum())

    lo, hi = mse_act_range(x, 4, grid=25)
    brute = min(
        ((0.0, 40.0 * float(a)) for a in torch.linspace(1.0, 0.05, 25, dtype=torch.float64)),
        key=lambda r: err(*r),
    )
    assert (lo, hi) == pytest.approx(brute)
    assert err(lo, hi) < 0.5 * err(0.0, 40.0)
    # vectorised grid error = the quantizer's own fake-quant error
    e = act_grid_error(x, torch.tensor([0.0, 0.0]), torch.tensor([40.0, 7.0]), 4, False)
    assert e.tolist() == pytest.approx([err(0.0, 40.0), err(0.0, 7.0)], rel=1e-4)
    # signed tensors: the one-at-a-time refinement never loses to the joint shrink
    y = torch.randn(3000, generator=g) ** 3
    lo_s, hi_s = mse_act_range(y, 4, grid=25)
    joint = act_grid_error(
        y,
        float(y.min()) * torch.linspace(1.0, 0.05, 25, dtype=torch.float64),
        float(y.max()) * torch.linspace(1.0, 0.05, 25, dtype=torch.float64),
        4,
        False,
    )
    assert (
        float(act_grid_error(y, torch.tensor([lo_s]), torch.tensor([hi_s]), 4, False))
        <= float(joint.min()) + 1e-9
    )


# --- cross-layer equalisation and bias correction ----------------------------------------


class _Chain(nn.Module):
    """conv -> relu -> depthwise -> relu -> pointwise -> relu -> pool -> linear."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.r1 = nn.ReLU()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.r2 = nn.ReLU()
        self.pw = nn.Conv2d(8, 6, 1)
        self.r3 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        return self.fc(
            self.flat(self.pool(self.r3(self.pw(self.r2(self.dw(self.r1(self.c1(x))))))))
        )


def _chain() -> nn.Module:
    torch.manual_seed(0)
    m = _Chain().eval()
    with torch.no_grad():  # badly balanced channels: what CLE exists for
        m.c1.weight.mul_(torch.logspace(-1.5, 1.5, 8).reshape(8, 1, 1, 1))
        m.dw.weight.mul_(torch.logspace(1, -1, 8).reshape(8, 1, 1, 1))
    return m


def test_cle_equalises_each_pair_and_keeps_the_function():
    gm = fold_bn(_chain())
    x = torch.randn(8, 3, 12, 12)
    ref = gm(x)
    pairs = find_cle_pairs(gm)
    assert [(p.first, p.second) for p in pairs] == [("c1", "dw"), ("dw", "pw"), ("pw", "fc")]
    # one pair: a single step equalises exactly
    two = copy.deepcopy(gm)
    equalize_pair(two.c1, two.dw)
    r1 = two.c1.weight.abs().reshape(8, -1).amax(1)
    r2 = input_channel_view(two.dw.weight, 8).abs().amax(1)
    assert torch.allclose(r1, r2, rtol=1e-6)
    assert torch.allclose(two(x), ref, atol=1e-5)
    # the whole chain (layers shared by two pairs): sweeps converge to equal ranges everywhere
    cross_layer_equalize(gm, iters=200, tol=1e-7)
    mods = dict(gm.named_modules())
    for p in pairs:
        a, b = mods[p.first], mods[p.second]
        ra = a.weight.abs().reshape(a.weight.shape[0], -1).amax(1)
        rb = input_channel_view(b.weight, getattr(b, "groups", 1)).abs().amax(1)
        assert torch.allclose(ra, rb, rtol=1e-4), p
    assert torch.allclose(gm(x), ref, atol=1e-5)
    spread = _chain().c1.weight.abs().reshape(8, -1).amax(1)
    assert float(spread.max() / spread.min()) > 100  # it really was unbalanced


def test_cle_pairs_skip_branches_and_residuals():
    torch.manual_seed(0)
    gm = fold_bn(randomize_bn(DETECTORS["tiny-resnet"].build()))
    pairs = {(p.first, p.second) for p in find_cle_pairs(gm)}
    assert pairs == {("stem.0", "stem2.0")} | {
        (f"blocks.{i}.conv1", f"blocks.{i}.conv2") for i in range(3)
    }


def test_bias_correction_removes_the_mean_output_error():
    torch.manual_seed(0)
    model = _chain()
    x = torch.randn(32, 3, 12, 12)
    res = quantize(
        model, "nagel", "W3A8", x, torch.zeros(32), options={"cle": False}, first_last_bits=None
    )
    folded = res.folded
    names = list(compute_modules(folded))
    target = output_means(folded, names, [x])

    def quantized(with_biases: bool) -> nn.Module:
        q = copy.deepcopy(folded)
        for name, mod in compute_modules(q).items():
            mod.weight.data = torch.from_numpy(res.params.weights[name].dequantize())
            if with_biases:
                mod.bias.data = torch.from_numpy(res.params.biases[name])
        return q

    after = output_means(quantized(True), names, [x])
    before = output_means(quantized(False), names, [x])
    for n in names:
        scale = float(target[n].abs().max()) + 1e-6
        assert float((after[n] - target[n]).abs().max()) < 1e-4 * scale, n
    worst_before = max(float((before[n] - target[n]).abs().max()) for n in names)
    assert worst_before > 100 * max(float((after[n] - target[n]).abs().max()) for n in names)


def test_nagel_cle_changes_weights_not_the_float_function(calib_batch):
    x, y = calib_batch[0][:16, :, :32, :32], calib_batch[1][:16]
    model = _chain()
    res = quantize(model, "nagel", "W8A8", x, y, options={"bias_correction": False})
    assert res.params.info["cle_pairs"] == [["c1", "dw"], ["dw", "pw"], ["pw", "fc"]]
    # the equalised float model = the codes' float weights + the stored biases: same function
    # (up to 8-bit weight rounding), and its c1 ranges are no longer 1000x apart
    w = res.params.weights["c1"].dequantize()
    r = np.abs(w.reshape(8, -1)).max(1)
    assert r.max() / r.min() < 30
    assert (res.sim(x) - model(x)).abs().max() < 0.05 * model(x).abs().max()


# --- pruning at equal size -------------------------------------------------------------------


def _detector(name: str) -> nn.Module:
    torch.manual_seed(1)
    return randomize_bn(DETECTORS[name].build(), seed=1)


@pytest.fixture(scope="module")
def small_calib():
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 2, (16,), generator=g)


def test_l2_pruning_hits_the_budget_and_keeps_the_largest_channels(small_calib):
    x, y = small_calib
    model = _detector("tiny-resnet")
    ref = quantize(model, "minmax", "W4A8", x, y)
    res = quantize(model, "prune-l2+int8", "W4A8", x, y)
    assert (
        res.stats["packed_weight_bits"]
        == res.stats["budget_bits"]
        == ref.stats["packed_weight_bits"]
    )
    assert res.stats["packed_bytes"] == ref.stats["packed_bytes"]  # counted by quant.size
    folded = compute_modules(res.folded)
    first, last = res.placement.first_layer, res.placement.last_layer
    for name, wq in res.params.weights.items():
        w = folded[name].weight.detach()
        norms = w.reshape(w.shape[0], -1).norm(dim=1).numpy()
        kept = wq.bits == 8
        if name in (first, last):
            assert kept.all()
            continue
        assert set(np.unique(wq.bits)) == {0, 8} and kept.sum() == w.shape[0] // 2, name
        assert norms[kept].min() >= norms[~kept].max(), name
        assert not wq.codes[~kept].any()
        assert np.array_equal(
            wq.codes[kept],
            quantize_weight(
                w, torch.from_numpy(wq.scale), torch.from_numpy(wq.bits.astype(np.int64))
            ).numpy()[kept],
        )


def test_magnitude_pruning_hits_the_budget_and_keeps_the_largest_weights(small_calib):
    x, y = small_calib
    model = _detector("tiny-dsnet")
    ref = quantize(model, "minmax", "W4A8", x, y)
    res = quantize(model, "prune-magnitude+int8", "W4A8", x, y)
    info = res.params.info
    assert info["payload_bits"] == res.stats["budget_bits"] == ref.stats["packed_weight_bits"]
    folded = compute_modules(res.folded)
    for name, wq in res.params.weights.items():
        w = folded[name].weight.detach()
        n = w.numel()
        assert (wq.bits == 8).all()
        if name in (res.placement.first_layer, res.placement.last_layer):
            assert info["sparsity"][name] == 0.0
            continue
        keep = (n * 3) // 8  # W4 budget: n mask bits + 8 bits per kept weight = 4n
        assert info["sparsity"][name] == pytest.approx(1 - keep / n)
        top = torch.zeros(n, dtype=torch.bool)
        top[torch.argsort(-w.abs().reshape(-1), stable=True)[:keep]] = True
        expect = quantize_weight(
            w * top.reshape(w.shape), torch.from_numpy(wq.scale), bits_tensor(w.shape[0], 8)
        )
        assert np.array_equal(wq.codes, expect.numpy().astype(np.int8)), name
        assert w.abs().reshape(-1)[top].min() >= w.abs().reshape(-1)[~top].max()
        # the bitmap-sparse packing is real: it unpacks to the codes, and is the W4 layer's size
        blob = pack_sparse(wq)
        back = unpack_sparse(blob, wq.codes.shape)
        assert np.array_equal(back.codes, wq.codes) and np.array_equal(back.scale, wq.scale)
        if n % 8 == 0:
            assert len(blob) == packed_layer_bytes(ref.params.weights[name]), name


# --- every method on the two small detectors -----------------------------------------------


@pytest.fixture(scope="module")
def runs(small_calib):
    x, y = small_calib
    out = {}
    for det in ("tiny-resnet", "tiny-dsnet"):
        model = _detector(det)
        for method in BASELINES:
            for bits in ("W8A8", "W4A4"):
                out[(det, method, bits)] = (model, quantize(model, method, bits, x, y, seed=0))
    return out


@pytest.mark.parametrize("det", ["tiny-resnet", "tiny-dsnet"])
@pytest.mark.parametrize("method", BASELINES)
def test_method_gives_complete_valid_params(runs, small_calib, det, method):
    x, _ = small_calib
    for bits, wbits in (("W8A8", 8), ("W4A4", 4)):
        model, res = runs[(det, method, bits)]
        p = res.params
        mods = compute_modules(res.folded)
        assert set(p.weights) == set(mods) and set(p.acts) == set(res.placement.points)
        edges = {res.placement.first_layer, res.placement.last_layer}
        for name, wq in p.weights.items():
            plan = 8 if name in edges else wbits
            if method.startswith(
                "prune"
            ):  # int8 codes; channels (l2) or weights (magnitude) removed
                assert set(np.unique(wq.bits)) <= {0, 8}
            else:
                assert (wq.bits == plan).all(), (name, wq.bits)
            limit = np.array([weight_qmax(int(b)) for b in wq.bits])
            assert (np.abs(wq.codes.reshape(len(wq.bits), -1)) <= limit[:, None]).all()
            assert (wq.scale > 0).all() and np.isfinite(wq.scale).all()
        io = set(res.placement.inputs) | {res.placement.output_point}
        for point, a in p.acts.items():
            assert (
                a.bits == (8 if point in io else int(bits[-1]))
                and a.scale > 0
                and 0 <= a.zero_point <= a.qmax
            )
        out = res.sim(x)
        assert torch.isfinite(out).all()
        if bits == "W8A8":  # 8-bit simulation stays close to float (logits are ~0.1-0.3 here)
            assert float((out - model(x)).abs().max()) < 0.01, (det, method)


@pytest.mark.parametrize("method", BASELINES)
def test_method_is_deterministic_for_a_seed(runs, small_calib, method):
    x, y = small_calib
    model, first = runs[("tiny-dsnet", method, "W4A4")]
    again = quantize(model, method, "W4A4", x, y, seed=0)
    assert again.params.code_hash() == first.params.code_hash()


def test_unknown_option_values_are_rejected(small_calib):
    x, y = small_calib
    model = _detector("tiny-dsnet")
    with pytest.raises(ValueError, match="granularity"):
        quantize(model, "mse", "W8A8", x, y, options={"granularity": "per-row"})
    with pytest.raises(ValueError, match="weight_clip"):
        quantize(model, "percentile", "W8A8", x, y, options={"weight_clip": "kl"})
    with pytest.raises(ValueError, match="percentile"):
        quantize(model, "percentile", "W8A8", x, y, options={"percentile": 30})


def test_per_tensor_granularity_shares_one_scale(small_calib):
    x, y = small_calib
    model = _detector("tiny-dsnet")
    for method in ("percentile", "mse", "nagel", "gptq"):
        res = quantize(model, method, "W8A8", x, y, options={"granularity": "per-tensor"})
        for wq in res.params.weights.values():
            assert np.unique(wq.scale).size == 1, method


def test_percentile_clips_an_outlier_that_minmax_keeps(small_calib):
    x, y = small_calib
    x = x.clone()
    x[0, 0, 0, 0] = 100.0
    model = _detector("tiny-dsnet")
    mm = quantize(model, "minmax", "W8A8", x, y).params.acts["x"].range
    pc = quantize(model, "percentile", "W8A8", x, y).params.acts["x"].range
    assert mm[1] > 99.0 and pc[1] < 10.0
