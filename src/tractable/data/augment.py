"""Batched, on-device data augmentation driven by an explicit ``torch.Generator``.

Each augmentation is split in two: *sampling* its per-sample parameters (crop offsets, flip decisions) from a
generator, and *applying* given parameters to a batch. :func:`random_crop` and :func:`random_flip` do both.
The split lets a distributed loader draw the parameters for a whole global batch and apply only its slice,
so every rank's samples are augmented exactly as in a single-process run.

Random numbers are drawn on the generator's device and moved to the data's device, so the same CPU generator
gives the same augmentation on CPU and GPU. Application is a single gather (no Python loop over samples) and
works on any dtype, so uint8 images can be augmented before conversion to float.

Shapes: ``(N, C, H, W)`` images, or ``(N, C, L)`` signals, for which a crop is a random shift of up to ``pad``
along L and a flip reverses L.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

_PAD_MODES = ("constant", "reflect", "replicate", "circular")



def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move CPU-drawn random parameters to the data's device without blocking the host: a copy from pageable
    memory to CUDA synchronises the stream, one from pinned memory does not."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)

def _check_batch(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{what} expects an (N, C, H, W) or (N, C, L) tensor, got {shape}")


def sample_crop_offsets(n: int, pad: int, spatial_dims: int, generator: torch.Generator) -> torch.Tensor:
    """Per-sample offsets into the padded input, int64 ``(n, spatial_dims)`` uniform in ``[0, 2·pad]``."""
    check_generator(generator)
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    if spatial_dims not in (1, 2):
        raise ValueError(f"spatial_dims must be 1 or 2, got {spatial_dims}")
    return torch.randint(0, 2 * pad + 1, (n, spatial_dims), generator=generator, device=generator.device)


def crop_with_offsets(x: torch.Tensor, pad: int, offsets: torch.Tensor, mode: str = "constant") -> torch.Tensor:
    """Pad the spatial dims of ``x`` by ``pad`` (zeros, or ``mode``), then cut each sample back at ``offsets``.

    ``offsets[i] = (dy, dx)`` (images) or ``(dl,)`` (signals) is the top-left corner in the padded sample, so
    ``(pad, pad)`` is the identity.
    """
    _check_batch(x, "crop_with_offsets")
    if mode not in _PAD_MODES:
        raise ValueError(f"mode must be one of {_PAD_MODES}, got {mode!r}")
    spatial = x.dim() - 2
    if offsets.shape != (x.shape[0], spatial):
        raise ValueError(f"offsets must have shape {(x.shape[0], spatial)}, got {tuple(offsets.shape)}")
    if pad == 0:
        return x.clone()
    if offsets.numel() and (int(offsets.min()) < 0 or int(offsets.max()) > 2 * pad):  # checked where drawn
        raise ValueError(f"offsets must lie in [0, {2 * pad}]")
    offsets = to_device(offsets.to(torch.long), x.device)
    n, c = x.shape[:2]
    if mode == "constant":
        padded = F.pad(x, (pad,) * (2 * spatial))
    else:
        # F.pad's reflect/replicate/circular need a floating tensor; float32 holds every uint8 value exactly
        work = x if x.is_floating_point() else x.to(torch.float32 if x.dtype == torch.uint8 else torch.float64)
        padded = F.pad(work, (pad,) * (2 * spatial), mode=mode).to(x.dtype)
    # one gather over the flattened padded sample: index (N, 1, out) broadcast over channels
    if spatial == 2:
        h, w = x.shape[2:]
        wp = w + 2 * pad
        rows = offsets[:, 0:1] + torch.arange(h, device=x.device)  # (N, H)
        cols = offsets[:, 1:2] + torch.arange(w, device=x.device)  # (N, W)
        index = (rows[:, :, None] * wp + cols[:, None, :]).reshape(n, 1, h * w)
    else:
        index = (offsets[:, 0:1] + torch.arange(x.shape[2], device=x.device)).reshape(n, 1, x.shape[2])
    per_channel = padded.shape[2] * (padded.shape[3] if spatial == 2 else 1)
    flat = padded.reshape(n, c, per_channel).gather(2, index.expand(n, c, index.shape[2]))
    return flat.view(x.shape)


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator, mode: str = "constant") -> torch.Tensor:
    """Pad by ``pad`` then crop back to the original size at a random per-sample offset (a random shift)."""
    _check_batch(x, "random_crop")
    offsets = sample_crop_offsets(x.shape[0], pad, x.dim() - 2, generator)
    return crop_with_offsets(x, pad, offsets, mode)


def sample_flip_mask(n: int, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Bool ``(n,)``: which samples to flip, each independently with probability ``p``."""
    check_generator(generator)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    return torch.rand(n, generator=generator, device=generator.device) < p


def flip_where(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reverse the last dim (horizontal flip for images) of the samples where ``mask`` is True."""
    _check_batch(x, "flip_where")
    if mask.shape != (x.shape[0],) or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor of shape ({x.shape[0]},), got {mask.dtype} {tuple(mask.shape)}")
    mask = to_device(mask, x.device).view(-1, *([1] * (x.dim() - 1)))
    return torch.where(mask, x.flip(-1), x)


def random_flip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Horizontally flip each sample independently with probability ``p`` (default 0.5)."""
    _check_batch(x, "random_flip")
    return flip_where(x, sample_flip_mask(x.shape[0], generator, p))


def check_generator(generator: Any) -> torch.Generator:
    """``generator`` itself; a clear error instead of silently using global randomness when it is missing."""
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"an explicit torch.Generator is required, got {type(generator).__name__}")
    return generator
