"""Label noise through a fixed, saved permutation (the protocol of Wortsman et al. 2021 and others).

``noisy_labels(y, fraction, num_classes, seed)``: one permutation of the n training indices is drawn from
``torch.Generator().manual_seed(seed)``; its first ⌊n·fraction⌋ entries get a class drawn uniformly from all
``num_classes`` classes from the same generator (so about 1/C of the "noisy" labels keep their true class).
The result depends only on (labels, fraction, num_classes, seed): every training seed and every DDP rank sees
the same noisy labels, and the record (indices, new labels, original labels) is saved with the run.
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import torch

__all__ = ["noisy_labels", "apply_label_noise"]


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


def apply_label_noise(ds, fraction: float, seed: int = 0):
    """An :class:`~tractable.data.ArrayDataset` with noisy training labels; the record is ``ds.label_noise``."""
    from tractable.data import ArrayDataset

    if not isinstance(ds, ArrayDataset):
        raise ValueError(f"data.label_noise needs an in-memory dataset (ArrayDataset); {type(ds).__name__} "
                         "streams its samples")
    y, record = noisy_labels(ds.y, fraction, ds.info.num_classes, seed)
    out = ArrayDataset(ds.x, y, ds.info)
    out.label_noise = record
    return out
