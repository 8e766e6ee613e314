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
from typing import Union

import torch

from tractable.tract.eager import eager_host

Lam = Union[float, torch.Tensor]


FLOAT32_RATIO_LIMIT = 1e4


def float64_needed(diag_mean_sq: torch.Tensor, lam: Lam) -> bool:
    """Eager-CPU guard: is the float32 statistic too coarse for this λ?

    ``diag_mean_sq`` holds the diagonal of XᵀX/b. Rounding in a float32 Gram is about ε·max diag, which must
    stay well below λ for the smallest directions of K to survive (rank-deficient or badly scaled inputs such
    as raw [0, 255] pixels). Beyond ``max diag / λ > 1e4`` the statistic and the solve are redone in float64.
    Returns False wherever reading a value would need a host synchronisation (then float32 is kept).
    """
    if not eager_host(diag_mean_sq):
        return False
    lam_v = float(lam) if not isinstance(lam, torch.Tensor) else float(lam.detach())
    top, mean = torch.stack([diag_mean_sq.max(), diag_mean_sq.mean()]).tolist()  # one read
    if not math.isfinite(top):  # non-finite inputs: NaN propagates as in the plain gradient
        return False
    if not (1e-2 <= mean <= 1e2):
        warnings.warn(
            f"TrAct: the layer input's mean square is {mean:.3g} per feature; the paper's λ guidance (0.05-0.2) "
            "assumes inputs standardised to mean 0 and std 1 per channel (spec: 'Standardised-input assumption')",
            stacklevel=2,
        )
    return top / lam_v > FLOAT32_RATIO_LIMIT


def _eye_like(K: torch.Tensor) -> torch.Tensor:
    return torch.eye(K.shape[-1], dtype=K.dtype, device=K.device)


def solve_right(M: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """``M K⁻¹`` for SPD ``K`` (batched: M ``(G, m, n)``, K ``(G, n, n)``), Cholesky with a float64 fallback."""
    L, info = torch.linalg.cholesky_ex(K)
    # M K⁻¹ = (M L⁻ᵀ) L⁻¹: two right-sided triangular solves (measured faster than cholesky_solve on Mᵀ)
    Y = torch.linalg.solve_triangular(L, torch.linalg.solve_triangular(L.mT, M, upper=True, left=False),
                                      upper=False, left=False)
    if eager_host(K):
        if not bool(info.any()) and bool(torch.isfinite(L).all()):
            return Y
        K64 = K.double()
        K64 = (K64 + K64.mT) * 0.5
        return torch.linalg.solve_ex(K64, M.double().mT)[0].mT.to(M.dtype)
    ok = (info == 0) & torch.isfinite(L).flatten(1).all(1)
    K64 = K.double()
    K64 = (K64 + K64.mT) * 0.5
    Y64 = torch.linalg.solve_ex(K64, M.double().mT)[0].mT.to(M.dtype)
    return torch.where(ok[:, None, None], Y, Y64)


def precondition_nxn(M: torch.Tensor, S: torch.Tensor, b: Union[int, torch.Tensor], lam: Lam) -> torch.Tensor:
    """``M (S/b + λI)⁻¹`` with S the per-group Gram, shapes M ``(G, m, n)``, S ``(G, n, n)``."""
    K = S / b
    K.diagonal(dim1=-2, dim2=-1).add_(lam)
    return solve_right(M, K)


def precondition_bxb(M: torch.Tensor, U: torch.Tensor, lam: Lam) -> torch.Tensor:
    """``M (UUᵀ/b + λI)⁻¹`` through the b×b system (U ``(G, n, b)``, cheaper when b < n)."""
    b = U.shape[-1]
    Kb = U.mT @ U
    Kb = Kb + (b * lam) * _eye_like(Kb)
    Z = solve_right(M @ U, Kb)
    return (M - Z @ U.mT) / lam
