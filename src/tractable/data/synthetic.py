"""A learnable class-conditional dataset of any shape, for tests and smoke runs, deterministic from a seed.

Each class ``k`` has a fixed template ``T_k`` with entries uniform in [0.25, 0.75] (drawn from ``seed``
alone, so train and test share them); a sample of class ``k`` is ``T_k + noise · ε`` with standard normal ε.
Three-dimensional shapes ``(C, H, W)`` are stored like real images: clamped to [0, 1] and quantised to uint8.
Other shapes (e.g. ``(C, L)``) are stored as float32. Labels are balanced (``i mod num_classes``, shuffled).
``info.mean``/``info.std`` are the per-channel moments of the generating distribution (templates averaged over
classes, plus the noise variance), the same for every split.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from tractable.data.array import ArrayDataset
from tractable.data.info import DatasetInfo
from tractable.data.seeding import make_generator

_DEFAULT_SIZES = {"train": 1024, "test": 256}
_DTYPES = ("auto", "uint8", "float32")


def make_synthetic(
    split: str = "train",
    *,
    num_samples: Optional[int] = None,
    shape: Sequence[int] = (3, 32, 32),
    num_classes: int = 10,
    noise: float = 0.2,
    seed: int = 0,
    dtype: str = "auto",
) -> ArrayDataset:
    """A synthetic split.

    Args:
        split: ``"train"`` or ``"test"`` (different samples, same class templates).
        num_samples: samples in this split (default 1024 train / 256 test).
        shape: per-sample shape, channels first.
        num_classes: number of classes (>= 1).
        noise: standard deviation of the per-element Gaussian noise (>= 0).
        seed: determines templates, labels and noise.
        dtype: ``"auto"`` (uint8 for 3-d shapes, float32 otherwise), ``"uint8"`` or ``"float32"``.
    """
    if split not in _DEFAULT_SIZES:
        raise ValueError(f"split must be 'train' or 'test' for synthetic, got {split!r}")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise ValueError(f"shape must be channels-first with >= 2 positive dims, e.g. (3, 32, 32); got {shape}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    n = _DEFAULT_SIZES[split] if num_samples is None else int(num_samples)
    if n < 0:
        raise ValueError(f"num_samples must be >= 0, got {n}")
    as_uint8 = dtype == "uint8" or (dtype == "auto" and len(shape) == 3)

    templates = 0.25 + 0.5 * torch.rand((num_classes, *shape), generator=make_generator(seed, "templates"),
                                        dtype=torch.float64)
    labels = torch.arange(n) % num_classes
    labels = labels[torch.randperm(n, generator=make_generator(seed, split, "labels"))]
    eps = torch.randn((n, *shape), generator=make_generator(seed, split, "noise"), dtype=torch.float64)
    x = templates[labels] + noise * eps
    if as_uint8:
        x = (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    else:
        x = x.to(torch.float32)

    per_channel = templates.transpose(0, 1).reshape(shape[0], -1)
    mean = per_channel.mean(dim=1)
    std = (per_channel.var(dim=1, unbiased=False) + noise**2).sqrt().clamp_min(1e-6)
    info = DatasetInfo(
        name="synthetic", num_classes=num_classes, shape=shape,
        mean=tuple(mean.tolist()), std=tuple(std.tolist()),
    )
    return ArrayDataset(x, labels.to(torch.int64), info)
