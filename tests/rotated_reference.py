"""The rotated RoI Align lemevit had before its bins became bags of bilinear taps, as the reference that the
operator's and the detector's tests compare with."""
from __future__ import annotations

import torch


def grid_sample_roi_align(features: torch.Tensor, rois: torch.Tensor, output_size: int, spatial_scale: float,
                          sampling_ratio: int) -> torch.Tensor:
    """The rotated RoI Align lemevit had before its bins became bags of bilinear taps: ``grid_sample`` of every
    sampling point, image by image, then the mean of each bin's points (the reference of the equivalence test)."""
    samples = output_size * sampling_ratio
    steps = (torch.arange(samples, dtype=torch.float32) + 0.5) / samples - 0.5
    _, cx, cy, w, h, theta = rois.float().unbind(-1)
    u = steps[None, None, :] * w[:, None, None]
    v = steps[None, :, None] * h[:, None, None]
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    x = cx[:, None, None] + u * cos - v * sin
    y = cy[:, None, None] + u * sin + v * cos
    height, width = features.shape[-2:]
    grid = torch.stack([2 * x * spatial_scale / width - 1, 2 * y * spatial_scale / height - 1], dim=-1)
    out = features.new_zeros(len(rois), features.shape[1], output_size, output_size)
    image = rois[:, 0].long()
    for b in image.unique().tolist():
        mask = image == b
        sampled = torch.nn.functional.grid_sample(features[b:b + 1], grid[mask].reshape(1, -1, samples, 2),
                                                  align_corners=False)
        sampled = sampled.reshape(features.shape[1], -1, samples, samples).transpose(0, 1)
        out[mask] = torch.nn.functional.avg_pool2d(sampled, sampling_ratio)
    return out
