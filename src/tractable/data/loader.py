"""``DeviceLoader``: batches from a dataset held entirely on the training device, reproducible and resumable.

The whole :class:`ArrayDataset` is moved to ``device`` once, in its storage dtype (uint8 images stay uint8).
Each batch is gathered by index, augmented (optional), converted to float32 and normalised with
``info.mean``/``info.std`` on the device.

Determinism. Epoch ``e``'s order is ``randperm(N)`` from a generator seeded by ``(seed, e)``; the augmentation
parameters of global batch ``b`` come from a generator seeded by ``(seed, e, b)``. Nothing depends on global
random state or on what was iterated before, so ``iterate(e, start=k)`` yields exactly the batches ``k, k+1,
...`` of an uninterrupted epoch ``e``.

Distributed. ``batch_size`` is the *global* batch. Every rank computes the same permutation and draws the
augmentation parameters for the whole global batch, then keeps its contiguous slice: rank ``r`` of ``R`` gets
positions ``[r·B/R, (r+1)·B/R)``. Concatenating the ranks' batches in rank order therefore reproduces the
single-process batch bit for bit. ``batch_size`` must be divisible by ``world_size``. With
``drop_last=False`` the final, partial global batch of ``s < B`` samples is split as evenly as possible: the
first ``s mod R`` ranks get ``⌊s/R⌋ + 1`` samples, the others ``⌊s/R⌋`` (which can be 0: such a rank still
yields an empty batch, so that all ranks run the same number of steps). ``drop_last=True`` drops it, as in
``torch.utils.data.DataLoader``.

``augment="randaugment"`` is the timm CIFAR recipe (``rand-m9-mstd0.5-inc1``, ``re_prob=0.25``), batched: random
crop (pad) + flip + RandAugment on the uint8 batch, then ``to_float`` + normalisation, then Random Erasing on the
normalised batch (see :mod:`tractable.data.randaugment`). All its draws are made for the global batch from the
same per-batch generator, in that order, before the rank's slice is taken, so the invariants above hold.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping, Optional, Tuple, Union

import torch

from tractable.data.array import ArrayDataset
from tractable.data.augment import crop_with_offsets, flip_where, sample_crop_offsets, sample_flip_mask
from tractable.data.convert import to_float
from tractable.data.randaugment import (
    apply_erasing,
    apply_rand_augment,
    sample_erasing_params,
    sample_rand_augment_params,
)
from tractable.data.seeding import make_generator

AUGMENTS = ("crop_flip", "flip", "crop", "randaugment", None)
_RA_SAMPLE_KEYS = ("num_ops", "magnitude", "magnitude_std", "increasing", "prob", "magnitude_max")
_RA_APPLY_KEYS = ("fill", "interpolation")
_PAD_MODES = ("constant", "reflect", "replicate", "circular")


class DeviceLoader:
    """Iterate ``(x, y)`` batches (float32 ``x``, int64 ``y``) of a device-resident dataset.

    Args:
        dataset: the :class:`ArrayDataset` to serve (copied to ``device`` once).
        batch_size: global batch size (over all ranks).
        shuffle: reshuffle every epoch (otherwise dataset order).
        drop_last: drop the final partial global batch.
        augment: ``"crop_flip"``, ``"crop"``, ``"flip"``, ``"randaugment"`` or ``None``; crop pads by ``pad`` and
            crops back at a random offset, flip mirrors the last axis with probability 0.5; ``"randaugment"`` is
            crop + flip + RandAugment + normalisation + Random Erasing (1- or 3-channel images only).
        pad: crop padding (pixels / time steps).
        pad_mode: ``"constant"`` (zeros, i.e. black before normalisation), ``"reflect"``, ``"replicate"`` or
            ``"circular"``.
        normalize: subtract ``info.mean`` and divide by ``info.std`` per channel after ``to_float``.
        seed: base seed of the shuffling and augmentation generators.
        device: where the data lives and the batches are produced.
        rank, world_size: this process's slice of every global batch (see module docstring).
        randaugment: ``augment="randaugment"`` only: options of
            :func:`~tractable.data.randaugment.rand_augment` (``num_ops=2, magnitude=9, magnitude_std=0.5,
            increasing=True, prob=0.5, magnitude_max=10, interpolation="nearest"``, and ``fill``, by default
            ``round(255 · info.mean)`` per channel, as timm's ``img_mean``).
        erasing: ``augment="randaugment"`` only: options of
            :func:`~tractable.data.randaugment.random_erasing` (``p=0.25, scale=(0.02, 1/3),
            ratio=(0.3, 1/0.3), mode="const", attempts=10``); ``p=0`` turns erasing off.
    """

    def __init__(
        self,
        dataset: ArrayDataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        augment: Optional[str] = None,
        pad: int = 4,
        pad_mode: str = "constant",
        normalize: bool = True,
        seed: int = 0,
        device: Union[str, torch.device] = "cpu",
        rank: int = 0,
        world_size: int = 1,
        randaugment: Optional[Mapping[str, Any]] = None,
        erasing: Optional[Mapping[str, Any]] = None,
    ):
        if not isinstance(dataset, ArrayDataset):
            raise ValueError(f"dataset must be an ArrayDataset, got {type(dataset).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be a positive int, got {world_size!r}")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be an int in [0, world_size={world_size}), got {rank!r}")
        if batch_size % world_size:
            raise ValueError(
                f"batch_size is the global batch and must be divisible by world_size: "
                f"{batch_size} % {world_size} != 0"
            )
        if augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
        if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
            raise ValueError(f"pad must be a non-negative int, got {pad!r}")
        if pad_mode not in _PAD_MODES:
            raise ValueError(f"pad_mode must be one of {_PAD_MODES}, got {pad_mode!r}")
        if augment is not None and dataset.x.dim() not in (3, 4):
            raise ValueError(
                f"augment={augment!r} needs (N, C, H, W) or (N, C, L) samples, got {tuple(dataset.x.shape)}"
            )
        ra_sample, ra_apply, erase_kw = {}, {}, {}
        if augment == "randaugment":
            if dataset.x.dim() != 4 or dataset.x.dtype != torch.uint8 or dataset.x.shape[1] not in (1, 3):
                raise ValueError("augment='randaugment' needs uint8 (N, C, H, W) images with 1 or 3 channels, got "
                                 f"{dataset.x.dtype} {tuple(dataset.x.shape)}")
            ra = dict(randaugment or {})
            unknown = set(ra) - set(_RA_SAMPLE_KEYS) - set(_RA_APPLY_KEYS)
            if unknown:
                raise ValueError(f"unknown randaugment option(s) {sorted(unknown)}; accepted: "
                                 f"{_RA_SAMPLE_KEYS + _RA_APPLY_KEYS}")
            ra_sample = {k: v for k, v in ra.items() if k in _RA_SAMPLE_KEYS}
            ra_apply = {k: v for k, v in ra.items() if k in _RA_APPLY_KEYS}
            ra_apply.setdefault("fill", tuple(min(255, max(0, round(255 * m))) for m in dataset.info.mean))
            erase_kw = dict(erasing or {})
            # validate the options now (draws nothing from any generator that matters)
            scratch = torch.Generator()
            try:
                apply_rand_augment(dataset.x[:0], sample_rand_augment_params(0, scratch, **ra_sample), **ra_apply)
                sample_erasing_params(0, dataset.x.shape[1:], scratch, **erase_kw)
            except TypeError as e:
                raise ValueError(f"bad randaugment / erasing options: {e}") from None
        elif randaugment is not None or erasing is not None:
            raise ValueError(f"randaugment= and erasing= options need augment='randaugment', got {augment!r}")
        self._ra_sample, self._ra_apply, self._erase_kw = ra_sample, ra_apply, erase_kw
        self.dataset = dataset.to(device)
        self.info = dataset.info
        self.device = self.dataset.x.device
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.augment = augment
        self.pad = pad
        self.pad_mode = pad_mode
        self.normalize = bool(normalize)
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        view = (1, -1) + (1,) * (self.dataset.x.dim() - 2)
        self._mean = torch.tensor(self.info.mean, dtype=torch.float32, device=self.device).view(view)
        self._std = torch.tensor(self.info.std, dtype=torch.float32, device=self.device).view(view)

    # -- sizes -----------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def local_bounds(self, global_size: int) -> Tuple[int, int]:
        """``[lo, hi)``: this rank's positions within a global batch of ``global_size`` samples."""
        q, r = divmod(global_size, self.world_size)
        lo = self.rank * q + min(self.rank, r)
        return lo, lo + q + (1 if self.rank < r else 0)

    # -- randomness ------------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch that ``iter(loader)`` serves (like ``DistributedSampler.set_epoch``)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self.epoch = epoch

    def permutation(self, epoch: int) -> torch.Tensor:
        """The sample order of ``epoch`` (the same on every rank), on the loader's device."""
        n = len(self.dataset)
        if not self.shuffle:
            return torch.arange(n, device=self.device)
        return torch.randperm(n, generator=make_generator(self.seed, "perm", epoch)).to(self.device)

    # -- batches ---------------------------------------------------------------------------------------------
    def _batch(self, perm: torch.Tensor, epoch: int, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        start = index * self.batch_size
        global_size = min(self.batch_size, len(self.dataset) - start)
        lo, hi = self.local_bounds(global_size)
        idx = perm[start + lo:start + hi]
        x, y = self.dataset.x[idx], self.dataset.y[idx]
        erase = None
        if self.augment is not None:
            g = make_generator(self.seed, "augment", epoch, index)
            if self.augment in ("crop", "crop_flip", "randaugment"):
                offsets = sample_crop_offsets(global_size, self.pad, x.dim() - 2, g)[lo:hi]
                x = crop_with_offsets(x, self.pad, offsets, self.pad_mode)
            if self.augment in ("flip", "crop_flip", "randaugment"):
                x = flip_where(x, sample_flip_mask(global_size, g)[lo:hi])
            if self.augment == "randaugment":
                ra = sample_rand_augment_params(global_size, g, **self._ra_sample)[lo:hi]
                x = apply_rand_augment(x, ra, **self._ra_apply)
                erase = sample_erasing_params(global_size, x.shape[1:], g, **self._erase_kw)[lo:hi]
        x = to_float(x)
        if self.normalize:
            x = (x - self._mean) / self._std
        if erase is not None:
            x = apply_erasing(x, erase)
        return x, y

    def iterate(self, epoch: Optional[int] = None, start: int = 0) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``start, start+1, ...`` of ``epoch`` (default: the one set with :meth:`set_epoch`)."""
        epoch = self.epoch if epoch is None else epoch
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= len(self):
            raise ValueError(f"start must be an int in [0, {len(self)}] (batches per epoch), got {start!r}")
        perm = self.permutation(epoch)
        for index in range(start, len(self)):
            yield self._batch(perm, epoch, index)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        return self.iterate(self.epoch)

    def __repr__(self) -> str:
        return (
            f"DeviceLoader({self.info.name!r}, n={len(self.dataset)}, batch_size={self.batch_size}, "
            f"batches={len(self)}, augment={self.augment!r}, device={self.device}, "
            f"rank={self.rank}/{self.world_size})"
        )
