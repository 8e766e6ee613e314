"""The TrAct autograd core: an identity on the weight whose backward preconditions the weight gradient.

TrAct (Petersen, Borgelt, Ermon, NeurIPS 2024, arXiv 2410.23970, Eq. 12) replaces only the weight gradient
of a layer ``z = W x``:

    ∇_W^TrAct = Gᵀ X · (XᵀX / b + λ I)⁻¹            (one such product per group for grouped convs)

with X the b rows the weight multiplies (see :mod:`tractable.tract.gram`). We insert ``weight' = tract(weight,
x)`` in front of the layer's own functional call. Forward: ``weight'`` *is* ``weight`` (a view), so the layer's
output, its input gradient and its bias gradient are the native ones, bitwise, in every option and under
autocast. Backward: the native kernel delivers the plain ``M = GᵀX`` for ``weight'``; we return ``M·P``. Only
the Gram needs receptive fields; GᵀX never does. In the n×n form (b ≥ n, the usual case) K = S/b + λI is
formed and Cholesky-factorised already in the forward (``setup_context``), while x is warm in the caches, and
only its factor (n×n) is saved; the backward then runs two triangular solves. This costs the statistic even if
no backward follows a forward under grad mode (evaluate under ``torch.no_grad()``, where TrAct does nothing).
The b×b form (b < n) saves x and does everything in the backward. Linear layers in the default mode use
:class:`TrActLinearOutput` instead, which starts from the output gradient G.

Exact mode (our addition, not in the paper): the backward returns M unchanged and emits ``S = XᵀX`` and the
row count ``b`` as the gradients of two auxiliary leaves, so autograd itself sums them over micro-batches;
:func:`tractable.precondition_` later sums them over DDP ranks and applies ``K = S/b + λI`` once.

The statistic and the solve run in float32 (float64 for float64 inputs/weights) with autocast disabled,
whatever the layer's dtype; the result is cast back to the weight's dtype. In eager mode on the CPU, a
float32 statistic too coarse for λ (max diag(XᵀX/b)/λ > 1e4, e.g. raw [0, 255] pixels) is redone in float64.
"""
from __future__ import annotations

import contextlib

from typing import Optional, Tuple

import torch

from tractable.tract.gram import DEFAULT_CHUNK_BYTES, Geometry, gram, num_rows, rows
from tractable.tract.eager import plain_tensor
from tractable.tract.gemm import mm_nt
from tractable.tract.solve import (Factor, Lam, check_diagonal, factor, float64_needed, float64_needed_rows,
                                   k_matrix, precondition_bxb, precondition_nxn, solve_factored, solve_right)


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any operand is float64, else float32 (never lower)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def uses_nxn(b: int, n_g: int, form: str) -> bool:
    """Whether ``form`` resolves to the n×n form for b rows of n_g features (``"auto"``: b×b iff b < n)."""
    return not (form == "bxb" or (form == "auto" and b < n_g))


def nxn_statistic(x: torch.Tensor, geom: Geometry, lam: Lam, dtype: torch.dtype,
                  chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Tuple[torch.Tensor, int, Optional[bool]]:
    """``(S, b, finite)``: the per-group Gram in ``dtype``, redone in float64 where a float32 one is too coarse
    for λ; ``finite`` as in :func:`tractable.tract.solve.check_diagonal` (None where no value may be read)."""
    S, b = gram(x, geom, dtype, chunk_bytes)
    finite, need64 = check_diagonal(S.diagonal(dim1=-2, dim2=-1), b, lam) if dtype == torch.float32 else (None, False)
    if need64:
        S, _ = gram(x, geom, torch.float64, chunk_bytes)
    return S, b, finite


def tract_gradient(
    M: torch.Tensor, x: torch.Tensor, geom: Geometry, lam: Lam, form: str = "auto", chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> torch.Tensor:
    """Pure function: the TrAct weight gradient from the plain one ``M`` (weight-shaped) and the layer input ``x``.

    ``form`` is ``"nxn"`` (paper), ``"bxb"`` (push-through, cheaper when b < n) or ``"auto"`` (b×b iff b < n).
    """
    dtype = compute_dtype(M, x)
    n_g = geom.n_per_group
    G = geom.groups
    Mg = M.reshape(G, -1, n_g).to(dtype)
    b = num_rows(x, geom)
    if b == 0:  # no rows: the plain gradient is zero already
        return M
    if not uses_nxn(b, n_g, form):
        U = rows(x, geom, dtype)
        if dtype == torch.float32 and float64_needed((U * U).sum(-1), b, lam):
            U, Mg = U.double(), Mg.double()
        out = precondition_bxb(Mg, U, lam)
    else:
        S, b, finite = nxn_statistic(x, geom, lam, dtype, chunk_bytes)
        out = precondition_nxn(Mg.to(S.dtype), S, b, lam, finite)
    return out.reshape(M.shape).to(M.dtype)


def linear_tract_gradient(
    G: torch.Tensor, x: torch.Tensor, lam: Lam, form: str = "auto", chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """Pure function: a Linear layer's TrAct weight gradient ``(m, n)`` from its output gradient ``G (*, m)``.

    With G at hand the b×b form needs no plain gradient: ``Gᵀ(XXᵀ/b + λI)⁻¹X = b·Gᵀ(XXᵀ + bλI)⁻¹X`` (a b×b
    Gram, a Cholesky factorisation, two triangular solves and one GEMM in place of the plain GᵀX; both products
    through :func:`tractable.tract.gemm.mm_nt`, i.e. oneDNN in float32 on the CPU). The n×n form
    computes GᵀX itself and preconditions it. Everything runs in ``dtype`` (default float32, float64 for
    float64 operands).
    """
    n, m = x.shape[-1], G.shape[-1]
    dtype = dtype or compute_dtype(G, x)
    X = x.reshape(-1, n).to(dtype)
    Gm = G.reshape(-1, m).to(dtype)
    b = X.shape[0]
    if b == 0:
        return X.new_zeros((m, n))
    if not uses_nxn(b, n, form):
        X = X.contiguous()
        Kb = mm_nt(X, X)  # X Xᵀ (b, b)
        if dtype == torch.float32 and float64_needed_rows(Kb.diagonal(), X, lam):
            X, Gm = X.double(), Gm.double()
            Kb = X @ X.mT
        Kb.diagonal().add_(b * lam)
        Z = solve_right(Gm.mT.unsqueeze(0), Kb.unsqueeze(0))[0]  # Gᵀ (XXᵀ + bλI)⁻¹, (m, b)
        return mm_nt(Z.mul_(b), X.mT).to(dtype)  # b·Z X
    M = mm_nt(Gm.mT, X.mT)  # GᵀX (m, n), both operands column-major views
    return tract_gradient(M, x, Geometry("linear", n), lam, "nxn", chunk_bytes).to(dtype)


def _save_input_and_lambda(ctx, x: torch.Tensor, lam: Lam) -> None:
    """Save the layer input (and λ when it is a tensor) for the backward."""
    if isinstance(lam, torch.Tensor):
        ctx.save_for_backward(x.detach(), lam.detach())
        ctx.lam = None
    else:
        ctx.save_for_backward(x.detach())
        ctx.lam = lam


def _saved_input_and_lambda(ctx):
    saved = ctx.saved_tensors
    return saved[0], (ctx.lam if ctx.lam is not None else saved[1])


class TrActLinearOutput(torch.autograd.Function):
    """For Linear layers: ``out' = out`` in the forward, where ``out = F.linear(x, weight.detach(), bias)``;
    the backward passes G on unchanged (so the input and bias gradients stay native) and returns TrAct's weight
    gradient computed from G and x (:func:`linear_tract_gradient`) for ``weight``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(out, x, weight, lam, form, chunk_bytes):  # type: ignore[override]
        return out.view_as(out)

    @staticmethod
    def setup_context(ctx, inputs, output):
        out, x, weight, lam, form, chunk_bytes = inputs
        _save_input_and_lambda(ctx, x, lam)
        ctx.form, ctx.chunk_bytes = form, chunk_bytes
        ctx.weight_dtype = weight.dtype

    @staticmethod
    def backward(ctx, grad):
        if grad is None:
            return (None,) * 6
        x, lam = _saved_input_and_lambda(ctx)
        dtype = torch.float64 if ctx.weight_dtype == torch.float64 else None
        with _autocast_off(x.device.type):
            gw = linear_tract_gradient(grad, x, lam, ctx.form, ctx.chunk_bytes, dtype)
        return grad, None, gw.to(ctx.weight_dtype), None, None, None


class TrActWeight(torch.autograd.Function):
    """``weight' = weight`` in the forward; TrAct's preconditioned weight gradient in the backward."""

    generate_vmap_rule = True

    @staticmethod
    def forward(  # type: ignore[override]
        weight: torch.Tensor,
        x: torch.Tensor,
        lam: Lam,
        geom: Geometry,
        form: str,
        chunk_bytes: int,
        stat: Optional[torch.Tensor],
        count: Optional[torch.Tensor],
    ) -> torch.Tensor:
        return weight.view_as(weight)

    @staticmethod
    def setup_context(ctx, inputs, output):
        weight, x, lam, geom, form, chunk_bytes, stat, count = inputs
        ctx.geom = geom
        ctx.form = form
        ctx.chunk_bytes = chunk_bytes
        ctx.exact = stat is not None
        ctx.factored = False  # True: K was formed and factorised here and is saved instead of x
        if not ctx.exact:
            b = num_rows(x, geom)
            if b > 0 and uses_nxn(b, geom.n_per_group, form):
                # Form and factorise K now, while x is warm in the caches from the layer's own forward: the
                # backward then only solves. Measured on the 4×4 patch embedding (same-process A/B): 1.32× →
                # 1.29-1.30× of the plain step, against doing it all in the backward.
                with _autocast_off(x.device.type):  # (setup_context runs with grad mode off)
                    S, b, finite = nxn_statistic(x, geom, lam, compute_dtype(weight, x), chunk_bytes)
                    f = factor(k_matrix(S[0] if geom.groups == 1 else S, b, lam), finite)
                ctx.save_for_backward(f.L, f.K, f.ok)
                ctx.factored = True
                return
        _save_input_and_lambda(ctx, x, lam)

    @staticmethod
    def backward(ctx, grad):
        nothing = (None,) * 6
        if grad is None:
            return (None, None) + nothing
        if ctx.factored:
            f = Factor(*ctx.saved_tensors)
            G, n_g = ctx.geom.groups, ctx.geom.n_per_group
            with _autocast_off(f.L.device.type):
                Mg = (grad.reshape(-1, n_g) if G == 1 else grad.reshape(G, -1, n_g)).to(f.L.dtype)
                out = solve_factored(Mg, f).reshape(grad.shape)
            return (out if out.dtype == grad.dtype else out.to(grad.dtype), None) + nothing
        x, lam = _saved_input_and_lambda(ctx)
        with _autocast_off(x.device.type):
            if ctx.exact:
                dtype = compute_dtype(grad, x)
                S, b = gram(x, ctx.geom, dtype, ctx.chunk_bytes)
                count = torch.full((), float(b), dtype=dtype, device=S.device)
                return (grad, None, None, None, None, None, S, count)
            return (tract_gradient(grad, x, ctx.geom, lam, ctx.form, ctx.chunk_bytes), None) + nothing


_NO_CONTEXT = contextlib.nullcontext()


def apply(fn: type, *args):
    """``fn.apply(*args)`` for our Functions, with a shortcut in plain eager mode.

    torch's Python ``Function.apply`` re-binds the arguments with ``inspect.signature`` on every call (for
    functorch's sake) before it reaches the C++ apply, which itself runs ``forward`` and ``setup_context``.
    Inside a training step, with cold caches, that binding measured 0.15 ms per call: 3-5 % of a small first
    layer's step. With all arguments positional and no defaults the binding changes nothing, so outside
    ``torch.compile`` and ``torch.func`` transforms, and for plain tensors and Parameters (no subclasses with
    ``__torch_function__``), we call the C++ apply directly.
    """
    if (torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()
            or not all(plain_tensor(a) for a in args if isinstance(a, torch.Tensor))):
        return fn.apply(*args)
    return super(torch.autograd.Function, fn).apply(*args)


def _autocast_off(device_type: str):
    """A context that disables autocast for ``device_type`` if it is on (our maths never runs under it)."""
    return torch.autocast(device_type=device_type, enabled=False) if _autocast_on(device_type) else _NO_CONTEXT


def _autocast_on(device_type: str) -> bool:
    """Whether autocast is active for ``device_type`` (the backward must not run our maths under it)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except (TypeError, RuntimeError):  # torch < 2.4 has no device argument for some device types
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()
