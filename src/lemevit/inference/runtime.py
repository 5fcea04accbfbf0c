"""The runtimes ``eval`` and ``predict`` run a network on: PyTorch, or onnxruntime on the network's ONNX export
(the model file's ``model.onnx``, or one exported from the checkpoint on first use and kept beside it)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lemevit.export.onnx import (
    INT8_ONNX_FILE,
    ONNX_FILE,
    OnnxGraph,
    check_onnx,
    export_onnx,
    onnx_session,
    quantize_onnx,
)
from lemevit.io.model_file import model_file_folder

__all__ = ["RUNTIMES", "OnnxNetwork", "cached_onnx_path"]

RUNTIMES = ("torch", "onnxruntime", "onnxruntime-int8")


def cached_onnx_path(checkpoint: str | Path, int8: bool = False) -> Path:
    """Where the ONNX export of ``checkpoint`` is: ``model.onnx`` (``model.int8.onnx``) of a model file, else
    ``RUN/best.onnx`` (``RUN/best.int8.onnx``) beside ``RUN/best.ckpt``."""
    folder = model_file_folder(checkpoint)
    if folder is not None:
        return folder / (INT8_ONNX_FILE if int8 else ONNX_FILE)
    return Path(checkpoint).with_suffix(".int8.onnx" if int8 else ".onnx")


def _stale(path: Path, source: Path) -> bool:
    return not path.is_file() or path.stat().st_mtime < source.stat().st_mtime


class OnnxNetwork(nn.Module):
    """An ONNX graph run by onnxruntime's CPU provider, called like the network it was exported from: tensors in,
    the graph's first output out (as a tensor on the CPU). With several graph inputs, the channels of one input
    tensor are split among them in order (the stacked dates of a change pair)."""

    def __init__(self, path: str | Path, graph: OnnxGraph, threads: int | None = None):
        super().__init__()
        self.session = onnx_session(path, threads or len(os.sched_getaffinity(0)))
        self.inputs = graph.inputs

    def forward(self, *images: torch.Tensor) -> torch.Tensor:
        if len(images) == 1 and len(self.inputs) > 1:
            images = images[0].chunk(len(self.inputs), dim=1)
        feed = {name: np.ascontiguousarray(x.detach().float().cpu().numpy()) for name, x in
                zip(self.inputs, images, strict=True)}
        return torch.from_numpy(self.session.run(None, feed)[0])

    @classmethod
    def for_checkpoint(cls, checkpoint: str | Path, graph: OnnxGraph, int8: bool = False) -> OnnxNetwork:
        """The onnxruntime network of ``checkpoint``: its cached export (or its int8 quantization), made first (and
        the export checked) when it is missing or older than the checkpoint."""
        path = cached_onnx_path(checkpoint)
        source = Path(checkpoint)
        if model_file_folder(checkpoint) is not None:
            source = path.parent / "model.safetensors"
        if _stale(path, source):
            export_onnx(graph, path)
            check_onnx(graph, path)
        if int8:
            quantized = cached_onnx_path(checkpoint, int8=True)
            if _stale(quantized, path):
                quantize_onnx(path, quantized)
            path = quantized
        return cls(path, graph)
