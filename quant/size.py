"""Packed-size accounting: sizes are counted by actually packing the codes, not estimated.

Layout of a packed layer: the codes of each output channel at that channel's bit-width
(offset binary, LSB first, one continuous bit stream), then per channel one float32 scale and
one uint8 bit-width. Eliminated channels (0 bits) cost only their header.
"""

from __future__ import annotations

import numpy as np

from .qparams import QuantParams, WeightQuant
from .quantizer import weight_qmax


def pack_codes(codes: np.ndarray, bits: np.ndarray) -> bytes:
    """Pack per-channel codes into a bit stream; inverse of `unpack_codes`."""
    codes = np.asarray(codes)
    flat = codes.reshape(codes.shape[0], -1).astype(np.int64)
    chunks: list[np.ndarray] = []
    for c in range(flat.shape[0]):
        b = int(bits[c])
        if b == 0:
            continue
        offset = weight_qmax(b)
        u = (flat[c] + offset).astype(np.uint64)
        if u.size and (u.max() >= (1 << b)):
            raise ValueError(f"channel {c}: codes do not fit in {b} bits")
        chunks.append(((u[:, None] >> np.arange(b, dtype=np.uint64)) & 1).astype(np.uint8).reshape(-1))
    stream = np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)
    return np.packbits(stream, bitorder="little").tobytes()


def unpack_codes(data: bytes, bits: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    per = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    stream = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
    out = np.zeros((shape[0], per), np.int8)
    pos = 0
    for c in range(shape[0]):
        b = int(bits[c])
        if b == 0:
            continue
        chunk = stream[pos : pos + per * b].reshape(per, b).astype(np.int64)
        pos += per * b
        out[c] = (chunk << np.arange(b)).sum(axis=1) - weight_qmax(b)
    return out.reshape(shape)


def packed_layer_bytes(w: WeightQuant) -> int:
    header = w.codes.shape[0] * (4 + 1)
    return len(pack_codes(w.codes, w.bits)) + header


def packed_model_bytes(params: QuantParams, float_param_count: int) -> int:
    """Packed weight bytes of all quantized layers + float32 bytes of every other parameter
    (biases, non-quantized layers), given the total parameter count of the folded model."""
    quantized = sum(w.n_weights for w in params.weights.values())
    return sum(packed_layer_bytes(w) for w in params.weights.values()) + 4 * (float_param_count - quantized)
