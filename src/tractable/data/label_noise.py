"""Label noise through a fixed, saved permutation (the protocol of Wortsman et al. 2021 and others).

``noisy_labels(y, fraction, num_classes, seed)``: one permutation of the n training indices is drawn from
``torch.Generator().manual_seed(seed)``; its first ⌊n·fraction⌋ entries get a class drawn uniformly from all
``num_classes`` classes from the same generator (so about 1/C of the "noisy" labels keep their true class).
The result depends only on (labels, fraction, num_classes, seed): every training seed and every DDP rank sees
the same noisy labels, and the record (indices, new labels, original labels) is saved with the run.

:func:`apply_label_noise` works on in-memory datasets (a new :class:`~tractable.data.ArrayDataset`) and on
streaming ones that know their labels without decoding a sample (``ImageFolderDataset`` and ImageNet /
TinyImageNet through it: ``targets``; a ``torch.utils.data.Subset`` of one): :class:`NoisyLabels` wraps them
and replaces the label of every sample it returns.
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import torch

__all__ = ["noisy_labels", "apply_label_noise", "NoisyLabels"]


def noisy_labels(y: torch.Tensor, fraction: float, num_classes: int, seed: int = 0
                 ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """The noisy copy of ``y`` and the record ``{"indices", "labels", "original", "fraction", "seed"}``."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction < 1.0:
        raise ValueError(f"data.label_noise: the fraction of resampled labels must be in [0, 1), got {fraction!r}")
    if y.dim() != 1:
        raise ValueError(f"label noise needs 1-d class labels, got shape {tuple(y.shape)}")
    n = y.shape[0]
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=g)
    k = math.floor(n * fraction)
    idx = perm[:k].sort().values
    new = torch.randint(0, int(num_classes), (k,), generator=g)
    out = y.detach().cpu().clone()
    original = out[idx].clone()
    out[idx] = new
    record = {"indices": idx, "labels": new, "original": original,
              "fraction": torch.tensor(float(fraction), dtype=torch.float64), "seed": torch.tensor(int(seed))}
    return out.to(y.device), record


def _targets(ds) -> torch.Tensor:
    """The labels of ``ds`` in sample order, read without decoding a sample."""
    if isinstance(ds, torch.utils.data.Subset):
        return _targets(ds.dataset)[torch.as_tensor(list(ds.indices), dtype=torch.long)]
    for attr in ("y", "targets"):
        labels = getattr(ds, attr, None)
        if labels is not None:
            return torch.as_tensor(labels, dtype=torch.long)
    raise ValueError(f"data.label_noise needs the training labels without decoding samples; {type(ds).__name__} "
                     "has neither .y nor .targets (in-memory datasets, ImageFolder, ImageNet, TinyImageNet have)")


class NoisyLabels(torch.utils.data.Dataset):
    """A streaming dataset whose labels are replaced by ``labels`` (sample ``i`` returns ``(x_i, labels[i])``)."""

    def __init__(self, ds, labels: torch.Tensor, record: Dict[str, torch.Tensor]):
        if len(labels) != len(ds):
            raise ValueError(f"NoisyLabels: {len(labels)} labels for {len(ds)} samples")
        self.dataset, self.targets, self.label_noise = ds, labels, record
        self.info = ds.info

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        x, _ = self.dataset[index]
        return x, int(self.targets[index])


def apply_label_noise(ds, fraction: float, seed: int = 0):
    """``ds`` with noisy training labels; the record is ``.label_noise``. An in-memory dataset becomes a new
    :class:`~tractable.data.ArrayDataset`; a streaming one is wrapped in :class:`NoisyLabels`."""
    from tractable.data import ArrayDataset

    if isinstance(ds, ArrayDataset):
        y, record = noisy_labels(ds.y, fraction, ds.info.num_classes, seed)
        out = ArrayDataset(ds.x, y, ds.info)
        out.label_noise = record
        return out
    y, record = noisy_labels(_targets(ds), fraction, ds.info.num_classes, seed)
    return NoisyLabels(ds, y, record)
