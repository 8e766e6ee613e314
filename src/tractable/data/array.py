"""``ArrayDataset``: a small labelled dataset held as two tensors, in its storage dtype.

``x`` is uint8 ``(N, C, H, W)`` for images (CIFAR, MNIST), float32 ``(N, C, L)`` for 1-D signals (MNIST-1D)
or float32 ``(N, 1, 8, 8)`` in [0, 1] (digits); ``y`` is int64 ``(N,)``. Indexing returns stored values;
:func:`tractable.data.to_float` and :class:`tractable.data.DeviceLoader` do the per-batch conversion.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch

from tractable.data.info import DatasetInfo


class ArrayDataset(torch.utils.data.Dataset):
    """In-memory dataset ``(x, y)`` with a :class:`DatasetInfo`.

    Args:
        x: samples, ``(N, *info.shape)``, uint8 or floating.
        y: integer labels ``(N,)`` in ``[0, info.num_classes)``; stored as int64.
        info: the dataset's description; its ``shape`` must equal ``x.shape[1:]``.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, info: DatasetInfo):
        if not isinstance(info, DatasetInfo):
            raise ValueError(f"info must be a DatasetInfo, got {type(info).__name__}")
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise ValueError("x and y must be torch.Tensors")
        if x.dtype != torch.uint8 and not x.is_floating_point():
            raise ValueError(f"x must be uint8 or floating, got dtype {x.dtype}")
        if y.dim() != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
            raise ValueError(f"y must be a 1-d integer tensor, got shape {tuple(y.shape)} dtype {y.dtype}")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y disagree on the number of samples: {x.shape[0]} vs {y.shape[0]}")
        if tuple(x.shape[1:]) != info.shape:
            raise ValueError(f"x per-sample shape {tuple(x.shape[1:])} does not match info.shape {info.shape}")
        y = y.to(torch.int64)
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= info.num_classes):
            raise ValueError(
                f"labels must lie in [0, {info.num_classes}), got range [{int(y.min())}, {int(y.max())}]"
            )
        if y.device != x.device:
            raise ValueError(f"x and y must be on the same device, got {x.device} and {y.device}")
        self.x = x
        self.y = y
        self.info = info

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, index) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]

    def __repr__(self) -> str:
        return (
            f"ArrayDataset(name={self.info.name!r}, n={len(self)}, shape={self.info.shape}, "
            f"dtype={self.x.dtype}, device={self.x.device})"
        )

    @property
    def device(self) -> torch.device:
        return self.x.device

    def to(self, device: Union[str, torch.device]) -> "ArrayDataset":
        """A dataset with both tensors on ``device`` (the same object's tensors when already there)."""
        return ArrayDataset(self.x.to(device), self.y.to(device), self.info)

    def subset(
        self, n_or_indices: Union[int, Sequence[int], torch.Tensor], *, seed: Optional[int] = None
    ) -> "ArrayDataset":
        """A sub-dataset: the first ``n`` samples (or ``n`` random ones when ``seed`` is given), or ``indices``."""
        if isinstance(n_or_indices, bool):
            raise ValueError("subset takes an int n or a sequence/tensor of indices, got a bool")
        if isinstance(n_or_indices, int):
            n = n_or_indices
            if not 0 <= n <= len(self):
                raise ValueError(f"subset n must be in [0, {len(self)}], got {n}")
            if seed is None:
                idx = torch.arange(n)
            else:
                g = torch.Generator().manual_seed(int(seed))
                idx = torch.randperm(len(self), generator=g)[:n].sort().values
        else:
            if seed is not None:
                raise ValueError("subset: seed only applies when an int n is given, not explicit indices")
            idx = torch.as_tensor(n_or_indices)
            if idx.dim() != 1 or (idx.numel() and (idx.dtype.is_floating_point or idx.dtype == torch.bool)):
                raise ValueError("subset indices must be a 1-d sequence of ints")
            idx = idx.to(torch.int64)
            if idx.numel() and (int(idx.min()) < -len(self) or int(idx.max()) >= len(self)):
                raise ValueError(f"subset indices out of range for a dataset of {len(self)} samples")
        idx = idx.to(self.x.device)
        return ArrayDataset(self.x[idx], self.y[idx], self.info)
