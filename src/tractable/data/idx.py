"""MNIST and Fashion-MNIST from their official IDX files (gzipped or raw), offline.

:func:`read_idx` parses one IDX file: magic ``00 00 <type> <ndim>``, ``ndim`` big-endian uint32 sizes, then
exactly ``prod(sizes)`` items (gzip is detected from the content, not the file name). :func:`load_mnist` and
:func:`load_fashion_mnist` look for ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` in

* MNIST: ``<root>/mnist/``, ``<root>/MNIST/raw/``;
* Fashion-MNIST: ``<root>/fashion_mnist/``, ``<root>/FashionMNIST/raw/``, and (``system=True``) the Debian
  package ``dataset-fashion-mnist``'s ``/usr/share/datasets/fashion-mnist/``.

``download=True`` fetches the two gz files of the split into ``<root>/mnist/`` or ``<root>/fashion_mnist/``
from the standard mirror (MNIST: the PyTorch S3 mirror; Fashion-MNIST: Zalando's official S3) and checks their
official MD5s.
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import numpy as np
import torch

from tractable.data.array import ArrayDataset
from tractable.data.download import download_file
from tractable.data.info import DatasetInfo
from tractable.data.paths import PathLike, missing_data_error, resolve_root

_IDX_TYPES: Dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_SPLIT_PREFIX = {"train": "train", "test": "t10k"}


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file (raw or gzip) into a native-endian numpy array.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: bad magic number, unknown type code, or a payload shorter/longer than the header says.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: corrupt gzip stream ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (magic must start with two zero bytes, got {raw[:4].hex()})")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_TYPES:
        raise ValueError(
            f"{path}: unknown IDX type code 0x{code:02x}; accepted: {', '.join(f'0x{c:02x}' for c in _IDX_TYPES)}"
        )
    if ndim < 1:
        raise ValueError(f"{path}: IDX header declares {ndim} dimensions, need >= 1")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_TYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    payload = len(raw) - header
    if payload != expected:
        raise ValueError(
            f"{path}: IDX header says shape {dims} of {dtype} ({expected} bytes) but the file holds {payload} bytes "
            f"of data ({'truncated' if payload < expected else 'trailing bytes'})"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


@dataclass(frozen=True)
class _IdxSpec:
    name: str
    title: str
    subdirs: Tuple[str, ...]
    system_dirs: Tuple[str, ...]
    base_url: str
    md5: Mapping[str, str]
    mean: float
    std: float


_MNIST = _IdxSpec(
    name="mnist",
    title="MNIST",
    subdirs=("mnist", "MNIST/raw"),
    system_dirs=(),
    base_url="https://ossci-datasets.s3.amazonaws.com/mnist/",
    md5={
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    mean=0.1307,
    std=0.3081,
)

_FASHION = _IdxSpec(
    name="fashion_mnist",
    title="Fashion-MNIST",
    subdirs=("fashion_mnist", "FashionMNIST/raw"),
    system_dirs=("/usr/share/datasets/fashion-mnist",),
    base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    md5={
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    mean=0.2860,
    std=0.3530,
)


def _find(folder: Path, stem: str) -> Optional[Path]:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _load(
    spec: _IdxSpec,
    split: str,
    root: Optional[PathLike],
    download: bool,
    base_url: Optional[str],
    md5: Optional[Mapping[str, str]],
    system: bool,
) -> ArrayDataset:
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"split must be 'train' or 'test' for {spec.title}, got {split!r}")
    base = resolve_root(root)
    dirs = [base / s for s in spec.subdirs] + ([Path(s) for s in spec.system_dirs] if system else [])
    prefix = _SPLIT_PREFIX[split]
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")

    def attempt() -> Optional[Tuple[Path, Path]]:
        for d in dirs:
            images, labels = _find(d, stems[0]), _find(d, stems[1])
            if images is not None and labels is not None:
                return images, labels
        return None

    found = attempt()
    if found is None and download:
        checksums = dict(spec.md5)
        if md5 is not None:
            checksums.update(md5)
        url = (base_url or spec.base_url).rstrip("/") + "/"
        for stem in stems:
            download_file(url + f"{stem}.gz", dirs[0] / f"{stem}.gz", checksums[f"{stem}.gz"])
        found = attempt()
    if found is None:
        raise missing_data_error(
            f"{spec.title} ({split} split)", dirs, [f"{s} or {s}.gz" for s in stems]
        )
    images_path, labels_path = found
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{images_path}: expected uint8 images of shape (n, 28, 28), got {images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{labels_path}: expected a 1-d uint8 label file, got {labels.dtype} {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{spec.title} {split}: {images.shape[0]} images in {images_path} but {labels.shape[0]} labels in "
            f"{labels_path}"
        )
    if labels.size and labels.max() >= 10:
        raise ValueError(f"{labels_path}: labels must be in [0, 10), found {labels.max()}")
    info = DatasetInfo(name=spec.name, num_classes=10, shape=(1, 28, 28), mean=(spec.mean,), std=(spec.std,))
    x = torch.from_numpy(images).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return ArrayDataset(x, y, info)


def load_mnist(
    split: str = "train",
    root: Optional[PathLike] = None,
    *,
    download: bool = False,
    base_url: Optional[str] = None,
    md5: Optional[Mapping[str, str]] = None,
) -> ArrayDataset:
    """MNIST as uint8 ``(N, 1, 28, 28)`` (60 000 train / 10 000 test) and int64 labels.

    ``base_url`` replaces the download mirror; ``md5`` maps file names (``"train-images-idx3-ubyte.gz"``, ...)
    to checksums that replace the official ones for downloads.
    """
    return _load(_MNIST, split, root, download, base_url, md5, system=False)


def load_fashion_mnist(
    split: str = "train",
    root: Optional[PathLike] = None,
    *,
    download: bool = False,
    base_url: Optional[str] = None,
    md5: Optional[Mapping[str, str]] = None,
    system: bool = True,
) -> ArrayDataset:
    """Fashion-MNIST as uint8 ``(N, 1, 28, 28)`` and int64 labels; ``system=False`` skips ``/usr/share/datasets``."""
    return _load(_FASHION, split, root, download, base_url, md5, system=system)
