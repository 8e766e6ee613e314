"""Turn stored samples into model inputs: uint8 → float in [0, 1], then per-channel standardisation.

Datasets keep their natural storage dtype (uint8 images, float32 signals) so a whole dataset fits on the
accelerator; conversion happens per batch. Both functions work on ``(N, C, *S)`` batches and on single
``(C, *S)`` samples (pass ``channel_dim=0``), on any device.
"""
from __future__ import annotations

from typing import Sequence

import torch


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 → float32 divided by 255; floating tensors → float32 unchanged in value.

    Raises:
        ValueError: for any other dtype (signed integers, bool), which have no agreed float scale.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"to_float expects a torch.Tensor, got {type(x).__name__}")
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    if x.is_floating_point():
        return x.to(torch.float32)
    raise ValueError(f"to_float accepts uint8 or floating tensors, got dtype {x.dtype}")


def normalize(
    x: torch.Tensor, mean: Sequence[float], std: Sequence[float], *, channel_dim: int = 1
) -> torch.Tensor:
    """``(x - mean[c]) / std[c]`` per channel; ``x`` must already be floating (see :func:`to_float`)."""
    if not x.is_floating_point():
        raise ValueError(f"normalize expects a floating tensor (call to_float first), got dtype {x.dtype}")
    if channel_dim < 0:
        channel_dim += x.dim()
    if not 0 <= channel_dim < x.dim():
        raise ValueError(f"channel_dim out of range for a {x.dim()}-d tensor")
    c = x.shape[channel_dim]
    if len(mean) != c or len(std) != c:
        raise ValueError(f"normalize needs {c} mean/std entries (one per channel), got {len(mean)}/{len(std)}")
    view = [1] * x.dim()
    view[channel_dim] = c
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(view)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(view)
    return (x - m) / s
