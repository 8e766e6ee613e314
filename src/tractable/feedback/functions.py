"""The autograd core of the credit-assignment methods: four ``torch.autograd.Function`` s, no state.

Row-vector convention: a Linear is y = x Wᵀ + b with W ∈ ℝ^{out×in}, so backpropagation sends g_x = g W.

* :class:`FALinearFn` (Lillicrap et al. 2016) — forward ``F.linear(x, W, b)``; backward

      g_x = g B,   g_W = g_flatᵀ x_flat,   g_b = Σ g,   (Kolen-Pollack: g_B = g_W as well)

  with all leading dimensions flattened, so token tensors (N, T, d) work. Only Wᵀ is replaced, which is what
  feedback alignment means; the weight and bias gradients are exact and local.
* :class:`FAConvFn` — the same for ``conv1d/2d/3d``: one ``aten.convolution_backward`` call with B in place of W
  gives g_x (the transposed convolution with B) and the exact g_W (which depends only on x and g).
* :class:`FABridge` (block-level FA) — forward returns the block's branch f unchanged; backward returns g to f
  (so the block's own layers are trained by exact BP from the signal at its output, optionally normalised) and
  g B to the block's input h, where B ∈ ℝ^{d×d} stands in for the branch Jacobian ∂f/∂h (applied on the feature
  axis: per token, per position). The identity path of the residual stream is the model's own ``h + f``.
* :class:`DFAHub` (Nøkland 2016) — forward is the identity on the logits; its other inputs are the feedback
  points p_0 … p_L. Backward sends the **true** g = ∂L/∂logits on to the logits (the head gets exact BP) and
  a_k = g B_k (B_k ∈ ℝ^{C×D_k}) to every point p_k, broadcast to p_k's layout. g carries the loss and its
  reduction (1/N for a mean), whatever the loss is. One node, no nested ``backward()``, no side effects.
* :class:`NormGrad` — the identity whose backward normalises the gradient (block FA's normalisation of the
  signal entering the embedding).

Normalisation of a signal a with N samples and P positions per sample (``normalize``):
``none`` — a; ``rms_per_sample`` — a / (RMS_n(a) + 1e-6) / (N·P_avg) where RMS_n is taken over each sample's
entries and P_avg is the number of positions the reference code's local loss averages over (1 for vectors and
per-token/full signals, T for broadcast tokens, H·W for channel-broadcast maps); ``dim`` — a / √d (TinyDFA).

All products run in float32 (float64 when an operand is float64) with autocast off, and are cast back to the
dtypes of the tensors they are gradients of, so the Functions behave under ``torch.autocast`` like the layers
they replace (the forward uses the layer's own autocast behaviour).
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ["FALinearFn", "FAConvFn", "FABridge", "DFAHub", "NormGrad", "normalize_signal", "HubPoint"]

_EPS = 1e-6


def _cdtype(*ts) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in ts) else torch.float32


def _no_autocast(t: torch.Tensor):
    return torch.autocast(device_type=t.device.type, enabled=False)


def normalize_signal(a: torch.Tensor, mode: str, avg_positions: int = 1, dim: Optional[int] = None) -> torch.Tensor:
    """Normalise a signal ``a`` (samples on dim 0) as described in the module docstring."""
    if mode == "none":
        return a
    if mode == "rms_per_sample":
        n = a.shape[0]
        rms = a.reshape(n, -1).pow(2).mean(dim=1).sqrt()
        rms = rms.view((n,) + (1,) * (a.dim() - 1))
        return a / (rms + _EPS) / (n * avg_positions)
    if mode == "dim":
        return a / math.sqrt(dim if dim is not None else a.shape[-1])
    raise ValueError(f"normalize must be 'none', 'rms_per_sample' or 'dim', got {mode!r}")


class FALinearFn(torch.autograd.Function):
    """``FALinearFn.apply(x, W, b, B, kp)``: linear forward, feedback-alignment backward (see module)."""

    @staticmethod
    def forward(ctx, x, weight, bias, feedback, kp: bool):
        ctx.save_for_backward(x, feedback)
        ctx.kp = kp
        ctx.w_dtype = weight.dtype
        ctx.has_bias = bias is not None
        ctx.b_dtype = bias.dtype if bias is not None else None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        x, B = ctx.saved_tensors
        dt = _cdtype(g, x, B)
        gx = gw = gb = gB = None
        with _no_autocast(g):
            g2 = g.reshape(-1, g.shape[-1]).to(dt)
            if ctx.needs_input_grad[0]:
                gx = (g2 @ B.to(dt)).view(x.shape).to(x.dtype)
            if ctx.needs_input_grad[1] or (ctx.kp and ctx.needs_input_grad[3]):
                gw = (g2.t() @ x.reshape(-1, x.shape[-1]).to(dt)).to(ctx.w_dtype)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                gb = g2.sum(0).to(ctx.b_dtype)
        if ctx.kp and ctx.needs_input_grad[3]:
            gB = gw.to(B.dtype)
        return gx, (gw if ctx.needs_input_grad[1] else None), gb, gB, None


class FAConvFn(torch.autograd.Function):
    """``FAConvFn.apply(x, W, b, B, stride, padding, dilation, groups, kp)`` for 1-, 2- and 3-d convolutions."""

    @staticmethod
    def forward(ctx, x, weight, bias, feedback, stride, padding, dilation, groups, kp: bool):
        ctx.save_for_backward(x, feedback)
        ctx.conf = (tuple(stride), tuple(padding), tuple(dilation), int(groups))
        ctx.kp = kp
        ctx.w_dtype = weight.dtype
        ctx.has_bias = bias is not None
        ctx.b_dtype = bias.dtype if bias is not None else None
        conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[x.dim()]
        return conv(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, g):
        x, B = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        dt = _cdtype(g, x, B)
        need_x = ctx.needs_input_grad[0]
        need_w = ctx.needs_input_grad[1] or (ctx.kp and ctx.needs_input_grad[3])
        need_b = ctx.has_bias and ctx.needs_input_grad[2]
        with _no_autocast(g):
            gx, gw, gb = torch.ops.aten.convolution_backward(
                g.to(dt), x.to(dt), B.to(dt), [B.shape[0]] if ctx.has_bias else None, list(stride), list(padding),
                list(dilation), False, [0] * len(stride), groups, [need_x, need_w, need_b])
        gx = gx.to(x.dtype) if need_x else None
        gw = gw.to(ctx.w_dtype) if need_w else None
        gb = gb.to(ctx.b_dtype) if need_b else None
        gB = gw.to(B.dtype) if (ctx.kp and ctx.needs_input_grad[3]) else None
        return gx, (gw if ctx.needs_input_grad[1] else None), gb, gB, None, None, None, None, None


def _feature_product(g: torch.Tensor, B: torch.Tensor, layout: str) -> torch.Tensor:
    """g B on the feature axis (last for ``vec``/``tokens``, dim 1 for ``map``)."""
    if layout == "map":
        return torch.einsum("nc...,cd->nd...", g, B)
    return g @ B


def _avg_positions(t: torch.Tensor, layout: str) -> int:
    if layout == "tokens":
        return t.shape[1]
    if layout == "map":
        return int(math.prod(t.shape[2:]))
    return 1


class FABridge(torch.autograd.Function):
    """``FABridge.apply(f, h, B, layout, normalize)``: f unchanged forward; backward g → f, g B → h."""

    @staticmethod
    def forward(ctx, f, h, feedback, layout: str, normalize: str):
        ctx.save_for_backward(feedback)
        ctx.layout, ctx.normalize = layout, normalize
        ctx.h_dtype = h.dtype
        return f.view_as(f)

    @staticmethod
    def backward(ctx, g):
        (B,) = ctx.saved_tensors
        gf = gh = None
        if ctx.needs_input_grad[0]:
            if ctx.normalize == "none":
                gf = g
            else:
                dim = g.shape[1] if ctx.layout == "map" else g.shape[-1]
                gf = normalize_signal(g, ctx.normalize, _avg_positions(g, ctx.layout), dim)
        if ctx.needs_input_grad[1]:
            dt = _cdtype(g, B)
            with _no_autocast(g):
                gh = _feature_product(g.to(dt), B.to(dt), ctx.layout).to(ctx.h_dtype)
        return gf, gh, None, None, None


class NormGrad(torch.autograd.Function):
    """``NormGrad.apply(h, layout, normalize)``: identity forward; backward normalises the gradient."""

    @staticmethod
    def forward(ctx, h, layout: str, normalize: str):
        ctx.layout, ctx.normalize = layout, normalize
        return h.view_as(h)

    @staticmethod
    def backward(ctx, g):
        dim = g.shape[1] if ctx.layout == "map" else g.shape[-1]
        return normalize_signal(g, ctx.normalize, _avg_positions(g, ctx.layout), dim), None, None


class HubPoint:
    """What the hub needs to know about one feedback point: its matrix ``B`` (C × D), ``layout`` and the
    ``mode`` of broadcasting (``vec``; ``broadcast`` / ``per_token`` / ``per_token_error`` for tokens;
    ``channel_broadcast`` / ``full`` for maps)."""

    __slots__ = ("B", "layout", "mode")

    def __init__(self, B: torch.Tensor, layout: str, mode: str):
        self.B, self.layout, self.mode = B, layout, mode


def _project(g: torch.Tensor, pt: HubPoint, shape: torch.Size, normalize: str, dt: torch.dtype) -> torch.Tensor:
    a = g @ pt.B.to(dt)  # (N, D) or (N, T, d) for per-token errors
    if pt.layout == "vec":
        return normalize_signal(a, normalize, 1, shape[-1]).view(shape)
    if pt.layout == "tokens":
        if pt.mode == "broadcast":
            a = normalize_signal(a, normalize, shape[1], shape[-1])
            return a.unsqueeze(1).expand(shape)
        # per_token: (N, T·d); per_token_error: (N, T, d)
        return normalize_signal(a.reshape(shape), normalize, 1, shape[-1])
    # map
    if pt.mode == "channel_broadcast":
        a = normalize_signal(a, normalize, int(math.prod(shape[2:])), shape[1])
        return a.view(a.shape + (1,) * (len(shape) - 2)).expand(shape)
    return normalize_signal(a.reshape(shape), normalize, 1, shape[1])


class DFAHub(torch.autograd.Function):
    """``DFAHub.apply(logits, points_spec, normalize, head_B, *points)``: identity on the logits; backward sends
    the true ∂L/∂logits to the logits (or g B_head when ``head_B`` is given, ``train_head="dfa"``) and
    a_k = g B_k to every point (see the module docstring)."""

    @staticmethod
    def forward(ctx, logits, spec: Sequence[HubPoint], normalize: str, head_B: Optional[torch.Tensor], *points):
        if len(spec) != len(points):
            raise RuntimeError(f"DFAHub: {len(points)} points for {len(spec)} feedback matrices")
        ctx.spec, ctx.normalize, ctx.head_B = list(spec), normalize, head_B
        ctx.shapes = [p.shape for p in points]
        ctx.dtypes = [p.dtype for p in points]
        return logits.view_as(logits)

    @staticmethod
    def backward(ctx, g):
        dt = _cdtype(g)
        grads: List[Optional[torch.Tensor]] = []
        with _no_autocast(g):
            g32 = g.to(dt)
            for i, (pt, shape, dtype) in enumerate(zip(ctx.spec, ctx.shapes, ctx.dtypes)):
                if not ctx.needs_input_grad[4 + i]:
                    grads.append(None)
                    continue
                grads.append(_project(g32, pt, shape, ctx.normalize, dt).to(dtype))
            g_logits = g if ctx.head_B is None else (g32 @ ctx.head_B.to(dt)).to(g.dtype)
        return (g_logits, None, None, None, *grads)
