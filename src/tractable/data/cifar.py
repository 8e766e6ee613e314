"""CIFAR-10 and CIFAR-100 from the official distributions, offline, with checksums before any unpickling.

Accepted sources, looked for in ``<root>`` and ``<root>/<name>`` (name = ``cifar10`` / ``cifar100``), in this
order (``format="auto"``):

1. the extracted binary version, ``cifar-10-batches-bin/`` or ``cifar-100-binary/`` (fixed-size records, no
   pickle involved);
2. the extracted python version, ``cifar-10-batches-py/`` or ``cifar-100-python/``: there is no checksum for
   loose files, so they are read with :func:`tractable.data.safe_pickle.safe_load`, which only rebuilds
   containers and numpy arrays;
3. the python archive ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``;
4. the binary archive ``cifar-10-binary.tar.gz`` / ``cifar-100-binary.tar.gz``.

An archive's MD5 is checked against the official value (or the ``md5=`` you pass for a file you made or
trust) *before* it is opened; members are then read straight from the tar (nothing is extracted to disk) and
unpickled with the same restricted unpickler. Images come back as uint8 ``(N, 3, 32, 32)``; CIFAR-100 labels
are the 100 fine classes by default, or the 20 superclasses with ``label="coarse"``.
"""
from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from tractable.data.array import ArrayDataset
from tractable.data.download import check_md5, download_file
from tractable.data.info import DatasetInfo
from tractable.data.paths import PathLike, missing_data_error, resolve_root
from tractable.data.safe_pickle import safe_load

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
_PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class _CifarSpec:
    title: str
    num_classes: Dict[str, int]  # label kind -> classes
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    python_archive: str
    python_md5: str
    python_dir: str
    python_files: Dict[str, Tuple[str, ...]]
    binary_archive: str
    binary_md5: str
    binary_dir: str
    binary_files: Dict[str, Tuple[str, ...]]
    label_offset: Dict[str, int]  # label kind -> byte of the binary record that holds it
    record_label_bytes: int


_SPECS: Dict[str, _CifarSpec] = {
    "cifar10": _CifarSpec(
        title="CIFAR-10",
        num_classes={"fine": 10},
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2023, 0.1994, 0.2010),
        python_archive="cifar-10-python.tar.gz",
        python_md5="c58f30108f718f92721af3b95e74349a",
        python_dir="cifar-10-batches-py",
        python_files={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        binary_archive="cifar-10-binary.tar.gz",
        binary_md5="c32a1d4ab5d03f1284b67883e8d87530",
        binary_dir="cifar-10-batches-bin",
        binary_files={"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)},
        label_offset={"fine": 0},
        record_label_bytes=1,
    ),
    "cifar100": _CifarSpec(
        title="CIFAR-100",
        num_classes={"fine": 100, "coarse": 20},
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        python_archive="cifar-100-python.tar.gz",
        python_md5="eb9058c3a382ffc7106e4002c42a8d85",
        python_dir="cifar-100-python",
        python_files={"train": ("train",), "test": ("test",)},
        binary_archive="cifar-100-binary.tar.gz",
        binary_md5="03b5dce01913d631647c71ecec9e9cb8",
        binary_dir="cifar-100-binary",
        binary_files={"train": ("train.bin",), "test": ("test.bin",)},
        label_offset={"coarse": 0, "fine": 1},
        record_label_bytes=2,
    ),
}

_FORMATS = ("auto", "python", "binary")


def _get(d: dict, key: str):
    """Look a key up whether the pickle stored it as str or (Python 2 style) bytes."""
    if key in d:
        return d[key]
    if key.encode() in d:
        return d[key.encode()]
    raise ValueError(f"CIFAR batch has no {key!r} entry (keys: {sorted(map(str, d))})")


def _parse_python_batch(raw: bytes, label_key: str, source: str) -> Tuple[np.ndarray, np.ndarray]:
    batch = safe_load(raw)
    if not isinstance(batch, dict):
        raise ValueError(f"{source}: expected a pickled dict, got {type(batch).__name__}")
    data = np.asarray(_get(batch, "data"))
    labels = np.asarray(_get(batch, label_key), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        raise ValueError(f"{source}: 'data' must be uint8 (n, {_PIXELS}), got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{source}: {label_key} has {labels.size} entries for {data.shape[0]} images")
    return data, labels


def _parse_binary_batch(raw: bytes, spec: _CifarSpec, label: str, source: str) -> Tuple[np.ndarray, np.ndarray]:
    record = spec.record_label_bytes + _PIXELS
    if len(raw) == 0 or len(raw) % record:
        raise ValueError(
            f"{source}: size {len(raw)} bytes is not a positive multiple of the {record}-byte {spec.title} record"
        )
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
    labels = rows[:, spec.label_offset[label]].astype(np.int64)
    return np.ascontiguousarray(rows[:, spec.record_label_bytes:]), labels


def _read_folder(folder: Path, names: Sequence[str]) -> List[Tuple[str, bytes]]:
    return [(str(folder / n), (folder / n).read_bytes()) for n in names]


def _read_archive(archive: Path, inner_dir: str, names: Sequence[str], md5: str) -> List[Tuple[str, bytes]]:
    check_md5(archive, md5, what=str(archive))  # before the tar (let alone a pickle) is opened
    wanted = {f"{inner_dir}/{n}": n for n in names}
    found: Dict[str, bytes] = {}
    with tarfile.open(archive, "r:*") as tf:
        for member in tf:
            name = member.name[2:] if member.name.startswith("./") else member.name
            if name in wanted and member.isfile():
                f = tf.extractfile(member)
                assert f is not None
                found[name] = f.read()
    missing = [m for m in wanted if m not in found]
    if missing:
        raise ValueError(f"{archive} passed its checksum but lacks members {missing}")
    return [(f"{archive}:{m}", found[m]) for m in wanted]


def load_cifar(
    name: str = "cifar10",
    split: str = "train",
    root: Optional[PathLike] = None,
    *,
    label: str = "fine",
    format: str = "auto",
    md5: Optional[str] = None,
    download: bool = False,
    base_url: str = CIFAR_URL,
) -> ArrayDataset:
    """Load a CIFAR split as uint8 ``(N, 3, 32, 32)`` images and int64 labels.

    Args:
        name: ``"cifar10"`` or ``"cifar100"``.
        split: ``"train"`` (50 000 images) or ``"test"`` (10 000).
        root: data root (default: ``$TRACTABLE_DATA`` or ``~/.cache/tractable/data``).
        label: CIFAR-100 only: ``"fine"`` (100 classes) or ``"coarse"`` (20 superclasses).
        format: ``"auto"`` (any source, order in the module docstring), ``"python"`` or ``"binary"``.
        md5: expected MD5 of the archive instead of the official one (for a repacked or test archive).
            Archives are always verified.
        download: fetch the official archive (python version, or binary when ``format="binary"``) into
            ``root`` when no source is found.
        base_url: where to download from (official: ``https://www.cs.toronto.edu/~kriz/``).
    """
    if name not in _SPECS:
        raise ValueError(f"name must be one of {sorted(_SPECS)}, got {name!r}")
    spec = _SPECS[name]
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test' for {spec.title}, got {split!r}")
    if label not in spec.num_classes:
        raise ValueError(f"label must be one of {sorted(spec.num_classes)} for {spec.title}, got {label!r}")
    if format not in _FORMATS:
        raise ValueError(f"format must be one of {_FORMATS}, got {format!r}")
    base = resolve_root(root)
    dirs = [base, base / name]
    label_key = "labels" if name == "cifar10" else f"{label}_labels"

    def attempt() -> Optional[Tuple[List[Tuple[str, bytes]], str]]:
        for d in dirs:
            if format in ("auto", "binary"):
                folder = d / spec.binary_dir
                if all((folder / n).is_file() for n in spec.binary_files[split]):
                    return _read_folder(folder, spec.binary_files[split]), "binary"
            if format in ("auto", "python"):
                folder = d / spec.python_dir
                if all((folder / n).is_file() for n in spec.python_files[split]):
                    return _read_folder(folder, spec.python_files[split]), "python"
        for d in dirs:
            if format in ("auto", "python") and (d / spec.python_archive).is_file():
                files = _read_archive(
                    d / spec.python_archive, spec.python_dir, spec.python_files[split], md5 or spec.python_md5
                )
                return files, "python"
            if format in ("auto", "binary") and (d / spec.binary_archive).is_file():
                files = _read_archive(
                    d / spec.binary_archive, spec.binary_dir, spec.binary_files[split], md5 or spec.binary_md5
                )
                return files, "binary"
        return None

    found = attempt()
    if found is None and download:
        archive, official = (
            (spec.binary_archive, spec.binary_md5) if format == "binary" else (spec.python_archive, spec.python_md5)
        )
        download_file(base_url.rstrip("/") + "/" + archive, base / archive, md5 or official)
        found = attempt()
    if found is None:
        expected = []
        if format in ("auto", "python"):
            expected += [spec.python_archive, f"{spec.python_dir}/{{{', '.join(spec.python_files[split])}}}"]
        if format in ("auto", "binary"):
            expected += [spec.binary_archive, f"{spec.binary_dir}/{{{', '.join(spec.binary_files[split])}}}"]
        raise missing_data_error(f"{spec.title} ({split} split)", dirs, expected)

    files, kind = found
    xs, ys = [], []
    for source, raw in files:
        if kind == "python":
            x, y = _parse_python_batch(raw, label_key, source)
        else:
            x, y = _parse_binary_batch(raw, spec, label, source)
        xs.append(x)
        ys.append(y)
    x = np.concatenate(xs).reshape(-1, 3, 32, 32)
    y = np.concatenate(ys)
    k = spec.num_classes[label]
    if y.size and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"{spec.title} {label} labels out of range [0, {k}): got [{y.min()}, {y.max()}]")
    info = DatasetInfo(
        name=name if label == "fine" else f"{name}_{label}", num_classes=k, shape=(3, 32, 32),
        mean=spec.mean, std=spec.std,
    )
    return ArrayDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), info)
