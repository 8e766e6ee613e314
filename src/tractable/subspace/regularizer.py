"""The subspace regulariser (Wortsman et al. 2021, Eq. 3): β · cos²(ω_i, ω_j) between two stored points.

ω_i is the concatenation of stored point i over the regularised tensors (each a stacked (K, …) Parameter E_t),
so with the Gram entries G_ij = Σ_t ⟨E_t[i], E_t[j]⟩ (accumulated in float32; float64 inputs stay float64):

    R = β · mean over the pairs (i, j) of G_ij² / (G_ii G_jj)
    ∂R/∂ω_i = 2G_ij/(G_ii G_jj) · ω_j − 2G_ij²/(G_ii² G_jj) · ω_i   (and symmetrically for ω_j).

The backward collects these coefficients in one K × K matrix S, so ∂(βR)/∂E_t = S · E_t (E_t viewed as K × n;
rows outside the drawn pair(s) are zero): one gradient per stored tensor, which autograd adds to the mixing
gradient c ⊗ ∂L/∂w. Nothing is concatenated. On the CPU the few Gram scalars are combined in Python float64
(cheaper than tensor operators for a handful of numbers); on an accelerator they stay device tensors (no
synchronisation).
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch

from tractable.subspace.parametrization import combine_points

__all__ = ["cos2"]


def cos2(stacked: Sequence[torch.Tensor], pairs: Sequence[Tuple[int, int]], beta: float) -> torch.Tensor:
    """β · mean over ``pairs`` of cos²(ω_i, ω_j), the stored points concatenated over ``stacked`` (K, …)."""
    return _Cos2.apply(tuple(pairs), float(beta), *stacked)


def _host_scalars(device: torch.device) -> bool:
    """Whether the Gram scalars are combined in Python (CPU) or stay device tensors (no synchronisation)."""
    return device.type == "cpu"


class _Cos2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pairs, beta: float, *stacked):
        K = stacked[0].shape[0]
        acc = torch.float64 if any(t.dtype == torch.float64 for t in stacked) else torch.float32
        needed = sorted({(i, j) for p in pairs for i in p for j in p if i <= j})
        with torch.autocast(stacked[0].device.type, enabled=False):  # fp32 accumulation under AMP
            flats = [t.reshape(K, -1) if t.dtype == acc else t.reshape(K, -1).to(acc) for t in stacked]
            dots = torch.stack([torch.dot(f[i], f[j]) for i, j in needed for f in flats])
        ctx.pairs, ctx.beta, ctx.K, ctx.acc = pairs, beta, K, acc
        ctx.save_for_backward(*stacked)
        if _host_scalars(dots.device):  # a handful of scalars: Python float64 arithmetic
            flat_dots = dots.tolist()
            n = len(flats)
            gram = {ij: math.fsum(flat_dots[k * n:(k + 1) * n]) for k, ij in enumerate(needed)}
            ctx.dpq = [(gram[(i, j)], gram[(i, i)], gram[(j, j)]) for i, j in pairs]
            return torch.tensor(beta * math.fsum(d * d / (p * q) for d, p, q in ctx.dpq) / len(pairs), dtype=acc)
        if len(flats) > 1:
            dots = dots.view(len(needed), len(flats)).sum(1)
        pos = {ij: n for n, ij in enumerate(needed)}
        sel = [pos[ij] for ij in pairs] + [pos[(i, i)] for i, _ in pairs] + [pos[(j, j)] for _, j in pairs]
        ctx.dpq = dots[sel].view(3, len(pairs))
        d, p, q = ctx.dpq.unbind()
        return (d * d / (p * q)).mean() * beta

    @staticmethod
    def backward(ctx, g):
        K = ctx.K
        if isinstance(ctx.dpq, list):  # CPU: S from Python floats
            scale = float(g) * ctx.beta / len(ctx.pairs)
            rows = [[0.0] * K for _ in range(K)]
            for (i, j), (d, p, q) in zip(ctx.pairs, ctx.dpq):
                r = 2.0 * d / (p * q) * scale  # ∂/∂G_ij; the diagonal terms follow
                rows[i][j] += r
                rows[j][i] += r
                rows[i][i] -= r * d / p
                rows[j][j] -= r * d / q
            s = torch.tensor(rows, dtype=ctx.acc)
        else:
            d, p, q = ctx.dpq.unbind()
            i_idx = [i for i, _ in ctx.pairs]
            j_idx = [j for _, j in ctx.pairs]
            r = 2 * d / (p * q) * (g.to(d.dtype) * ctx.beta / len(ctx.pairs))
            index = torch.tensor([i_idx + j_idx + i_idx + j_idx, j_idx + i_idx + i_idx + j_idx], device=d.device)
            s = torch.zeros(K, K, dtype=d.dtype, device=d.device).index_put_(
                tuple(index), torch.cat([r, r, -r * d / p, -r * d / q]), accumulate=True)
        return (None, None, *(combine_points(s, t) for t in ctx.saved_tensors))
