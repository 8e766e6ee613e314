"""Layer-level feedback alignment: ``FALinear``, ``FAConv1d/2d/3d`` and the in-place layer swap.

A converted layer computes its ordinary forward; only the gradient sent to its *input* uses a feedback matrix
B of the weight's shape instead of W (:class:`~tractable.feedback.functions.FALinearFn` /
:class:`~tractable.feedback.functions.FAConvFn`). Its weight and bias gradients are exact. Variants
(``layer.fa_method``), with the references Liao et al. 2016, Xiao et al. 2018, Akrout et al. 2019:

* ``fa`` — B fixed, drawn once (``feedback_init``, default the layer's own Kaiming-uniform init U(±1/√fan_in));
* ``usf`` — B = s·sign(W) with s = RMS(W), from the current W at every forward;
* ``frsf`` — B = |R| ⊙ sign(W), R drawn once;
* ``brsf`` — B = |R_t| ⊙ sign(W), R_t redrawn at every training step t from (seed, name, t) **by the layer
  itself**: the counter ``feedback_step`` advances at the first training forward after W has changed in place
  (an optimizer step) and R has been used by a backward — so once per optimizer step, never between the
  micro-batches of one step, the same on every DDP rank, and restored with the checkpoint (a resumed run draws
  what the uninterrupted one would). :func:`resample_` sets the counter explicitly;
* ``kp`` (Kolen-Pollack) — B is an ``nn.Parameter`` whose gradient is W's gradient, so one optimizer applies
  the same update and weight decay to both and W − B decays — *only* with weight decay > 0 on both:
  :func:`check_kp_decay` (optimizer, model) warns otherwise.

The swap keeps the module object, its Parameters (names, identity), hooks and attributes: only the class
changes (to :class:`FALinear` etc. for the plain classes, to a cached ``FA<Class>`` subclass for subclasses
such as TrAct layers). The matrix is the buffer ``<layer>.feedback`` (a Parameter under KP); brSF adds
``<layer>.feedback_step``. Feedback is injected only while ``layer.training and torch.is_grad_enabled()`` and not
inside :func:`tractable.feedback.bp_mode`; otherwise the layer is bitwise the plain layer.

Composition with TrAct, in either order: the layer's forward (FA's) routes the weight through TrAct's
``_tract_weight`` when the layer is also a TrAct layer, so TrAct preconditions FA's exact weight gradient
g_W = gᵀx and FA's input gradient g B is kept: ``TrAct(convert(...)-ed layer)`` and ``convert(TrAct-ed model)``
give the same gradients, never plain backpropagation.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from tractable.feedback.banks import draw
from tractable.feedback.functions import FAConvFn, FALinearFn

__all__ = ["FALayer", "FALinear", "FAConv1d", "FAConv2d", "FAConv3d", "is_fa_layer", "fa_layers", "resample_",
           "make_fa", "check_kp_decay", "SUPPORTED"]

SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_LAYER_METHODS = ("fa", "usf", "frsf", "brsf", "kp")


class FALayer:
    """Mixin of the feedback-alignment layers (see the module docstring)."""

    _bp_mode = False
    fa_method = "fa"

    # -- set-up ------------------------------------------------------------------------------------------------
    def _fa_setup(self, method: str, seed: int, name: str, init: str = "kaiming_uniform",
                  scale: float = 1.0) -> None:
        if method not in _LAYER_METHODS:
            raise ValueError(f"{type(self).__name__}: method must be one of {', '.join(map(repr, _LAYER_METHODS))}, "
                             f"got {method!r}")
        self.fa_method, self.fa_seed, self.fa_name = method, int(seed), name or type(self).__name__.lower()
        self.fa_init, self.fa_scale = init, float(scale)
        w = self.weight
        if method in ("fa", "frsf", "kp"):
            b = self._fa_draw().to(device=w.device, dtype=w.dtype)
            if method == "kp":
                self.feedback = nn.Parameter(b)
            else:
                self.register_buffer("feedback", b, persistent=True)
        elif method == "brsf":
            self.register_buffer("feedback", self._fa_draw(0).to(device=w.device, dtype=w.dtype), persistent=True)
            self.register_buffer("feedback_step", torch.zeros((), dtype=torch.int64, device=w.device),
                                 persistent=True)
            self._brsf_seen = w._version  # W's in-place version when R was drawn
            self._brsf_used = False  # R went through a backward since it was drawn

    def _brsf_advance(self) -> None:
        """brSF: redraw R when W was updated in place since the draw and R was used by a backward."""
        w = self.weight
        if w._version != self._brsf_seen and self._brsf_used:
            with torch.no_grad():
                step = int(self.feedback_step) + 1
                self.feedback.copy_(self._fa_draw(step))
                self.feedback_step.fill_(step)
        self._brsf_seen = w._version
        self._brsf_used = False

    def _brsf_mark_used(self, out: torch.Tensor) -> torch.Tensor:
        if out.requires_grad:
            out.register_hook(self._brsf_on_backward)
        return out

    def _brsf_on_backward(self, grad):
        self._brsf_used = True

    def _fa_draw(self, step: int = 0) -> torch.Tensor:
        w = self.weight
        return draw(w.shape, seed=self.fa_seed, name=self.fa_name, init=self.fa_init, scale=self.fa_scale,
                    fan=w[0].numel(), step=step)

    def feedback_specs(self) -> Dict[str, Optional[Callable[[], torch.Tensor]]]:
        """``{local name: regenerate()}`` of the stored matrices (``None``: learned, shape-checked only)."""
        if self.fa_method in ("fa", "frsf"):
            return {"feedback": self._fa_draw}
        if self.fa_method == "brsf":
            return {"feedback": lambda: self._fa_draw(int(self.feedback_step))}
        if self.fa_method == "kp":
            return {"feedback": None}
        return {}

    # -- the matrix used now -----------------------------------------------------------------------------------
    def feedback_matrix(self) -> torch.Tensor:
        """The B the next backward uses (detached; computed from the current W for the sign variants)."""
        m = self.fa_method
        if m == "kp":
            return self.feedback
        if m == "fa":
            return self.feedback
        with torch.no_grad():
            w = self.weight.detach()
            if m == "usf":
                return torch.sign(w) * w.pow(2).mean().sqrt()
            return self.feedback.abs() * torch.sign(w)

    def _fa_active(self) -> bool:
        return self.training and torch.is_grad_enabled() and not self._bp_mode

    def _fa_weight(self, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        tract = getattr(self, "_tract_weight", None)  # TrAct layer converted to FA: keep TrAct's weight gradient
        return tract(weight, x) if tract is not None else weight

    def extra_repr(self) -> str:
        base = super().extra_repr()
        return f"{base}, feedback={self.fa_method!r}" if base else f"feedback={self.fa_method!r}"

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "feedback"
        own = self._buffers.get("feedback", self._parameters.get("feedback"))
        if key in state_dict and own is not None and tuple(state_dict[key].shape) != tuple(own.shape):
            error_msgs.append(f"feedback matrix {key!r}: the checkpoint has shape {tuple(state_dict[key].shape)}, "
                              f"the model expects {tuple(own.shape)} (the layer's weight shape); the checkpoint "
                              "comes from a different model")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if self.fa_method == "brsf":  # checkpoints are written after a step: R was used, W has changed
            self._brsf_used = True

    def __reduce_ex__(self, protocol):
        reduced = object.__reduce_ex__(self, max(int(protocol), 2))
        state = reduced[2] if len(reduced) > 2 else None
        base = self._fa_base
        tract_base = base.__dict__.get("_tract_base")  # a TrAct class (made on the fly): rebuild it by recipe
        return (_new_instance, (base,) if tract_base is None else (tract_base, True), state)


def _linear_forward(self, input: torch.Tensor) -> torch.Tensor:
    if not self._fa_active():
        return self._fa_base.forward(self, input)
    if self.fa_method == "brsf":
        self._brsf_advance()
    weight = self._fa_weight(self.weight, input)
    out = FALinearFn.apply(input, weight, self.bias, self.feedback_matrix(), self.fa_method == "kp")
    return self._brsf_mark_used(out) if self.fa_method == "brsf" else out


def _explicit_padding(self, input: torch.Tensor):
    """(input, padding) with every padding mode turned into zero padding the Function can take."""
    nd = len(self.kernel_size)
    if self.padding_mode != "zeros":
        return F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode), (0,) * nd
    if isinstance(self.padding, str):
        if self.padding == "valid":
            return input, (0,) * nd
        pad, sym = [], []
        for k, d in zip(reversed(self.kernel_size), reversed(self.dilation)):
            total = d * (k - 1)
            pad += [total // 2, total - total // 2]
        for k, d in zip(self.kernel_size, self.dilation):
            total = d * (k - 1)
            sym.append(total // 2 if total % 2 == 0 else None)
        if all(s is not None for s in sym):
            return input, tuple(sym)
        return F.pad(input, pad), (0,) * nd
    return input, tuple(self.padding)


def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    if not self._fa_active():
        return self._fa_base._conv_forward(self, input, weight, bias)
    if self.fa_method == "brsf":
        self._brsf_advance()
    weight = self._fa_weight(weight, input)
    x, padding = _explicit_padding(self, input)
    out = FAConvFn.apply(x, weight, bias, self.feedback_matrix(), self.stride, padding, self.dilation, self.groups,
                         self.fa_method == "kp")
    return self._brsf_mark_used(out) if self.fa_method == "brsf" else out


class FALinear(FALayer, nn.Linear):
    """``nn.Linear`` with a feedback-alignment input gradient.

    ``FALinear(in_features, out_features, bias=True, *, method="fa", seed=0, name="", feedback_init=
    "kaiming_uniform", feedback_scale=1.0, device=None, dtype=None)``; ``name`` selects the draw (give each
    layer its own).
    """

    _fa_base = nn.Linear
    forward = _linear_forward

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, method: str = "fa",
                 seed: int = 0, name: str = "", feedback_init: str = "kaiming_uniform", feedback_scale: float = 1.0,
                 device=None, dtype=None):
        nn.Linear.__init__(self, in_features, out_features, bias, device=device, dtype=dtype)
        self._fa_setup(method, seed, name, feedback_init, feedback_scale)


def _conv_class(base):
    class _FAConv(FALayer, base):
        _fa_base = base

        def __init__(self, *args, method: str = "fa", seed: int = 0, name: str = "",
                     feedback_init: str = "kaiming_uniform", feedback_scale: float = 1.0, **kwargs):
            base.__init__(self, *args, **kwargs)
            self._fa_setup(method, seed, name, feedback_init, feedback_scale)

    _FAConv._conv_forward = _conv_forward
    return _FAConv


FAConv1d = _conv_class(nn.Conv1d)
FAConv1d.__name__ = FAConv1d.__qualname__ = "FAConv1d"
FAConv1d.__doc__ = "``nn.Conv1d`` with a feedback-alignment input gradient (same keywords as :class:`FALinear`)."
FAConv2d = _conv_class(nn.Conv2d)
FAConv2d.__name__ = FAConv2d.__qualname__ = "FAConv2d"
FAConv2d.__doc__ = "``nn.Conv2d`` with a feedback-alignment input gradient (same keywords as :class:`FALinear`)."
FAConv3d = _conv_class(nn.Conv3d)
FAConv3d.__name__ = FAConv3d.__qualname__ = "FAConv3d"
FAConv3d.__doc__ = "``nn.Conv3d`` with a feedback-alignment input gradient (same keywords as :class:`FALinear`)."

_CLASSES: Dict[type, type] = {nn.Linear: FALinear, nn.Conv1d: FAConv1d, nn.Conv2d: FAConv2d, nn.Conv3d: FAConv3d}


def _fa_class(base: type) -> type:
    cls = _CLASSES.get(base)
    if cls is None:
        ns = {"__module__": __name__, "__qualname__": f"FA{base.__name__}", "_fa_base": base}
        if issubclass(base, nn.Linear):
            ns["forward"] = _linear_forward
        else:
            ns["_conv_forward"] = _conv_forward
        cls = type(f"FA{base.__name__}", (FALayer, base), ns)
        _CLASSES[base] = cls
    return cls


def _new_instance(base: type, tract: bool = False):
    if tract:
        from tractable.tract.module import _tract_class

        base = _tract_class(base)
    return nn.Module.__new__(_fa_class(base))


def make_fa(layer: nn.Module, *, method: str = "fa", seed: int = 0, name: str = "",
            feedback_init: str = "kaiming_uniform", feedback_scale: float = 1.0) -> nn.Module:
    """Turn one Linear/Conv layer into its feedback-alignment version in place (same object) and return it."""
    if isinstance(layer, FALayer):
        raise ValueError(f"{name or type(layer).__name__}: already a feedback-alignment layer "
                         f"({layer.fa_method!r}); convert a model once")
    if not isinstance(layer, SUPPORTED):
        raise TypeError(f"feedback alignment swaps nn.Linear/nn.Conv1d/nn.Conv2d/nn.Conv3d; got "
                        f"{type(layer).__name__}")
    if getattr(layer, "weight", None) is None or isinstance(layer.weight, nn.parameter.UninitializedParameter):
        raise TypeError(f"{name or type(layer).__name__}: run one forward pass of a lazy module before converting")
    layer.__class__ = _fa_class(type(layer))
    layer._fa_setup(method, seed, name, feedback_init, feedback_scale)
    return layer


def is_fa_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a layer-level feedback-alignment layer."""
    return isinstance(module, FALayer)


def fa_layers(model: nn.Module):
    """``(name, layer)`` for every feedback-alignment layer of ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, FALayer)]


@torch.no_grad()
def resample_(model: nn.Module, step: int) -> int:
    """brSF: redraw every ``brsf`` layer's R from (seed, name, ``step``) now; returns the number of layers.

    Not needed in a training loop (the layers redraw by themselves once per optimizer step); for explicit
    control, e.g. to pin R to a step number. The counter then continues from ``step``.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"resample_: step must be a non-negative int, got {step!r}")
    n = 0
    for _, m in fa_layers(model):
        if m.fa_method == "brsf":
            m.feedback.copy_(m._fa_draw(step))
            m.feedback_step.fill_(step)
            m._brsf_seen, m._brsf_used = m.weight._version, False
            n += 1
    return n


def check_kp_decay(optimizer: torch.optim.Optimizer, model: nn.Module, *, warn: bool = True) -> list:
    """Kolen-Pollack needs weight decay on B *and* W, the same for both: only then does W − B shrink
    (ΔW − ΔB = −lr·λ·(W − B), Akrout et al. 2019); without it W − B stays what it was at initialisation and B
    never aligns. Returns the problems found (and warns, unless ``warn=False``): a KP layer whose B is not in
    the optimizer, gets no weight decay, or a decay different from its W's."""
    import warnings

    groups = {}
    for g in optimizer.param_groups:
        for p in g["params"]:
            groups[id(p)] = g
    problems = []
    for name, m in fa_layers(model):
        if m.fa_method != "kp":
            continue
        gb, gw = groups.get(id(m.feedback)), groups.get(id(m.weight))
        if gb is None:
            problems.append(f"{name}.feedback is not in the optimizer (create it after convert)")
            continue
        wd = float(gb.get("weight_decay", 0.0))
        if wd == 0.0:
            problems.append(f"{name}.feedback has weight_decay 0, so W − B stays constant and B does not align "
                            "(give W and B the same weight decay > 0)")
        elif gw is not None and float(gw.get("weight_decay", 0.0)) != wd:
            problems.append(f"{name}: weight and feedback have different weight decay "
                            f"({gw.get('weight_decay')} vs {wd}); W − B then does not simply decay")
    if problems and warn:
        warnings.warn("Kolen-Pollack: " + "; ".join(problems), stacklevel=2)
    return problems
