"""Leaving PyTorch: portable model files (safetensors + config.json) and ONNX graphs checked against PyTorch."""
from lemevit.export.model import ExportResult, export_model
from lemevit.export.onnx import ONNX_FILE, OnnxGraph, check_onnx, export_onnx

__all__ = ["ONNX_FILE", "ExportResult", "OnnxGraph", "check_onnx", "export_model", "export_onnx"]
