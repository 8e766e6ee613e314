"""DFA on any feed-forward model through forward hooks: plain chains and marked feedback points.

Two ways to say where the feedback goes, one mechanism (:class:`ChainDFA`, registered as ``model.credit`` so
its matrices ``credit.B_<k>`` are saved with the model; the model's own keys are unchanged):

* **Plain chains** — ``nn.Sequential`` of Linear/Conv/activation/Flatten/Dropout/norm/pool/pad modules
  (class-swapped to :class:`FeedbackSequential` so that it carries the ``credit`` submodule without running it),
  or a class that declares ``feedback_chain = True`` (:class:`tractable.models.MLP`, ``cnn1d``, ``lenet``): the
  feedback points are the **inputs of layer_2 … layer_n** — the hidden activations — so hidden layer l receives
  δ_l = (e B_l) ⊙ f′(a_l) through its activation (and pooling), as in Nøkland 2016.
* **Marked points** — the **outputs** of named submodules: ``convert(model, "dfa", points=["layers.0", …])``,
  or the model's own ``dfa_points`` (a tuple of module names, or a method returning one; the registry's CNNs,
  ViTs and CRATE declare their block outputs). The model is cut at every point: the segment that ends at point
  k (its layers, and any parameter used between point k−1 and point k) is trained by exact backpropagation from
  a_k = e B_k at its output; what follows the last point (the head) by exact BP from the loss.

While the model trains under grad and not in :func:`~tractable.feedback.bp_mode`, hooks record each point p_k,
hand the rest of the model a detached copy, and wrap the model's output in
:class:`~tractable.feedback.functions.DFAHub` with p_1 … p_n. The points live only while one forward runs; the
hub keeps them per forward, so several forwards before one backward and gradient accumulation add up.

Feedback shapes (C classes, D_k values per sample at point k): vectors C×d; tokens (N, T, d) C×d
(``token_feedback="broadcast"``, ``per_token_error``) or C×T·d (``per_token``); feature maps (N, C_k, …)
C×C_k·H·W (``conv_feedback="full"``, the default: every position has its own feedback) or C×C_k
(``channel_broadcast``). Where D_k depends on the input's size (full maps, per-token), B_k is drawn **at the
first training forward** from (seed, point name) — deterministic, so every rank and device draws the same — and
a checkpoint of a model that has run loads into a fresh one (the empty placeholder takes the saved shape).
A later forward with another per-sample shape is an error.
"""
from __future__ import annotations

import functools
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from tractable.feedback.banks import FeedbackModule
from tractable.feedback.functions import DFAHub, HubPoint
from tractable.feedback.options import FeedbackOptions

__all__ = ["ChainDFA", "FeedbackSequential", "attach", "chain_layers", "is_chain", "marked_points"]

_WEIGHT = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_PASSIVE = (nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Softplus, nn.Identity,
            nn.Flatten, nn.Dropout, nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.MaxPool1d, nn.MaxPool2d,
            nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Sequential,
            nn.ZeroPad2d, nn.ConstantPad2d)
#: modules whose 3-d output (N, C, L) is a 1-d feature map rather than tokens (N, T, d)
_MAP1D = (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.InstanceNorm1d)


def is_chain(model: nn.Module) -> bool:
    """Whether ``model`` is a plain chain DFA can attach to (see the module docstring)."""
    if getattr(type(model), "feedback_chain", False):
        return True
    if type(model) is not nn.Sequential:
        return False
    return all(isinstance(m, _WEIGHT + _PASSIVE) for m in model.modules())


def marked_points(model: nn.Module) -> Optional[Tuple[str, ...]]:
    """The model's own ``dfa_points`` (module names whose outputs are DFA feedback points), or None."""
    pts = getattr(model, "dfa_points", None)
    if pts is None:
        return None
    if callable(pts):
        pts = pts()
    return tuple(pts)


def chain_layers(model: nn.Module) -> List[tuple]:
    """``(name, layer)`` of the weight layers of a chain, in order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _WEIGHT)]


class _Point:
    """One feedback point: where it is (``input`` of / ``output`` of ``module``), its layout once known."""

    __slots__ = ("name", "module", "where", "kind", "layout", "mode", "shape")

    def __init__(self, name: str, module: nn.Module, where: str):
        self.name, self.module, self.where = name, module, where
        self.kind = "linear" if isinstance(module, nn.Linear) and where == "input" else (
            "conv" if isinstance(module, _WEIGHT) and where == "input" else (
                "map1d" if isinstance(module, _MAP1D) else "any"))
        self.layout: Optional[str] = None
        self.mode: Optional[str] = None
        self.shape: Optional[Tuple[int, ...]] = None  # per-sample shape seen at the first forward


def _layout(pt: _Point, t: torch.Tensor, opts: FeedbackOptions) -> Tuple[str, str, int]:
    """(layout, mode, D) of a point tensor ``t`` (samples on dim 0)."""
    if t.dim() < 2:
        raise ValueError(f"DFA feedback point {pt.name!r}: expected a batched tensor (N, ...), got shape "
                         f"{tuple(t.shape)}")
    if pt.kind == "linear" or (pt.kind == "any" and t.dim() == 2):
        if t.dim() == 2:
            return "vec", "vec", t.shape[1]
        if t.dim() != 3:
            raise ValueError(f"DFA feedback point {pt.name!r}: the input of a Linear must be (N, d) or (N, T, d), "
                             f"got shape {tuple(t.shape)}")
    if t.dim() == 3 and pt.kind not in ("conv", "map1d"):
        mode = opts.token_feedback
        return "tokens", mode, (t.shape[1] * t.shape[2] if mode == "per_token" else t.shape[2])
    mode = opts.conv_feedback
    return "map", mode, (int(math.prod(t.shape[1:])) if mode == "full" else t.shape[1])


class ChainDFA(FeedbackModule):
    """``model.credit`` for DFA through hooks (see the module docstring). ``points``: module names whose outputs
    are the feedback points; None = the chain's hidden activations."""

    def __init__(self, model: nn.Module, opts: FeedbackOptions, points: Optional[Sequence[str]] = None):
        super().__init__(opts.seed, opts.feedback_scale)
        self.opts = opts
        layers = chain_layers(model)
        if not layers:
            raise ValueError(f"DFA on {type(model).__name__}: no nn.Linear/nn.Conv layer")
        self.num_classes = C = _out_features(layers[-1][1])
        modules = dict(model.named_modules())
        if points is None:
            if len(layers) < 2:
                raise ValueError(f"DFA on {type(model).__name__}: the model has {len(layers)} weight layer(s), so "
                                 "no hidden activation to send feedback to (no feedback points)")
            self._points = [_Point(n, m, "input") for n, m in layers[1:]]
        else:
            points = list(points)
            bad = [p for p in points if p not in modules or p == ""]
            if bad or not points:
                raise ValueError(f"DFA on {type(model).__name__}: points must name submodules; "
                                 f"{bad or 'none given'} {'are' if len(bad) > 1 else 'is'} not "
                                 f"(e.g. {', '.join(list(n for n in modules if n)[:4])}, ...)")
            if len(set(points)) != len(points):
                raise ValueError(f"DFA on {type(model).__name__}: points must be distinct, got {points}")
            self._points = [_Point(n, modules[n], "output") for n in points]
        self.point_names = [p.name for p in self._points]
        device, dtype = layers[0][1].weight.device, layers[0][1].weight.dtype
        for k, pt in enumerate(self._points, start=1):
            D = self._known_size(pt)
            self._register(k, pt, D, device, dtype)
        if opts.train_head == "dfa":
            self.register_feedback("B_head", (C, C), "head", "normal", C, device, dtype)
        self._collect: Optional[list] = None
        self._handles = [model.register_forward_pre_hook(self._start),
                         model.register_forward_hook(self._finish)]
        for i, pt in enumerate(self._points):  # bound methods + partial: a deepcopy gets its own wiring
            if pt.where == "input":
                self._handles.append(pt.module.register_forward_pre_hook(functools.partial(self._on_input, i)))
            else:
                self._handles.append(pt.module.register_forward_hook(functools.partial(self._on_output, i)))

    def _known_size(self, pt: _Point) -> Optional[int]:
        """D of the point when the module alone tells it (a Linear's input, a conv's channels under
        ``channel_broadcast``); None = drawn at the first forward."""
        o = self.opts
        if pt.kind == "linear" and o.token_feedback != "per_token":
            return pt.module.in_features
        if pt.kind == "conv" and o.conv_feedback == "channel_broadcast":
            return pt.module.in_channels
        return None

    def _init(self, D: int) -> Tuple[str, int]:
        """(draw init, fan): ``readout`` N(0, s²/D); ``normal`` N(0, s²/C); ``uniform_dim`` U(±s)/√D."""
        init = self.opts.feedback_init
        if init == "readout":
            return "normal", D
        return init, (self.num_classes if init == "normal" else D)

    def _register(self, k: int, pt: _Point, D: Optional[int], device, dtype) -> None:
        C = self.num_classes
        if D is not None:
            init, fan = self._init(D)
            self.register_feedback(f"B_{k}", (C, D), f"point.{pt.name}", init, fan, device, dtype)
            return
        # placeholder until the first forward (or a checkpoint) gives the size
        self._specs[f"B_{k}"] = None
        self.register_buffer(f"B_{k}", torch.zeros(C, 0, device=device, dtype=dtype), persistent=True)

    def _materialise(self, k: int, pt: _Point, D: int) -> None:
        key = f"B_{k}"
        buf = self._buffers[key]
        C = self.num_classes
        init, fan = self._init(D)
        self._specs[key] = ((C, D), f"point.{pt.name}", init, fan, None)
        with torch.no_grad():
            b = self.regenerate(key)
            buf.resize_(C, D)
            buf.copy_(b)

    def regenerate(self, key: str) -> torch.Tensor:
        if self._specs.get(key, ()) is None:
            return torch.zeros(self.num_classes, 0)
        return super().regenerate(key)

    def extra_repr(self) -> str:
        o = self.opts
        where = "inputs" if self._points and self._points[0].where == "input" else "outputs"
        return (f"DFA, points at the {where} of {', '.join(self.point_names)}, normalize={o.normalize!r}, "
                f"feedback_init={o.feedback_init!r}, train_head={o.train_head!r}, seed={o.seed}")

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        for k, pt in enumerate(self._points, start=1):
            key = f"B_{k}"
            full = prefix + key
            if self._specs.get(key, ()) is None and full in state_dict:
                saved = state_dict[full]
                if saved.dim() == 2 and saved.shape[0] == self.num_classes and saved.shape[1] > 0:
                    self._materialise(k, pt, int(saved.shape[1]))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    # -- hooks -----------------------------------------------------------------------------------------------
    def _active(self) -> bool:
        return self.training and torch.is_grad_enabled() and not self._bp_mode

    def _start(self, model, args, kwargs=None):
        self._collect = [None] * len(self._points) if self._active() else None

    def _record(self, idx: int, t):
        pt = self._points[idx]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"DFA feedback point {pt.name!r}: expected a tensor, got {type(t).__name__} (mark a "
                            "module whose output is one tensor)")
        if self._collect[idx] is not None:
            raise RuntimeError(f"DFA feedback point {pt.name!r} ran twice in one forward; a feedback point must be "
                               "a module used once per forward (give shared modules, e.g. one ReLU reused, their "
                               "own instance, or mark another module)")
        self._collect[idx] = t
        return t.detach()

    def _on_input(self, idx: int, module, args):
        if self._collect is None:
            return None
        return (self._record(idx, args[0]),) + tuple(args[1:])

    def _on_output(self, idx: int, module, args, output):
        if self._collect is None:
            return None
        return self._record(idx, output)

    def _finish(self, model, args, output):
        pts, self._collect = self._collect, None
        if pts is None:
            return None
        missing = [pt.name for pt, p in zip(self._points, pts) if p is None]
        if missing:
            raise RuntimeError(f"DFA on {type(model).__name__}: feedback point(s) {', '.join(missing)} did not run in "
                               "this forward; every point must run exactly once per forward")
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"DFA on {type(model).__name__}: the model must return the logits as one tensor, got "
                            f"{type(output).__name__}")
        spec = []
        for k, (pt, p) in enumerate(zip(self._points, pts), start=1):
            layout, mode, D = _layout(pt, p, self.opts)
            key = f"B_{k}"
            shape = tuple(p.shape[1:])
            if self._specs.get(key, ()) is None:
                self._materialise(k, pt, D)
            if pt.shape is None:
                pt.shape = shape
            elif pt.shape != shape and D != self._buffers[key].shape[1]:
                raise ValueError(f"DFA feedback point {pt.name!r}: per-sample shape {shape} differs from "
                                 f"{pt.shape} seen at the first forward, and its feedback matrix has "
                                 f"{self._buffers[key].shape[1]} columns (conv_feedback='full' / per_token feedback "
                                 "fix the size); use inputs of one size")
            if self._buffers[key].shape[1] != D:
                raise ValueError(f"DFA feedback point {pt.name!r}: its feedback matrix has "
                                 f"{self._buffers[key].shape[1]} columns but the point has {D} values per sample "
                                 f"({layout}, mode {mode!r}, shape {shape}); the checkpoint or model differs")
            spec.append(HubPoint(self._buffers[key], layout, mode))
        if "per_token_error" in [s.mode for s in spec] and output.dim() != 3:
            raise ValueError(f"token_feedback='per_token_error' needs per-token logits (N, T, C); this model returns "
                             f"{tuple(output.shape)}: use 'broadcast' or 'per_token'")
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


def attach(model: nn.Module, opts: FeedbackOptions, points: Optional[Sequence[str]] = None) -> "ChainDFA":
    """Build the :class:`ChainDFA` of ``model`` (``points`` = module names, or None for a chain) and register it
    as ``model.credit``."""
    credit = ChainDFA(model, opts, points)
    if type(model) is nn.Sequential:
        model.__class__ = FeedbackSequential
    model.credit = credit
    return credit


def _out_features(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
