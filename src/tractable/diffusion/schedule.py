"""Noise schedules: ᾱ_t (``alphas_cumprod``) and β_t for t = 0 … T−1, in float64.

Notation (Ho et al. 2020; Nichol & Dhariwal 2021): the forward process is
``q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I)`` with ``ᾱ_t = Π_{s ≤ t} (1 − β_s)``; t runs over 0 … T−1 (index 0 is
the first, least noisy step, so ᾱ_0 = 1 − β_0 < 1).

* **cosine** (Nichol & Dhariwal 2021, Eq. 17): ``f(t) = cos²(((t/T) + s)/(1 + s) · π/2)`` with s = 0.008 and the
  continuous ``ᾱ(t) = f(t)/f(0)``; ``β_t = min(1 − ᾱ(t+1)/ᾱ(t), 0.999)`` (the clip keeps the last steps finite);
  ``alphas_cumprod = cumprod(1 − β)``.
* **linear** (Ho et al. 2020): β linear from 1e-4 to 0.02 at T = 1000, scaled by 1000/T for other T (as in
  improved-diffusion) so that the total noise stays comparable.
"""
from __future__ import annotations

import math

import torch

__all__ = ["SCHEDULES", "cosine_betas", "linear_betas", "make_betas"]

SCHEDULES = ("cosine", "linear")


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """β_t of the cosine schedule, float64, shape (T,)."""
    T = int(num_timesteps)

    def abar(t: float) -> float:
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    return torch.tensor([min(1.0 - abar(t + 1) / abar(t), max_beta) for t in range(T)], dtype=torch.float64)


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """β_t of the linear schedule (DDPM endpoints at T = 1000, scaled by 1000/T), float64, shape (T,)."""
    scale = 1000.0 / int(num_timesteps)
    return torch.linspace(scale * beta_start, scale * beta_end, int(num_timesteps), dtype=torch.float64)


def make_betas(schedule: str, num_timesteps: int) -> torch.Tensor:
    """β for ``schedule`` in :data:`SCHEDULES` (ValueError otherwise)."""
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 2:
        raise ValueError(f"num_timesteps must be an int >= 2, got {num_timesteps!r}")
    if schedule == "cosine":
        return cosine_betas(num_timesteps)
    if schedule == "linear":
        if num_timesteps < 20:
            raise ValueError(f"the linear schedule needs num_timesteps >= 20 (β_end = 20/T < 1), got {num_timesteps}")
        return linear_betas(num_timesteps)
    raise ValueError(f"schedule: unknown noise schedule {schedule!r}; accepted values: "
                     f"{', '.join(map(repr, SCHEDULES))}")
