"""Quantization methods, looked up by name. Importing this package registers them all."""

from ..registry import METHODS, MethodContext, MethodInfo, register
from . import fp32, minmax  # noqa: F401  (registration side effects)

__all__ = ["METHODS", "MethodContext", "MethodInfo", "register"]
