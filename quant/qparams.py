"""Quantization parameters as plain data: what every method produces and every exporter reads.

Conventions (shared with onnxruntime QDQ and LiteRT int8):
- weights: symmetric, per output channel (axis 0), restricted range [-(2^(b-1)-1), 2^(b-1)-1],
  zero point 0, codes stored in an int8 container whatever b is; b = 0 marks an eliminated
  channel (all codes 0).
- activations: asymmetric per tensor, unsigned representation q in [0, 2^b - 1] with an
  integer zero point; an int8 runtime uses zero_point - 128 on the same grid.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class BitSpec:
    """A bit budget: `W{w}A{a}`; `w` may be fractional for mixed precision (average bits)."""

    w: float
    a: int

    @classmethod
    def parse(cls, text: str) -> BitSpec:
        m = re.match(r"^W(\d+(?:\.\d+)?)A(\d+)$", text.strip())
        if not m:
            raise ValueError(f"bits {text!r}: expected W<weight bits>A<activation bits>, e.g. W8A8, W4A4, W3.5A8")
        w, a = float(m.group(1)), int(m.group(2))
        if not (1 <= w <= 8 and 2 <= a <= 8):
            raise ValueError(f"bits {text!r}: weight bits must lie in [1, 8] and activation bits in [2, 8]")
        return cls(w=w, a=a)

    @property
    def label(self) -> str:
        w = int(self.w) if float(self.w).is_integer() else self.w
        return f"W{w}A{self.a}"


@dataclass
class WeightQuant:
    """Per-channel symmetric weight quantization of one conv/linear module."""

    module: str
    codes: np.ndarray  # int8, same shape as the weight
    scale: np.ndarray  # float32, one per output channel
    bits: np.ndarray  # int8, one per output channel; 0 = channel eliminated

    def dequantize(self) -> np.ndarray:
        shape = (-1,) + (1,) * (self.codes.ndim - 1)
        return self.codes.astype(np.float32) * self.scale.reshape(shape)

    @property
    def n_weights(self) -> int:
        return int(self.codes.size)

    @property
    def packed_bits(self) -> int:
        per_channel = self.codes[0].size if self.codes.ndim > 1 else 1
        return int(self.bits.astype(np.int64).sum() * per_channel)


@dataclass
class ActQuant:
    """Per-tensor asymmetric activation quantization at one quant point (an FX node name)."""

    name: str
    scale: float
    zero_point: int
    bits: int

    @property
    def qmax(self) -> int:
        return (1 << self.bits) - 1

    @property
    def symmetric(self) -> bool:
        """Zero point in the middle of the grid: an int8 runtime sees zero point 0."""
        return self.zero_point == 1 << (self.bits - 1)

    @property
    def range(self) -> tuple[float, float]:
        return ((0 - self.zero_point) * self.scale, (self.qmax - self.zero_point) * self.scale)


@dataclass
class QuantParams:
    """Everything an exporter needs to reproduce a quantized model exactly.

    `grid_of` maps every FX node whose output lies on (or is re-rounded onto) a quantization
    grid to the quant point that owns that grid; exporters use it to hand the same scale to
    whichever tensor the runtime chooses to quantize.
    """

    method: str
    bits: str
    weights: dict[str, WeightQuant] = field(default_factory=dict)
    acts: dict[str, ActQuant] = field(default_factory=dict)
    grid_of: dict[str, str] = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    # Float biases that replace the folded model's (e.g. after bias correction or the
    # least-squares compensation of eliminated channels); module name -> float32 [out].
    biases: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def max_act_bits(self) -> int:
        return max((a.bits for a in self.acts.values()), default=32)

    @property
    def min_act_bits(self) -> int:
        return min((a.bits for a in self.acts.values()), default=32)

    def act_for_node(self, node: str) -> ActQuant | None:
        owner = self.grid_of.get(node)
        return self.acts.get(owner) if owner else None

    def avg_weight_bits(self) -> float:
        n = sum(w.n_weights for w in self.weights.values())
        return sum(w.packed_bits for w in self.weights.values()) / max(n, 1)

    # --- serialisation: one .npz, exact, hashable -------------------------------------
    def to_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {}
        for name, w in self.weights.items():
            arrays[f"w/{name}/codes"] = w.codes
            arrays[f"w/{name}/scale"] = w.scale
            arrays[f"w/{name}/bits"] = w.bits
        for name, b in self.biases.items():
            arrays[f"b/{name}"] = np.asarray(b, np.float32)
        meta = {
            "method": self.method,
            "bits": self.bits,
            "acts": {k: [a.scale, a.zero_point, a.bits] for k, a in self.acts.items()},
            "grid_of": self.grid_of,
            "info": self.info,
        }
        arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True, default=str).encode(), np.uint8)
        buf = io.BytesIO()
        np.savez(buf, **{k: arrays[k] for k in sorted(arrays)})
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> QuantParams:
        z = np.load(io.BytesIO(data))
        meta = json.loads(bytes(z["meta"]).decode())
        weights: dict[str, WeightQuant] = {}
        for key in z.files:
            if key.startswith("w/") and key.endswith("/codes"):
                name = key[2:-6]
                weights[name] = WeightQuant(
                    name, z[key], z[f"w/{name}/scale"], z[f"w/{name}/bits"]
                )
        acts = {k: ActQuant(k, float(s), int(zp), int(b)) for k, (s, zp, b) in meta["acts"].items()}
        biases = {key[2:]: z[key] for key in z.files if key.startswith("b/")}
        return cls(meta["method"], meta["bits"], weights, acts, meta["grid_of"], meta["info"], biases)

    def code_hash(self) -> str:
        """sha256 over the integer codes, scales and activation grids (not over `info`)."""
        h = hashlib.sha256()
        for name in sorted(self.weights):
            w = self.weights[name]
            h.update(name.encode())
            h.update(np.ascontiguousarray(w.codes).tobytes())
            h.update(np.ascontiguousarray(w.scale.astype(np.float32)).tobytes())
            h.update(np.ascontiguousarray(w.bits).tobytes())
        for name in sorted(self.acts):
            a = self.acts[name]
            h.update(f"{name}:{a.scale!r}:{a.zero_point}:{a.bits}".encode())
        for name in sorted(self.biases):
            h.update(name.encode())
            h.update(np.ascontiguousarray(self.biases[name], np.float32).tobytes())
        return h.hexdigest()
