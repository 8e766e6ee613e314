r"""Coding rates of token sets (float64).

For tokens X ∈ R^{n×p} (rows) and a scale c > 0, ½·logdet(I_n + c·XXᵀ) = ½·logdet(I_p + c·XᵀX) (Sylvester);
:func:`logdet_psd` evaluates the smaller of the two Gram forms with a float64 Cholesky factorisation.

* :func:`compression_rate` — R^c of the K head subspaces. ``"official"`` (the reference ``coding_rate.py``):
  X = the ``qkv`` output (B, n, K·d_h), split into heads, each token's head vector normalised to unit norm,
  R^c = ½ Σ_k logdet(I_n + d_h/(n·ε)·X̂_k X̂_kᵀ), ε = 0.01 entering linearly. ``"paper"``: no normalisation,
  scale d_h/(n·ε²) (the paper's R^c_ε(Z | U_[K]) when X = Z·U, i.e. the heads U_kᵀZ).
* :func:`coding_rate` — R(Z) = ½ logdet(I + d/(n·ε²)·ZᵀZ) (``"paper"``), or with unit-normalised tokens and a
  linear ε (``"official"``, the same convention as the official R^c, so ΔR = R − R^c compares like with like).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["logdet_psd", "compression_rate", "coding_rate"]

_MODES = ("official", "paper")


def logdet_psd(X: torch.Tensor, c: float, form: str = "auto") -> torch.Tensor:
    """logdet(I + c·XXᵀ) for a batch of token matrices X (…, n, p), in float64.

    ``form``: ``"n"`` (the n×n Gram XXᵀ), ``"p"`` (the p×p Gram XᵀX) or ``"auto"`` (the smaller one).
    """
    X = X.to(torch.float64)
    n, p = X.shape[-2:]
    if form == "auto":
        form = "p" if p <= n else "n"
    if form == "n":
        G = X @ X.transpose(-1, -2)
    elif form == "p":
        G = X.transpose(-1, -2) @ X
    else:
        raise ValueError(f"logdet_psd: form must be 'auto', 'n' or 'p', got {form!r}")
    eye = torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
    M = eye + c * G
    L, info = torch.linalg.cholesky_ex(M)
    if bool((info != 0).any()):  # not positive definite in floating point (c < 0 or non-finite input)
        sign, logabs = torch.linalg.slogdet(M)
        if bool((sign <= 0).any()):
            raise ValueError("logdet_psd: I + c·XXᵀ is not positive definite (is c > 0 and X finite?)")
        return logabs
    return 2.0 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)


def _check(name: str, X: torch.Tensor, eps: float, mode: str) -> None:
    if not isinstance(X, torch.Tensor) or X.dim() != 3:
        raise ValueError(f"{name}: expected tokens of shape (B, n, dim), got "
                         f"{tuple(X.shape) if isinstance(X, torch.Tensor) else type(X).__name__}")
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"{name}: eps must be a number > 0, got {eps!r}")
    if mode not in _MODES:
        raise ValueError(f"{name}: mode must be one of {', '.join(map(repr, _MODES))}, got {mode!r}")


def compression_rate(X: torch.Tensor, heads: int, eps: float = 0.01, mode: str = "official",
                     form: str = "auto") -> torch.Tensor:
    """Per-sample R^c (B,) float64 of head features ``X`` (B, n, K·d_h) (see the module docstring)."""
    _check("compression_rate", X, eps, mode)
    B, n, inner = X.shape
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or inner % heads:
        raise ValueError(f"compression_rate: heads must be a positive int dividing the feature size {inner}, "
                         f"got {heads!r}")
    dh = inner // heads
    Xh = X.to(torch.float64).reshape(B, n, heads, dh).transpose(1, 2)  # (B, K, n, dh)
    if mode == "official":
        Xh = F.normalize(Xh, dim=-1)
        c = dh / (n * eps)
    else:
        c = dh / (n * eps ** 2)
    return 0.5 * logdet_psd(Xh, c, form).sum(dim=-1)


def coding_rate(Z: torch.Tensor, eps: float = 0.01, mode: str = "official", form: str = "auto") -> torch.Tensor:
    """Per-sample R(Z) (B,) float64 of tokens ``Z`` (B, n, d) (see the module docstring)."""
    _check("coding_rate", Z, eps, mode)
    B, n, d = Z.shape
    Z = Z.to(torch.float64)
    if mode == "official":
        Z = F.normalize(Z, dim=-1)
        c = d / (n * eps)
    else:
        c = d / (n * eps ** 2)
    return 0.5 * logdet_psd(Z, c, form)
