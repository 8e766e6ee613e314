"""TrAct diagnostics: is TrAct doing anything on this layer and this batch, and how much?

For a layer z = W x with rows X (b × n; samples, tokens or receptive fields, as in :mod:`tractable.tract.gram`),
output gradient G and plain weight gradient M = GᵀX, TrAct uses ``T = M P`` with ``P = (C + λI)⁻¹`` and
``C = XᵀX / b`` (the uncentred second moment of the rows, "XᵀX normalised by b"). With μ₁ ≥ … ≥ μ_n ≥ 0 the
eigenvalues of C (per group for grouped convs; the report takes the worst group for ``cond``/``cond_k`` and the
mean over groups for ``eff_rank``):

* ``cond`` = μ₁ / μ_n — the condition number of C (inf if C is singular). 1 for whitened inputs (C ∝ I).
* ``eff_rank`` = exp(−Σ pᵢ log pᵢ) with pᵢ = μᵢ / Σμ (Roy & Vetterli 2007): between 1 (all variance in one
  direction, e.g. the mean brightness of unstandardised patches) and n (isotropic).
* ``cond_k`` = (μ₁ + λ) / (μ_n + λ) — the spread of P, i.e. by how much TrAct re-weights the best- against the
  worst-covered input direction. 1 means TrAct is plain gradient descent with the layer's step scaled by
  1/(μ + λ): a no-op up to the learning rate (C ∝ I, or λ ≫ μ₁).
* ``cosine`` = ⟨T, M⟩ / (‖T‖ ‖M‖) — how far the TrAct weight gradient is from the plain one in direction (1 =
  same direction). Exactly 1 when C ∝ I (any λ), and → 1 as λ → ∞ (T → M/λ). It is the update's cosine under
  SGD; Adam and other adaptive optimizers re-scale both per coordinate afterwards.
* ``gain`` = ‖T‖ / ‖M‖ — the factor by which TrAct changes this layer's step size under SGD; between
  1/(μ₁ + λ) and 1/λ.
* ``mean_sq`` = tr(C) / n — the mean square input per feature (≈ 1 for standardised inputs, the scale on which
  the paper's λ guidance rests).

Everything is computed in float64 from the layer's input and output gradient (nothing is taken from TrAct's own
code path except the row layout), so it can be called on any Linear/ConvNd layer, TrAct or not, in a user's own
loop::

    x, g = {}, {}
    layer.register_forward_hook(lambda m, a, out: (x.update(v=a[0].detach()),
                                                   out.register_hook(lambda gr: g.update(v=gr))))
    loss.backward()
    stats = tractable.tract.layer_diagnostics(layer, x["v"], g["v"], lam=0.1)
"""
from __future__ import annotations

import contextlib
import math
from typing import Dict, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from tractable.tract.gram import Geometry, gram, num_rows
from tractable.tract.module import is_tract, layer_geometry, plain_gradients

__all__ = ["tract_diagnostics", "layer_diagnostics", "plain_weight_gradient", "DIAGNOSTICS"]

#: the keys of :func:`tract_diagnostics`'s result, in report order
DIAGNOSTICS = ("cond", "eff_rank", "cond_k", "cosine", "gain", "mean_sq")


def tract_diagnostics(M: torch.Tensor, x: torch.Tensor, geom: Geometry, lam: Union[float, torch.Tensor]
                      ) -> Dict[str, float]:
    """The diagnostics (see the module docstring) from the plain weight gradient ``M`` (weight-shaped), the layer
    input ``x`` and the layer's :class:`~tractable.tract.gram.Geometry`, in float64. ``lam`` is λ (> 0)."""
    lam = float(lam)
    if not (lam > 0 and math.isfinite(lam)):
        raise ValueError(f"tract_diagnostics: λ must be finite and > 0, got {lam!r}")
    b = num_rows(x, geom)
    if b == 0:
        raise ValueError("tract_diagnostics: the input has no rows")
    S, b = gram(x.detach(), geom, torch.float64)
    C = S / b  # (G, n, n)
    C = (C + C.mT) / 2
    mu = torch.linalg.eigvalsh(C).clamp_min(0)  # ascending, per group
    top, low = mu[:, -1], mu[:, 0]
    cond = torch.where(low > 0, top / torch.where(low > 0, low, torch.ones_like(low)),
                       torch.full_like(top, math.inf))
    p = mu / mu.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    entropy = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(-1)
    n = C.shape[-1]
    Mg = M.detach().to(torch.float64).reshape(C.shape[0], -1, n)
    K = C + lam * torch.eye(n, dtype=torch.float64, device=C.device)
    T = torch.linalg.solve(K, Mg.mT).mT  # M K⁻¹ (K symmetric)
    nm, nt = float(Mg.norm()), float(T.norm())
    cosine = float((T * Mg).sum()) / (nt * nm) if nm > 0 and nt > 0 else float("nan")
    return {
        "cond": float(cond.max()),
        "eff_rank": float(entropy.exp().mean()),
        "cond_k": float(((top + lam) / (low + lam)).max()),
        "cosine": cosine,
        "gain": nt / nm if nm > 0 else float("nan"),
        "mean_sq": float(C.diagonal(dim1=-2, dim2=-1).mean()),
    }


def plain_weight_gradient(layer: nn.Module, x: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
    """``GᵀX`` for ``layer``'s weight (weight-shaped, float64) from its input and output gradient, through the
    layer's own plain functional call (a TrAct layer is switched to plain gradients for it)."""
    w = layer.weight.detach().to(torch.float64).requires_grad_(True)
    x64, g64 = x.detach().to(torch.float64), grad_output.detach().to(torch.float64)
    ctx = plain_gradients(layer) if is_tract(layer) else contextlib.nullcontext()
    with torch.enable_grad(), ctx:
        if isinstance(layer, nn.Linear):
            out = F.linear(x64, w)
        else:
            out = layer._conv_forward(x64, w, None)
        (M,) = torch.autograd.grad(out, w, g64)
    return M


def layer_diagnostics(layer: nn.Module, x: torch.Tensor, grad_output: torch.Tensor,
                      lam: Optional[Union[float, torch.Tensor]] = None) -> Dict[str, float]:
    """:func:`tract_diagnostics` for an ``nn.Linear``/``ConvNd`` (TrAct or plain) from the input ``x`` it saw and
    the gradient of its output. ``lam`` defaults to the layer's ``tract_lambda`` (required for a plain layer)."""
    if lam is None:
        if not is_tract(layer):
            raise ValueError("layer_diagnostics: a plain layer needs lam= (the λ you would use)")
        lam = layer.tract_lambda
    geom = layer_geometry(layer)
    return tract_diagnostics(plain_weight_gradient(layer, x, grad_output), x, geom, lam)
