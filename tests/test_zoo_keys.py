"""Full-size zoo detectors against DeepfakeBench v1.0.1's state_dict fixtures.

Every full variant must list the fixture's entries (name, shape, dtype) in the same order,
have the same (trainable / frozen) parameter counts and non-BN buffers, load a checkpoint of
that layout strictly, and trace with torch.fx without any FFT. The two cheapest detectors also
run one forward pass at 256x256.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch import fx

from harness.detectors import DETECTORS, fake_probability, load_deepfakebench_checkpoint
from harness.detectors.zoo.efficientnet import b4_blocks

FIXTURES = Path(__file__).parent / "fixtures" / "deepfakebench_keys"
ZOO = ["xception", "meso4", "meso4inception", "cnnaug", "efficientnet-b4", "f3net", "spsl", "srm",
       "core", "recce", "ucf", "vit-b16"]
WITH_FIXTURE = [n for n in ZOO if n != "vit-b16"]


def full(name: str) -> nn.Module:
    """A fresh full-size model (not cached: the zoo together holds ~400M parameters)."""
    torch.manual_seed(0)
    return DETECTORS[name].build(variant="full").eval()


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / DETECTORS[name].keys_fixture).read_text())


def entries(model: nn.Module) -> list[list]:
    return [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]


def test_every_zoo_detector_is_registered():
    assert set(ZOO) <= set(DETECTORS)
    expected = {"cnnaug": "resnet34.json", "efficientnet-b4": "efficientnetb4.json",
                "meso4inception": "meso4Inception.json", "vit-b16": None}
    for name in ZOO:
        info = DETECTORS[name]
        assert info.keys_fixture == expected.get(name, f"{name}.json")
        assert info.small_input_size == 64


@pytest.mark.parametrize("name", WITH_FIXTURE)
def test_registry_metadata_matches_fixture(name):
    info, fx_ = DETECTORS[name], fixture(name)
    assert info.input_size == fx_["input_resolution"] == 256
    assert list(info.mean) == fx_["mean"] and list(info.std) == fx_["std"]


@pytest.mark.parametrize("name", WITH_FIXTURE)
def test_full_variant_matches_fixture(name):
    model, fx_ = full(name), fixture(name)
    ours = entries(model)
    assert len(ours) == fx_["num_state_dict_entries"] == len(fx_["keys"])
    for i, (a, b) in enumerate(zip(ours, fx_["keys"])):
        assert a == b, f"{name}: entry {i} differs: ours {a} vs DeepfakeBench {b}"
    assert sum(math.prod(s) for _, s, _ in ours) == fx_["num_state_dict_elements"]
    # parameters, frozen parameters (by checkpoint name), non-BN buffers, BN eps
    assert sum(p.numel() for p in model.parameters()) == fx_["num_params"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == fx_["num_trainable_params"]
    by_key = model.state_dict(keep_vars=True)  # values are the Parameter objects themselves
    frozen = [k for k, v in by_key.items() if isinstance(v, nn.Parameter) and not v.requires_grad]
    assert frozen == fx_["frozen_parameters"]
    bn_buffers = ("running_mean", "running_var", "num_batches_tracked")
    other = [k for k, v in by_key.items() if not isinstance(v, nn.Parameter) and not k.endswith(bn_buffers)]
    assert other == fx_["non_bn_buffers"]
    assert {m.eps for m in model.modules() if isinstance(m, nn.BatchNorm2d)} == {fx_["batchnorm_eps"]}
    assert_traces_without_fft(model)


def assert_traces_without_fft(model: nn.Module) -> None:
    gm = fx.symbolic_trace(model)
    targets = [str(n.target) for n in gm.graph.nodes if n.op in ("call_function", "call_method")]
    assert not [t for t in targets if "fft" in t]
    assert any(n.op == "call_module" and isinstance(gm.get_submodule(n.target), nn.Conv2d)
               for n in gm.graph.nodes)


@pytest.mark.parametrize("name", WITH_FIXTURE)
def test_checkpoint_of_fixture_layout_loads_strictly(name):
    """A checkpoint holding exactly the fixture's entries loads with strict=True and every
    value lands under its name (including the renamed SRM kernels)."""
    model, fx_ = full(name), fixture(name)
    g = torch.Generator().manual_seed(7)
    ckpt = {}
    for key, shape, dtype in fx_["keys"]:
        if dtype == "int64":
            ckpt[key] = torch.tensor(3, dtype=torch.int64)
        else:
            ckpt[key] = torch.rand(shape, generator=g) + 0.5  # positive: valid running_var too
    model.load_state_dict(ckpt, strict=True)
    back = model.state_dict()
    assert list(back) == list(ckpt)
    for key, value in ckpt.items():
        assert torch.equal(back[key], value), key


def test_load_deepfakebench_checkpoint_strips_module_prefix(tmp_path):
    model = DETECTORS["meso4"].build(variant="full")
    state = {f"module.{k}": torch.full_like(v, 0.25) if v.is_floating_point() else v
             for k, v in model.state_dict().items()}
    path = tmp_path / "meso4_best.pth"
    torch.save(state, path)
    fresh = DETECTORS["meso4"].build(variant="full")
    load_deepfakebench_checkpoint(fresh, path)
    assert torch.equal(fresh.backbone.fc1.weight, torch.full((16, 1024), 0.25))
    state.pop("module.backbone.fc2.bias")
    torch.save(state, path)
    with pytest.raises(RuntimeError, match="fc2.bias"):
        load_deepfakebench_checkpoint(DETECTORS["meso4"].build(variant="full"), path)


def test_efficientnet_static_padding_matches_fixture():
    """Depthwise pads computed for image_size 380 equal efficientnet_pytorch's non-zero pads."""
    fx_ = fixture("efficientnet-b4")
    ours = []
    for i, a in enumerate(b4_blocks()):
        before, after = a.pad
        if before or after:
            ours.append([f"backbone.efficientnet._blocks.{i}._depthwise_conv", [a.kernel] * 2,
                         [a.stride] * 2, [before, after, before, after]])
    assert ours == fx_["static_same_padding_nonzero"]
    net = DETECTORS["efficientnet-b4"].build(variant="full").backbone.efficientnet
    blk = net._blocks[22]
    assert isinstance(blk._depthwise_pad, nn.ZeroPad2d) and blk._depthwise_pad.padding == (1, 2, 1, 2)
    assert blk._depthwise_conv.padding == (0, 0)
    assert net._blocks[7]._depthwise_conv.padding == (2, 2)
    assert net._conv_stem.padding == (0, 0) and net._bn0.eps == 1e-3


def _clip_vision_layout(depth=12, dim=768, hidden=3072, tokens=197, patch=16) -> list[list]:
    """transformers' CLIPVisionTransformer entries (written from its module definitions)."""
    def lin(prefix, o, i):
        return [[f"{prefix}.weight", [o, i], "float32"], [f"{prefix}.bias", [o], "float32"]]

    def ln(prefix):
        return [[f"{prefix}.weight", [dim], "float32"], [f"{prefix}.bias", [dim], "float32"]]

    b = "backbone"
    out = [[f"{b}.embeddings.class_embedding", [dim], "float32"],
           [f"{b}.embeddings.patch_embedding.weight", [dim, 3, patch, patch], "float32"],
           [f"{b}.embeddings.position_embedding.weight", [tokens, dim], "float32"]]
    out += ln(f"{b}.pre_layrnorm")
    for i in range(depth):
        p = f"{b}.encoder.layers.{i}"
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            out += lin(f"{p}.self_attn.{proj}", dim, dim)
        out += ln(f"{p}.layer_norm1") + lin(f"{p}.mlp.fc1", hidden, dim) + lin(f"{p}.mlp.fc2", dim, hidden)
        out += ln(f"{p}.layer_norm2")
    return out + ln(f"{b}.post_layernorm") + lin("head", 2, dim)


def test_vit_b16_uses_the_documented_clip_layout():
    model = full("vit-b16")
    assert entries(model) == _clip_vision_layout()
    assert_traces_without_fft(model)
    # CLIP ViT-B/16 vision tower: 85,799,424 parameters, plus the 768 -> 2 head
    assert sum(p.numel() for p in model.parameters()) == 85_799_424 + 1538
    assert DETECTORS["vit-b16"].input_size == 224


@pytest.mark.parametrize("name", ["meso4", "cnnaug"])
def test_full_forward_at_256(name):
    x = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        logits = full(name)(x)
    assert logits.shape == (2, 2) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    p = fake_probability(logits)
    assert p.shape == (2,) and bool(((p >= 0) & (p <= 1)).all())


def test_meso4_rejects_a_size_its_classifier_cannot_take():
    from harness.detectors.zoo.meso import Meso4
    with pytest.raises(ValueError, match="multiple of 32"):
        Meso4(input_size=250)


@pytest.mark.parametrize("name", ["xception", "meso4", "vit-b16"])
def test_bad_variant_and_option_are_named(name):
    build = DETECTORS[name].build
    with pytest.raises(ValueError, match="allowed: full, small"):
        build(variant="tiny")
    with pytest.raises(TypeError, match="unknown build option"):
        build(variant="small", widthh=3)
