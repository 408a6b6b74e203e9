"""Finding, for each tensor a runtime's quantizer wants to quantize, the simulation's grid.

Runtimes choose where to put quantize/dequantize pairs themselves (which is what keeps their
fused int8 kernels); we hand them OUR scales for those tensors. Tensors are matched by value:
the float graph the runtime sees and the simulation with float activations compute the same
numbers on the same probe batch, so equal values identify the same tensor whatever its name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import fx

from quant import QuantParams


@dataclass
class ValueIndex:
    """Probe values of every simulation node that lies on a quantization grid."""

    values: dict[str, np.ndarray]
    fingerprints: dict[tuple[int, float], list[str]]

    @classmethod
    def build(cls, gm: fx.GraphModule, params: QuantParams, probe: torch.Tensor) -> ValueIndex:
        values: dict[str, np.ndarray] = {}

        class Capture(fx.Interpreter):
            def run_node(self, n):
                out = super().run_node(n)
                if n.name in params.grid_of and isinstance(out, torch.Tensor):
                    values[n.name] = out.detach().float().numpy().reshape(-1)
                return out

        with torch.no_grad():
            Capture(gm).run(probe)
        fps: dict[tuple[int, float], list[str]] = {}
        for name, v in values.items():
            fps.setdefault(_fingerprint(v), []).append(name)
        return cls(values, fps)

    def match(self, value: np.ndarray, rtol: float = 1e-3) -> str | None:
        """The simulation node whose probe output equals `value` (any shape), or None."""
        v = np.asarray(value, dtype=np.float32).reshape(-1)
        best = self._best(v, self.fingerprints.get(_fingerprint(v), []), rtol)
        if best is None:
            # Fingerprints are rounded: float noise (another thread count, another process) can
            # put the right node in a neighbouring bucket. A miss must not depend on that.
            best = self._best(v, [n for n, x in self.values.items() if x.size == v.size], rtol)
        return best

    def _best(self, v: np.ndarray, candidates: list[str], rtol: float) -> str | None:
        scale = float(np.abs(v).max()) + 1e-6
        best, best_err = None, np.inf
        for name in candidates:
            x = self.values[name]
            if x.size != v.size:
                continue
            err = float(np.abs(x - v).max()) / scale
            if err < best_err:
                best, best_err = name, err
        return best if best_err <= rtol else None


def _fingerprint(v: np.ndarray) -> tuple[int, float]:
    return (int(v.size), round(float(np.abs(v).sum()) / max(v.size, 1), 3))


def weight_owner(params: QuantParams, value: np.ndarray) -> str | None:
    """The module whose dequantized codes equal `value` exactly (weights are matched exactly)."""
    for name, wq in params.weights.items():
        if wq.codes.shape == tuple(value.shape) and np.array_equal(wq.dequantize(), value.astype(np.float32)):
            return name
    return None
