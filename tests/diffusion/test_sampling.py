"""DDIM/DDPM samplers: determinism, x₀ recovery, the DDIM update against the closed form, η = 1 ≡ DDPM, CFG."""
import pytest
import torch

from tractable.diffusion import GaussianDiffusion, ddim_sample, ddpm_sample, sample_timesteps

SHAPE = (3, 2, 4, 4)


def _oracle(d, x0, pred):
    """A model that knows the true x₀ and answers in its parametrisation."""
    def model(xt, t):
        a = d.alphas_cumprod[t].to(xt.dtype).reshape(-1, 1, 1, 1)
        eps = (xt - a.sqrt() * x0) / (1 - a).sqrt()
        return {"x0": x0, "eps": eps, "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[pred]
    return model


def test_timesteps():
    assert sample_timesteps(1000, 50).tolist() == list(range(0, 1000, 20))
    assert sample_timesteps(10, 10).tolist() == list(range(10))
    with pytest.raises(ValueError, match=r"steps: must be an int in \[1, num_timesteps=100\]"):
        sample_timesteps(100, 101)
    with pytest.raises(ValueError, match="steps"):
        ddim_sample(lambda x, t: x, SHAPE, steps=2000, diffusion=GaussianDiffusion(1000))
    with pytest.raises(ValueError, match="steps"):
        ddpm_sample(lambda x, t: x, SHAPE, steps=0)


@pytest.mark.parametrize("pred", ["x0", "eps", "v"])
def test_ddim_recovers_x0_from_any_noise(pred):
    d = GaussianDiffusion(1000, prediction=pred)
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for seed in (1, 2):
        xT = 3 * torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        out = ddim_sample(_oracle(d, x0, pred), SHAPE, steps=20, x_T=xT, diffusion=d, dtype=torch.float64)
        assert torch.allclose(out, x0, atol=1e-8)


def test_ddim_eta0_is_deterministic():
    d = GaussianDiffusion(100)
    net = torch.nn.Conv2d(2, 2, 3, padding=1)
    model = lambda x, t: net(x) * (1 + t.float().reshape(-1, 1, 1, 1) / 100)  # noqa: E731
    a = ddim_sample(model, SHAPE, steps=10, diffusion=d, generator=torch.Generator().manual_seed(5))
    b = ddim_sample(model, SHAPE, steps=10, diffusion=d, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    c = ddim_sample(model, SHAPE, steps=10, diffusion=d, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(a, c)


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_update_equals_closed_form(eta):
    """Two DDIM steps (T = 100, steps = 2: τ = 0, 50) against the paper's Eq. 12 written out here, in float64."""
    d = GaussianDiffusion(100, prediction="eps")
    W = torch.randn(2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def model(x, t):  # an arbitrary ε̂ depending on x and t
        return torch.einsum("oc,nchw->nohw", W, x) * torch.sin(t.double() / 10).reshape(-1, 1, 1, 1)

    xT = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = ddim_sample(model, SHAPE, steps=2, eta=eta, x_T=xT, diffusion=d, dtype=torch.float64,
                      generator=torch.Generator().manual_seed(9))
    z_gen = torch.Generator().manual_seed(9)
    ab = d.alphas_cumprod
    x = xT
    for t, t_prev in ((50, 0), (0, None)):
        a_t = ab[t].item()
        a_p = ab[t_prev].item() if t_prev is not None else 1.0
        e = model(x, torch.full((SHAPE[0],), t))
        x0 = (x - (1 - a_t) ** 0.5 * e) / a_t ** 0.5
        sigma = eta * ((1 - a_p) / (1 - a_t) * (1 - a_t / a_p)) ** 0.5
        x = a_p ** 0.5 * x0 + (1 - a_p - sigma ** 2) ** 0.5 * e
        if sigma > 0:
            x = x + sigma * torch.randn(SHAPE, generator=z_gen, dtype=torch.float64)
    assert torch.allclose(out, x, rtol=1e-12, atol=1e-12)


def test_ddim_eta1_equals_ddpm_posterior():
    d = GaussianDiffusion(200, prediction="v")
    net = torch.nn.Conv2d(2, 2, 3, padding=1).double()
    model = lambda x, t: torch.tanh(net(x))  # noqa: E731
    a = ddim_sample(model, SHAPE, steps=8, eta=1.0, diffusion=d, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(4))
    b = ddpm_sample(model, SHAPE, steps=8, diffusion=d, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(a, b, rtol=1e-9, atol=1e-9)


def test_ddpm_recovers_x0_and_clip():
    d = GaussianDiffusion(100)
    x0 = torch.rand(SHAPE, generator=torch.Generator().manual_seed(0)) * 0.5
    out = ddpm_sample(_oracle(d, x0, "x0"), SHAPE, steps=100, diffusion=d, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(out, x0, atol=1e-5)
    big = ddim_sample(lambda x, t: torch.full_like(x, 5.0), SHAPE, steps=5, diffusion=d, clip=1.0)
    assert torch.allclose(big, torch.ones(SHAPE))
    lohi = ddim_sample(lambda x, t: torch.full_like(x, -5.0), SHAPE, steps=5, diffusion=d, clip=([-0.5, -2.0], [1, 1]))
    assert torch.allclose(lohi[:, 0], torch.full_like(lohi[:, 0], -0.5)) and torch.allclose(lohi[:, 1], -2 * torch.ones_like(lohi[:, 1]))


def test_classifier_free_guidance():
    d = GaussianDiffusion(50)

    def model(x, t, y):  # conditional answer +1, unconditional (label −1) answer 0
        return (y >= 0).to(x.dtype).reshape(-1, 1, 1, 1).expand_as(x).clone()

    y = torch.tensor([1, 2, 3])
    xT = torch.randn(SHAPE)
    cond = ddim_sample(model, SHAPE, steps=5, diffusion=d, cond=y, x_T=xT)
    assert torch.allclose(cond, torch.ones(SHAPE))
    guided = ddim_sample(model, SHAPE, steps=5, diffusion=d, cond=y, x_T=xT, guidance=3.0)
    assert torch.allclose(guided, torch.full(SHAPE, 3.0))
    uncond = ddim_sample(model, SHAPE, steps=5, diffusion=d, cond=y, x_T=xT, guidance=0.0)
    assert torch.allclose(uncond, torch.zeros(SHAPE), atol=1e-6)
    with pytest.raises(ValueError, match="x_T"):
        ddim_sample(model, SHAPE, diffusion=d, x_T=torch.zeros(1, 2))
