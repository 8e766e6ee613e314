"""TrAct diagnostics (tractable.tract.diagnostics) against constructed inputs and an independent float64 reference."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import tractable
from tractable.tract import layer_diagnostics, plain_weight_gradient, tract_diagnostics
from tractable.tract.diagnostics import DIAGNOSTICS
from tests.tract._reference import conv_rows, reference


def _whitened_tokens(b, n, scale=1.0, seed=0):
    """(b, n) rows with XᵀX/b = scale·I exactly: √(b·scale) times orthonormal columns."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(b, n, generator=g, dtype=torch.float64))
    return q * math.sqrt(b * scale)


@pytest.mark.parametrize("lam", [1e-3, 0.1, 1.0, 1e3])
@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_whitened_input_gives_condition_one_and_cosine_one_at_any_lambda(lam, scale):
    torch.manual_seed(0)
    layer = nn.Linear(6, 5).double()
    x = _whitened_tokens(48, 6, scale).reshape(4, 12, 6)  # tokens: b = 48 rows over two leading dims
    g = torch.randn(4, 12, 5, dtype=torch.float64)
    d = layer_diagnostics(layer, x, g, lam=lam)
    assert d["cond"] == pytest.approx(1.0, abs=1e-9)
    assert d["cond_k"] == pytest.approx(1.0, abs=1e-9)
    assert d["eff_rank"] == pytest.approx(6.0, abs=1e-9)
    assert d["cosine"] == pytest.approx(1.0, abs=1e-12)
    assert d["gain"] == pytest.approx(1.0 / (scale + lam), rel=1e-9)
    assert d["mean_sq"] == pytest.approx(scale, rel=1e-12)


def test_anisotropic_input_is_far_from_plain_and_the_cosine_tends_to_one_as_lambda_grows():
    torch.manual_seed(1)
    conv = nn.Conv2d(2, 4, 3, padding=1).double()
    x = torch.randn(3, 2, 7, 7, dtype=torch.float64)
    x = x + 2.0 * x.mean(1, keepdim=True)  # correlated channels: a far from isotropic Gram
    g = torch.randn(3, 4, 7, 7, dtype=torch.float64)
    lams = [1e-2, 1e-1, 1.0, 1e1, 1e2, 1e4, 1e6]
    ds = [layer_diagnostics(conv, x, g, lam=lam) for lam in lams]
    gaps = [1 - d["cosine"] for d in ds]
    assert gaps[0] > 0.05  # TrAct is not a no-op here
    assert ds[0]["cond"] > 10 and ds[0]["eff_rank"] < 18
    assert all(a >= b for a, b in zip(gaps, gaps[1:]))
    assert gaps[-1] < 1e-10
    # cond_k → 1 and λ·gain → 1 (T → M/λ)
    assert ds[-1]["cond_k"] == pytest.approx(1.0, abs=1e-4)
    assert lams[-1] * ds[-1]["gain"] == pytest.approx(1.0, abs=1e-4)
    # the condition number of XᵀX/b does not depend on λ
    assert all(d["cond"] == pytest.approx(ds[0]["cond"], rel=1e-12) for d in ds)


@pytest.mark.parametrize("kind", ["linear", "conv_reflect_stride", "conv_groups"])
def test_matches_an_independent_float64_reference(kind):
    torch.manual_seed(2)
    if kind == "linear":
        layer = nn.Linear(5, 3).double()
        x = torch.randn(4, 6, 5, dtype=torch.float64) * torch.tensor([3.0, 1.0, 0.5, 0.2, 0.1], dtype=torch.float64)
        X = x.reshape(-1, 5)
        groups = 1
    elif kind == "conv_reflect_stride":
        layer = nn.Conv2d(2, 4, 3, stride=2, padding=1, padding_mode="reflect").double()
        x = torch.randn(2, 2, 9, 8, dtype=torch.float64) + 0.5
        X, _ = conv_rows(layer, x)
        groups = 1
    else:
        layer = nn.Conv1d(4, 6, 3, groups=2, padding=1).double()
        x = torch.randn(3, 4, 10, dtype=torch.float64)
        x[:, 2:] *= 3.0
        X, _ = conv_rows(layer, x)
        groups = 2
    lam = 0.1
    out = layer(x)
    R = torch.randn_like(out)
    _, plain_ref, tract_ref = reference(layer, x, R, lam)
    M = plain_weight_gradient(layer, x, R)
    torch.testing.assert_close(M, plain_ref, rtol=1e-12, atol=1e-12)

    # reference statistics with numpy, per group
    Xn = X.numpy()
    b = Xn.shape[0]
    ng = Xn.shape[1] // groups
    conds, eranks, condks = [], [], []
    for gi in range(groups):
        Xg = Xn[:, gi * ng:(gi + 1) * ng]
        mu = np.linalg.eigvalsh(Xg.T @ Xg / b)
        p = mu / mu.sum()
        conds.append(mu.max() / mu.min())
        eranks.append(math.exp(-(p * np.log(p)).sum()))
        condks.append((mu.max() + lam) / (mu.min() + lam))
    P, T = plain_ref.numpy().ravel(), tract_ref.numpy().ravel()
    d = layer_diagnostics(layer, x, R, lam=lam)
    assert set(d) == set(DIAGNOSTICS)
    assert d["cond"] == pytest.approx(max(conds), rel=1e-9)
    assert d["eff_rank"] == pytest.approx(sum(eranks) / groups, rel=1e-9)
    assert d["cond_k"] == pytest.approx(max(condks), rel=1e-9)
    assert d["cosine"] == pytest.approx(P @ T / (np.linalg.norm(P) * np.linalg.norm(T)), rel=1e-12)
    assert d["gain"] == pytest.approx(np.linalg.norm(T) / np.linalg.norm(P), rel=1e-12)
    assert d["mean_sq"] == pytest.approx(float((Xn ** 2).mean()), rel=1e-12)


def test_tract_layer_uses_its_lambda_and_the_plain_gradient():
    torch.manual_seed(3)
    conv = tractable.TrAct(nn.Conv2d(1, 3, 4, stride=4).double(), l=0.3)  # a patch embedding
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64) * 2 + 1
    out = conv(x)
    R = torch.randn_like(out)
    out.backward(R)
    tract_grad = conv.weight.grad.clone()
    _, plain_ref, tract_ref = reference(conv, x, R, 0.3)
    torch.testing.assert_close(tract_grad, tract_ref)  # the layer really is TrAct
    torch.testing.assert_close(plain_weight_gradient(conv, x, R), plain_ref)  # ... but M is the plain one
    d = layer_diagnostics(conv, x, R)
    cos = float((tract_grad * plain_ref).sum() / (tract_grad.norm() * plain_ref.norm()))
    assert d["cosine"] == pytest.approx(cos, rel=1e-12)
    assert d == layer_diagnostics(conv, x, R, lam=0.3)


def test_singular_gram_and_argument_errors():
    layer = nn.Linear(4, 2).double()
    x = torch.zeros(5, 4, dtype=torch.float64)
    x[:, 0] = torch.arange(1.0, 6.0)  # rank 1
    g = torch.ones(5, 2, dtype=torch.float64)
    d = layer_diagnostics(layer, x, g, lam=0.1)
    assert d["cond"] == math.inf and d["eff_rank"] == pytest.approx(1.0)
    assert math.isfinite(d["cond_k"]) and d["cond_k"] > 1
    with pytest.raises(ValueError, match="lam="):
        layer_diagnostics(layer, x, g)
    with pytest.raises(ValueError, match="λ"):
        tract_diagnostics(torch.zeros(2, 4), x, tractable.tract.layer_geometry(layer), 0.0)
    with pytest.raises(TypeError):
        layer_diagnostics(nn.ConvTranspose2d(1, 1, 2), torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 4, 4), lam=0.1)
