"""Samplers: DDIM (Song, Meng & Ermon 2021) and ancestral DDPM (Ho et al. 2020) on a sub-sequence of timesteps.

**Timesteps** (``spacing``, the names of diffusers' ``timestep_spacing``; T = ``num_timesteps``, S = ``steps``):

* ``"trailing"`` (default; Lin et al. 2024, Table 2): τ = round(T − i·T/S) − 1 for i = 0 … S−1, i.e.
  T−1, T−1−T/S, …; it **starts at t = T−1 for every S** (the step where x_T ~ N(0, I) is the right start).
  T = 1000, S = 50: 999, 979, …, 19; S = 400: 999, 997, 994, 992→991 (round half to even), …; S = T: every step.
* ``"linspace"``: τ = round(linspace(0, T−1, S)); includes both 0 and T−1 for S ≥ 2 (Nichol & Dhariwal 2021's
  ``space_timesteps`` with one section; diffusers' ``linspace``). S = 1 gives τ = (0,), as in both.
* ``"leading"``: τ = (0, k, 2k, …, (S−1)k) with k = ⌊T/S⌋ — the DDIM paper's "uniform" sub-sequence and
  diffusers' default (``steps_offset=0``). It starts at (S−1)k, **below** T−1 unless S divides T (and even then
  at T−k): T = 1000, S = 400 starts at t = 798, S = 600 at t = 599, so x_T ~ N(0, I) is the wrong start there
  and the samples lose spread.

Sampling runs from the largest τ down to the smallest; the last update goes to ᾱ = 1, i.e. returns x̂₀.

**DDIM** (paper Eq. 12), from x_t at τ_i to τ_{i−1} (ᾱ_prev = 1 after the smallest τ), with x̂₀, ε̂ from the
network::

    σ = η · √((1 − ᾱ_prev)/(1 − ᾱ_t)) · √(1 − ᾱ_t/ᾱ_prev)
    x_prev = √ᾱ_prev · x̂₀ + √(1 − ᾱ_prev − σ²) · ε̂ + σ · z,     z ~ N(0, I)

η = 0 is deterministic; η = 1 is the DDPM posterior on the sub-sequence.

**DDPM** on the sub-sequence (the respacing of Nichol & Dhariwal 2021, with the timesteps chosen by ``spacing``):
β'_i = 1 − ᾱ_{τ_i}/ᾱ_{τ_{i−1}}; each step draws from the posterior q(x_prev | x_t, x̂₀) = N(μ, β̃) with
μ = √ᾱ_prev β'/(1 − ᾱ_t) · x̂₀ + √(1 − β') (1 − ᾱ_prev)/(1 − ᾱ_t) · x_t and β̃ = β' (1 − ᾱ_prev)/(1 − ᾱ_t)
(no noise on the last step).

``clip`` clamps x̂₀ (a float c → [−c, c]; a pair → [lo, hi]; per-channel tensors broadcast) before it is used.
Classifier-free guidance: pass ``cond`` and ``guidance`` ≠ 1 (see :meth:`GaussianDiffusion.predict`).
Randomness: ``generator`` (x_T, when not given, and every noise draw), drawn on the generator's device.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from tractable.diffusion.gaussian import GaussianDiffusion

__all__ = ["SPACINGS", "sample_timesteps", "ddim_sample", "ddpm_sample"]

Clip = Union[None, float, Sequence]

#: the accepted ``spacing`` values, the default first
SPACINGS = ("trailing", "linspace", "leading")


def sample_timesteps(num_timesteps: int, steps: int, spacing: str = "trailing") -> torch.Tensor:
    """The sub-sequence τ (ascending LongTensor of ``steps`` distinct values in [0, T−1]) for ``spacing`` (see the
    module docstring). ValueError unless 1 ≤ steps ≤ T and ``spacing`` is one of :data:`SPACINGS`."""
    T = num_timesteps
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"steps: must be an int in [1, num_timesteps={T}], got {steps!r}")
    if spacing == "leading":
        return torch.arange(steps, dtype=torch.long) * (T // steps)
    if spacing == "trailing":  # diffusers: np.round(np.arange(T, 0, -T / S)).astype(np.int64) - 1
        taus = torch.round(T - torch.arange(steps, dtype=torch.float64) * (T / steps)).long() - 1
        return taus.flip(0)
    if spacing == "linspace":  # diffusers: np.linspace(0, T - 1, S).round()
        return torch.round(torch.linspace(0, T - 1, steps, dtype=torch.float64)).long()
    raise ValueError(f"spacing: must be one of {', '.join(map(repr, SPACINGS))}; got {spacing!r}")


def _clip(x0: torch.Tensor, clip: Clip) -> torch.Tensor:
    if clip is None:
        return x0
    if isinstance(clip, (int, float)):
        return x0.clamp(-float(clip), float(clip))
    lo, hi = clip
    lo = torch.as_tensor(lo, dtype=x0.dtype, device=x0.device)
    hi = torch.as_tensor(hi, dtype=x0.dtype, device=x0.device)
    if lo.dim() == 1:  # per channel
        lo, hi = lo.reshape(1, -1, *([1] * (x0.dim() - 2))), hi.reshape(1, -1, *([1] * (x0.dim() - 2)))
    return torch.maximum(torch.minimum(x0, hi), lo)


def _start(diffusion, shape, x_T, generator, device, dtype):
    if not isinstance(diffusion, GaussianDiffusion):
        raise TypeError(f"diffusion: expected a GaussianDiffusion, got {type(diffusion).__name__}")
    if x_T is not None:
        if tuple(x_T.shape) != tuple(shape):
            raise ValueError(f"x_T: shape {tuple(x_T.shape)} differs from shape={tuple(shape)}")
        return x_T.to(device, dtype)
    gdev = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=gdev, dtype=dtype).to(device)


def _noise(x, generator):
    gdev = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=gdev, dtype=x.dtype).to(x.device)


def _model_device(model, default="cpu"):
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device(default)


@torch.no_grad()
def ddim_sample(model, shape, steps: int = 50, eta: float = 0.0, generator: Optional[torch.Generator] = None,
                cond: Optional[torch.Tensor] = None, x_T: Optional[torch.Tensor] = None, *,
                diffusion: Optional[GaussianDiffusion] = None, guidance: float = 1.0, clip: Clip = None,
                spacing: str = "trailing", device=None, dtype=torch.float32) -> torch.Tensor:
    """DDIM samples of shape ``shape`` on the ``steps`` timesteps chosen by ``spacing`` (see the module
    docstring). ``diffusion`` defaults to ``GaussianDiffusion()`` (1000 cosine steps, x₀ prediction)."""
    diffusion = GaussianDiffusion() if diffusion is None else diffusion
    if not eta >= 0:
        raise ValueError(f"eta: must be >= 0, got {eta}")
    taus = sample_timesteps(diffusion.num_timesteps, steps, spacing)
    device = torch.device(device) if device is not None else _model_device(model)
    x = _start(diffusion, shape, x_T, generator, device, dtype)
    abar = diffusion.alphas_cumprod
    n = x.shape[0]
    for i in range(len(taus) - 1, -1, -1):
        t = int(taus[i])
        a_t = float(abar[t])
        a_prev = float(abar[int(taus[i - 1])]) if i > 0 else 1.0
        x0, eps = diffusion.predict(model, x, torch.full((n,), t, dtype=torch.long, device=device), cond, guidance)
        x0 = _clip(x0, clip)
        if clip is not None:  # keep ε̂ consistent with the clipped x̂₀
            eps = (x - a_t ** 0.5 * x0) / (1.0 - a_t) ** 0.5
        sigma = eta * ((1.0 - a_prev) / (1.0 - a_t)) ** 0.5 * (1.0 - a_t / a_prev) ** 0.5
        x = a_prev ** 0.5 * x0 + max(1.0 - a_prev - sigma ** 2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x = x + sigma * _noise(x, generator)
    return x


@torch.no_grad()
def ddpm_sample(model, shape, steps: int = 1000, generator: Optional[torch.Generator] = None,
                cond: Optional[torch.Tensor] = None, x_T: Optional[torch.Tensor] = None, *,
                diffusion: Optional[GaussianDiffusion] = None, guidance: float = 1.0, clip: Clip = None,
                spacing: str = "trailing", device=None, dtype=torch.float32) -> torch.Tensor:
    """Ancestral DDPM samples on the ``steps`` timesteps chosen by ``spacing`` (see the module docstring)."""
    diffusion = GaussianDiffusion() if diffusion is None else diffusion
    taus = sample_timesteps(diffusion.num_timesteps, steps, spacing)
    device = torch.device(device) if device is not None else _model_device(model)
    x = _start(diffusion, shape, x_T, generator, device, dtype)
    abar = diffusion.alphas_cumprod
    n = x.shape[0]
    for i in range(len(taus) - 1, -1, -1):
        t = int(taus[i])
        a_t = float(abar[t])
        a_prev = float(abar[int(taus[i - 1])]) if i > 0 else 1.0
        beta = 1.0 - a_t / a_prev
        x0, _ = diffusion.predict(model, x, torch.full((n,), t, dtype=torch.long, device=device), cond, guidance)
        x0 = _clip(x0, clip)
        mean = (a_prev ** 0.5 * beta / (1.0 - a_t)) * x0 + ((1.0 - beta) ** 0.5 * (1.0 - a_prev) / (1.0 - a_t)) * x
        var = beta * (1.0 - a_prev) / (1.0 - a_t)
        x = mean + var ** 0.5 * _noise(x, generator) if i > 0 else mean
    return x
