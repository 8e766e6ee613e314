"""Right-multiplication of a weight gradient by TrAct's preconditioner P = (XᵀX/b + λI)⁻¹, never forming P.

n×n form (paper Eq. 12): ``K = S/b + λI`` is symmetric positive definite for λ > 0; with its Cholesky factor
``K = LLᵀ`` the preconditioned gradient is ``M K⁻¹ = (M L⁻ᵀ) L⁻¹`` (two triangular solves), batched over groups.

b×b form (push-through / Woodbury, for b < n): ``(λI + UUᵀ/b)⁻¹ = (1/λ)[I − U(bλI + UᵀU)⁻¹Uᵀ]`` with
``U = Xᵀ``, so ``M P = (M − (MU)(bλI + UᵀU)⁻¹Uᵀ)/λ``: a b×b factorisation instead of an n×n one. It needs only
the plain gradient ``M = GᵀX``, which is why it works from the weight gradient alone.

Fallback: in float32 ``cond(K) ≤ (μ_max + λ)/λ`` can exceed 1/ε (inputs in [0, 255], n = 768, tiny λ), and the
factorisation fails. A failed (``info ≠ 0``) or non-finite factor is redone in float64 by LU
(``linalg.solve_ex``), which also propagates NaN from a non-finite input. On the CPU in eager mode the check
is a cheap host read; under ``torch.compile``, ``torch.func`` transforms and on accelerators both branches are
computed and merged with ``torch.where`` so that no host synchronisation or data-dependent branch appears.
"""
from __future__ import annotations

import math
import warnings
from typing import NamedTuple, Optional, Tuple, Union

import torch

from tractable.tract.eager import eager_host

Lam = Union[float, torch.Tensor]


FLOAT32_RATIO_LIMIT = 1e4


def float64_needed(diag_sum_sq: torch.Tensor, b: int, lam: Lam) -> bool:
    """Eager-CPU guard: is the float32 statistic too coarse for this λ?

    ``diag_sum_sq`` holds the diagonal of XᵀX (per feature, any shape) and ``b`` the number of rows. Rounding
    in a float32 Gram is about ε·max diag, which must stay well below bλ for the smallest directions of K to
    survive (rank-deficient or badly scaled inputs such as raw [0, 255] pixels). Beyond
    ``max diag(XᵀX/b) / λ > 1e4`` the statistic and the solve are redone in float64. Returns False wherever
    reading a value would need a host synchronisation (then float32 is kept), and for non-finite inputs
    (NaN then propagates as in the plain gradient).
    """
    return check_diagonal(diag_sum_sq, b, lam)[1]


def check_diagonal(diag_sum_sq: torch.Tensor, b: int, lam: Lam) -> Tuple[Optional[bool], bool]:
    """``(finite, float64_needed)`` from the Gram's diagonal with one host read (eager CPU only).

    ``finite`` is None where no value may be read (traced code, accelerators). A finite diagonal means a finite
    Gram (|S_ij| ≤ √(S_ii S_jj)).
    """
    if not eager_host(diag_sum_sq) or b <= 0:
        return None, False
    if diag_sum_sq.numel() <= 4096:  # one host read, then plain Python (fewer tiny torch ops)
        vals = diag_sum_sq.tolist()
        while vals and isinstance(vals[0], list):  # (G, n) → flat
            vals = [v for row in vals for v in row]
        total = math.fsum(vals)
        top = max(vals) if vals else 0.0
    else:
        top, total = torch.stack([diag_sum_sq.max(), diag_sum_sq.sum()]).tolist()  # one read
    if not math.isfinite(total):
        return False, False
    return True, _decide(top / b, total / (diag_sum_sq.numel() * b), lam)


def float64_needed_rows(row_sum_sq: torch.Tensor, X: torch.Tensor, lam: Lam) -> bool:
    """:func:`float64_needed` for the b×b form, from the row norms ``‖x_i‖²`` (the diagonal of XXᵀ) first.

    Their sum is the trace of XᵀX, which bounds its largest diagonal entry; the per-feature diagonal is
    computed from ``X (b, n)`` only when that bound is not already below the limit.
    """
    if not eager_host(row_sum_sq):
        return False
    b, n = X.shape
    total = float(row_sum_sq.sum())
    if not math.isfinite(total) or b <= 0:
        return False
    if total / b / float(lam) <= FLOAT32_RATIO_LIMIT:
        return _decide(total / b, total / (b * n), lam)
    return float64_needed((X * X).sum(0), b, lam)


def _decide(top: float, mean: float, lam: Lam) -> bool:
    """``top`` = max diag(XᵀX/b) (or an upper bound), ``mean`` = its mean: warn off-scale inputs, decide."""
    if not (1e-2 <= mean <= 1e2):
        warnings.warn(
            f"TrAct: the layer input's mean square is {mean:.3g} per feature; the paper's λ guidance (0.05-0.2) "
            "assumes inputs standardised to mean 0 and std 1 per channel (spec: 'Standardised-input assumption')",
            stacklevel=3,
        )
    return top / float(lam) > FLOAT32_RATIO_LIMIT


def _eye_like(K: torch.Tensor) -> torch.Tensor:
    return torch.eye(K.shape[-1], dtype=K.dtype, device=K.device)


class Factor(NamedTuple):
    """A factorised K for :func:`solve_factored`: its Cholesky factor and what the fallback needs."""

    L: torch.Tensor  # lower Cholesky factor of K (garbage where the factorisation failed)
    K: Optional[torch.Tensor] = None  # K itself where the float64 LU fallback is, or may be, needed
    ok: Optional[torch.Tensor] = None  # branch-free path: per-group success flags (None in eager mode)


def factor(K: torch.Tensor, finite: Optional[bool] = None) -> Factor:
    """Cholesky-factorise SPD ``K`` (``(n, n)`` or batched ``(G, n, n)``), noting where the fallback is needed.

    A factor with ``info == 0`` and a finite diagonal is finite: LAPACK's potrf stops (info > 0) at the first
    pivot that is ≤ 0 or NaN, and a NaN or ±inf anywhere in K's lower triangle reaches a later pivot. ``finite``
    (from :func:`check_diagonal`) says that K is known finite (True) or not (False), saving that check.
    """
    L, info = torch.linalg.cholesky_ex(K)
    if eager_host(K):
        bad = finite is False or (info.item() != 0 if info.dim() == 0 else bool(info.any()))
        if not bad and finite is None:
            bad = not math.isfinite(float(L.diagonal(dim1=-2, dim2=-1).sum()))
        return Factor(L, K if bad else None)
    ok = (info == 0) & torch.isfinite(L.diagonal(dim1=-2, dim2=-1)).all(-1)
    return Factor(L, K, ok)


def solve_factored(M: torch.Tensor, f: Factor) -> torch.Tensor:
    """``M K⁻¹`` from :func:`factor`'s result (M ``(m, n)`` or ``(G, m, n)`` like K)."""
    if f.ok is None:
        return _lu_float64(M, f.K) if f.K is not None else _trsm2(M, f.L)
    return torch.where(f.ok[..., None, None], _trsm2(M, f.L), _lu_float64(M, f.K))


def _trsm2(M: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    # M K⁻¹ = (M L⁻ᵀ) L⁻¹: two right-sided triangular solves (measured faster than cholesky_solve on Mᵀ)
    return torch.linalg.solve_triangular(L, torch.linalg.solve_triangular(L.mT, M, upper=True, left=False),
                                        upper=False, left=False)


def _lu_float64(M: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """The fallback: ``M K⁻¹`` by LU in float64 on the symmetrised K (propagates NaN from non-finite input)."""
    K64 = K.double()
    K64 = (K64 + K64.mT) * 0.5
    return torch.linalg.solve_ex(K64, M.double().mT)[0].mT.to(M.dtype)


def solve_right(M: torch.Tensor, K: torch.Tensor, finite: Optional[bool] = None) -> torch.Tensor:
    """``M K⁻¹`` for SPD ``K`` (batched: M ``(G, m, n)``, K ``(G, n, n)``), Cholesky with a float64 fallback."""
    if M.shape[0] == 1:  # one group: 2-D operands (no batched transposes or copies)
        return solve_factored(M[0], factor(K[0], finite)).unsqueeze(0)
    return solve_factored(M, factor(K, finite))


def k_matrix(S: torch.Tensor, b: Union[int, torch.Tensor], lam: Lam) -> torch.Tensor:
    """``K = S/b + λI`` (per group), formed in place of a fresh ``S/b``."""
    K = S / b
    K.diagonal(dim1=-2, dim2=-1).add_(lam)
    return K


def precondition_nxn(M: torch.Tensor, S: torch.Tensor, b: Union[int, torch.Tensor], lam: Lam,
                     finite: Optional[bool] = None) -> torch.Tensor:
    """``M (S/b + λI)⁻¹`` with S the per-group Gram, shapes M ``(G, m, n)``, S ``(G, n, n)``."""
    return solve_right(M, k_matrix(S, b, lam), finite)


def precondition_bxb(M: torch.Tensor, U: torch.Tensor, lam: Lam) -> torch.Tensor:
    """``M (UUᵀ/b + λI)⁻¹`` through the b×b system (U ``(G, n, b)``, cheaper when b < n)."""
    b = U.shape[-1]
    Kb = U.mT @ U
    Kb = Kb + (b * lam) * _eye_like(Kb)
    Z = solve_right(M @ U, Kb)
    return (M - Z @ U.mT) / lam
