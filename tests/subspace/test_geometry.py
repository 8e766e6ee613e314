"""Coefficients and samplers of line, curve and simplex, and their bad inputs."""
import math

import pytest
import torch

from tractable.subspace import bezier_coeffs, line_coeffs, point_coeffs, sample_coeffs
from tractable.subspace.geometry import check_kind


def test_line_and_bezier_coefficients():
    for a in (0.0, 0.3, 1.0):
        c = line_coeffs(a)
        assert c.tolist() == [1 - a, a] and float(c.sum()) == 1.0
    assert torch.allclose(bezier_coeffs(0.25), torch.tensor([0.5625, 0.375, 0.0625], dtype=torch.float64))
    for m in (1, 2, 3, 5):
        for a in (0.0, 0.17, 0.5, 1.0):
            c = bezier_coeffs(a, m)
            assert abs(float(c.sum()) - 1.0) < 1e-12
            ref = [math.comb(m, i) * a ** i * (1 - a) ** (m - i) for i in range(m + 1)]
            assert torch.allclose(c, torch.tensor(ref, dtype=torch.float64))
    assert torch.equal(bezier_coeffs(0.4, 1), line_coeffs(0.4))


def test_simplex_sampler_is_uniform_dirichlet():
    from scipy import stats

    g = torch.Generator().manual_seed(0)
    n = 4
    t = sample_coeffs("simplex", n, g, 4000)
    assert (t >= 0).all() and torch.allclose(t.sum(1), torch.ones(4000, dtype=torch.float64))
    for i in range(n):  # each marginal of Dirichlet(1,…,1) is Beta(1, n−1)
        assert stats.kstest(t[:, i].numpy(), stats.beta(1, n - 1).cdf).pvalue > 1e-3
        assert abs(float(t[:, i].mean()) - 1 / n) < 0.02
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(sample_coeffs("line", 2, g1, 3), sample_coeffs("line", 2, g2, 3))


def test_points_and_bad_inputs():
    assert point_coeffs("simplex", 3, [0.2, 0.3, 0.5]).tolist() == pytest.approx([0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match="outside the simplex"):
        point_coeffs("simplex", 3, [0.5, 0.6, -0.1])
    with pytest.raises(ValueError, match="outside the simplex"):
        point_coeffs("simplex", 3, [0.5, 0.6, 0.1])
    with pytest.raises(ValueError, match="needs 3 weights"):
        point_coeffs("simplex", 3, [0.5, 0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        point_coeffs("line", 2, 1.5)
    with pytest.raises(ValueError, match="one float"):
        point_coeffs("curve", 3, [0.2, 0.8])
    with pytest.raises(ValueError, match="accepted values: 'line', 'curve', 'simplex'"):
        check_kind("plane", None)
    with pytest.raises(ValueError, match="k >= 2"):
        check_kind("simplex", 1)
    with pytest.raises(ValueError, match="number of vertices"):
        check_kind("simplex", None)
    with pytest.raises(ValueError, match="leave k=None"):
        check_kind("line", 3)
