"""One entry point for every dataset: ``load_dataset(name, split, root, download, **kwargs)``.

=================  =========================================  ===========================  ===========
name               reader                                     splits                       download
=================  =========================================  ===========================  ===========
``cifar10``        :func:`~tractable.data.cifar.load_cifar`     train, test                  yes
``cifar100``       :func:`~tractable.data.cifar.load_cifar`     train, test                  yes
``mnist``          :func:`~tractable.data.idx.load_mnist`       train, test                  yes
``fashion_mnist``  :func:`~tractable.data.idx.load_fashion_mnist`  train, test               yes
``mnist1d``        :func:`~tractable.data.mnist1d.load_mnist1d`  train, test                 generated
``digits``         :func:`~tractable.data.digits.load_digits`   train, test                  bundled
``synthetic``      :func:`~tractable.data.synthetic.make_synthetic`  train, test             generated
``tinyimagenet``   :func:`~tractable.data.imagefolder.load_tinyimagenet`  train, val (test)  no
``imagenet``       :func:`~tractable.data.imagefolder.load_imagenet`  train, val (test)      no
``imagefolder``    :func:`~tractable.data.imagefolder.load_imagefolder`  train, val (test)   no
=================  =========================================  ===========================  ===========

The first seven return a device-ready :class:`ArrayDataset`; the image-folder ones a streaming
:class:`ImageFolderDataset`. ``root`` defaults to ``$TRACTABLE_DATA`` or ``~/.cache/tractable/data``.
Extra keyword arguments go to the reader (e.g. ``label="coarse"`` for CIFAR-100, ``seed=`` for digits or
synthetic); unknown ones are rejected with the list of accepted ones. Names are matched ignoring case, ``-`` and
``_`` (``"Fashion-MNIST"`` → ``fashion_mnist``, ``"CIFAR-10"`` → ``cifar10``).
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from tractable.data.cifar import load_cifar
from tractable.data.digits import load_digits
from tractable.data.idx import load_fashion_mnist, load_mnist
from tractable.data.imagefolder import load_imagefolder, load_imagenet, load_tinyimagenet
from tractable.data.mnist1d import load_mnist1d
from tractable.data.paths import PathLike, resolve_root
from tractable.data.synthetic import make_synthetic


def _cifar(name: str) -> Callable[..., Any]:
    def load(split: str, root: Path, download: bool, **kw):
        return load_cifar(name, split, root, download=download, **kw)

    load.reader = load_cifar  # type: ignore[attr-defined]
    load.fixed = ("name", "split", "root", "download")  # type: ignore[attr-defined]
    return load


def _rooted(reader: Callable[..., Any], downloadable: bool) -> Callable[..., Any]:
    def load(split: str, root: Path, download: bool, **kw):
        if downloadable:
            kw["download"] = download
        return reader(split, root, **kw)

    load.reader = reader  # type: ignore[attr-defined]
    load.fixed = ("split", "root", "download")  # type: ignore[attr-defined]
    return load


def _rootless(reader: Callable[..., Any]) -> Callable[..., Any]:
    def load(split: str, root: Path, download: bool, **kw):
        return reader(split, **kw)

    load.reader = reader  # type: ignore[attr-defined]
    load.fixed = ("split",)  # type: ignore[attr-defined]
    return load


def _imagefolder(split: str, root: Path, download: bool, path: Optional[PathLike] = None, **kw):
    folder = Path(path) if path is not None else root / ("val" if split == "test" else split)
    return load_imagefolder(folder, split=split, **kw)


_imagefolder.reader = load_imagefolder  # type: ignore[attr-defined]
_imagefolder.fixed = ("split",)  # type: ignore[attr-defined]

_REGISTRY: Dict[str, Callable[..., Any]] = {
    "cifar10": _cifar("cifar10"),
    "cifar100": _cifar("cifar100"),
    "mnist": _rooted(load_mnist, downloadable=True),
    "fashion_mnist": _rooted(load_fashion_mnist, downloadable=True),
    "mnist1d": _rooted(load_mnist1d, downloadable=False),
    "digits": _rootless(load_digits),
    "synthetic": _rootless(make_synthetic),
    "tinyimagenet": _rooted(load_tinyimagenet, downloadable=False),
    "imagenet": _rooted(load_imagenet, downloadable=False),
    "imagefolder": _imagefolder,
}

def list_datasets() -> List[str]:
    """The names :func:`load_dataset` accepts, sorted."""
    return sorted(_REGISTRY)


def _accepted_kwargs(entry: Callable[..., Any]) -> List[str]:
    params = inspect.signature(entry.reader).parameters  # type: ignore[attr-defined]
    names = [p for p, v in params.items()
             if v.kind in (v.KEYWORD_ONLY, v.POSITIONAL_OR_KEYWORD) and p not in entry.fixed]  # type: ignore
    return sorted(names)


def load_dataset(
    name: str, split: str = "train", root: Optional[PathLike] = None, download: bool = False, **kwargs: Any
):
    """Load split ``split`` of dataset ``name`` (see the module table).

    Raises:
        ValueError: unknown ``name``, bad ``split`` or an unknown keyword argument.
        FileNotFoundError: files missing (and ``download=False``, or a dataset that cannot be downloaded:
            ``tinyimagenet``, ``imagenet``, ``imagefolder``); the message says where we looked and what to do.
    """
    if not isinstance(name, str):
        raise ValueError(f"name must be a string, one of {list_datasets()}; got {name!r}")
    squashed = name.strip().lower().replace("-", "").replace("_", "")
    key = next((k for k in _REGISTRY if k.replace("_", "") == squashed), None)
    if key is None:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(list_datasets())}")
    entry = _REGISTRY[key]
    accepted = _accepted_kwargs(entry)
    var_kw = any(p.kind == p.VAR_KEYWORD for p in inspect.signature(entry.reader).parameters.values())
    unknown = sorted(k for k in kwargs if k not in accepted)
    if unknown and not var_kw:
        raise ValueError(f"unknown keyword arguments {unknown} for dataset {key!r}; accepted: {accepted}")
    return entry(split, resolve_root(root), bool(download), **kwargs)
