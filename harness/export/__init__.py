"""Exporters by name: onnx-fp32, onnx-qdq, onnx-qdq-trt, onnx-qdq-w4, tflite-fp32, tflite-fp16,
tflite-dynamic, tflite-int8 (docs/export.md says how each keeps our codes)."""

from . import onnx_export, tflite_export  # noqa: F401  (registration)
from .base import (
    EXPORTERS,
    Artifact,
    CannotRepresent,
    ExportRequest,
    exporter_identity,
    formats_for,
)

__all__ = ["EXPORTERS", "Artifact", "CannotRepresent", "ExportRequest", "exporter_identity", "formats_for"]
