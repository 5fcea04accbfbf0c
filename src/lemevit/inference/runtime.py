"""The runtimes ``eval`` and ``predict`` run a network on: PyTorch, or onnxruntime on the network's ONNX export
(the model file's ``model.onnx``, or one exported from the checkpoint on first use and kept beside it)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lemevit.inference.onnx import OnnxGraph, check_onnx, export_onnx, graph_file, onnx_session, quantize_onnx
from lemevit.io.model_file import model_file_folder

__all__ = ["RUNTIMES", "OnnxNetwork", "onnx_networks"]

RUNTIMES = ("torch", "onnxruntime", "onnxruntime-int8")


def _export_base(checkpoint: str | Path) -> tuple[Path, Path]:
    """Where the ONNX files of ``checkpoint`` are named from (``DIR/model`` of a model file, else ``RUN/best``
    beside ``RUN/best.ckpt``) and the file whose age says whether they are stale."""
    folder = model_file_folder(checkpoint)
    if folder is not None:
        return folder / "model", folder / "model.safetensors"
    return Path(checkpoint).with_suffix(""), Path(checkpoint)


def _stale(path: Path, source: Path) -> bool:
    return not path.is_file() or path.stat().st_mtime < source.stat().st_mtime


class OnnxNetwork(nn.Module):
    """An ONNX graph run by onnxruntime's CPU provider, called like the module it was exported from: tensors in,
    the graph's output out (a tuple of them for a graph of several outputs), on the CPU. With several graph inputs,
    the channels of one input tensor are split among them in order (the stacked dates of a change pair)."""

    def __init__(self, path: str | Path, graph: OnnxGraph, threads: int | None = None):
        super().__init__()
        self.session = onnx_session(path, threads or len(os.sched_getaffinity(0)))
        self.inputs = graph.inputs

    def forward(self, *images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if len(images) == 1 and len(self.inputs) > 1:
            images = images[0].chunk(len(self.inputs), dim=1)
        feed = {name: np.ascontiguousarray(x.detach().float().cpu().numpy()) for name, x in
                zip(self.inputs, images, strict=True)}
        outputs = tuple(torch.from_numpy(o) for o in self.session.run(None, feed))
        return outputs[0] if len(outputs) == 1 else outputs


def onnx_networks(checkpoint: str | Path, graphs: dict[str, OnnxGraph], int8: bool = False) -> dict[str, OnnxNetwork]:
    """The onnxruntime networks of ``checkpoint``, one per graph part: its cached exports (or their int8
    quantization), made first (and each export checked) when missing or older than the checkpoint."""
    base, source = _export_base(checkpoint)
    networks = {}
    for part, graph in graphs.items():
        path = graph_file(base, part)
        if _stale(path, source):
            export_onnx(graph, path)
            check_onnx(graph, path)
        if int8:
            quantized = graph_file(base, part, int8=True)
            if _stale(quantized, path):
                quantize_onnx(path, quantized)
            path = quantized
        networks[part] = OnnxNetwork(path, graph)
    return networks
