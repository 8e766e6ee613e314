"""From :class:`DataConfig` to datasets and to the loaders the loop iterates.

Small datasets (:class:`tractable.data.ArrayDataset`) go through :class:`tractable.data.DeviceLoader`: tensors on
the device, augmentation and normalisation in batch, the global batch split contiguously over ranks, and
``iterate(epoch, start)`` to resume at a batch inside an epoch. Streaming datasets (anything else with ``.info``,
e.g. ImageFolder) go through :class:`StreamLoader`, a ``torch.utils.data.DataLoader`` with a seeded
``DistributedSampler`` (per-rank batch ``batch_size // world_size``) and the same ``set_epoch``/``iterate``
interface; their transforms (augmentation, normalisation) belong to the dataset.

Both loaders expose ``global_batch_size(i)``: the number of samples batch ``i`` holds summed over ranks. The loop
weights each rank's mean loss by ``local_n · world / global_n`` so the averaged gradient equals the full-batch
gradient even for a short last batch.
"""
from __future__ import annotations

import math
import warnings
from typing import Iterator, List, Optional

import torch

__all__ = ["build_dataset", "apply_subset", "build_loader", "StreamLoader", "is_array_dataset", "model_shape_kwargs"]


def is_array_dataset(ds) -> bool:
    """Whether ``ds`` is an in-memory :class:`tractable.data.ArrayDataset` (served by the device loader)."""
    from tractable.data import ArrayDataset

    return isinstance(ds, ArrayDataset)


def _subset(ds, n: int, key: str):
    if n > len(ds):
        raise ValueError(f"{key}={n} is larger than the dataset ({len(ds)} samples)")
    if is_array_dataset(ds):
        return ds.subset(n)
    sub = torch.utils.data.Subset(ds, range(n))
    sub.info = ds.info
    return sub


def build_dataset(cfg, split: str):
    """``load_dataset`` for one split (``"train"``/``"test"``) of a DataConfig, with its subset option applied.

    Under DDP with ``download=True`` rank 0 loads (and downloads) first while the others wait.
    """
    from tractable.data import load_dataset
    from tractable.train.distributed import barrier, is_main

    if cfg.download and not is_main():
        barrier()
    ds = load_dataset(cfg.name, split=split, root=cfg.root, download=cfg.download, **dict(cfg.kwargs))
    if cfg.download and is_main():
        barrier()
    return apply_subset(with_stats(ds, cfg), cfg, split)


def with_stats(ds, cfg):
    """Replace the dataset's normalisation statistics by ``data.mean``/``data.std`` when they are given."""
    if cfg.mean is None and cfg.std is None:
        return ds
    import dataclasses

    info = ds.info
    mean = tuple(float(v) for v in (cfg.mean if cfg.mean is not None else info.mean))
    std = tuple(float(v) for v in (cfg.std if cfg.std is not None else info.std))
    for key, v in (("data.mean", mean), ("data.std", std)):
        if len(v) != len(info.mean):
            raise ValueError(f"{key}: {info.name} has {len(info.mean)} channel(s), got {len(v)} values {list(v)}")
    if any(v <= 0 for v in std):
        raise ValueError(f"data.std: every value must be > 0, got {list(std)}")
    ds.info = dataclasses.replace(info, mean=mean, std=std)
    return ds


def apply_subset(ds, cfg, split: str):
    """The first ``data.subset`` (train) or ``data.test_subset`` (test) samples of ``ds``, if set; then, for the
    training split, ``data.label_noise`` (:mod:`tractable.data.label_noise`)."""
    n, key = (cfg.subset, "data.subset") if split == "train" else (cfg.test_subset, "data.test_subset")
    ds = ds if n is None else _subset(ds, n, key)
    if split == "train" and getattr(cfg, "label_noise", 0.0) > 0:  # after the subset: noise on what is trained
        from tractable.data.label_noise import apply_label_noise

        ds = apply_label_noise(ds, cfg.label_noise, cfg.label_noise_seed)
    return ds


def model_shape_kwargs(info, accepted) -> dict:
    """``num_classes``/``in_channels``/``image_size``/``input_size`` from a DatasetInfo, for the keywords a model
    builder accepts (``accepted``: its parameter names)."""
    shape = tuple(info.shape)
    kw = {"num_classes": info.num_classes, "in_channels": shape[0]}
    if len(shape) == 2:
        kw["input_size"] = shape[1]
    elif len(shape) >= 3:
        if len(set(shape[1:])) == 1:
            kw["image_size"] = shape[1]
        else:
            kw["in_features"] = math.prod(shape)
    return {k: v for k, v in kw.items() if k in accepted}


class StreamLoader:
    """DataLoader + DistributedSampler with the DeviceLoader interface (``set_epoch``, ``iterate``, ``len``)."""

    def __init__(self, dataset, batch_size: int, *, shuffle: bool, drop_last: bool, seed: int, device,
                 rank: int = 0, world_size: int = 1, num_workers: int = 4):
        if batch_size % world_size:
            raise ValueError(f"data.batch_size={batch_size} must be divisible by the world size {world_size}")
        self.dataset = dataset
        self.local_batch = batch_size // world_size
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.device = torch.device(device)
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.epoch = 0
        self._sampler = torch.utils.data.DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)

    def __len__(self) -> int:
        n = len(self._sampler) if self.shuffle else len(range(self.rank, len(self.dataset), self.world_size))
        return n // self.local_batch if self.drop_last else math.ceil(n / self.local_batch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batch_size(self, i: int) -> int:
        n = len(self._sampler)
        return min(self.local_batch, n - i * self.local_batch) * self.world_size

    def _indices(self, epoch: int) -> List[int]:
        if not self.shuffle:  # evaluation: a plain partition, no padding with repeated samples
            return list(range(self.rank, len(self.dataset), self.world_size))
        self._sampler.set_epoch(epoch)
        return list(iter(self._sampler))

    def iterate(self, epoch: Optional[int] = None, start: int = 0) -> Iterator:
        epoch = self.epoch if epoch is None else epoch
        idx = self._indices(epoch)[start * self.local_batch:]
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=self.local_batch, sampler=idx, drop_last=self.drop_last,
            num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
            persistent_workers=False)
        non_blocking = self.device.type == "cuda"
        for batch in loader:
            yield tuple(t.to(self.device, non_blocking=non_blocking) if isinstance(t, torch.Tensor) else t
                        for t in batch)

    def __iter__(self):
        return self.iterate(self.epoch, 0)


class _ArrayLoader:
    """Adds ``global_batch_size`` to a DeviceLoader (delegating everything else)."""

    def __init__(self, loader, n: int, batch_size: int, drop_last: bool):
        self._loader = loader
        self._n, self._b, self._drop = n, batch_size, drop_last

    def global_batch_size(self, i: int) -> int:
        return min(self._b, self._n - i * self._b)

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self):
        return iter(self._loader)

    def __getattr__(self, name):
        return getattr(self._loader, name)


def build_loader(dataset, batch_size: int, *, train: bool, cfg, seed: int, device, rank: int = 0,
                 world_size: int = 1, grad_accum: int = 1):
    """The training (``train=True``: shuffled, augmented) or evaluation loader for ``dataset``.

    A training set whose last batch is too short to give every rank ``grad_accum`` samples gets
    ``drop_last=True`` (with a warning), since an empty micro-batch cannot take part in DDP's reduction.
    """
    drop_last = bool(cfg.drop_last) if train else False
    if batch_size % world_size:
        key = "data.batch_size" if train else "data.eval_batch_size"
        raise ValueError(f"{key}={batch_size} is the global batch and must be divisible by the number of "
                         f"ranks ({world_size})")
    n = len(dataset)
    if train and n < batch_size and drop_last:
        raise ValueError(f"data.batch_size={batch_size} is larger than the training set ({n} samples) and "
                         "data.drop_last=true: no batch left")
    rem = n % batch_size
    if train and not drop_last and 0 < rem < world_size * grad_accum:
        if n < batch_size:
            raise ValueError(f"the training set ({n} samples) is smaller than world_size × grad_accum "
                             f"({world_size} × {grad_accum})")
        warnings.warn(f"the last training batch ({rem} samples) cannot be split over {world_size} rank(s) × "
                      f"{grad_accum} micro-batch(es); dropping it (data.drop_last=true)", stacklevel=2)
        drop_last = True
    if is_array_dataset(dataset):
        from tractable.data import DeviceLoader

        loader = DeviceLoader(dataset, batch_size, shuffle=train, drop_last=drop_last,
                              augment=cfg.augment if train else None, pad=cfg.pad, normalize=True, seed=seed,
                              device=device, rank=rank, world_size=world_size)
        return _ArrayLoader(loader, len(dataset), batch_size, drop_last)
    if not hasattr(dataset, "info"):
        raise TypeError(f"dataset {type(dataset).__name__} has no .info (a tractable.data.DatasetInfo)")
    return StreamLoader(dataset, batch_size, shuffle=train, drop_last=drop_last, seed=seed, device=device,
                        rank=rank, world_size=world_size, num_workers=cfg.num_workers)
