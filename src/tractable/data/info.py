"""Static description of a dataset: name, number of classes, per-sample shape and per-channel statistics.

``mean`` and ``std`` are in the units of the stored tensor *after* conversion to float with
:func:`tractable.data.to_float`: uint8 images are divided by 255, so their statistics are in [0, 1] units;
float data (MNIST-1D, digits) is used as stored.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset before seeing a batch.

    Attributes:
        name: registry name, e.g. ``"cifar10"``.
        num_classes: number of target classes (labels are ``0 .. num_classes - 1``).
        shape: per-sample shape, channels first: ``(3, 32, 32)``, ``(1, 28, 28)``, ``(1, 8, 8)``, ``(1, 40)``.
        mean: per-channel mean (one entry per ``shape[0]``), in float units (see module docstring).
        std: per-channel standard deviation, same units, all entries > 0.
    """

    name: str
    num_classes: int
    shape: Tuple[int, ...]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"DatasetInfo name must be a non-empty string, got {self.name!r}")
        if int(self.num_classes) < 1:
            raise ValueError(f"DatasetInfo num_classes must be >= 1, got {self.num_classes!r}")
        object.__setattr__(self, "num_classes", int(self.num_classes))
        if len(self.shape) < 2 or any(s < 1 for s in self.shape):
            raise ValueError(
                f"DatasetInfo shape must be channels-first with >= 2 positive dims, e.g. (3, 32, 32) or (1, 40); "
                f"got {self.shape!r}"
            )
        channels = self.shape[0]
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(
                f"DatasetInfo mean and std need one entry per channel ({channels} for shape {self.shape}); "
                f"got mean={self.mean!r}, std={self.std!r}"
            )
        if any(not s > 0 for s in self.std):
            raise ValueError(f"DatasetInfo std entries must be > 0, got {self.std!r}")

    @property
    def channels(self) -> int:
        """Number of channels, ``shape[0]``."""
        return self.shape[0]
