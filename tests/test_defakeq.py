"""DeFakeQ end to end on the small detectors (random init + randomised BN, few iterations):
complete QuantParams within the budgets, determinism, elimination, VEFT, the contrastive loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import randomize_bn

from harness.detectors import DETECTORS
from quant import METHODS, quantize
from quant.defakeq import DefakeqConfig
from quant.defakeq.veft import ProgressiveContrast, info_nce, sup_con

FAST = {"iters": 6, "batch": 8, "stats_frames": 32, "act_sens_frames": 16}
DEFAKEQ_METHODS = ["defakeq", "defakeq-nohaq", "defakeq-noveft", "defakeq-nocontrast", "defakeq-noelim", "defakeq-layer"]


def _calib(n: int = 32, size: int = 32):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 2, (n,), generator=g)


@pytest.fixture(scope="module", params=["tiny-resnet", "tiny-dsnet"])
def model(request):
    torch.manual_seed(0)
    return request.param, randomize_bn(DETECTORS[request.param].build(), seed=1)


def test_info_nce_hand_case():
    z = torch.eye(2)
    tau = 0.5
    # each row: positive logit 1/tau, one negative logit 0
    assert float(info_nce(z, z, tau)) == pytest.approx(math.log(1 + math.exp(-1 / tau)), rel=1e-6)
    swapped = z.flip(0)  # every quantized feature matches the other image's float feature
    assert float(info_nce(z, swapped, tau)) == pytest.approx(math.log(1 + math.exp(1 / tau)), rel=1e-6)


def test_sup_con_hand_case():
    s = math.sqrt(0.5)
    z_fp = torch.tensor([[1.0, 0.0], [s, s], [0.0, 1.0]])
    z_q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    tau = 1.0

    def lsm(i: int, j: int) -> float:  # log softmax over keys of anchor i at key j
        logits = [float(z_q[i] @ z_fp[k]) for k in range(3)]
        return logits[j] - math.log(sum(math.exp(v) for v in logits))

    want = -((lsm(0, 0) + lsm(0, 1)) / 2 + (lsm(1, 0) + lsm(1, 1)) / 2 + lsm(2, 2)) / 3
    assert float(sup_con(z_q, z_fp, y, tau)) == pytest.approx(want, rel=1e-6)
    # moving anchor 1 towards its class's float features lowers the loss
    z_q2 = torch.tensor([[1.0, 0.0], [s, s], [0.0, 1.0]])
    assert float(sup_con(z_q2, z_fp, y, tau)) < float(sup_con(z_q, z_fp, y, tau))
    # with one class per frame it is InfoNCE
    assert float(sup_con(z_q, z_fp, torch.tensor([0, 1, 2]), tau)) == pytest.approx(float(info_nce(z_q, z_fp, tau)), rel=1e-6)


def test_progressive_weight_grows_with_depth():
    pc = ProgressiveContrast(gamma=0.1, power=1.0)
    ws = [pc.weight(k, 4) for k in range(4)]
    assert ws == pytest.approx([0.025, 0.05, 0.075, 0.1])
    out = torch.randn(6, 8, 3, 3)
    assert float(pc(3, 4, out, out, torch.tensor([0, 1] * 3))) > 0
    assert pc(3, 4, torch.randn(6, 2), torch.randn(6, 2), torch.tensor([0, 1] * 3)) is None  # logits


def test_registered_with_families_and_switches():
    assert METHODS["defakeq"].family == "defakeq"
    for m in DEFAKEQ_METHODS[1:]:
        assert METHODS[m].family == "ablation"
    assert METHODS["defakeq-nohaq"].defaults["haq"] is False
    assert METHODS["defakeq-layer"].defaults["granularity"] == "layer"
    with pytest.raises(ValueError, match="allowed"):
        DefakeqConfig.from_options({"hqa": True})
    with pytest.raises(ValueError, match="granularity"):
        DefakeqConfig.from_options({"granularity": "tensor"})


@pytest.mark.parametrize("method", DEFAKEQ_METHODS)
def test_defakeq_methods_complete_within_budget(model, method):
    det, m = model
    x, y = _calib()
    r = quantize(m, method, "W3A4", x, y, options=FAST, seed=0, device="cpu")
    p = r.params
    assert p.method == method and set(p.acts) == set(r.placement.points)
    packed = sum(w.packed_bits for w in p.weights.values())
    assert packed <= r.stats["budget_bits"]
    plan = np.mean([4 if q not in (*r.placement.inputs, r.placement.output_point) else 8 for q in r.placement.points])
    assert np.mean([a.bits for a in p.acts.values()]) <= plan + 1e-9
    sw = p.info["switches"]
    assert sw["haq"] == (method != "defakeq-nohaq") and sw["veft"] == (method != "defakeq-noveft")
    for name, w in p.weights.items():
        qmax = np.array([0 if b == 0 else 2 ** (int(b) - 1) - 1 for b in w.bits]).reshape((-1,) + (1,) * (w.codes.ndim - 1))
        assert (np.abs(w.codes.astype(int)) <= qmax).all(), name
    if method == "defakeq-layer":
        assert all(len(np.unique(w.bits)) == 1 for w in p.weights.values())
    if sw["veft"]:
        assert len(p.info["history"]) == len(p.info["units"])
    with torch.no_grad():
        assert torch.isfinite(r.sim(x)).all()


def test_defakeq_is_deterministic():
    torch.manual_seed(0)
    m = randomize_bn(DETECTORS["tiny-dsnet"].build())
    x, y = _calib()
    h = [quantize(m, "defakeq", "W4A4", x, y, options=FAST, seed=3, device="cpu").params.code_hash() for _ in range(2)]
    assert h[0] == h[1]


def test_veft_lowers_block_reconstruction_error(model):
    det, m = model
    x, y = _calib(48)
    r = quantize(m, "defakeq", "W3A3", x, y, options={**FAST, "iters": 40, "batch": 16}, seed=0, device="cpu")
    hist = r.params.info["history"]
    before = sum(h["loss_before"] for h in hist)
    after = sum(h["loss_after"] for h in hist)
    assert after < before
    assert sum(h["loss_after"] < h["loss_before"] for h in hist) >= len(hist) // 2


def test_elimination_zeroes_channels_and_refits_the_consumer():
    torch.manual_seed(0)
    m = randomize_bn(DETECTORS["tiny-dsnet"].build())
    x, y = _calib()
    # every channel counts as redundant and unsalient: the solver may eliminate freely
    opts = {**FAST, "veft": False, "redundancy_threshold": 0.0, "salient_quantile": 1.0, "w_candidates": [0, 2, 8]}
    r = quantize(m, "defakeq", "W2A4", x, y, options=opts, seed=0, device="cpu")
    p = r.params
    elim = p.info["allocation"]["eliminated"]
    assert elim, "expected eliminated channels at 2 bits with every channel eligible"
    for producer, n in elim.items():
        w = p.weights[producer]
        gone = np.flatnonzero(w.bits == 0)
        assert len(gone) == n
        assert not w.codes[gone].any()
        assert np.all(p.biases[producer][gone] == 0)
    consumers = {f"features.{i}.dw.0": f"features.{i}.pw.0" for i in range(5)}
    assert any(consumers[prod] in p.biases for prod in elim)
    assert sum(w.packed_bits for w in p.weights.values()) <= r.stats["budget_bits"]
