"""Training a small detector on the synthetic benchmark, cached by content hash."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .datasets.base import FrameSet, normalise
from .detectors import DETECTORS
from .progress import progress_bar

TRAIN_CODE_VERSION = 2  # bump when training semantics change: invalidates cached checkpoints


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1200
    batch: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 0  # 0 = torch default


def checkpoint_key(detector: str, options: dict, data: FrameSet, cfg: TrainConfig) -> str:
    blob = json.dumps(
        {"detector": detector, "options": options, "data": data.manifest_sha256, "cfg": asdict(cfg), "v": TRAIN_CODE_VERSION},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    x = x.clone()
    x[flip] = x[flip].flip(-1)
    return x


def train_detector(
    detector: str,
    train: FrameSet,
    cfg: TrainConfig,
    options: dict | None = None,
    log=print,
    show_progress: bool = True,
) -> nn.Module:
    info = DETECTORS[detector]
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model = info.build(variant="small", **(options or {}))
    x_all = torch.from_numpy(normalise(train.load(size=info.small_input_size), info.mean, info.std))
    y_all = torch.from_numpy(train.labels)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    t0 = time.perf_counter()
    perm = torch.randperm(len(x_all), generator=gen)
    pos = 0
    running = None
    with progress_bar(f"train {detector}", total=cfg.steps, enabled=show_progress) as advance:
        for _step in range(cfg.steps):
            if pos + cfg.batch > len(perm):
                perm, pos = torch.randperm(len(x_all), generator=gen), 0
            idx = perm[pos : pos + cfg.batch]
            pos += cfg.batch
            xb = _augment(x_all[idx], gen)
            loss = loss_fn(model(xb), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            value = loss.item()
            running = value if running is None else 0.98 * running + 0.02 * value
            advance(1, f"loss {running:.3f}")
    recalibrate_bn(model, x_all, gen)
    model.eval()
    log(f"trained {detector}: {cfg.steps} steps in {time.perf_counter() - t0:.0f} s, final loss {running:.3f}")
    return model


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: torch.Tensor, gen: torch.Generator, batches: int = 16, batch: int = 64) -> None:
    """Re-estimate BatchNorm running statistics as plain averages over training batches.

    Short trainings leave running statistics far from the final weights' (EfficientNet's BN
    momentum is 0.01), which makes the eval-mode network degenerate; a cumulative average over
    a few batches fixes that, and BN folding then sees the statistics the weights expect."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    for _ in range(batches):
        idx = torch.randint(0, len(x), (min(batch, len(x)),), generator=gen)
        model(x[idx])
    for m, mom in zip(bns, saved):
        m.momentum = mom


def load_or_train(
    detector: str,
    train: FrameSet,
    cfg: TrainConfig,
    cache_dir: str | Path,
    options: dict | None = None,
    log=print,
    show_progress: bool = True,
) -> tuple[nn.Module, str, bool]:
    """The trained model, its checkpoint key, and whether it came from the cache."""
    key = checkpoint_key(detector, options or {}, train, cfg)
    path = Path(cache_dir) / "detectors" / f"{detector}-{key}.pt"
    info = DETECTORS[detector]
    if path.is_file():
        model = info.build(variant="small", **(options or {}))
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval(), key, True
    model = train_detector(detector, train, cfg, options, log=log, show_progress=show_progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return model, key, False


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray, batch: int = 256) -> np.ndarray:
    model.eval()
    out = [model(torch.from_numpy(x[i : i + batch])).float().numpy() for i in range(0, len(x), batch)]
    return np.concatenate(out)
