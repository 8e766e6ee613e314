"""The products behind TrAct's statistic on the CPU: ``A Bᵀ`` and the Gram ``U Uᵀ``, as fast as torch allows.

Why not plain ``torch.matmul``: in float32 on the CPU it calls MKL's sgemm, which runs its AVX2 kernels on
non-Intel CPUs (measured on an AMD Zen 5 host: about 100 GFLOPS on one thread), while oneDNN's inner product,
the kernel behind ``torch.ops.mkldnn._linear_pointwise``, uses AVX-512 there (about 200 GFLOPS; ViT-S/16
Gram 12544 × 768: 154 ms → 73 ms). Both accumulate in float32 and agree to float32 rounding (relative
1e-7). ``linear(A, B) = A Bᵀ`` is exactly the product a Gram needs, with U = Xᵀ laid out (n, rows).

oneDNN is used only where it is safe and worth it: plain eager mode (not under ``torch.compile`` or
``torch.func``), CPU, float32, 2-D operands stored row- or column-major. Its availability is checked once per
process with a small product compared against float64 ``torch.matmul`` on all four layouts (a capability
probe, not state that changes results); any failure falls back to ``torch.matmul``, and so does
``torch.backends.mkldnn.flags(enabled=False)``. Everything else (float64, GPUs, traced code) uses
``torch.matmul``.

Gram of a wide block (n ≥ :data:`UPPER_MIN_N`): BLAS ``syrk`` is not reachable from torch, so only the upper
block triangle is multiplied (8 block rows, each against everything to its right) and mirrored afterwards:
k(k+1)/2 of the k² block products. Measured with oneDNN at n = 768: 10.9 ms against 15.6 ms for the full
product on 2730 rows, 44 ms against 68 ms on 12544 rows.
"""
from __future__ import annotations

from typing import Optional

import torch

from tractable.tract.eager import plain_eager

UPPER_MIN_N = 256  # from this n on, only the upper block triangle of a Gram is multiplied (then mirrored)

_ONEDNN: Optional[bool] = None  # capability probe result, set on first use


def _probe() -> bool:
    """Does ``torch.ops.mkldnn._linear_pointwise`` exist here and compute ``A Bᵀ`` in float32?"""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        op = torch.ops.mkldnn._linear_pointwise
        a = torch.arange(15, dtype=torch.float32).reshape(3, 5).sin()
        b = torch.arange(20, dtype=torch.float32).reshape(4, 5).cos()
        want = a.double() @ b.double().mT
        for a_, b_ in ((a, b), (_col_major(a), b), (a, _col_major(b)), (_col_major(a), _col_major(b))):
            got = op(a_, b_, None, "none", [], "")
            if not (got.shape == (3, 4) and got.dtype == torch.float32
                    and torch.allclose(got.double(), want, rtol=1e-5, atol=1e-6)):
                return False
        return True
    except Exception:  # any missing op, signature change or runtime refusal: use torch.matmul
        return False


def _col_major(t: torch.Tensor) -> torch.Tensor:
    """The same matrix stored column-major (its transpose is contiguous)."""
    return t.mT.contiguous().mT


def onednn_available() -> bool:
    """Whether the oneDNN float32 product is usable in this process (probed once)."""
    global _ONEDNN
    if _ONEDNN is None:
        with torch.no_grad():
            _ONEDNN = _probe()
    return _ONEDNN


def _onednn_ok(*ts: torch.Tensor) -> bool:
    return all(t.dtype == torch.float32 and t.device.type == "cpu" and t.dim() == 2
               and (t.is_contiguous() or t.mT.is_contiguous()) and not t.requires_grad and plain_eager(t) for t in ts
               ) and torch.backends.mkldnn.enabled and onednn_available()


def mm_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.mT`` for ``a (p, k)`` and ``b (q, k)`` (oneDNN on eligible float32 CPU tensors: row- or
    column-major, so ``mm_nt(z, x.mT)`` computes ``z @ x`` without a transposed copy of x)."""
    if _onednn_ok(a, b):
        return _dnn(a, b)
    return a @ b.mT


def _dnn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """oneDNN's ``a @ b.mT``, for operands :func:`_onednn_ok` has accepted."""
    return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")


def gram_add_(S: Optional[torch.Tensor], U: torch.Tensor) -> torch.Tensor:
    """``S += U Uᵀ`` per group, for ``S (G, n, n)`` and ``U (G, n, r)``; ``S = None`` starts a new sum. Returns S.

    With n ≥ :data:`UPPER_MIN_N` only the upper block triangle of S is updated: call :func:`mirror_upper`
    once after the last update.
    """
    G, n = U.shape[0], U.shape[-2]
    upper = n >= UPPER_MIN_N
    if S is None and upper:
        S = U.new_zeros((G, n, n))
    nb = _block(n)
    # one check for all products: in a contiguous U every U[g] and each of its row blocks is contiguous too
    if G == 0 or not (U.is_contiguous() and _onednn_ok(U[0])):
        if not upper:
            return U @ U.mT if S is None else S.baddbmm_(U, U.mT)
        for i in range(0, n, nb):
            S[:, i : i + nb, i:].baddbmm_(U[:, i : i + nb], U[:, i:].mT)
        return S
    if not upper:
        if S is None:
            return torch.stack([_dnn(U[g], U[g]) for g in range(G)]) if G > 1 else _dnn(U[0], U[0]).unsqueeze(0)
        for g in range(G):
            S[g] += _dnn(U[g], U[g])
        return S
    for g in range(G):
        Ug = U[g]
        for i in range(0, n, nb):
            S[g, i : i + nb, i:] += _dnn(Ug[i : i + nb], Ug[i:])
    return S


def mirror_upper(S: torch.Tensor) -> torch.Tensor:
    """Complete S in place from its upper block triangle (after :func:`gram_add_` with n ≥ UPPER_MIN_N).

    Off-diagonal blocks are copied transposed, block by block (measured 0.44 ms at n = 768, against 2.7-5.3 ms
    for ``triu(S) + triu(S, 1).mT``); the diagonal blocks, whose two triangles were computed separately, are
    symmetrised from their upper triangle, so that S is exactly symmetric.
    """
    n = S.shape[-1]
    if n < UPPER_MIN_N:
        return S
    nb = _block(n)
    for i in range(0, n, nb):
        d = S[..., i : i + nb, i : i + nb]
        d.copy_(torch.triu(d) + torch.triu(d, 1).mT)
        if i + nb < n:
            S[..., i + nb :, i : i + nb].copy_(S[..., i : i + nb, i + nb :].mT)
    return S


def _block(n: int) -> int:
    """Columns per block row of the upper block triangle: 8 block rows, at least 64 columns each."""
    return max(64, -(-n // 8))
