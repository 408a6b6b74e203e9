"""Quantization methods, looked up by name. Importing this package registers them all: every
module in this folder is imported once (one method family per module; drop a file in to add one)."""

import importlib
import pkgutil

from ..registry import METHODS, MethodContext, MethodInfo, register

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _mod.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod}")

__all__ = ["METHODS", "MethodContext", "MethodInfo", "register"]
