"""The detector zoo, by name. Importing this package registers every detector."""

from . import tiny  # noqa: F401
from .base import (
    DETECTORS,
    DetectorInfo,
    fake_probability,
    load_deepfakebench_checkpoint,
    register_detector,
)

try:  # the DeepfakeBench zoo (large module tree) registers itself when present
    from . import zoo  # noqa: F401
except ImportError as exc:  # pragma: no cover - only while the zoo is being written
    if "zoo" not in str(exc):
        raise

__all__ = ["DETECTORS", "DetectorInfo", "fake_probability", "load_deepfakebench_checkpoint", "register_detector"]
