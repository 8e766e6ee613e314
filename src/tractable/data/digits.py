"""scikit-learn's bundled 8×8 handwritten digits (1 797 images, 10 classes), with a seeded stratified split.

Pixels are integers 0..16 in the original; they are stored as float32 ``(N, 1, 8, 8)`` divided by 16, so in
[0, 1]. The split keeps each class's share in both parts (largest-remainder rounding of ``test_size`` over the
classes) and depends only on ``seed`` (numpy ``default_rng``), not on scikit-learn's splitting code.
``info.mean``/``info.std`` are the statistics of all 1 797 images, so both splits share them.
"""
from __future__ import annotations

import numpy as np
import torch

from tractable.data.array import ArrayDataset
from tractable.data.info import DatasetInfo

TOTAL = 1797


def stratified_split(labels: np.ndarray, test_size: int, seed: int):
    """``(train_idx, test_idx)``, sorted, with each class split in proportion to its size."""
    labels = np.asarray(labels)
    n = labels.shape[0]
    if not 0 < test_size < n:
        raise ValueError(f"test_size must be in (0, {n}), got {test_size}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * test_size / n
    take = np.floor(exact).astype(int)
    remainder = test_size - take.sum()
    order = np.lexsort((classes, -(exact - take)))  # largest fractional part first, ties by class id
    take[order[:remainder]] += 1
    test = []
    for c, k in zip(classes, take):
        members = np.flatnonzero(labels == c)
        test.append(rng.permutation(members)[:k])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(n), test_idx)
    return train_idx, test_idx


def load_digits(split: str = "train", *, seed: int = 0, test_size: int = 360) -> ArrayDataset:
    """The digits split: 1 437 train / 360 test images by default, float32 ``(N, 1, 8, 8)`` in [0, 1]."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test' for digits, got {split!r}")
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    images = (np.asarray(bunch.images, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = stratified_split(labels, int(test_size), int(seed))
    idx = train_idx if split == "train" else test_idx
    info = DatasetInfo(
        name="digits", num_classes=10, shape=(1, 8, 8),
        mean=(float(images.mean(dtype=np.float64)),), std=(float(images.std(dtype=np.float64)),),
    )
    return ArrayDataset(torch.from_numpy(images[idx].copy()), torch.from_numpy(labels[idx].copy()), info)
