"""A restricted unpickler for dataset files: plain containers and numpy arrays, nothing else.

Pickle can call any importable function while loading. Dataset pickles (the CIFAR python batches) only need
builtin containers, byte strings and numpy array reconstruction, so :func:`safe_load` allows exactly the
globals those need and rejects every other one with ``pickle.UnpicklingError`` before it is resolved.
"""
from __future__ import annotations

import codecs
import io
import pickle
from typing import Any, BinaryIO, Dict, Tuple, Union

import numpy as np


def _numpy_attr(qualified: str):
    """``numpy._core.multiarray._reconstruct`` or the numpy<2 ``numpy.core`` spelling, without deprecation noise."""
    module, _, name = qualified.rpartition(".")
    for candidate in (module.replace("numpy.core", "numpy._core", 1), module):
        try:
            mod = __import__(candidate, fromlist=[name])
            return getattr(mod, name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"numpy has no {qualified}")


def _allowed() -> Dict[Tuple[str, str], Any]:
    table: Dict[Tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how protocol-2 pickles spell a bytes object
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(mod, "_reconstruct")] = _numpy_attr("numpy.core.multiarray._reconstruct")
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        table[(mod, "_frombuffer")] = _numpy_attr("numpy.core.numeric._frombuffer")
    for name in ("dict", "list", "tuple", "set", "frozenset", "bytes", "bytearray", "str", "int", "float",
                 "complex", "bool"):
        table[("builtins", name)] = getattr(__import__("builtins"), name)
        table[("__builtin__", name)] = table[("builtins", name)]
    return table


class _RestrictedUnpickler(pickle.Unpickler):
    _table: Dict[Tuple[str, str], Any] = {}

    def find_class(self, module: str, name: str):
        if not self._table:
            type(self)._table = _allowed()
        try:
            return self._table[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: dataset pickles may only contain builtin containers "
                f"and numpy arrays"
            ) from None


def safe_load(source: Union[bytes, BinaryIO], *, encoding: str = "latin1") -> Any:
    """Unpickle ``source`` (bytes or a binary file) allowing only containers and numpy arrays.

    ``encoding="latin1"`` reads Python-2 pickles (as the official CIFAR files are) with numpy arrays intact.

    Raises:
        pickle.UnpicklingError: the pickle references anything else.
    """
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    return _RestrictedUnpickler(source, encoding=encoding).load()
