r"""Sparsity of ISTA outputs: the fraction of exact zeros of Z^{ℓ+1} ∈ R^{B×n×d} per sample,
#(Z == 0)/(n·d), over every token including cls and with no tolerance (the reference ``vis_utils/plot.py``).
The reference figure plots the non-zero fraction ‖Z‖₀/(n·d) = 1 − mean, with error bars std over samples."""
from __future__ import annotations

import torch

__all__ = ["zero_fraction"]


def zero_fraction(Z: torch.Tensor) -> torch.Tensor:
    """(B,) float64: fraction of entries of each sample's (n, d) tokens that are exactly 0."""
    if not isinstance(Z, torch.Tensor) or Z.dim() != 3:
        raise ValueError(f"zero_fraction: expected tokens of shape (B, n, d), got "
                         f"{tuple(Z.shape) if isinstance(Z, torch.Tensor) else type(Z).__name__}")
    return (Z == 0).sum(dim=(1, 2)).to(torch.float64) / (Z.shape[1] * Z.shape[2])
