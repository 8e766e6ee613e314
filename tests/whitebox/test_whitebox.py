"""White-box measurements against direct float64 computations: R^c, R, sparsity, attention maps, threshold, PCA."""
import math

import pytest
import torch

from tractable.models.crate import CRATE
from tractable.whitebox import (
    coding_rate,
    cls_attention_maps,
    compression_rate,
    foreground_mask,
    mass_threshold,
    measure_layers,
    pca_maps,
    upsample_maps,
    zero_fraction,
)


def direct_rc(X, heads, eps, normalise, squared):
    """½ Σ_k logdet(I_n + dh/(n·ε[²]) X̂_k X̂_kᵀ) per sample with the n×n matrix and torch.logdet, float64."""
    B, n, inner = X.shape
    dh = inner // heads
    out = []
    for b in range(B):
        total = 0.0
        for k in range(heads):
            Xk = X[b, :, k * dh:(k + 1) * dh].double()
            if normalise:
                Xk = Xk / Xk.norm(dim=1, keepdim=True)
            c = dh / (n * (eps ** 2 if squared else eps))
            total += 0.5 * torch.logdet(torch.eye(n, dtype=torch.float64) + c * Xk @ Xk.T).item()
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("n, inner, heads", [(17, 24, 3), (5, 32, 2)])
def test_compression_rate_equals_direct_logdet(gen, n, inner, heads):
    X = torch.randn(3, n, inner, generator=gen)
    got = compression_rate(X, heads, eps=0.01, mode="official")
    torch.testing.assert_close(got, direct_rc(X, heads, 0.01, True, False), rtol=1e-6, atol=0)
    for form in ("n", "p"):
        torch.testing.assert_close(compression_rate(X, heads, 0.01, "official", form=form), got, rtol=1e-9, atol=0)
    paper = compression_rate(X, heads, eps=0.5, mode="paper")
    torch.testing.assert_close(paper, direct_rc(X, heads, 0.5, False, True), rtol=1e-6, atol=0)


def test_coding_rate_equals_direct_logdet(gen):
    Z = torch.randn(2, 9, 6, generator=gen)
    eps = 0.3
    for mode in ("official", "paper"):
        got = coding_rate(Z, eps, mode)
        for b in range(2):
            z = Z[b].double()
            if mode == "official":
                z = z / z.norm(dim=1, keepdim=True)
            c = 6 / (9 * (eps if mode == "official" else eps ** 2))
            want = 0.5 * torch.logdet(torch.eye(6, dtype=torch.float64) + c * z.T @ z)
            assert abs(got[b].item() - want.item()) <= 1e-9 * abs(want.item())


def test_rate_limits_and_bad_arguments(gen):
    # orthonormal tokens: logdet(I + c I_n) = n log(1 + c) per head
    X = torch.zeros(1, 4, 8)
    X[0, :, :4] = torch.eye(4)
    got = compression_rate(X, heads=2, eps=0.01)  # head 1 is zero → contributes 0 after normalize(0) = 0
    assert abs(got.item() - 0.5 * 4 * math.log(1 + 4 / (4 * 0.01))) < 1e-9
    with pytest.raises(ValueError, match="heads must be a positive int dividing"):
        compression_rate(X, heads=3)
    with pytest.raises(ValueError, match="mode must be one of"):
        compression_rate(X, heads=2, mode="nats")
    with pytest.raises(ValueError, match="eps must be"):
        coding_rate(X, eps=0)
    with pytest.raises(ValueError, match=r"\(B, n, dim\)"):
        coding_rate(torch.zeros(4, 8))


def test_zero_fraction_counts_exact_zeros_including_cls():
    Z = torch.tensor([[[0.0, 1e-30, 2.0], [0.0, 0.0, 3.0]], [[1.0, 1.0, 1.0], [1.0, 0.0, 1.0]]])
    torch.testing.assert_close(zero_fraction(Z), torch.tensor([3 / 6, 1 / 6], dtype=torch.float64))


def tiny(**kw):
    return CRATE(image_size=16, patch_size=4, num_classes=5, dim=24, depth=3, heads=3, **kw).eval()


def test_measure_layers_matches_direct_computation(gen):
    m = tiny()
    x = torch.randn(4, 3, 16, 16, generator=gen)
    stats = measure_layers(m, [x[:2], x[2:]])
    assert [s.layer for s in stats] == [1, 2, 3] and stats[0].count == 4
    with torch.no_grad():
        f = m.forward_features(x, taps=("qkv", "out"))
    for i, s in enumerate(stats):
        rc = direct_rc(f["qkv"][i], 3, 0.01, True, False)
        assert abs(s.rc_mean - rc.mean().item()) < 1e-6 * abs(rc.mean().item())
        assert abs(s.rc_std - rc.std().item()) < 1e-6 * abs(rc.mean().item())
        z = (f["out"][i] == 0).double().mean(dim=(1, 2))
        assert abs(s.zero_mean - z.mean().item()) < 1e-12
        assert abs(s.nonzero_mean - (1 - z.mean().item())) < 1e-12
    paper = measure_layers(m, x, mode="paper")
    assert all(math.isfinite(s.rc_mean) and math.isfinite(s.delta_r_mean) for s in paper)
    with pytest.raises(ValueError, match="expected a CRATE or CRATE-MAE model"):
        measure_layers(torch.nn.Linear(2, 2), x)


def test_cls_attention_maps_rows_and_shape(gen):
    m = tiny()
    x = torch.randn(2, 3, 16, 16, generator=gen)
    maps = cls_attention_maps(m, x)
    assert maps.shape == (2, 3, 4, 4)
    with torch.no_grad():
        A = m.forward_features(x, taps=("attn",))["attn"][-1]
    torch.testing.assert_close(A.sum(-1), torch.ones(2, 3, 17), rtol=0, atol=1e-6)
    torch.testing.assert_close(maps.sum((-1, -2)), 1 - A[:, :, 0, 0], rtol=0, atol=1e-6)
    first = cls_attention_maps(m, x, layer=0)
    torch.testing.assert_close(first, m.forward_features(x, taps=("attn",))["attn"][0][:, :, 0, 1:].reshape(2, 3, 4, 4))
    assert upsample_maps(maps, 4).shape == (2, 3, 16, 16)
    assert torch.equal(upsample_maps(maps, 4)[..., ::4, ::4], maps)
    with pytest.raises(ValueError, match="layer must be in"):
        cls_attention_maps(m, x, layer=3)


def test_mass_threshold_keeps_a_minimal_set_with_the_mass(gen):
    maps = torch.rand(5, 2, 6, 6, generator=gen) ** 3
    keep = mass_threshold(maps, 0.6)
    p = maps / maps.sum((-1, -2), keepdim=True)
    for b in range(5):
        for k in range(2):
            kept = p[b, k][keep[b, k]]
            assert kept.sum() >= 0.6 - 1e-9
            assert kept.sum() - kept.min() < 0.6  # dropping the smallest kept patch falls below: minimal
            assert p[b, k][~keep[b, k]].max() <= kept.min()  # the kept patches are the top ones
    with pytest.raises(ValueError, match="mass must be in"):
        mass_threshold(maps, 0.0)


def test_pca_maps_and_foreground(gen):
    feats = torch.randn(3, 16, 8, generator=gen)
    feats[:, :8] += 5 * torch.randn(8, generator=gen)  # a strong shared direction in half the patches
    pcs = pca_maps(feats, (4, 4), 4)
    assert pcs.shape == (3, 4, 4, 4)
    assert torch.allclose(pcs.amin((-1, -2)), torch.zeros(3, 4)) and torch.allclose(pcs.amax((-1, -2)), torch.ones(3, 4))
    fg = foreground_mask(pcs[:, 0])
    first_half = fg.reshape(3, 16)[:, :8]
    assert first_half.all() or (~first_half).all()
    with pytest.raises(ValueError, match="grid"):
        pca_maps(feats, (3, 3))
