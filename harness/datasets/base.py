"""The dataset registry and the FrameSet every loader returns.

A FrameSet is one split of one dataset: frame-level labels (0 real, 1 fake), a video id per
frame (dataset + method + video, so that fakes of different manipulation methods never merge),
and a way to read the frames as uint8 RGB `[N, H, W, 3]`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class FrameSet:
    dataset: str
    split: str  # train | val | test | calib
    labels: np.ndarray  # int64 [N]
    video_ids: list[str]
    paths: list[Path] | None = None  # frame files, when backed by files
    images: np.ndarray | None = None  # uint8 [N, H, W, 3], when held in memory
    manifest_sha256: str = ""  # hash of the file list + contents (or of the generator spec)
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(len(self.labels))

    def load(self, indices: np.ndarray | None = None, size: int | None = None) -> np.ndarray:
        """uint8 RGB frames, resized to `size` x `size` when given."""
        idx = np.arange(len(self)) if indices is None else np.asarray(indices)
        if self.images is not None:
            out = self.images[idx]
        else:
            from PIL import Image

            assert self.paths is not None
            out = np.stack([np.asarray(Image.open(self.paths[i]).convert("RGB")) for i in idx])
        if size is not None and out.shape[1] != size:
            out = resize_batch(out, size)
        return out

    def subset(self, indices: np.ndarray, split: str | None = None) -> FrameSet:
        idx = np.asarray(indices)
        return FrameSet(
            dataset=self.dataset,
            split=split or self.split,
            labels=self.labels[idx],
            video_ids=[self.video_ids[i] for i in idx],
            paths=[self.paths[i] for i in idx] if self.paths is not None else None,
            images=self.images[idx] if self.images is not None else None,
            manifest_sha256=self.manifest_sha256,
            meta=dict(self.meta),
        )


def resize_batch(images: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images])


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    # load(split, root, options) -> FrameSet; `root` is the data_root of the suite (None for synthetic)
    load: Callable[..., FrameSet]
    description: str = ""
    needs_root: bool = True
    config_key: str = "data_root"


DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    if info.name in DATASETS:
        raise ValueError(f"dataset {info.name!r} registered twice")
    DATASETS[info.name] = info
    return info


def normalise(images: np.ndarray, mean, std) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW, (x/255 - mean) / std."""
    x = images.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
