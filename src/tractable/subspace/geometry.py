"""Coefficient vectors of the three geometries: a point of the subspace as weights on its K stored tensors.

Every selected tensor keeps K originals ω₀…ω_{K−1}; a point is a coefficient vector c (length K) and the network
runs with w = Σ_i c_i ω_i.

* ``line`` (K = 2): c(α) = [1 − α, α].
* ``curve`` (quadratic Bezier, K = 3, stored as [start, control, end]):
  c(α) = [(1 − α)², 2α(1 − α), α²]; at α = 0.25: [0.5625, 0.375, 0.0625].
* ``simplex`` (K = k vertices): c = t with t ≥ 0, Σ t = 1. Uniform sampling on the simplex is Dirichlet(1,…,1),
  drawn as E_i ~ Exp(1) = −log U_i, t = E / Σ E.

All draws come from an explicit ``torch.Generator`` (never global state); the same generator state gives the
same point on every process.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Union

import torch

__all__ = ["KINDS", "num_points", "line_coeffs", "bezier_coeffs", "point_coeffs", "sample_coeffs", "sample_rows",
           "canonical_point", "check_kind"]

KINDS = ("line", "curve", "simplex")
_SIMPLEX_TOL = 1e-6

Point = Union[float, int, Sequence[float], torch.Tensor]


def check_kind(kind, k) -> int:
    """Validate ``kind``/``k``; returns K, the number of stored tensors per parameter."""
    if kind not in KINDS:
        raise ValueError(f"kind: {kind!r} is not a subspace kind; accepted values: {', '.join(map(repr, KINDS))}")
    if kind == "simplex":
        if k is None or isinstance(k, bool) or not isinstance(k, int):
            raise ValueError(f"k: a simplex needs the number of vertices k (an int >= 2), got {k!r}")
        if k < 2:
            raise ValueError(f"k: a simplex needs k >= 2 vertices (k = 2 is a line), got {k}")
        return k
    expected = 2 if kind == "line" else 3
    if k is not None and k != expected:
        raise ValueError(f"k: a {kind} has {expected} stored points; leave k=None (or {expected}), got {k!r}")
    return expected


def num_points(kind: str, k: Optional[int] = None) -> int:
    return check_kind(kind, k)


def line_coeffs(alpha: float) -> torch.Tensor:
    """[1 − α, α] (float64)."""
    a = float(alpha)
    return torch.tensor([1.0 - a, a], dtype=torch.float64)


def bezier_coeffs(alpha: float, degree: int = 2) -> torch.Tensor:
    """Bernstein weights C(m,i) α^i (1−α)^(m−i), i = 0…m, in [start, controls…, end] order (float64)."""
    a = float(alpha)
    return torch.tensor([math.comb(degree, i) * a ** i * (1.0 - a) ** (degree - i) for i in range(degree + 1)],
                        dtype=torch.float64)


def _check_alpha(alpha, kind: str) -> float:
    if isinstance(alpha, torch.Tensor):
        if alpha.numel() != 1:
            raise ValueError(f"set_point: a {kind} takes one float α in [0, 1], got a tensor of shape "
                             f"{tuple(alpha.shape)}")
        alpha = float(alpha)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise ValueError(f"set_point: a {kind} takes one float α in [0, 1], got {alpha!r}")
    a = float(alpha)
    if not (0.0 <= a <= 1.0):
        raise ValueError(f"set_point: α must lie in [0, 1] for a {kind}, got {a}")
    return a


def point_coeffs(kind: str, K: int, point: Point) -> torch.Tensor:
    """The coefficient vector (float64, length K) of ``point``: α for a line/curve, weights t for a simplex."""
    if kind == "line":
        return line_coeffs(_check_alpha(point, kind))
    if kind == "curve":
        return bezier_coeffs(_check_alpha(point, kind), K - 1)
    if isinstance(point, (int, float)) and not isinstance(point, bool) and K == 2:
        return line_coeffs(_check_alpha(point, "2-vertex simplex"))
    try:
        t = torch.as_tensor(point, dtype=torch.float64).detach().cpu().flatten()
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"set_point: a simplex point is a vector of {K} weights, got {point!r}") from e
    if t.numel() != K:
        raise ValueError(f"set_point: a simplex with {K} vertices needs {K} weights, got {t.numel()} "
                         f"({t.tolist()})")
    if not torch.isfinite(t).all() or (t < -_SIMPLEX_TOL).any() or abs(float(t.sum()) - 1.0) > _SIMPLEX_TOL:
        raise ValueError(f"set_point: {t.tolist()} is outside the simplex; the weights must be >= 0 and sum "
                         "to 1")
    return t.clamp_min(0.0) / t.clamp_min(0.0).sum()


def sample_rows(kind: str, K: int, generator: torch.Generator, n: int = 1) -> List[List[float]]:
    """``n`` random points as Python float rows (length K): α ~ U[0,1] (line, curve) or Dirichlet(1) (simplex).

    One ``torch.rand`` call on ``generator``; the rest is float64 arithmetic in Python (cheaper than tensor
    operators for a handful of numbers, and the same formulas as :func:`line_coeffs` / :func:`bezier_coeffs`)."""
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"sample: expected a torch.Generator, got {type(generator).__name__}")
    if kind == "simplex":
        u = torch.rand(n, K, generator=generator, dtype=torch.float64, device=generator.device).tolist()
        rows = []
        for r in u:
            e = [-math.log1p(-x) for x in r]  # Exp(1); 1 − U avoids log(0)
            total = math.fsum(e)
            rows.append([x / total for x in e])
        return rows
    alphas = torch.rand(n, generator=generator, dtype=torch.float64, device=generator.device).tolist()
    if kind == "line":
        return [[1.0 - a, a] for a in alphas]
    m = K - 1
    return [[math.comb(m, i) * a ** i * (1.0 - a) ** (m - i) for i in range(K)] for a in alphas]


def sample_coeffs(kind: str, K: int, generator: torch.Generator, n: int = 1) -> torch.Tensor:
    """``n`` random points as coefficient rows (n, K), float64 (:func:`sample_rows` as a tensor)."""
    return torch.tensor(sample_rows(kind, K, generator, n), dtype=torch.float64)


def canonical_point(kind: str, K: int) -> Point:
    """The point evaluated by default: α = 0.5 (line, curve) or the simplex centroid."""
    return 0.5 if kind in ("line", "curve") else torch.full((K,), 1.0 / K, dtype=torch.float64)
