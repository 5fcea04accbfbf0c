"""ONNX export of a task's network, checked against PyTorch by onnxruntime at a size other than the export size
(a graph that kept a shape of the export size as a constant is wrong elsewhere, and this finds it)."""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lemevit.errors import ConfigError, DataError
from lemevit.io.atomic import atomic_path
from lemevit.ops.export import with_fixed_size_pooling

__all__ = ["NETWORK", "ONNX_FILE", "GraphOf", "OnnxGraph", "Probabilities", "check_onnx", "export_onnx", "graph_file",
           "onnx_session", "quantize_onnx", "require_onnxruntime"]

ONNX_FILE = "model.onnx"
#: The part of a task's export that takes the images (a detector has a second one, its box head).
NETWORK = "network"
#: Largest deviation from PyTorch an exported graph may show (outputs are O(1)).
TOLERANCE = 1e-4


def require_onnxruntime():
    """The onnxruntime module; without the ``[export]`` extra, a :class:`ConfigError` saying how to install it."""
    try:
        import onnx  # noqa: F401  (the exporter writes through it)
        import onnxruntime
    except ImportError:
        raise ConfigError("format", "onnx needs the export extra: pip install 'lemevit[export]' (onnx, "
                                    "onnxruntime)") from None
    return onnxruntime


def graph_file(base: str | Path, part: str = NETWORK, int8: bool = False) -> Path:
    """The ONNX file of the graph ``part`` among the files named ``base`` (``DIR/model``, ``RUN/best``):
    ``base.onnx`` for the network, ``base.PART.onnx`` for another part, ``.int8`` before ``.onnx`` when quantized."""
    base = Path(base)
    return base.with_name(base.name + ("" if part == NETWORK else f".{part}") + (".int8" if int8 else "") + ".onnx")


def flat_outputs(outputs) -> list[torch.Tensor]:
    """A network's outputs (a tensor, or nested tuples and lists of them) as the flat list a graph outputs."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    return [t for item in outputs for t in flat_outputs(item)]


class GraphOf(nn.Module):
    """The method ``method`` of ``module`` as a module to export, its nested outputs flattened in order."""

    def __init__(self, module: nn.Module, method: str):
        super().__init__()
        self.module, self.method = module, method

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(flat_outputs(getattr(self.module, self.method)(*inputs)))


class Probabilities(nn.Module):
    """The class logits (B, K, H, W) that ``network``'s ``method`` gives, as probabilities: what dense exports
    output."""

    def __init__(self, network: nn.Module, method: str = "forward"):
        super().__init__()
        self.network, self.method = network, method

    def forward(self, *images: torch.Tensor) -> torch.Tensor:
        return getattr(self.network, self.method)(*images).softmax(dim=1)


@dataclass
class OnnxGraph:
    """What a model exports: ``module`` maps the ``inputs`` (each (B, channels, H, W), normalised) to the
    ``outputs``, in that order. ``size`` is the export side; any side that is a multiple of ``multiple`` works,
    unless ``fixed_size`` says why the graph keeps the export size (the batch stays dynamic)."""

    module: nn.Module
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    channels: int
    size: int
    multiple: int = 32
    fixed_size: str | None = None

    def examples(self, height: int, width: int, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(seed)
        return tuple(torch.randn(batch, self.channels, height, width, generator=generator) for _ in self.inputs)

    def check_size(self) -> tuple[int, int]:
        """A (height, width) other than the export size in both sides: three quarters of it, rounded to
        ``multiple``, by one ``multiple`` more (160 x 256 for 224)."""
        if self.fixed_size:
            return self.size, self.size
        height = max(self.multiple, round(self.size * 0.75 / self.multiple) * self.multiple)
        if height == self.size:
            height += self.multiple
        return height, self.size + self.multiple


def onnx_session(path: str | Path, threads: int | None = None):
    """An onnxruntime session of the graph ``path`` on the CPU provider, with ``threads`` intra-op threads (None:
    onnxruntime's default)."""
    onnxruntime = require_onnxruntime()
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def export_onnx(graph: OnnxGraph, path: str | Path, opset: int = 18) -> Path:
    """Write ``graph`` to ``path`` (atomically) with dynamic batch, height and width (batch only for a graph of
    fixed size)."""
    require_onnxruntime()
    path = Path(path)
    module = with_fixed_size_pooling(graph.module).eval() if graph.fixed_size else graph.module.eval()
    axes = {0: "batch"} if graph.fixed_size else {0: "batch", 2: "height", 3: "width"}
    dynamic = {name: axes for name in graph.inputs}
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter handles the dynamic sizes of our models in seconds, where the torch.export one
        # takes minutes; its deprecation notice is not the user's concern.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*Constant folding.*")
        # The tracer warns of every size it reads as a number; the check at a second size finds the ones that
        # matter, and a fixed-size graph keeps its sizes on purpose.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(module, graph.examples(graph.size, graph.size), str(tmp), input_names=list(graph.inputs),
                          output_names=list(graph.outputs), dynamic_axes=dynamic, opset_version=opset, dynamo=False)
    return path


@dataclass
class Deviation:
    """The largest absolute difference between onnxruntime and PyTorch, per output, at ``size``."""

    size: tuple[int, int]
    per_output: dict[str, float]

    @property
    def largest(self) -> float:
        return max(self.per_output.values())


def check_onnx(graph: OnnxGraph, path: str | Path, size: tuple[int, int] | None = None, batch: int = 2,
               threads: int | None = None, tolerance: float | None = TOLERANCE) -> Deviation:
    """Run the exported ``path`` with onnxruntime on random inputs of ``size`` (default: not the export size, unless
    the graph's size is fixed) and of another batch than the export's, and compare with ``graph.module``; a
    deviation above ``tolerance`` (None: any, for a quantized graph) is a :class:`DataError` naming the output."""
    size = size or graph.check_size()
    session = onnx_session(path, threads)
    inputs = graph.examples(*size, batch=batch, seed=1)
    with torch.no_grad():
        expected = flat_outputs(graph.module.eval()(*inputs))
    got = session.run(None, {name: x.numpy() for name, x in zip(graph.inputs, inputs, strict=True)})
    deviation = Deviation(size, {name: float((torch.from_numpy(g) - e).abs().max())
                                 for name, g, e in zip(graph.outputs, got, expected, strict=True)})
    if tolerance is not None and deviation.largest > tolerance:
        worst = max(deviation.per_output, key=deviation.per_output.get)
        raise DataError(f"{path}: onnxruntime differs from PyTorch by {deviation.largest:.2e} on {worst} at "
                        f"{size[0]}x{size[1]} (tolerance {tolerance:.0e}); the export is not faithful")
    return deviation


def quantize_onnx(path: str | Path, output: str | Path) -> Path:
    """onnxruntime's dynamic int8 quantization of the matrix products of the graph ``path`` (weights int8,
    activations quantized per batch at run time; convolutions stay fp32) into ``output``, atomically. Whether it is
    faster depends on the CPU's int8 instructions (VNNI)."""
    require_onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    output = Path(output)
    # onnxruntime logs a suggestion to pre-process the graph on the root logger; it is not the user's concern.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with atomic_path(output) as tmp:
            # Matrix products only: onnxruntime's int8 convolution (ConvInteger) is several times slower than its
            # fp32 one on this project's CPUs, and onnxruntime 1.20 (the declared floor) has no kernel for its int8
            # weights.
            quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        root.setLevel(level)
    return output
