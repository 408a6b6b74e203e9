"""Artifacts and the exporter registry.

An exporter turns a QuantResult into a deployable file for one format, or says why the format
cannot represent it (e.g. 4-bit activations on an int8-only runtime): the trial is then
recorded `simulated-only` instead of silently rounding the model up to what the format holds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from quant import QuantResult


class CannotRepresent(Exception):
    """The format cannot hold this quantized model exactly; the message says why."""


@dataclass
class Artifact:
    path: Path
    format: str  # exporter name, e.g. onnx-qdq
    family: str  # onnx | tflite (which runtimes execute it)
    sha256: str
    size_bytes: int
    packed_bytes: int | None = None
    codes_exact: bool | None = None  # codes read back from the file equal the quantizer's
    op_counts: dict = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)  # runtime-quantized tensors without our grid
    info: dict = field(default_factory=dict)

    def record(self) -> dict:
        return {
            "path": str(self.path),
            "format": self.format,
            "family": self.family,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "packed_bytes": self.packed_bytes,
            "codes_exact": self.codes_exact,
            "op_counts": self.op_counts,
            "unmatched": self.unmatched,
            "info": self.info,
        }


@dataclass
class ExportRequest:
    result: QuantResult
    calib_x: np.ndarray  # calibration frames (normalised NCHW float32) for runtimes that want them
    probe: torch.Tensor  # a small batch used to match tensors by value
    input_size: int
    out_path: Path  # where to write (suffix chosen by the exporter)


@dataclass(frozen=True)
class ExporterInfo:
    name: str
    family: str
    suffix: str
    fn: Callable[[ExportRequest], Artifact]
    quantized: bool  # True: exports quantized models; False: exports fp32 models
    description: str = ""
    version: str = "1"  # bump when the same inputs would give a different file


EXPORTERS: dict[str, ExporterInfo] = {}


def register_exporter(name: str, family: str, suffix: str, quantized: bool, description: str = "", version: str = "1"):
    def deco(fn: Callable[[ExportRequest], Artifact]):
        EXPORTERS[name] = ExporterInfo(name, family, suffix, fn, quantized, description, version)
        return fn

    return deco


def exporter_identity(name: str) -> dict[str, str]:
    """What an artifact cache key must cover of the exporter itself (its name and version)."""
    info = EXPORTERS[name]
    return {"format": info.name, "exporter_version": info.version}


def formats_for(family_or_name: str, quantized: bool) -> list[str]:
    """Resolve a suite entry (`onnx`, `tflite`, or an exporter name) for a method."""
    if family_or_name in EXPORTERS:
        info = EXPORTERS[family_or_name]
        return [info.name] if info.quantized == quantized else []
    defaults = {
        ("onnx", False): ["onnx-fp32"],
        ("onnx", True): ["onnx-qdq"],
        ("tflite", False): ["tflite-fp32"],
        ("tflite", True): ["tflite-int8"],
    }
    if (family_or_name, quantized) not in defaults:
        raise KeyError(f"unknown format {family_or_name!r}; allowed: onnx, tflite, {sorted(EXPORTERS)}")
    return defaults[(family_or_name, quantized)]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
