"""Fréchet distance: self ~0, two Gaussians against the closed form (computed with eigh here), monotone in noise,
feature extractors, bad inputs."""
import numpy as np
import pytest
import torch

from tractable.diffusion import (
    ClassifierFeatures,
    InceptionFeatures,
    denormalize,
    extract_features,
    feature_stats,
    frechet_distance,
    frechet_distance_from_stats,
)


def _psd_sqrt(m):
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _closed_form(mu_a, s_a, mu_b, s_b):
    """‖Δμ‖² + tr Σa + tr Σb − 2 tr (Σa^½ Σb Σa^½)^½ (symmetric form, by eigendecomposition)."""
    ra = _psd_sqrt(s_a)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(_psd_sqrt(ra @ s_b @ ra)))


def test_self_distance_is_zero():
    x = torch.randn(500, 16, generator=torch.Generator().manual_seed(0))
    assert abs(frechet_distance(x, x)) < 1e-6
    assert abs(frechet_distance(x.numpy(), x.double())) < 1e-6


def test_two_gaussians_closed_form():
    rng = np.random.default_rng(0)
    d = 6
    A, B = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s_a, s_b = A @ A.T + 0.1 * np.eye(d), B @ B.T + 0.1 * np.eye(d)
    mu_a, mu_b = rng.normal(size=d), rng.normal(size=d)
    assert frechet_distance_from_stats(mu_a, s_a, mu_b, s_b) == pytest.approx(_closed_form(mu_a, s_a, mu_b, s_b),
                                                                               rel=1e-9)
    # diagonal covariances: ‖Δμ‖² + Σ(√σa − √σb)²
    va, vb = rng.uniform(0.5, 2, d), rng.uniform(0.5, 2, d)
    want = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(va) - np.sqrt(vb)) ** 2).sum()
    assert frechet_distance_from_stats(mu_a, np.diag(va), mu_b, np.diag(vb)) == pytest.approx(want, rel=1e-10)
    # from samples: equals the closed form of the samples' own mean and (N−1) covariance
    xa = rng.multivariate_normal(mu_a, s_a, size=400)
    xb = rng.multivariate_normal(mu_b, s_b, size=300)
    got = frechet_distance(xa, xb)
    assert got == pytest.approx(_closed_form(xa.mean(0), np.cov(xa.T), xb.mean(0), np.cov(xb.T)), rel=1e-8)
    assert got == pytest.approx(_closed_form(mu_a, s_a, mu_b, s_b), rel=0.25)  # and near the population value
    mu, sig = feature_stats(xa)
    assert np.allclose(mu, xa.mean(0)) and np.allclose(sig, np.cov(xa.T))


def test_grows_with_noise():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2000, 8, generator=g) @ torch.randn(8, 8, generator=g)
    ref = torch.randn(2000, 8, generator=g) @ torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(2000, 8, generator=g)
    vals = [frechet_distance(ref, x[:, :] * 0 + ref + s * noise) for s in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert vals[0] < 1e-6 and all(a < b for a, b in zip(vals, vals[1:]))


def test_singular_covariance_is_stabilised():
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    x = torch.cat([x, x[:, :1]], 1)  # rank-deficient: 5 features of rank 4
    y = x + 0.1
    with pytest.warns(UserWarning, match="singular"):
        v = frechet_distance(torch.cat([x[:, :4], torch.zeros(50, 1)], 1), torch.cat([y[:, :4], torch.zeros(50, 1)], 1))
    assert v == pytest.approx(4 * 0.01, rel=1e-3)


def test_bad_inputs():
    with pytest.raises(ValueError, match="different feature dimensions: 3 vs 4"):
        frechet_distance(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="features_a: expected a 2-D"):
        frechet_distance(torch.zeros(5), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="at least 2 samples"):
        frechet_distance(torch.zeros(1, 3), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(torch.full((3, 3), float("nan")), torch.zeros(5, 3))


def test_classifier_features_and_denormalize():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    x = torch.randn(10, 1, 2, 2)
    f = ClassifierFeatures(net)
    feats = extract_features(f, x, batch_size=3)
    assert feats.shape == (10, 7) and feats.dtype == torch.float64
    assert torch.allclose(feats.float(), torch.relu(net[1](x.flatten(1))))
    assert ClassifierFeatures(net, layer="1")(x).shape == (10, 4)
    with pytest.raises(ValueError, match="not a submodule"):
        ClassifierFeatures(net, layer="nope")
    y = denormalize(torch.zeros(2, 2, 1, 1), [0.5, 0.1], [2.0, 1.0])
    assert y[:, 0].eq(0.5).all() and y[:, 1].eq(0.1).all()


def test_inception_is_optional():
    try:
        import torchmetrics.image.fid  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install"):
            InceptionFeatures()
    else:
        pytest.skip("torchmetrics is installed; the install hint is not reachable")
