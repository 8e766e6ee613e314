"""``GaussianDiffusion``: the forward process, the three parametrisations and the training loss.

With ᾱ_t from :mod:`tractable.diffusion.schedule`, a clean sample x₀ and ε ~ N(0, I):

* ``q_sample``: x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε.
* The network predicts one of (``prediction``)
  - ``"x0"``: x̂₀ directly;
  - ``"eps"``: ε̂, from which x̂₀ = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t;
  - ``"v"`` (Salimans & Ho 2022): v = √ᾱ_t ε − √(1 − ᾱ_t) x₀, from which x̂₀ = √ᾱ_t x_t − √(1 − ᾱ_t) v̂ and
    ε̂ = √(1 − ᾱ_t) x_t + √ᾱ_t v̂.
* ``snr(t) = ᾱ_t / (1 − ᾱ_t)``. Errors in the three spaces are tied: ‖ε − ε̂‖² = SNR·‖x₀ − x̂₀‖² and
  ‖v − v̂‖² = (SNR + 1)·‖x₀ − x̂₀‖².
* **Loss** per sample: the mean squared error of the prediction in its own space, times a weight w_t.
  ``weighting="none"``: w = 1. ``weighting="min_snr"`` (Min-SNR-γ, Hang et al. 2023): the x₀-space weight
  min(SNR, γ), expressed in the prediction's space — w = min(SNR, γ) for x₀, min(SNR, γ)/SNR for ε,
  min(SNR, γ)/(SNR + 1) for v. The batch loss is the mean over samples.

The model is called as ``model(x_t, t)`` (``t`` a LongTensor of shape (N,) of indices 0 … T−1) or
``model(x_t, t, cond)`` when ``cond`` is given. An output with twice the input's channels (a learned-σ head,
as in DiT) is accepted: its first half is the prediction and the second half is ignored (we use fixed
variances). Labels equal to −1 in ``cond`` mean "no condition" (classifier-free guidance's null label);
``cond_drop`` replaces each label by −1 with that probability during training.
"""
from __future__ import annotations

from typing import Optional

import torch

from tractable.diffusion.schedule import SCHEDULES, make_betas

__all__ = ["GaussianDiffusion", "PREDICTIONS", "WEIGHTINGS", "NULL_LABEL"]

PREDICTIONS = ("x0", "eps", "v")
WEIGHTINGS = ("min_snr", "none")
NULL_LABEL = -1


def _expand(coef: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """coef[t] (float64 table) as x's dtype/device, shaped (N, 1, 1, …) to broadcast against x."""
    v = coef.to(t.device)[t].to(x.dtype)
    return v.reshape(-1, *([1] * (x.dim() - 1)))


class GaussianDiffusion:
    """Discrete-time Gaussian diffusion with ``num_timesteps`` steps (see the module docstring for the maths).

    >>> diffusion = GaussianDiffusion(1000, schedule="cosine", prediction="x0")
    >>> loss = diffusion.loss(model, x0)                      # Min-SNR-5 weighted, random t and noise
    """

    def __init__(self, num_timesteps: int = 1000, schedule: str = "cosine", prediction: str = "x0"):
        if schedule not in SCHEDULES:
            raise ValueError(f"GaussianDiffusion: schedule must be one of {', '.join(map(repr, SCHEDULES))}; "
                             f"got {schedule!r}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"GaussianDiffusion: prediction must be one of {', '.join(map(repr, PREDICTIONS))}; "
                             f"got {prediction!r}")
        self.betas = make_betas(schedule, num_timesteps)
        self.num_timesteps = int(num_timesteps)
        self.schedule = schedule
        self.prediction = prediction
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)  # float64
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()

    def __repr__(self) -> str:
        return (f"GaussianDiffusion(num_timesteps={self.num_timesteps}, schedule={self.schedule!r}, "
                f"prediction={self.prediction!r})")

    # -- checks -----------------------------------------------------------------------------------------------
    def _check_t(self, t: torch.Tensor, n: int) -> torch.Tensor:
        if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int64, torch.int32) or t.shape != (n,):
            raise ValueError(f"t: expected an integer tensor of shape ({n},), got "
                             f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}")
        if n and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
            raise ValueError(f"t: timesteps must lie in [0, {self.num_timesteps - 1}], got "
                             f"[{int(t.min())}, {int(t.max())}]")
        return t.long()

    # -- the forward process and conversions --------------------------------------------------------------------
    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """SNR(t) = ᾱ_t / (1 − ᾱ_t), float64."""
        a = self.alphas_cumprod.to(t.device)[t]
        return a / (1.0 - a)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: Optional[torch.Tensor] = None,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε (ε drawn from ``generator`` when ``noise`` is None)."""
        t = self._check_t(t, x0.shape[0])
        if noise is None:
            noise = _randn_like(x0, generator)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise: shape {tuple(noise.shape)} differs from x0's {tuple(x0.shape)}")
        return self._q(x0, t, noise)

    def _q(self, x0, t, noise):
        return _expand(self.sqrt_alphas_cumprod, t, x0) * x0 + _expand(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the network should output for ``prediction`` (x₀, ε or v)."""
        if self.prediction == "x0":
            return x0
        if self.prediction == "eps":
            return noise
        return _expand(self.sqrt_alphas_cumprod, t, x0) * noise - _expand(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0

    def to_x0_eps(self, x_t: torch.Tensor, t: torch.Tensor, out: torch.Tensor):
        """(x̂₀, ε̂) from the network output ``out`` at (x_t, t)."""
        sa = _expand(self.sqrt_alphas_cumprod, t, x_t)
        s1 = _expand(self.sqrt_one_minus_alphas_cumprod, t, x_t)
        if self.prediction == "x0":
            x0 = out
            eps = (x_t - sa * x0) / s1
        elif self.prediction == "eps":
            eps = out
            x0 = (x_t - s1 * eps) / sa
        else:
            x0 = sa * x_t - s1 * out
            eps = s1 * x_t + sa * out
        return x0, eps

    def loss_weight(self, t: torch.Tensor, weighting: str = "min_snr", gamma: float = 5.0) -> torch.Tensor:
        """Per-sample weights w_t (float64) of the loss in the prediction's own space."""
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {', '.join(map(repr, WEIGHTINGS))}; got {weighting!r}")
        if weighting == "none":
            return torch.ones(t.shape, dtype=torch.float64, device=t.device)
        if not gamma > 0:
            raise ValueError(f"gamma: the Min-SNR γ must be > 0, got {gamma}")
        snr = self.snr(t)
        clipped = snr.clamp(max=float(gamma))
        if self.prediction == "x0":
            return clipped
        if self.prediction == "eps":
            return clipped / snr
        return clipped / (snr + 1.0)

    # -- the training loss ----------------------------------------------------------------------------------------
    def losses(self, model, x0: torch.Tensor, t: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None,
               cond: Optional[torch.Tensor] = None, weighting: str = "min_snr", gamma: float = 5.0,
               generator: Optional[torch.Generator] = None, cond_drop: float = 0.0) -> torch.Tensor:
        """Per-sample weighted losses, shape (N,), float32 or wider (see the module docstring)."""
        if not isinstance(x0, torch.Tensor) or x0.dim() < 2:
            raise ValueError(f"x0: expected a batch tensor (N, …), got {getattr(x0, 'shape', type(x0).__name__)}")
        n = x0.shape[0]
        if t is None:  # drawn here: in range by construction (no check, so no device synchronisation)
            t = torch.randint(0, self.num_timesteps, (n,), generator=generator,
                              device=_gen_device(generator, x0)).to(x0.device)
        else:
            t = self._check_t(t, n)
        if noise is None:
            noise = _randn_like(x0, generator)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise: shape {tuple(noise.shape)} differs from x0's {tuple(x0.shape)}")
        w = self.loss_weight(t, weighting, gamma)
        if cond is not None and cond_drop > 0:
            if not 0.0 <= cond_drop < 1.0:
                raise ValueError(f"cond_drop: must be in [0, 1), got {cond_drop}")
            drop = torch.rand(n, generator=generator, device=_gen_device(generator, x0)).to(x0.device) < cond_drop
            cond = torch.where(drop, torch.full_like(cond, NULL_LABEL), cond)
        x_t = self._q(x0, t, noise)
        out = model(x_t, t) if cond is None else model(x_t, t, cond)
        out = _prediction(out, x0)
        err = (out.float() - self.target(x0, t, noise).float()).pow(2).flatten(1).mean(1)
        return err * w.to(err.dtype)

    def loss(self, model, x0: torch.Tensor, t: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None,
             cond: Optional[torch.Tensor] = None, weighting: str = "min_snr", gamma: float = 5.0,
             generator: Optional[torch.Generator] = None, cond_drop: float = 0.0) -> torch.Tensor:
        """The batch mean of :meth:`losses`."""
        return self.losses(model, x0, t, noise, cond, weighting, gamma, generator, cond_drop).mean()

    def predict(self, model, x_t: torch.Tensor, t: torch.Tensor, cond: Optional[torch.Tensor] = None,
                guidance: float = 1.0):
        """(x̂₀, ε̂) of ``model`` at (x_t, t); with ``guidance`` ≠ 1 and ``cond`` given, classifier-free guidance
        ``out = out(∅) + guidance·(out(c) − out(∅))`` (Ho & Salimans 2022) on the network output."""
        if cond is None:
            out = _prediction(model(x_t, t), x_t)
        elif guidance == 1.0:
            out = _prediction(model(x_t, t, cond), x_t)
        else:
            both = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, torch.full_like(cond, NULL_LABEL)]))
            c, u = _prediction(both, torch.cat([x_t, x_t])).chunk(2)
            out = u + guidance * (c - u)
        return self.to_x0_eps(x_t, t, out.to(x_t.dtype))


def _prediction(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if out.shape == x.shape:
        return out
    if out.dim() == x.dim() and out.shape[0] == x.shape[0] and out.shape[1] == 2 * x.shape[1] \
            and out.shape[2:] == x.shape[2:]:
        return out[:, : x.shape[1]]  # learned-σ head: the variance half is not used
    raise ValueError(f"model output has shape {tuple(out.shape)}; expected the input's {tuple(x.shape)} "
                     f"(or twice its channels for a learned-σ head)")


def _gen_device(generator: Optional[torch.Generator], x: torch.Tensor):
    return generator.device if generator is not None else x.device


def _randn_like(x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=_gen_device(generator, x), dtype=x.dtype).to(x.device)
