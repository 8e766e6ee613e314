"""Writers for tiny dataset files in the official on-disk formats (CIFAR python/binary, IDX), for the tests."""
from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

PIXELS = 3 * 32 * 32


def py2_style_pickle(obj) -> bytes:
    """Protocol-2 pickle whose numpy globals use the numpy<2 module path, like the official CIFAR files."""
    return pickle.dumps(obj, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def cifar10_arrays(seed: int = 0, per_batch: int = 3, n_test: int = 4) -> Dict[str, Tuple[np.ndarray, List[int]]]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        out[name] = (rng.integers(0, 256, (n, PIXELS), dtype=np.uint8), rng.integers(0, 10, n).tolist())
    return out


def write_cifar10_python(base: Path, arrays) -> Path:
    folder = base / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, labels) in arrays.items():
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                 b"filenames": [b"f%d.png" % i for i in range(len(labels))]}
        (folder / name).write_bytes(py2_style_pickle(batch))
    (folder / "batches.meta").write_bytes(py2_style_pickle({b"label_names": [b"c%d" % i for i in range(10)]}))
    return folder


def write_cifar10_binary(base: Path, arrays) -> Path:
    folder = base / "cifar-10-batches-bin"
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, labels) in arrays.items():
        rec = np.concatenate([np.asarray(labels, dtype=np.uint8)[:, None], data], axis=1)
        (folder / f"{name}.bin").write_bytes(rec.tobytes())
    (folder / "batches.meta.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n")
    return folder


def cifar100_arrays(seed: int = 1, n_train: int = 6, n_test: int = 4):
    rng = np.random.default_rng(seed)
    out = {}
    for name, n in (("train", n_train), ("test", n_test)):
        fine = rng.integers(0, 100, n)
        out[name] = (rng.integers(0, 256, (n, PIXELS), dtype=np.uint8), fine.tolist(), (fine // 5).tolist())
    return out


def write_cifar100_python(base: Path, arrays) -> Path:
    folder = base / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, fine, coarse) in arrays.items():
        batch = {b"batch_label": name.encode(), b"fine_labels": fine, b"coarse_labels": coarse, b"data": data,
                 b"filenames": [b"f%d.png" % i for i in range(len(fine))]}
        (folder / name).write_bytes(py2_style_pickle(batch))
    (folder / "meta").write_bytes(py2_style_pickle({b"fine_label_names": [], b"coarse_label_names": []}))
    return folder


def write_cifar100_binary(base: Path, arrays) -> Path:
    folder = base / "cifar-100-binary"
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, fine, coarse) in arrays.items():
        rec = np.concatenate([np.asarray(coarse, np.uint8)[:, None], np.asarray(fine, np.uint8)[:, None], data], 1)
        (folder / f"{name}.bin").write_bytes(rec.tobytes())
    return folder


def tar_gz(folder: Path, archive: Path) -> Path:
    """``archive`` (a .tar.gz) holding ``folder`` under its own name, as the official archives do."""
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(folder, arcname=folder.name)
    return archive


def tar_gz_members(archive: Path, members: Dict[str, bytes]) -> Path:
    with tarfile.open(archive, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return archive


_IDX_CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype("i2"): 0x0B, np.dtype("i4"): 0x0C,
              np.dtype("f4"): 0x0D, np.dtype("f8"): 0x0E}


def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr)
    code = _IDX_CODES[arr.dtype.newbyteorder("=")]
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = idx_bytes(arr)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def mnist_arrays(seed: int, n: int):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def write_mnist_split(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool):
    write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz)
