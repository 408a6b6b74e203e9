"""Exporters by name (onnx-fp32, onnx-qdq, tflite-fp32, tflite-int8, ...)."""

from . import onnx_export, tflite_export  # noqa: F401  (registration)
from .base import EXPORTERS, Artifact, CannotRepresent, ExportRequest, formats_for

__all__ = ["EXPORTERS", "Artifact", "CannotRepresent", "ExportRequest", "formats_for"]
