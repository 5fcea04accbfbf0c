"""The runtimes ``eval`` and ``predict`` run a network on: PyTorch, or onnxruntime on the network's ONNX export
(the model file's ``model.onnx``, or one exported from the checkpoint on first use and kept beside it)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lemevit.export.onnx import ONNX_FILE, OnnxGraph, check_onnx, export_onnx, require_onnxruntime
from lemevit.io.model_file import model_file_folder

__all__ = ["RUNTIMES", "OnnxNetwork", "cached_onnx_path"]

RUNTIMES = ("torch", "onnxruntime")


def cached_onnx_path(checkpoint: str | Path) -> Path:
    """Where the ONNX export of ``checkpoint`` is: ``model.onnx`` of a model file, else ``RUN/best.onnx`` beside
    ``RUN/best.ckpt``."""
    folder = model_file_folder(checkpoint)
    return folder / ONNX_FILE if folder is not None else Path(checkpoint).with_suffix(".onnx")


class OnnxNetwork(nn.Module):
    """An ONNX graph run by onnxruntime's CPU provider, called like the network it was exported from: tensors in,
    the graph's first output out (as a tensor on the CPU). With several graph inputs, the channels of one input
    tensor are split among them in order (the stacked dates of a change pair)."""

    def __init__(self, path: str | Path, graph: OnnxGraph, threads: int | None = None):
        super().__init__()
        onnxruntime = require_onnxruntime()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = graph.inputs

    def forward(self, *images: torch.Tensor) -> torch.Tensor:
        if len(images) == 1 and len(self.inputs) > 1:
            images = images[0].chunk(len(self.inputs), dim=1)
        feed = {name: np.ascontiguousarray(x.detach().float().cpu().numpy()) for name, x in
                zip(self.inputs, images, strict=True)}
        return torch.from_numpy(self.session.run(None, feed)[0])

    @classmethod
    def for_checkpoint(cls, checkpoint: str | Path, graph: OnnxGraph) -> OnnxNetwork:
        """The onnxruntime network of ``checkpoint``: its cached export, exported (and checked) first when it is
        missing or older than the checkpoint."""
        path = cached_onnx_path(checkpoint)
        source = Path(checkpoint)
        if not path.is_file() or (model_file_folder(checkpoint) is None
                                  and path.stat().st_mtime < source.stat().st_mtime):
            export_onnx(graph, path)
            check_onnx(graph, path)
        return cls(path, graph)
