"""``lemevit export``: portable model files (safetensors + config.json), ONNX graphs checked against PyTorch (made
by :mod:`lemevit.inference.onnx`), the Deepness model for QGIS and the STAC Item (MLM) describing them."""
from lemevit.export.model import ExportResult, export_model
from lemevit.inference.onnx import ONNX_FILE, OnnxGraph, check_onnx, export_onnx

__all__ = ["ONNX_FILE", "ExportResult", "OnnxGraph", "check_onnx", "export_model", "export_onnx"]
