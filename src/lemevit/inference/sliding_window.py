"""The sliding-window engine of every dense task: windows over an image of any size, their class probabilities
blended with a Hann weight, strip by strip so that memory stays bounded.

Windows of ``window`` pixels are placed every ``stride`` pixels (the last row and column of windows flush
with the scene's edge; a scene smaller than a window is padded). Their class probabilities are blended
with a separable Hann weight, ``sin²(π (i + ½) / window)``, which falls smoothly towards the window's
edges, where a network sees the least context, but is never zero, so every pixel gets a weighted mean.

The scene is processed one row of windows at a time: only a ``window``-high accumulator of probabilities
for the full width lives in memory, and the rows that no later window touches are handed on (argmax and
write, or compared with the ground truth) before the next row of windows is read.
"""
from __future__ import annotations

import ctypes
import functools
import math
from collections.abc import Callable, Iterator

import torch

from lemevit.errors import ConfigError, DataError
from lemevit.metrics.confusion import confusion_matrix

__all__ = ["blend_weight", "blended_strips", "default_stride", "sliding_window_confusion", "sliding_window_probs",
           "softmax_predictor", "window_starts"]


def default_stride(window: int) -> int:
    """The stride used when none is given: windows overlapping by a quarter (512 / 384, the published setting)."""
    return max(1, window * 3 // 4)


def _glibc_malloc_trim() -> Callable[[], object]:
    """glibc's ``malloc_trim``, or a no-op where the C library is not glibc."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda *_: None


# glibc serves the strip's buffers (tens of MiB each, freed and reallocated every row of windows) from a heap
# that fragments, so that the resident memory creeps up by a strip's worth per row. Handing the free pages
# back after each strip keeps it flat (the remedy Dask applies to its workers).
_release_free_memory = functools.partial(_glibc_malloc_trim(), 0)


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Offsets of the windows along one axis: every ``stride``, the last one flush with the end."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ConfigError("window", f"must be a positive integer, got {window!r}")
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= window:
        raise ConfigError("stride", f"must be an integer from 1 to the window ({window}), got {stride!r}")
    if length <= window:
        return [0]
    return list(range(0, length - window, stride)) + [length - window]


def blend_weight(window: int) -> torch.Tensor:
    """The 1-D Hann weight of a window, sampled between its taps so that no pixel gets weight zero."""
    return torch.sin(math.pi * (torch.arange(window, dtype=torch.float64) + 0.5) / window) ** 2


def blended_strips(read_rows: Callable[[int, int], torch.Tensor], height: int, width: int,
                   predict: Callable[[torch.Tensor], torch.Tensor], window: int, stride: int, batch_size: int = 8,
                   progress: Callable[[int], None] | None = None,
                   normalise: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   read_valid: Callable[[int, int], torch.Tensor | None] | None = None
                   ) -> Iterator[tuple[int, torch.Tensor]]:
    """Blended class probabilities of a ``height`` × ``width`` scene, strip by strip.

    Args:
        read_rows: ``(top, bottom) -> (C, bottom - top, width)`` rows of the scene.
        predict: ``(B, C, window, window) -> (B, K, window, window)`` probabilities.
        progress: called with the number of windows done after each row of windows.
        normalise: applied to each batch of windows before ``predict``, so that the rows can stay in the
            scene's own data type (a quarter of float32's memory for 8-bit bands). Windows that overhang a
            scene smaller than a window are padded with zeros after it: with the band means.
        read_valid: ``(top, bottom) -> (bottom - top, width)`` booleans, the pixels to predict (None: all of
            them), read with the rows. A window without one is not run at all (the network's time goes to the
            data, not to a nodata border); the pixels of a window that is run but not to be predicted are fed as
            zeros after ``normalise`` (the band means, as padding), so that a nodata value such as -9999 does
            not sway its neighbours.

    Every window that covers a pixel to predict is run, so its blend is the one of a scene without nodata (with
    a model that sees only each pixel, the same probabilities); the pixels only skipped windows cover get
    probabilities that mean nothing (zero or a partial blend): the caller overwrites them.

    Yields ``(top, probs)`` with ``probs`` float32 ``(K, rows, width)``, for consecutive strips that cover
    rows ``0..height`` in order. ``probs`` is a view of the accumulator, valid until the next strip is
    requested: clone it to keep it.
    """
    if height < 1 or width < 1:
        raise DataError(f"cannot predict an empty scene ({width}x{height})")
    ys, xs = window_starts(height, window, stride), window_starts(width, window, stride)
    weight_1d = blend_weight(window)
    padded_width = max(width, window)
    # Windows form a grid, so the summed weight at (y, x) is a row sum times a column sum.
    row_sum = torch.zeros(max(height, window), dtype=torch.float64)
    col_sum = torch.zeros(padded_width, dtype=torch.float64)
    for y in ys:
        row_sum[y:y + window] += weight_1d
    for x in xs:
        col_sum[x:x + window] += weight_1d
    row_sum, col_sum = row_sum.float(), col_sum[:width].float()
    weight_2d = (weight_1d[:, None] * weight_1d[None, :]).float()
    accumulator = None
    waiting: list[tuple[int, int]] = []  # (top, rows) of the strips yielded once the classes are known
    for r, top in enumerate(ys):
        bottom = min(top + window, height)
        rows = read_rows(top, bottom)
        if rows.shape[1:] != (bottom - top, width):
            raise ValueError(f"read_rows gave rows of shape {tuple(rows.shape)}, expected (C, {bottom - top}, {width})")
        valid = read_valid(top, bottom) if read_valid is not None else None
        run = xs if valid is None else [x for x in xs if valid[:, x:x + window].any()]
        for start in range(0, len(run), batch_size):
            chunk = run[start:start + batch_size]
            batch = torch.stack([rows[:, :, x:x + window] for x in chunk])
            if normalise is not None:
                batch = normalise(batch)
            if valid is not None:
                batch.masked_fill_(~torch.stack([valid[:, x:x + window] for x in chunk])[:, None], 0)
            if batch.shape[-2:] != (window, window):
                batch = torch.nn.functional.pad(batch, (0, window - batch.shape[-1], 0, window - batch.shape[-2]))
            probs = predict(batch).float()
            del batch
            if accumulator is None:
                accumulator = torch.zeros(probs.shape[1], window, padded_width)
            for x, p in zip(chunk, probs, strict=True):
                accumulator[:, :, x:x + window].addcmul_(p, weight_2d)
            del probs  # one batch's outputs alive at a time
            _release_free_memory()
        bands = len(rows)
        del rows
        if progress is not None:
            progress(len(xs))
        done = (ys[r + 1] if r + 1 < len(ys) else height) - top
        if accumulator is None:
            # No window run yet, so the number of classes is unknown: the strips wait for the first window (or,
            # in a scene with nothing to predict, one window of zeros), their probabilities zero.
            if r + 1 < len(ys):
                waiting.append((top, done))
                continue
            accumulator = torch.zeros(predict(torch.zeros(1, bands, window, window)).shape[1], window, padded_width)
        for waiting_top, waiting_rows in waiting:
            yield waiting_top, accumulator.new_zeros(len(accumulator), waiting_rows, width)
        waiting.clear()
        # Normalised in place: no later window adds to these rows.
        strip = accumulator[:, :done, :width]
        strip.div_(row_sum[top:top + done, None]).div_(col_sum)
        yield top, strip
        # The rows still to be covered by later windows move to the top of the accumulator.
        keep = window - done
        if keep > done:  # source and destination overlap
            accumulator[:, :keep] = accumulator[:, done:].clone()
        elif keep:
            accumulator[:, :keep] = accumulator[:, done:]
        accumulator[:, keep:] = 0


def softmax_predictor(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``(B, C, h, w)`` windows → ``(B, K, h, w)`` class probabilities on the CPU, the model run on its own
    device."""
    device = next(model.parameters()).device

    def predict(x: torch.Tensor) -> torch.Tensor:
        return model(x.to(device)).softmax(dim=1).cpu()

    return predict


@torch.inference_mode()
def sliding_window_probs(model: torch.nn.Module, image: torch.Tensor, window: int, stride: int,
                         batch_size: int = 8) -> torch.Tensor:
    """Blended class probabilities ``(K, H, W)`` of one normalised image ``(C, H, W)`` held in memory."""
    strips = blended_strips(lambda top, bottom: image[:, top:bottom], image.shape[1], image.shape[2],
                            softmax_predictor(model), window, stride, batch_size)
    whole = None
    for top, probs in strips:
        if whole is None:
            whole = probs.new_empty(len(probs), image.shape[1], image.shape[2])
        whole[:, top:top + probs.shape[1]] = probs
    return whole


def sliding_window_confusion(predict: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor,
                             target: torch.Tensor, num_classes: int, window: int, stride: int,
                             batch_size: int = 8) -> torch.Tensor:
    """Confusion matrix ``(K, K)`` of one normalised image ``(C, H, W)`` against its target ``(H, W)``
    (``IGNORE_INDEX`` left out), predicted by the blended sliding window strip by strip (the image's
    probabilities are never held whole)."""
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for top, probs in blended_strips(lambda a, b: image[:, a:b].cpu(), image.shape[1], image.shape[2], predict,
                                     window, stride, batch_size):
        confusion += confusion_matrix(probs.argmax(dim=0), target[top:top + probs.shape[1]].cpu(), num_classes)
    return confusion
