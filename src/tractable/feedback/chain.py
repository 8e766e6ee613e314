"""DFA on plain chains of layers (MLPs): feedback after every hidden activation, model unchanged.

For a model that is a chain x → layer_1 → act → layer_2 → act → … → layer_n (``nn.Sequential`` of
Linear/Conv/activation/Flatten/Dropout/norm/pool modules, class-swapped to :class:`FeedbackSequential` so that
it carries the ``credit`` submodule without running it, or a class that declares ``feedback_chain = True``, such as
:class:`tractable.models.MLP`), the feedback points are the **inputs of layer_2 … layer_n** — the hidden
activations. :class:`ChainDFA` (registered as ``model.credit``, so its matrices ``credit.B_<k>`` are saved
with the model; the model's own keys are unchanged) installs forward pre-hooks that, while the model trains
under grad and not in :func:`~tractable.feedback.bp_mode`,

* record the input of layer_k (k ≥ 2) as point p_k and hand the layer a detached copy, and
* wrap the model's output in :class:`~tractable.feedback.functions.DFAHub` with p_2 … p_n,

so hidden layer l receives δ_l = (g B_l) ⊙ f′(a_l) through its activation (Nøkland 2016), and the output layer
receives the exact gradient (its input is detached, ``train_head="bp"``). The points live in a list that exists
only while one forward runs (created by the model's pre-hook, consumed by its forward hook); the hub keeps
them per forward, so several forwards before one backward and gradient accumulation add up correctly.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn

from tractable.feedback.banks import FeedbackModule
from tractable.feedback.functions import DFAHub, HubPoint
from tractable.feedback.options import FeedbackOptions

__all__ = ["ChainDFA", "FeedbackSequential", "attach", "chain_layers", "is_chain"]

_WEIGHT = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_PASSIVE = (nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Softplus, nn.Identity,
            nn.Flatten, nn.Dropout, nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.MaxPool1d, nn.MaxPool2d,
            nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Sequential)


def is_chain(model: nn.Module) -> bool:
    """Whether ``model`` is a plain chain DFA can attach to (see the module docstring)."""
    if getattr(type(model), "feedback_chain", False):
        return True
    if type(model) is not nn.Sequential:
        return False
    return all(isinstance(m, _WEIGHT + _PASSIVE) for m in model.modules())


def chain_layers(model: nn.Module) -> List[tuple]:
    """``(name, layer)`` of the weight layers of a chain, in order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _WEIGHT)]


class ChainDFA(FeedbackModule):
    """``model.credit`` for DFA on a chain (see the module docstring)."""

    def __init__(self, model: nn.Module, opts: FeedbackOptions):
        super().__init__(opts.seed, opts.feedback_scale)
        self.opts = opts
        layers = chain_layers(model)
        if len(layers) < 2:
            raise ValueError(f"DFA on {type(model).__name__}: the model has {len(layers)} weight layer(s), so no "
                             "hidden activation to send feedback to (no feedback points)")
        self.num_classes = C = _out_features(layers[-1][1])
        self.point_names = [n for n, _ in layers[1:]]
        self.modes: List[str] = []
        device, dtype = layers[0][1].weight.device, layers[0][1].weight.dtype
        for k, (name, layer) in enumerate(layers[1:], start=1):
            if isinstance(layer, nn.Linear):
                d, mode = layer.in_features, "vec"
            else:
                if opts.conv_feedback == "full":
                    raise ValueError("DFA on a chain: conv_feedback='full' needs the feature-map shape; use a model "
                                     "with the credit protocol (feedback_points()) or conv_feedback="
                                     "'channel_broadcast'")
                d, mode = layer.in_channels, "channel_broadcast"
            self.modes.append(mode)
            fan = C if opts.feedback_init == "normal" else d
            self.register_feedback(f"B_{k}", (C, d), f"point.{name}", opts.feedback_init, fan, device, dtype)
        if opts.train_head == "dfa":
            self.register_feedback("B_head", (C, C), "head", "normal", C, device, dtype)
        self._collect: Optional[list] = None
        self._handles = [model.register_forward_pre_hook(self._start),
                         model.register_forward_hook(self._finish)]
        for k, (_, layer) in enumerate(layers[1:]):
            self._handles.append(layer.register_forward_pre_hook(self._point))

    def extra_repr(self) -> str:
        o = self.opts
        return (f"DFA on a chain, points at the inputs of {', '.join(self.point_names)}, "
                f"normalize={o.normalize!r}, train_head={o.train_head!r}, seed={o.seed}")

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # -- hooks -----------------------------------------------------------------------------------------------
    def _active(self) -> bool:
        return self.training and torch.is_grad_enabled() and not self._bp_mode

    def _start(self, model, args):
        self._collect = [] if self._active() else None

    def _point(self, layer, args):
        if self._collect is None:
            return None
        x = args[0]
        self._collect.append(x)
        return (x.detach(),) + tuple(args[1:])

    def _finish(self, model, args, output):
        pts, self._collect = self._collect, None
        if pts is None:
            return None
        if len(pts) != len(self.modes):
            raise RuntimeError(f"DFA on {type(model).__name__}: expected {len(self.modes)} feedback points in one "
                               f"forward, saw {len(pts)}; the model is not a plain chain of its layers")
        spec = []
        for k, (p, m) in enumerate(zip(pts, self.modes), start=1):
            if m == "vec":  # a Linear's input: (N, d) vectors, or (N, …, d) tokens that share one signal
                if p.dim() not in (2, 3):
                    raise ValueError(f"DFA on a chain: the input of a Linear feedback point must be (N, d) or "
                                     f"(N, T, d), got shape {tuple(p.shape)}")
                layout, mode = ("vec", "vec") if p.dim() == 2 else ("tokens", "broadcast")
            else:
                layout, mode = "map", m
            spec.append(HubPoint(self._buffers[f"B_{k}"], layout, mode))
        return DFAHub.apply(output, spec, self.opts.normalize, self._buffers.get("B_head"), *pts)


class FeedbackSequential(nn.Sequential):
    """An ``nn.Sequential`` that carries a ``credit`` submodule (DFA's matrices) without running it: forward,
    iteration, ``len`` and integer indexing see only the original layers. Made by class swap in :func:`attach`."""

    def _layers(self):
        return [m for k, m in self._modules.items() if k != "credit"]

    def forward(self, input):
        for module in self._layers():
            input = module(input)
        return input

    def __iter__(self):
        return iter(self._layers())

    def __len__(self) -> int:
        return len(self._layers())

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return nn.Sequential(*self._layers()[idx])
        return self._layers()[idx]


def attach(model: nn.Module, opts: FeedbackOptions) -> "ChainDFA":
    """Build the :class:`ChainDFA` of ``model`` and register it as ``model.credit``."""
    credit = ChainDFA(model, opts)
    if type(model) is nn.Sequential:
        model.__class__ = FeedbackSequential
    model.credit = credit
    return credit


def _out_features(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
