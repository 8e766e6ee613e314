"""Gaussian diffusion for generative models, usable without the runner.

* :class:`GaussianDiffusion` — cosine (Nichol & Dhariwal 2021) or linear noise schedule with ``alphas_cumprod``
  in float64, ``q_sample``, x₀/ε/v prediction and the Min-SNR-γ weighted loss (Hang et al. 2023)::

      x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε,   v = √ᾱ_t ε − √(1 − ᾱ_t) x₀,   SNR_t = ᾱ_t/(1 − ᾱ_t)
      loss = mean_n w_t ‖f(x_t, t) − target‖²,  w_t = min(SNR, γ) · {1 (x₀), 1/SNR (ε), 1/(SNR + 1) (v)}

* :func:`ddim_sample` (η = 0 deterministic, η = 1 the DDPM posterior) and :func:`ddpm_sample` on a sub-sequence
  of timesteps chosen by ``spacing`` (:data:`SPACINGS`: ``"trailing"``, the default, starts at t = T−1 for every
  step count; ``"linspace"``; ``"leading"``, the DDIM paper's and diffusers' default), run from the top, optional
  classifier-free guidance (label −1 = no condition).
* :func:`frechet_distance` in float64, with pluggable feature extractors: :class:`InceptionFeatures` (real
  FID; optional ``torchmetrics``/``torch-fidelity``) and :class:`ClassifierFeatures` (a classifier trained on
  the same dataset; offline, a relative measure not comparable to Inception-FID).

>>> from tractable.diffusion import GaussianDiffusion, ddim_sample
>>> diffusion = GaussianDiffusion(1000, schedule="cosine", prediction="x0")
>>> loss = diffusion.loss(model, x0, cond=y)            # model(x_t, t, y)
>>> images = ddim_sample(model, (16, 3, 32, 32), steps=50, diffusion=diffusion, generator=g)
"""
from tractable.diffusion.features import (
    ClassifierFeatures,
    FeatureExtractor,
    InceptionFeatures,
    denormalize,
    extract_features,
    inception_input,
    reference_resize,
)
from tractable.diffusion.fid import feature_stats, frechet_distance, frechet_distance_from_stats
from tractable.diffusion.gaussian import NULL_LABEL, PREDICTIONS, WEIGHTINGS, GaussianDiffusion
from tractable.diffusion.sampling import SPACINGS, ddim_sample, ddpm_sample, sample_timesteps
from tractable.diffusion.schedule import SCHEDULES, cosine_betas, linear_betas, make_betas

__all__ = [
    "GaussianDiffusion",
    "SCHEDULES",
    "PREDICTIONS",
    "WEIGHTINGS",
    "NULL_LABEL",
    "cosine_betas",
    "linear_betas",
    "make_betas",
    "ddim_sample",
    "ddpm_sample",
    "sample_timesteps",
    "SPACINGS",
    "frechet_distance",
    "frechet_distance_from_stats",
    "feature_stats",
    "FeatureExtractor",
    "ClassifierFeatures",
    "InceptionFeatures",
    "extract_features",
    "denormalize",
    "reference_resize",
    "inception_input",
]
