"""Interleaved throughput measurement: every model runs once per round, in turn, so that the noise of a
shared machine hits all of them alike; ratios are taken round by round and then summarised."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from tqdm.auto import tqdm

import lemevit  # noqa: F401  (registers our models with timm)
from lemevit.errors import ConfigError

__all__ = ["DTYPES", "MODES", "Measurement", "build_model", "build_step", "check_dtype", "describe_error",
           "measure_interleaved"]


@dataclass
class Measurement:
    model: str
    batch_size: int
    img_size: int
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def throughput(self) -> float:
        """Images per second at the median time of one batch."""
        return self.batch_size / self.median

    def quantile(self, q: float) -> float:
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    def ratio_to(self, reference: Measurement) -> tuple[float, float, float]:
        """Speed-up over ``reference`` as (median, 10th, 90th percentile) of the per-round ratios."""
        ratios = sorted(r / s for r, s in zip(reference.seconds, self.seconds, strict=True))
        pick = lambda q: ratios[min(len(ratios) - 1, round(q * (len(ratios) - 1)))]  # noqa: E731
        return statistics.median(ratios), pick(0.1), pick(0.9)


DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("inference", "train")


def build_model(name: str, img_size: int, num_classes: int = 1000, **kwargs) -> torch.nn.Module:
    """Model ``name`` of our registry or timm's, built for ``img_size`` where its constructor takes one
    (plain ViTs and Swin fix their position tables or windows to it); other models take any size."""
    try:
        return timm.create_model(name, num_classes=num_classes, img_size=img_size, **kwargs)
    except TypeError as e:
        if "img_size" not in str(e):
            raise
    return timm.create_model(name, num_classes=num_classes, **kwargs)


def check_dtype(dtype: str, device: str) -> None:
    """ValueError when autocast to ``dtype`` cannot run on ``device``."""
    if dtype not in DTYPES:
        raise ConfigError("dtypes", f"{dtype!r}: expected one of {list(DTYPES)}")
    amp = DTYPES[dtype]
    if amp is None:
        return
    kind = torch.device(device).type
    if kind == "cuda" and amp is torch.bfloat16 and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise ConfigError("dtypes", f"bf16: {torch.cuda.get_device_name(device)} has no bf16 arithmetic")
    if not torch.amp.is_autocast_available(kind):
        raise ConfigError("dtypes", f"{dtype}: autocast is not available on {kind}")
    try:
        with torch.autocast(kind, dtype=amp):
            out = torch.nn.functional.linear(torch.ones(2, 2, device=device), torch.ones(2, 2, device=device))
    except RuntimeError as e:
        raise ConfigError("dtypes", f"{dtype}: autocast to it fails on {device}: {e}") from e
    if out.dtype != amp:
        raise ConfigError("dtypes", f"{dtype}: autocast on {device} does not compute matrix products in {dtype}")


def build_onnxruntime_step(name: str, batch_size: int, img_size: int, folder: str | Path,
                           int8: bool = False) -> Callable[[], object]:
    """A no-argument callable running one inference batch of model ``name`` on onnxruntime's CPU provider, with
    as many threads as torch uses: the model exported to ``folder`` (dynamic sizes, checked at a second one), or
    its dynamic int8 quantization."""
    from lemevit.inference.onnx import OnnxGraph, check_onnx, export_onnx, onnx_session, quantize_onnx

    model = build_model(name, img_size).eval()
    graph = OnnxGraph(model, ("image",), ("logits",), 3, img_size)
    path = export_onnx(graph, Path(folder) / f"{name}-{img_size}.onnx")
    check_onnx(graph, path)
    if int8:
        path = quantize_onnx(path, path.with_suffix(".int8.onnx"))
    session = onnx_session(path, torch.get_num_threads())
    x = torch.randn(batch_size, 3, img_size, img_size).numpy()

    def step() -> object:
        return session.run(None, {"image": x})

    return step


def build_step(name: str, batch_size: int, img_size: int, device: str = "cpu", dtype: str = "fp32",
               channels_last: bool = False, compile: bool = False, freezing: bool = False, mode: str = "inference",
               model_kwargs: dict | None = None) -> Callable[[], object]:
    """A no-argument callable running one inference batch or one training step of model ``name``.

    The training step is what a training loop does per batch: autocast forward, cross-entropy against
    random labels, backward (through a gradient scaler for fp16) and an AdamW update. ``freezing`` turns on
    inductor's weight freezing (constant folding and prepacked CPU GEMMs), the setting PyTorch recommends
    for compiled CPU inference; it applies process-wide and only to inference.
    """
    if mode not in MODES:
        raise ConfigError("mode", f"{mode!r}: expected one of {list(MODES)}")
    check_dtype(dtype, device)
    model = build_model(name, img_size, **(model_kwargs or {})).to(device)
    model.train(mode == "train")
    x = torch.randn(batch_size, 3, img_size, img_size, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if compile:
        if freezing and mode == "inference":
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True
        forward = torch.compile(model)
    else:
        forward = model
    amp = DTYPES[dtype]
    kind = torch.device(device).type
    autocast = (lambda: torch.autocast(kind, dtype=amp)) if amp else nullcontext
    sync = torch.cuda.synchronize if kind == "cuda" else (lambda: None)

    if mode == "inference":
        def step() -> torch.Tensor:
            with torch.inference_mode(), autocast():
                out = forward(x)
            sync()
            return out

        return step

    labels = torch.randint(0, 1000, (batch_size,), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    scaler = torch.amp.GradScaler(kind, enabled=amp is torch.float16)

    def step() -> torch.Tensor:
        with autocast():
            loss = torch.nn.functional.cross_entropy(forward(x), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        sync()
        return loss

    return step


def describe_error(error: BaseException, batch_size: int, img_size: int) -> str:
    """One line for a failed setting; out-of-memory is named as such, on GPU and CPU alike."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text:
        return f"out of memory at batch {batch_size}, {img_size} px"
    return f"{type(error).__name__}: {text}"


def _free_device_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def measure_interleaved(runners: dict[str, Callable[[], object]], batch_size: int, img_size: int,
                        rounds: int = 10, warmup: int = 2, progress: bool = True,
                        errors: dict[str, str] | None = None) -> dict[str, Measurement]:
    """Time every runner once per round, rotating the order each round.

    A runner that raises (out of memory, an operation the device lacks) is dropped with a one-line
    reason in ``errors`` (when given; otherwise the exception propagates) and the others go on.
    """
    names: list[str] = list(runners)
    results = {name: Measurement(name, batch_size, img_size) for name in names}

    def call(name: str) -> float | None:
        start = time.perf_counter()
        try:
            runners[name]()
        except (RuntimeError, torch.OutOfMemoryError, NotImplementedError, ValueError) as e:
            if errors is None:
                raise
            errors[name] = describe_error(e, batch_size, img_size)
            names.remove(name)
            results.pop(name)
            _free_device_memory()
            return None
        return time.perf_counter() - start

    for _ in range(warmup):
        for name in list(names):
            call(name)
    for r in tqdm(range(rounds), desc=f"batch {batch_size}, {img_size} px", disable=not progress, leave=False):
        shift = r % max(len(names), 1)
        for name in names[shift:] + names[:shift]:
            seconds = call(name)
            if seconds is not None:
                results[name].seconds.append(seconds)
    return results
