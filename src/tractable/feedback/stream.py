"""Block-level FA and DFA on models with the credit-assignment protocol (the residual stream).

A protocol model (``embed``, ``blocks`` returning the branch f_l, ``readout``, ``head``, ``feedback_points()``,
see :mod:`tractable.models.credit`) delegates its forward to ``model.credit`` while training under grad and
not in :func:`~tractable.feedback.bp_mode`. :class:`StreamCredit` is that module; it computes the same values
as the plain forward (``h_{l+1} = h_l + f_l``; ``f_l`` alone when ``residual_add`` is False) and changes only
what flows backward. Its feedback matrices are persistent buffers ``credit.B_<k>``.

**Block FA** (``granularity="block"``)::

    h_0 = embed(x)                       [NormGrad(h_0) when normalize ≠ none]
    f_l = blocks[l](h_l.detach())
    h_{l+1} = h_l + FABridge(f_l, h_l, B_l)          skip=True (default): the identity path is exact
    h_{l+1} = h_l.detach() + FABridge(f_l, h_l, B_l) skip=False (the reference code's choice; *not* FA)
    logits = head(readout(h_L))

so the gradient reaching h_l is g_{l+1} + g_{l+1} B_l (B_l ∈ ℝ^{d×d} in place of ∂f_l/∂h_l), each block is
trained by exact BP from the signal at its output, the head by exact BP. With B_l := the branch Jacobian at
a point (linear branches) this is BP there.

**DFA** (``method="dfa"``)::

    p_0 = point(h_0),  h ← h_0.detach();   for each block: f = blocks[l](h), h' = h + f, p_{l+1} = point(h'),
    h ← h'.detach();   logits = DFAHub(head(readout(h)), p_0 … p_L)

``point`` is the identity (``placement="pre_ln"``: the gradient on p_{l+1} is the gradient on f_l) or a
parameter-free LayerNorm over the features (``post_ln``, Launay et al. 2020: B e passes through LN's Jacobian,
which removes its radial component). The stream is always detached, so block l receives only
a_{l+1} = g B_{l+1}, the embed only a_0, and no BP work is wasted. ``share_b0`` makes point 0 use point 1's
matrix (the reference code's choice). Matrix shapes (C classes): vectors C×d; tokens C×d (``broadcast``,
``per_token_error``) or C×T·d (``per_token``); maps C×C_k (``channel_broadcast``) or C×C_k·H·W (``full``).
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from tractable.feedback.banks import FeedbackModule
from tractable.feedback.functions import DFAHub, FABridge, HubPoint, NormGrad
from tractable.feedback.options import FeedbackOptions

__all__ = ["StreamCredit", "num_classes_of", "post_ln"]


def num_classes_of(model: nn.Module) -> int:
    """The number of outputs C: ``out_features`` of the last ``nn.Linear`` in ``model.head`` (or the model)."""
    where = getattr(model, "head", model)
    last = None
    for m in where.modules():
        if isinstance(m, nn.Linear):
            last = m
    if last is None:
        raise ValueError(f"DFA needs the number of classes: no nn.Linear found in "
                         f"{'model.head' if where is not model else type(model).__name__}")
    return last.out_features


def post_ln(h: torch.Tensor, layout: str) -> torch.Tensor:
    """Parameter-free LayerNorm over the feature axis (last for vectors/tokens, channels for maps)."""
    if layout == "map":
        mean = h.mean(dim=1, keepdim=True)
        var = h.var(dim=1, keepdim=True, unbiased=False)
        return (h - mean) * torch.rsqrt(var + 1e-5)
    return F.layer_norm(h, h.shape[-1:])


class StreamCredit(FeedbackModule):
    """``model.credit`` for block FA or DFA on a protocol model (see the module docstring)."""

    def __init__(self, model: nn.Module, opts: FeedbackOptions):
        super().__init__(opts.seed, opts.feedback_scale)
        self.opts = opts
        self.kind = opts.kind
        points = tuple(model.feedback_points())
        if not points:
            raise ValueError(f"{type(model).__name__}.feedback_points() is empty; DFA/block FA need points")
        self.layouts = [p.layout for p in points]
        self.shapes = [tuple(p.shape) for p in points]
        device, dtype = _device_of(model)
        if self.kind == "block":
            for l in range(len(points) - 1):
                d = points[l].dim
                factor = None
                if opts.feedback_init == "match_branch":
                    factor = f"scale_{l}"
                    s = branch_jacobian_scale(model.blocks[l], points[l], opts.seed, l)
                    self.register_buffer(factor, torch.tensor(s, dtype=torch.float32, device=device))
                self.register_feedback(f"B_{l}", (d, d), f"block.{l}", "normal", d, device, dtype, factor)
        else:
            C = num_classes_of(model)
            self.num_classes = C
            self.modes, self.sources = [], []
            for k, p in enumerate(points):
                mode, D = self._dfa_shape(p)
                self.modes.append(mode)
                if opts.share_b0 and k == 0 and len(points) > 1:
                    self.sources.append("B_1")
                    continue
                self.sources.append(f"B_{k}")
                init, fan = _dfa_init(opts.feedback_init, C, p.dim, int(math.prod(D)))
                self.register_feedback(f"B_{k}", (C,) + D, f"point.{k}", init, fan, device, dtype)
            if opts.share_b0 and len(points) > 1:
                p0, p1 = points[0], points[1]
                if self._dfa_shape(p0)[1] != self._dfa_shape(p1)[1]:
                    raise ValueError(f"share_b0=True needs points 0 and 1 of the same shape; got {p0.shape} and "
                                     f"{p1.shape}")
            if opts.train_head == "dfa":
                self.register_feedback("B_head", (C, C), "head", "normal", C, device, dtype)

    def _dfa_shape(self, p) -> Tuple[str, Tuple[int, ...]]:
        o = self.opts
        if p.layout == "vec":
            return "vec", (p.dim,)
        if p.layout == "tokens":
            if o.token_feedback == "per_token":
                return "per_token", (int(math.prod(p.shape)),)
            return o.token_feedback, (p.dim,)
        if p.layout == "map":
            if o.conv_feedback == "full":
                return "full", (int(math.prod(p.shape)),)
            return "channel_broadcast", (p.dim,)
        raise ValueError(f"feedback point {p.index}: unknown layout {p.layout!r} (expected vec, tokens or map)")

    def extra_repr(self) -> str:
        o = self.opts
        if self.kind == "block":
            return f"block FA, skip={o.skip}, normalize={o.normalize!r}, seed={o.seed}"
        return (f"DFA, placement={o.placement!r}, normalize={o.normalize!r}, share_b0={o.share_b0}, "
                f"train_head={o.train_head!r}, seed={o.seed}")

    # -- forward ----------------------------------------------------------------------------------------------
    def forward(self, model: nn.Module, x: torch.Tensor, return_hidden: bool = False):
        check = getattr(model, "_check_input", None)
        if check is not None:
            check(x)
        if self.kind == "block":
            return self._forward_block(model, x, return_hidden)
        return self._forward_dfa(model, x, return_hidden)

    def _forward_block(self, model, x, return_hidden):
        o = self.opts
        h = model.embed(x)
        if o.normalize != "none":
            h = NormGrad.apply(h, self.layouts[0], o.normalize)
        hiddens = [h]
        residual = getattr(model, "residual_add", True)
        for l, block in enumerate(model.blocks):
            f = block(h.detach())
            bridged = FABridge.apply(f, h, self._buffers[f"B_{l}"], self.layouts[l], o.normalize)
            if residual:
                h = (h if o.skip else h.detach()) + bridged
            else:
                h = bridged
            hiddens.append(h)
        logits = model.head(model.readout(h))
        return (logits, hiddens) if return_hidden else logits

    def _forward_dfa(self, model, x, return_hidden):
        o = self.opts
        point = (lambda t, k: post_ln(t, self.layouts[k])) if o.placement == "post_ln" else (lambda t, k: t)
        h0 = model.embed(x)
        points, hiddens = [point(h0, 0)], [h0]
        h = h0.detach()
        residual = getattr(model, "residual_add", True)
        for l, block in enumerate(model.blocks):
            f = block(h)
            hn = h + f if residual else f
            points.append(point(hn, l + 1))
            hiddens.append(hn)
            h = hn.detach()
        logits = model.head(model.readout(h))
        spec = [HubPoint(self._buffers[src], layout, mode)
                for src, layout, mode in zip(self.sources, self.layouts, self.modes)]
        if "per_token_error" in self.modes and logits.dim() != 3:
            raise ValueError(f"token_feedback='per_token_error' needs per-token logits (N, T, C) (a language "
                             f"model's loss per token); this model returns {tuple(logits.shape)}: use "
                             "'broadcast' or 'per_token'")
        head_B = self._buffers.get("B_head")
        logits = DFAHub.apply(logits, spec, o.normalize, head_B, *points)
        return (logits, hiddens) if return_hidden else logits


def _dfa_init(init: str, C: int, dim: int, D: int) -> Tuple[str, int]:
    """(draw init, fan) of a DFA matrix: ``readout`` N(0, s²/D) with D the point's values per sample;
    ``normal`` N(0, s²/C) (the reference code); ``uniform_dim`` U(±s)/√d (TinyDFA)."""
    if init == "readout":
        return "normal", D
    return init, (C if init == "normal" else dim)


def branch_jacobian_scale(block: nn.Module, point, seed: int, l: int, samples: int = 8) -> float:
    """s such that B ~ N(0, s²/d) (d × d) has ‖B‖_F ≈ the per-position ‖∂f/∂h‖_F of ``block`` at init.

    Hutchinson estimate with reverse mode: ‖J‖_F² = E_u ‖Jᵀu‖² for u ~ N(0, I), on ``samples`` standard-normal
    stream states of the point's shape (the block in eval mode, so BatchNorm statistics are untouched); the
    sample's Jacobian is shared among its P positions, so s² = ‖J‖_F² / (P·d). Drawn from (seed, l).
    """
    from tractable.feedback.banks import stable_seed

    gen = torch.Generator().manual_seed(stable_seed(seed, f"match_branch.{l}"))
    p0 = next(iter(block.parameters()), None)
    device = p0.device if p0 is not None else torch.device("cpu")
    dtype = p0.dtype if p0 is not None and p0.is_floating_point() else torch.float32
    shape = (samples,) + tuple(point.shape)
    h = torch.randn(shape, generator=gen).to(device, dtype).requires_grad_(True)
    u = torch.randn(shape, generator=gen).to(device, dtype)
    was = block.training
    block.eval()
    try:
        with torch.enable_grad():
            (jtu,) = torch.autograd.grad(block(h), h, u)
    finally:
        block.train(was)
    positions = max(1, int(math.prod(point.shape)) // point.dim)
    sq = float(jtu.double().pow(2).sum()) / samples
    return math.sqrt(sq / (positions * point.dim))


def _device_of(model: nn.Module):
    """(device, dtype) of the model's first floating-point parameter (the matrices follow it)."""
    for t in model.parameters():
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32
