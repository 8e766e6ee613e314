"""``TrAct(layer, l=0.1)``: switch a Linear/Conv1d/2d/3d layer to TrAct gradients in place.

The layer object is kept (its Parameters, hooks, attributes, ``state_dict`` keys and ``isinstance`` relations);
only its class is swapped to a cached subclass of its *own* class that routes the weight through
:class:`tractable.tract.function.TrActWeight`. For Linear that subclass overrides ``forward``; for convs only
``_conv_forward``, so a user subclass that transforms the weight before the conv (weight standardisation, …)
keeps its forward and TrAct acts on the weight the conv receives. :func:`remove` swaps the class back. A
feedback-alignment layer (:mod:`tractable.feedback`) keeps its own forward, which asks TrAct for the weight it
uses: TrAct then preconditions FA's weight gradient and FA's input gradient is kept, in either order of
application.

Differences from the paper and the official ``torch_tract`` (by design): ``TrAct`` returns the *same* module
(assigning it back, ``model.conv1 = TrAct(model.conv1)``, is harmless); ``lambda_`` is accepted as an alias
of ``l``; exact (synchronised) statistics are opt-in (``exact=True``, see :mod:`tractable.tract.exact`).
"""
from __future__ import annotations

import contextlib
import math
import numbers
import warnings
from typing import Dict, Iterator, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.lazy import LazyModuleMixin

from tractable.tract.function import TrActLinearOutput, TrActWeight, apply, compute_dtype
from tractable.tract.gram import DEFAULT_CHUNK_BYTES, Geometry

_SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_FORMS = ("auto", "nxn", "bxb")
_CLASSES: Dict[type, type] = {}
_PLAIN_DEPTH = 0  # > 0 inside ``plain_gradients()`` without a module argument


def _check_lambda(l, lambda_) -> Union[float, torch.Tensor]:
    if lambda_ is not None:
        if l is not None and not _same_value(l, lambda_):
            raise ValueError(f"TrAct: got l={l!r} and lambda_={lambda_!r}; they are aliases, give one of them")
        l = lambda_
    if l is None:
        l = 0.1
    return check_lambda_value(l)


def _same_value(a, b) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def check_lambda_value(l) -> Union[float, torch.Tensor]:
    """λ must be a finite real number > 0 (a Python number or a 0-d tensor)."""
    if isinstance(l, torch.Tensor):
        if l.dim() != 0 or l.is_complex() or not l.is_floating_point():
            raise ValueError(f"TrAct: λ must be a positive finite number or 0-d float tensor, got {l!r}")
        value = float(l.detach().cpu())
    elif isinstance(l, numbers.Real) and not isinstance(l, bool):
        value = float(l)
        l = value
    else:
        raise ValueError(f"TrAct: λ (l / lambda_) must be a positive finite real number, got {l!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"TrAct: λ (l / lambda_) must be finite and > 0 (paper default 0.1), got {value!r}")
    return l


def _check_module(module) -> None:
    if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():
        raise TypeError(
            f"TrAct: {type(module).__name__} is an uninitialised lazy module; run one forward pass first "
            "so that its weight has a shape, then wrap it"
        )
    if not isinstance(module, _SUPPORTED):
        raise TypeError(
            "TrAct accepts nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d (and their subclasses); "
            f"got {type(module).__name__}. ConvTranspose, Embedding and other layers are not supported "
            "(the paper covers first layers z = Wx only)"
        )
    if getattr(module, "weight", None) is None:
        raise TypeError(f"TrAct: {type(module).__name__} has no weight parameter")


class TrAct(nn.Module):
    """Enable TrAct gradients on a layer, in place, and return it.

    ``TrAct(module, l=0.1, *, lambda_=None, exact=False, form="auto", chunk_bytes=8 MiB, process_group=None)``

    * ``module``: an ``nn.Linear``/``Conv1d``/``Conv2d``/``Conv3d`` (or subclass); every option is supported.
    * ``l`` / ``lambda_``: λ > 0, the ridge on the uncentred second moment of the layer's input rows. Paper
      guidance: 0.1 by default, 0.2 for long training, 0.05 for short schedules; inputs standardised to
      mean 0 and std 1. Mutable afterwards through ``module.tract_lambda``.
    * ``exact``: record statistics and precondition once per optimizer step through
      :func:`tractable.precondition_` (sums over DDP ranks and accumulation micro-batches). Default ``False``:
      each backward uses the statistics of its own batch, as in the paper (under DDP: of each rank's shard).
    * ``form``: ``"nxn"`` (paper), ``"bxb"`` (push-through, cheaper when rows b < n) or ``"auto"``.
    * ``chunk_bytes``: at most this many bytes of receptive fields are materialised at once for the Gram.
    * ``process_group``: the group exact-mode statistics are summed over (default: the world).

    Returns the same object, whose class is now a subclass of its own class and of :class:`TrAct`
    (``isinstance(m, TrAct)`` and ``isinstance(m, nn.Conv2d)`` both hold).
    """

    _tract_base: type = nn.Module

    def __new__(cls, module=None, l=None, *, lambda_=None, exact=False, form="auto",
                chunk_bytes=DEFAULT_CHUNK_BYTES, process_group=None):
        if cls is not TrAct:
            if module is not None:
                raise TypeError(f"{cls.__name__} is made by TrAct(layer), not constructed directly")
            return nn.Module.__new__(cls)  # unpickling / deepcopy
        if module is None:
            raise TypeError("TrAct(module, l=0.1): the layer to wrap is required")
        lam = _check_lambda(l, lambda_)
        if form not in _FORMS:
            raise ValueError(f"TrAct: form must be one of {_FORMS}, got {form!r}")
        if exact and form == "bxb":
            raise ValueError("TrAct: exact=True sums n×n statistics; it cannot use form='bxb'")
        if not isinstance(chunk_bytes, int) or isinstance(chunk_bytes, bool) or chunk_bytes <= 0:
            raise ValueError(f"TrAct: chunk_bytes must be a positive int, got {chunk_bytes!r}")
        _check_module(module)
        if not isinstance(module, TrAct):
            module.__class__ = _tract_class(type(module))
        module.tract_lambda = lam
        module.tract_exact = bool(exact)
        module.tract_form = form
        module.tract_chunk_bytes = chunk_bytes
        module.tract_process_group = process_group
        module.tract_plain_grad = False
        if not hasattr(module, "_tract_stat"):
            module._tract_stat = None
            module._tract_count = None
        return module

    def __init__(self, *args, **kwargs):  # configured in __new__; the wrapped layer is already initialised
        pass

    # -- state ----------------------------------------------------------------------------------------------
    def extra_repr(self) -> str:
        base = self._tract_base.extra_repr(self)
        lam = self.tract_lambda
        lam = float(lam) if isinstance(lam, torch.Tensor) else lam
        extra = f"tract_lambda={lam}"
        if self.tract_exact:
            extra += ", exact=True"
        if self.tract_form != "auto":
            extra += f", form={self.tract_form!r}"
        return f"{base}, {extra}" if base else extra

    def __reduce_ex__(self, protocol):
        reduced = object.__reduce_ex__(self, max(int(protocol), 2))
        state = reduced[2] if len(reduced) > 2 else None
        return (_new_tract_instance, (self._tract_base,), state)

    # -- the TrAct hook into the layer's own computation --------------------------------------------------
    def _tract_geometry(self, weight: torch.Tensor) -> Geometry:
        return _geometry(self, weight)

    def _tract_leaves(self, weight: torch.Tensor):
        geom = self._tract_geometry(weight)
        dtype = compute_dtype(weight)
        shape = (geom.groups, geom.n_per_group, geom.n_per_group)
        stat = self._tract_stat
        if stat is not None and stat.grad is not None and self.training and weight.grad is None:
            warnings.warn(
                f"TrAct(exact=True) on {type(self).__name__}: statistics from an earlier backward were never "
                "used; call tractable.precondition_(model) (or tractable.attach(optimizer, model)) before "
                "optimizer.step(). Discarding them.",
                stacklevel=4,
            )
            stat.grad = None
            self._tract_count.grad = None
        if stat is None or stat.shape != shape or stat.dtype != dtype or stat.device != weight.device:
            self._tract_stat = torch.zeros(shape, dtype=dtype, device=weight.device, requires_grad=True)
            self._tract_count = torch.zeros((), dtype=dtype, device=weight.device, requires_grad=True)
        return self._tract_stat, self._tract_count

    def _tract_active(self, weight: torch.Tensor) -> bool:
        return not (self.tract_plain_grad or _PLAIN_DEPTH > 0) and torch.is_grad_enabled() and weight.requires_grad

    def _tract_weight(self, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if not self._tract_active(weight):
            return weight
        stat = count = None
        if self.tract_exact:
            stat, count = self._tract_leaves(weight)
        return apply(TrActWeight, weight, x, self.tract_lambda, self._tract_geometry(weight), self.tract_form,
                     self.tract_chunk_bytes, stat, count)


def layer_geometry(layer: nn.Module) -> Geometry:
    """How ``layer`` (an ``nn.Linear``/``ConvNd``, TrAct or plain) forms the rows X its weight multiplies:
    kind, groups, kernel, stride, dilation and the padding in ``F.pad`` order with the layer's padding mode."""
    _check_module(layer)
    return _geometry(layer, layer.weight)


def _geometry(layer: nn.Module, weight: torch.Tensor) -> Geometry:
    if isinstance(layer, nn.Linear):
        return Geometry("linear", weight.shape[-1])
    d = len(layer.kernel_size)
    if layer.padding_mode == "zeros":
        mode = "constant"
        if isinstance(layer.padding, str):
            pad = [0, 0] * d
            if layer.padding == "same":
                for i, (k, dil) in enumerate(zip(layer.kernel_size, layer.dilation)):
                    total = dil * (k - 1)
                    pad[2 * (d - 1 - i)] = total // 2
                    pad[2 * (d - 1 - i) + 1] = total - total // 2
        else:
            pad = [p for p in reversed(layer.padding) for _ in range(2)]
    else:
        mode = layer.padding_mode
        pad = list(layer._reversed_padding_repeated_twice)
    return Geometry(
        "conv", weight.shape[1] * layer.groups, layer.groups, tuple(weight.shape[2:]), tuple(layer.stride),
        tuple(layer.dilation), tuple(int(p) for p in pad), mode,
    )


def _linear_forward(self, input: torch.Tensor) -> torch.Tensor:
    weight = self.weight
    if self.tract_exact or not self._tract_active(weight):
        return F.linear(input, self._tract_weight(weight, input), self.bias)
    # default mode: the weight gradient is computed from the output gradient G (cheaper b×b form); the layer
    # itself sees a detached weight, so its native backward makes only the input and bias gradients
    out = F.linear(input, weight.detach(), self.bias)
    return apply(TrActLinearOutput, out, input, weight, self.tract_lambda, self.tract_form, self.tract_chunk_bytes)


def _tract_class(base: type) -> type:
    cls = _CLASSES.get(base)
    if cls is None:
        ns = {"__module__": __name__, "__qualname__": f"TrAct{base.__name__}", "_tract_base": base}
        if hasattr(base, "_fa_weight"):
            # a feedback-alignment layer (tractable.feedback): its own forward asks ``_tract_weight`` for the
            # weight it uses, so TrAct preconditions FA's weight gradient and FA's input gradient is kept
            pass
        elif issubclass(base, nn.Linear):
            ns["forward"] = _linear_forward
        else:
            def _conv_forward(self, input, weight, bias):
                return base._conv_forward(self, input, self._tract_weight(weight, input), bias)

            ns["_conv_forward"] = _conv_forward
        cls = type(f"TrAct{base.__name__}", (TrAct, base), ns)
        _CLASSES[base] = cls
    return cls


def _new_tract_instance(base: type):
    return nn.Module.__new__(_tract_class(base))


_TRACT_ATTRS = ("tract_lambda", "tract_exact", "tract_form", "tract_chunk_bytes", "tract_process_group",
                "tract_plain_grad", "_tract_stat", "_tract_count")


def is_tract(module: nn.Module) -> bool:
    """Whether ``module`` currently computes TrAct gradients."""
    return isinstance(module, TrAct)


def tract_modules(module_or_model: nn.Module) -> Iterator[nn.Module]:
    """All TrAct layers in a model (the module itself included)."""
    return (m for m in module_or_model.modules() if isinstance(m, TrAct))


def remove(module_or_model: nn.Module) -> nn.Module:
    """Turn every TrAct layer in ``module_or_model`` back into its plain class, in place; returns the argument.

    Parameters, hooks and other attributes are kept; TrAct's attributes are deleted. Afterwards training is
    bitwise plain.
    """
    if not isinstance(module_or_model, nn.Module):
        raise TypeError(f"remove: expected an nn.Module, got {type(module_or_model).__name__}")
    for m in list(tract_modules(module_or_model)):
        m.__class__ = m._tract_base
        for name in _TRACT_ATTRS:
            m.__dict__.pop(name, None)
    return module_or_model


unwrap = remove


@contextlib.contextmanager
def plain_gradients(module: Optional[nn.Module] = None):
    """Debug / exact-reference switch: inside the block TrAct layers produce the plain gradient GᵀX, bitwise.

    With ``module``, only the TrAct layers in it are switched (``m.tract_plain_grad``); without, all of them
    in this process.
    """
    global _PLAIN_DEPTH
    if module is None:
        _PLAIN_DEPTH += 1
        try:
            yield
        finally:
            _PLAIN_DEPTH -= 1
        return
    mods = list(tract_modules(module))
    old = [m.tract_plain_grad for m in mods]
    for m in mods:
        m.tract_plain_grad = True
    try:
        yield
    finally:
        for m, o in zip(mods, old):
            m.tract_plain_grad = o
