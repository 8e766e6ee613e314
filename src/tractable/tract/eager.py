"""Is this tensor in plain eager mode? Decides where TrAct may read values on the host or reuse buffers.

Traced code (``torch.compile``: FakeTensor/FunctionalTensor subclasses, ``is_compiling()``) and ``torch.func``
transforms (functorch-wrapped tensors) must see neither data-dependent Python branches nor in-place writes
into buffers created outside the transform; they take the branch-free paths instead.
"""
from __future__ import annotations

import torch

try:
    from torch._C._functorch import is_functorch_wrapped_tensor as _is_functorch_wrapped
except ImportError:  # pragma: no cover - very old torch
    _is_functorch_wrapped = None


def plain_eager(t: torch.Tensor) -> bool:
    """A plain ``torch.Tensor`` outside compilation and outside any ``torch.func`` transform."""
    if type(t) is not torch.Tensor or torch.compiler.is_compiling():
        return False
    return not _functorch_wrapped(t)


def plain_tensor(t: torch.Tensor) -> bool:
    """A ``torch.Tensor`` or ``nn.Parameter`` (no other subclass) that no ``torch.func`` transform wraps."""
    if type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter:
        return False
    return not _functorch_wrapped(t)


def _functorch_wrapped(t: torch.Tensor) -> bool:
    return _is_functorch_wrapped is not None and _is_functorch_wrapped(t)


def eager_host(t: torch.Tensor) -> bool:
    """:func:`plain_eager` and on the CPU, where reading a value on the host costs no synchronisation."""
    return t.device.type == "cpu" and plain_eager(t)
