"""Fréchet distance between two feature sets (Heusel et al. 2017), in float64.

For features a ∈ R^{N_a×d}, b ∈ R^{N_b×d} with means μ_a, μ_b and (unbiased) covariances Σ_a, Σ_b::

    FD = ‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2})

The matrix square root is ``scipy.linalg.sqrtm`` of Σ_a Σ_b; as in the reference FID code, when the product is
singular (scipy warns) or the root is not finite, ε·I (ε = 1e-6) is added to both covariances, and a root with a
negligible imaginary part (from round-off) is replaced by its real part. With Inception-v3 pool features this
is FID; with other features (see :mod:`tractable.diffusion.features`) it is a Fréchet distance in *their*
space, not comparable to published FID numbers.
"""
from __future__ import annotations

import warnings
from typing import Tuple

import numpy as np
import torch

__all__ = ["feature_stats", "frechet_distance", "frechet_distance_from_stats"]


def _as_2d(name: str, x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (samples, features) array, got shape {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"{name}: needs at least 2 samples to estimate a covariance, got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return x


def feature_stats(features) -> Tuple[np.ndarray, np.ndarray]:
    """(μ, Σ) in float64 of a (samples, features) array or tensor (Σ with the N − 1 denominator)."""
    x = _as_2d("features", features)
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def frechet_distance_from_stats(mu_a, sigma_a, mu_b, sigma_b, eps: float = 1e-6) -> float:
    """FD between N(μ_a, Σ_a) and N(μ_b, Σ_b) (see the module docstring)."""
    from scipy import linalg

    mu_a, mu_b = np.atleast_1d(np.asarray(mu_a, np.float64)), np.atleast_1d(np.asarray(mu_b, np.float64))
    sigma_a, sigma_b = np.atleast_2d(np.asarray(sigma_a, np.float64)), np.atleast_2d(np.asarray(sigma_b, np.float64))
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"the feature dimensions differ: {mu_a.shape[0]} vs {mu_b.shape[0]}")
    d = mu_a.shape[0]
    if sigma_a.shape != (d, d) or sigma_b.shape != (d, d):
        raise ValueError(f"covariances must be {d}×{d}, got {sigma_a.shape} and {sigma_b.shape}")
    diff = mu_a - mu_b
    with warnings.catch_warnings(record=True) as caught:  # scipy warns (LinAlgWarning) on a singular product
        warnings.simplefilter("always")
        covmean = linalg.sqrtm(sigma_a @ sigma_b)
    if caught or not np.isfinite(covmean).all():
        warnings.warn(f"frechet_distance: singular product of covariances; adding {eps}·I to both", stacklevel=2)
        offset = np.eye(d) * eps
        covmean = linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"frechet_distance: the matrix square root has a large imaginary component "
                             f"({np.max(np.abs(covmean.imag)):.3g})")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * np.trace(covmean))


def frechet_distance(features_a, features_b) -> float:
    """Fréchet distance between the Gaussians fitted to two (samples, features) sets (float64)."""
    a = _as_2d("features_a", features_a)
    b = _as_2d("features_b", features_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"features_a and features_b have different feature dimensions: {a.shape[1]} vs "
                         f"{b.shape[1]}")
    mu_a, s_a = feature_stats(a)
    mu_b, s_b = feature_stats(b)
    return frechet_distance_from_stats(mu_a, s_a, mu_b, s_b)
