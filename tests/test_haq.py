"""HAQ on constructed cases: the bit-allocation solver against brute force, the channel
statistics, elimination + least-squares compensation, activation sensitivity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from quant import fold_bn, place
from quant.defakeq import haq


def _instance(rng: np.random.Generator, n: int, cands: list[int]):
    sizes = rng.choice([3, 5, 8, 9, 16], size=n)
    # errors fall with bits (as quantization errors do), scaled by a random saliency
    base = np.sort(rng.uniform(0.0, 1.0, size=(n, len(cands))), axis=1)[:, ::-1]
    cost = base * rng.uniform(0.1, 3.0, size=(n, 1))
    allowed = np.ones_like(cost, bool)
    if cands[0] == 0:
        allowed[:, 0] = rng.uniform(size=n) < 0.5  # 0 bits (elimination) only for some
    lo = int((sizes * np.array([min(c for c, a in zip(cands, row) if a) for row in allowed])).sum())
    hi = int(sizes.sum() * max(cands))
    budget = int(rng.integers(lo, hi + 1))
    return cost, sizes, allowed, budget


@pytest.mark.parametrize("seed", range(12))
def test_allocation_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    cands = [0, 2, 3, 4, 6, 8]
    cost, sizes, allowed, budget = _instance(rng, 5, cands)
    choice = haq.allocate(cost, sizes, cands, budget, allowed)
    best, _ = haq.brute_force(cost, sizes, cands, budget, allowed)
    got = float(cost[np.arange(5), choice].sum())
    assert int((sizes * np.array(cands)[choice]).sum()) <= budget
    assert all(allowed[i, j] for i, j in enumerate(choice))
    assert got == pytest.approx(best, rel=1e-12, abs=1e-12)


def test_allocation_coarse_mode_is_feasible_and_near_optimal():
    rng = np.random.default_rng(7)
    cands = [2, 3, 4, 6, 8]
    cost, sizes, allowed, budget = _instance(rng, 6, cands)
    exact = haq.allocate(cost, sizes, cands, budget, allowed)
    coarse = haq.allocate(cost, sizes, cands, budget, allowed, max_states=8)  # forces rounding up
    assert int((sizes * np.array(cands)[coarse]).sum()) <= budget
    c_exact = cost[np.arange(6), exact].sum()
    c_coarse = cost[np.arange(6), coarse].sum()
    assert c_exact <= c_coarse + 1e-12
    assert c_coarse <= 1.5 * c_exact + 1e-9


def test_allocation_rejects_impossible_budget():
    with pytest.raises(ValueError, match="budget"):
        haq.allocate(np.ones((2, 2)), np.array([4, 4]), [2, 4], 10)


class _Probe(nn.Module):
    """conv (4 channels, 1x1) -> ReLU -> GAP -> fc; channel 3 duplicates channel 0 and the
    head ignores channel 2."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.conv.weight[3] = self.conv.weight[0]
            self.conv.bias[3] = self.conv.bias[0]
            self.conv.bias += 1.0  # keep channels mostly active
            self.fc.weight[:, 2] = 0.0

    def forward(self, x):
        return self.fc(self.flat(self.pool(self.relu(self.conv(x)))))


def test_statistics_redundancy_and_saliency_on_constructed_case():
    gm = fold_bn(_Probe().eval())
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 3, 8, 8, generator=g), torch.randint(0, 2, (32,), generator=g)
    st = haq.channel_statistics(gm, ["conv", "fc"], x, y, torch.device("cpu"), batch=16)
    red, sal = st.redundancy["conv"], st.saliency["conv"]
    assert red[0] == pytest.approx(1.0, abs=1e-5) and red[3] == pytest.approx(1.0, abs=1e-5)
    assert float(red[1]) < 0.99 and float(red[2]) < 0.99
    assert float(sal[2]) == 0.0  # unused by the head
    assert float(sal[0]) > 0 and float(sal[1]) > 0
    # input energy of conv = E[x^2] of the three input channels
    assert torch.allclose(st.in_energy["conv"], x.pow(2).mean(dim=(0, 2, 3)), rtol=1e-4)
    # elimination candidates: the duplicate with lower saliency goes, never both
    cands = haq.elimination_candidates(sal, st.abs_corr["conv"], red, threshold=0.99, salient_quantile=1.0)
    assert len(set(cands) & {0, 3}) == 1 and 1 not in cands


class _Chain(nn.Module):
    """conv1 (1x1) -> conv2 (3x3, padding 1); conv1's channel 3 = 2 * ch0 - ch1 exactly."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 1)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        with torch.no_grad():
            self.conv1.weight[3] = 2 * self.conv1.weight[0] - self.conv1.weight[1]
            self.conv1.bias[3] = 2 * self.conv1.bias[0] - self.conv1.bias[1]

    def forward(self, x):
        return self.conv2(self.conv1(x))


def test_elimination_with_least_squares_reproduces_next_layer():
    gm = fold_bn(_Chain().eval())
    assert haq.consumers(gm, ["conv1", "conv2"]) == {"conv1": "conv2"}
    x = torch.randn(16, 3, 10, 10, generator=torch.Generator().manual_seed(2))
    ref = gm(x)
    import copy

    work = copy.deepcopy(gm)

    def eliminated():
        work.conv1.weight.data[3] = 0
        work.conv1.bias.data[3] = 0
        return work

    w, b = haq.compensate(gm, "conv2", x, torch.device("cpu"), eliminated, batch=8, ridge=1e-10)
    work.conv2.weight.data.copy_(w)
    work.conv2.bias.data.copy_(b)
    out = work(x)
    assert (out - ref).abs().max() < 1e-3 * ref.abs().max()
    # without compensation the output is clearly wrong
    plain = copy.deepcopy(gm)
    plain.conv1.weight.data[3] = 0
    plain.conv1.bias.data[3] = 0
    assert (plain(x) - ref).abs().max() > 0.05 * ref.abs().max()


def test_consumers_skip_depthwise_and_branching():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.b = nn.Conv2d(8, 8, 1)
            self.c = nn.Conv2d(8, 8, 1)

        def forward(self, x):
            y = torch.relu(self.dw(torch.relu(self.a(x))))  # a feeds a depthwise conv: no
            z = self.b(y)  # dw feeds b (dense): yes
            return self.c(z) + z  # b feeds c and the add: no

    gm = fold_bn(Net().eval())
    assert haq.consumers(gm, ["a", "dw", "b", "c"]) == {"dw": "b"}


def test_error_table_falls_with_bits_and_weights_by_importance():
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 3)
    imp = torch.ones_like(w)
    eps, scales = haq.error_table(w, imp, [2, 3, 4, 8])
    assert eps.shape == (6, 4) and scales.shape == (6, 4)
    assert bool((eps[:, :-1] > eps[:, 1:]).all())  # more bits, less error
    assert float(eps[:, -1].max()) < 1e-3


def test_act_sensitivity_grows_as_bits_fall():
    m = _Probe().eval()
    gm = fold_bn(m)
    p = place(gm)
    from quant.sim import collect_activation_stats

    x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    st = collect_activation_stats(gm, p, [x[:32], x[32:]])
    pts = [q for q in p.points if q not in p.inputs]
    sens = haq.act_sensitivity(gm, p, {q: st.values(q) for q in pts}, {q: (st.lo[q], st.hi[q]) for q in pts},
                               pts, [2, 4, 8], x, torch.device("cpu"))
    for q in pts:
        assert sens[q][2] > sens[q][4] > sens[q][8] >= 0.0
