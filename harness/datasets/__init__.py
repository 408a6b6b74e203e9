"""Datasets by name. Importing this package registers every dataset."""

from . import synthetic  # noqa: F401
from .base import DATASETS, DatasetInfo, FrameSet, normalise, register_dataset

try:  # DeepfakeBench-layout loaders for the real datasets
    from . import deepfakebench  # noqa: F401
except ImportError as exc:  # pragma: no cover - only while the loaders are being written
    if "deepfakebench" not in str(exc):
        raise

__all__ = ["DATASETS", "DatasetInfo", "FrameSet", "normalise", "register_dataset"]
