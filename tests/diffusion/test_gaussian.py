"""GaussianDiffusion against closed forms written here: schedules, q_sample, x₀/ε/v conversions, Min-SNR-γ."""
import math

import numpy as np
import pytest
import torch

from tractable.diffusion import GaussianDiffusion, cosine_betas, linear_betas


def _f(t, T, s=0.008):
    return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2


@pytest.mark.parametrize("T", [1000, 50])
def test_cosine_schedule_closed_form(T):
    d = GaussianDiffusion(T, schedule="cosine")
    assert d.alphas_cumprod.dtype == torch.float64 and d.betas.dtype == torch.float64
    assert d.alphas_cumprod.shape == (T,)
    betas = d.betas.numpy()
    for t in range(T):  # β_t = min(1 − ᾱ(t+1)/ᾱ(t), 0.999)
        assert betas[t] == pytest.approx(min(1 - _f(t + 1, T) / _f(t, T), 0.999), rel=1e-12, abs=1e-15)
    # while no β is clipped the product telescopes: ᾱ_t = f(t+1)/f(0)
    unclipped = int(np.argmax(betas >= 0.999)) if (betas >= 0.999).any() else T
    assert unclipped > 0.9 * T
    for t in range(unclipped):
        assert d.alphas_cumprod[t].item() == pytest.approx(_f(t + 1, T) / _f(0, T), rel=1e-10)
    assert (np.diff(d.alphas_cumprod.numpy()) < 0).all()
    assert betas.max() <= 0.999


def test_linear_schedule():
    b = linear_betas(1000)
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)
    assert linear_betas(500)[-1].item() == pytest.approx(0.04)
    d = GaussianDiffusion(1000, schedule="linear")
    assert torch.allclose(d.alphas_cumprod, torch.tensor(np.cumprod(1 - b.numpy())), rtol=1e-12)
    assert torch.equal(cosine_betas(100), GaussianDiffusion(100).betas)


def test_q_sample_and_conversions():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 2, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 2, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 10, 500, 998, 999])
    for pred in ("x0", "eps", "v"):
        d = GaussianDiffusion(1000, prediction=pred)
        a = d.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        xt = d.q_sample(x0, t, eps)
        assert torch.allclose(xt, a.sqrt() * x0 + (1 - a).sqrt() * eps, rtol=1e-12, atol=1e-14)
        v = a.sqrt() * eps - (1 - a).sqrt() * x0
        expected_target = {"x0": x0, "eps": eps, "v": v}[pred]
        assert torch.allclose(d.target(x0, t, eps), expected_target, rtol=1e-12, atol=1e-14)
        rx0, reps = d.to_x0_eps(xt, t, expected_target)
        # ε from x₀ is ill-conditioned at t = 0 (√(1−ᾱ) ≈ 0.006) and x₀ from ε at t = 999: loose where it must be
        assert torch.allclose(rx0, x0, rtol=1e-6, atol=1e-6)
        assert torch.allclose(reps, eps, rtol=1e-6, atol=1e-6)
    d = GaussianDiffusion(1000)
    assert torch.allclose(d.snr(t), d.alphas_cumprod[t] / (1 - d.alphas_cumprod[t]))


@pytest.mark.parametrize("weighting,gamma", [("min_snr", 5.0), ("min_snr", 1.0), ("none", 5.0)])
def test_min_snr_weights_are_one_x0_space_loss(weighting, gamma):
    """A model whose x̂₀ is x₀ + δ: the weighted loss in every parametrisation equals min(SNR, γ)·‖δ‖² (Min-SNR),
    and ‖δ‖²·{1, SNR, SNR+1} unweighted."""
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(8, 1, 3, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(8, 1, 3, 3, generator=g, dtype=torch.float64)
    delta = 0.3 * torch.randn(8, 1, 3, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 3, 50, 200, 400, 600, 800, 990])
    base = GaussianDiffusion(1000)
    abar = base.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    snr = (abar / (1 - abar)).flatten()
    mse_x0 = delta.pow(2).flatten(1).mean(1)
    for pred in ("x0", "eps", "v"):
        d = GaussianDiffusion(1000, prediction=pred)

        def model(xt, tt, _pred=pred):
            x0_hat = x0 + delta
            eps_hat = (xt - abar.sqrt() * x0_hat) / (1 - abar).sqrt()
            return {"x0": x0_hat, "eps": eps_hat, "v": abar.sqrt() * eps_hat - (1 - abar).sqrt() * x0_hat}[_pred]

        got = d.losses(model, x0, t, eps, weighting=weighting, gamma=gamma)
        if weighting == "min_snr":
            want = snr.clamp(max=gamma) * mse_x0
        else:
            want = mse_x0 * {"x0": torch.ones_like(snr), "eps": snr, "v": snr + 1}[pred]
        assert torch.allclose(got.double(), want, rtol=1e-4), pred
        assert d.loss(model, x0, t, eps, weighting=weighting, gamma=gamma).item() == pytest.approx(
            want.mean().item(), rel=1e-4)


def test_loss_draws_from_generator_and_trains():
    d = GaussianDiffusion(100, prediction="eps")
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    x0 = torch.randn(4, 1, 5, 5)
    a = d.loss(lambda x, t: net(x), x0, generator=torch.Generator().manual_seed(3))
    b = d.loss(lambda x, t: net(x), x0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    a.backward()
    assert net.weight.grad is not None and torch.isfinite(net.weight.grad).all()


def test_learned_sigma_head_and_cond_drop():
    d = GaussianDiffusion(100)
    x0 = torch.randn(4, 2, 3, 3)
    seen = []

    def model(x, t, y):
        seen.append(y.clone())
        return torch.cat([torch.zeros_like(x), torch.full_like(x, 7.0)], 1)

    loss = d.loss(model, x0, cond=torch.arange(4), weighting="none")
    assert loss.item() == pytest.approx(x0.pow(2).mean().item(), rel=1e-5)  # σ half ignored
    d.loss(model, x0, cond=torch.arange(4), cond_drop=0.999999, generator=torch.Generator().manual_seed(0))
    assert (seen[-1] == -1).all()


def test_bad_inputs():
    with pytest.raises(ValueError, match="schedule.*'cosine', 'linear'.*'quadratic'"):
        GaussianDiffusion(schedule="quadratic")
    with pytest.raises(ValueError, match="prediction.*'x0', 'eps', 'v'"):
        GaussianDiffusion(prediction="score")
    with pytest.raises(ValueError, match="num_timesteps"):
        GaussianDiffusion(1)
    d = GaussianDiffusion(10)
    x0 = torch.zeros(2, 1, 2, 2)
    with pytest.raises(ValueError, match=r"t: timesteps must lie in \[0, 9\]"):
        d.q_sample(x0, torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="t: expected an integer tensor"):
        d.q_sample(x0, torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="weighting"):
        d.loss(lambda x, t: x, x0, weighting="p2")
    with pytest.raises(ValueError, match="model output has shape"):
        d.loss(lambda x, t: x[:, :, :1], x0)
