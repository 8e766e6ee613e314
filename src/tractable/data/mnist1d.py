"""MNIST-1D (Greydanus & Steinbach), generated offline with the ``mnist1d`` package's procedural generator.

The package's ``make_dataset`` seeds and draws from numpy's *global* random state; :func:`load_mnist1d`
saves that state (and Python's ``random`` state) before generating and restores it afterwards, so calling it
has no side effect on other code's randomness and the result depends only on the arguments. Nothing is
downloaded. With the default arguments (5 000 samples, 80/20 split, seed 42) the splits are 4 000 train and
1 000 test signals of length 40, stored as float32 ``(N, 1, 40)``.

The generator standardises the whole set to mean 0 and standard deviation 1, so ``info.mean == (0.0,)`` and
``info.std == (1.0,)``. When ``root`` is given and writable the generated arrays are cached there as
``<root>/mnist1d/mnist1d-<hash of the arguments>.npz`` (plain arrays, loaded without pickle).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from tractable.data.array import ArrayDataset
from tractable.data.info import DatasetInfo
from tractable.data.paths import PathLike

_TUNABLE = (
    "num_samples", "train_split", "template_len", "padding", "scale_coeff", "max_translation",
    "corr_noise_scale", "iid_noise_scale", "shear_scale", "shuffle_seq", "final_seq_length",
)


def _generate(args: Dict[str, Any]) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    ns = get_dataset_args(as_dict=False)
    for k, v in args.items():
        setattr(ns, k, v)
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(ns)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return (
        np.asarray(data["x"], dtype=np.float32), np.asarray(data["y"], dtype=np.int64),
        np.asarray(data["x_test"], dtype=np.float32), np.asarray(data["y_test"], dtype=np.int64),
    )


def _cache_path(root: Path, args: Dict[str, Any]) -> Path:
    try:
        from importlib.metadata import version

        pkg = version("mnist1d")
    except Exception:  # pragma: no cover - metadata missing
        pkg = "unknown"
    key = json.dumps({"args": args, "mnist1d": pkg}, sort_keys=True)
    return root / "mnist1d" / f"mnist1d-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def _try_read(path: Path, length: int):
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = tuple(z[k] for k in ("x", "y", "x_test", "y_test"))
    except (OSError, ValueError, KeyError):
        return None
    x, y, xt, yt = arrays
    if x.ndim != 2 or x.shape[1] != length or xt.ndim != 2 or y.shape != (len(x),) or yt.shape != (len(xt),):
        return None
    return x.astype(np.float32), y.astype(np.int64), xt.astype(np.float32), yt.astype(np.int64)


def _try_write(path: Path, arrays) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, x=arrays[0], y=arrays[1], x_test=arrays[2], y_test=arrays[3])
        os.replace(tmp, path)
    except OSError:
        pass  # caching is best-effort; a read-only root just means regenerating next time


def load_mnist1d(
    split: str = "train",
    root: Optional[PathLike] = None,
    *,
    seed: int = 42,
    cache: bool = True,
    **generator_args: Any,
) -> ArrayDataset:
    """Generate (or read from cache) an MNIST-1D split as float32 ``(N, 1, L)`` signals and int64 labels.

    Args:
        split: ``"train"`` or ``"test"``.
        root: data root for the ``.npz`` cache; ``None`` disables caching.
        seed: generator seed (42 is the ``mnist1d`` default).
        cache: read/write the cache under ``root``.
        **generator_args: overrides of ``mnist1d.data.get_dataset_args()``: ``num_samples`` (5000),
            ``train_split`` (0.8), ``final_seq_length`` (40), noise and transform scales, ``shuffle_seq``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test' for MNIST-1D, got {split!r}")
    unknown = sorted(set(generator_args) - set(_TUNABLE))
    if unknown:
        raise ValueError(f"unknown MNIST-1D generator arguments {unknown}; accepted: {list(_TUNABLE)} and seed")
    args: Dict[str, Any] = {"seed": int(seed)}
    args.update(generator_args)
    if "padding" in args:
        args["padding"] = [int(p) for p in args["padding"]]
    length = int(args.get("final_seq_length", 40))

    arrays = None
    path = _cache_path(Path(root).expanduser(), args) if (cache and root is not None) else None
    if path is not None and path.is_file():
        arrays = _try_read(path, length)
    if arrays is None:
        arrays = _generate(args)
        if path is not None:
            _try_write(path, arrays)
    x, y = (arrays[0], arrays[1]) if split == "train" else (arrays[2], arrays[3])
    info = DatasetInfo(name="mnist1d", num_classes=10, shape=(1, length), mean=(0.0,), std=(1.0,))
    return ArrayDataset(torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(1), torch.from_numpy(y), info)
