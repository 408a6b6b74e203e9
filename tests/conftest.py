"""Shared fixtures: small models with non-trivial BatchNorm statistics, calibration batches."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads; see harness/cli.py

import pytest  # noqa: E402
import torch  # noqa: E402


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Untrained nets have identity BN; give them statistics so folding is exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
    return model.eval()


@pytest.fixture(scope="session")
def calib_batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, 3, 64, 64, generator=g), torch.randint(0, 2, (64,), generator=g)
