"""tractable.feedback.metrics against independent float64 formulas (numpy/scipy), limiting cases and
autograd / finite differences on the models' real forward."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tractable.models.credit as credit
from tractable.feedback import metrics as M
from tractable.models import create_model

MODELS = {
    "resmlp": dict(name="resmlp", dim=16, depth=3),
    "resmlp_plain": dict(name="resmlp", dim=16, depth=3, residual_add=False, w2_std=0.3),
    "vit_mini": dict(name="vit_mini", image_size=8, dim=16, heads=2, depth=2),
    "resnet": dict(name="small_resnet_credit", image_size=6, width=4, depth=2),
    "resnet_preact": dict(name="small_resnet_credit", image_size=6, width=4, depth=2, preact=True),
}


def build(key):
    kw = dict(MODELS[key])
    torch.manual_seed(0)
    return create_model(kw.pop("name"), **kw)


def batch(model, n, gen):
    if isinstance(model, credit.ResMLP):
        x = torch.randn(n, model.embed.in_features, generator=gen)
    else:
        size = model.embed.image_size if isinstance(model, credit.ViTMini) else model.image_size
        x = torch.randn(n, 3, size, size, generator=gen)
    return x, torch.randint(0, 10, (n,), generator=gen)


# ------------------------------------------------------------------------------------------ cosine
def np_cos(a, b):
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    return np.array([x @ y / (np.linalg.norm(x) * np.linalg.norm(y)) for x, y in zip(a, b)])


def test_cosine_matches_float64_formula(gen):
    a, g = torch.randn(5, 3, 4, generator=gen), torch.randn(5, 3, 4, generator=gen)
    np.testing.assert_allclose(M.per_sample_cosine(a, g).numpy(), np_cos(a, g), rtol=1e-12, atol=1e-14)
    assert M.per_sample_cosine(a, g).dtype == torch.float64
    summary = M.cosine_summary(M.per_sample_cosine(a, g))
    np.testing.assert_allclose(summary["mean"], np_cos(a, g).mean(), rtol=1e-12)
    np.testing.assert_allclose(summary["median"], np.sort(np_cos(a, g))[2], rtol=1e-12)


def test_cosine_nan_for_zero_and_extreme_scales(gen):
    a = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    z = a.clone()
    z[1] = 0
    c = M.per_sample_cosine(z, a)
    assert torch.isnan(c[1]) and torch.allclose(c[[0, 2]], torch.ones(2, dtype=torch.float64))
    assert M.cosine_summary(c)["n_nan"] == 1
    for s in (1e-300, 1e-30, 1e30, 1e300):  # explicit normalisation: no overflow, no clamp
        assert torch.allclose(M.per_sample_cosine(a * s, a), torch.ones(3, dtype=torch.float64), atol=1e-12)
    tiny = torch.randn(3, 6, generator=gen) * 1e-20  # float32, far below F.cosine_similarity's 1e-8 clamp
    assert torch.allclose(M.per_sample_cosine(tiny, tiny), torch.ones(3, dtype=torch.float64), atol=1e-6)
    assert F.cosine_similarity(tiny, tiny).max() < 1e-6  # the clamp artefact the metric avoids


def test_cosine_is_one_when_hiddens_are_scaled(gen):
    """Terminal-LN ResMLP: scaling h_L by 1e2…1e8 shrinks g_L by the same factor, yet the fp32 reference is still
    exactly aligned with the fp64 one (cos = 1 ± 1e-6), and ‖g_L‖·‖h_L‖ is unchanged."""
    model = build("resmlp").eval()
    x, y = batch(model, 16, gen)
    with torch.no_grad():
        hL = model(x, return_hidden=True)[1][-1]
    prods = []
    for s in (1.0, 1e2, 1e4, 1e6, 1e8):
        h = (hL * s).requires_grad_(True)
        g = torch.autograd.grad(F.cross_entropy(model.forward_from(3, h), y, reduction="sum"), h)[0]
        h64 = (hL.double() * s).requires_grad_(True)
        m64 = build("resmlp").double().eval()
        g64 = torch.autograd.grad(F.cross_entropy(m64.forward_from(3, h64), y, reduction="sum"), h64)[0]
        cos = M.per_sample_cosine(g, g64)
        assert torch.all((cos - 1).abs() < 1e-6), (s, cos)
        prods.append(float((M.per_sample_norm(g) * M.per_sample_norm(h)).median()))
    np.testing.assert_allclose(prods, prods[0], rtol=1e-3)


# ------------------------------------------------------------------------------------------ reference
@pytest.mark.parametrize("key", list(MODELS))
def test_bp_reference_is_autograd_on_the_real_forward(key, gen):
    model = build(key)
    x, y = batch(model, 4, gen)
    model.train()
    ref = M.bp_reference(model, x, y)
    assert model.training and all(m.training for m in model.modules())  # mode restored
    model.eval()
    logits = model(x)
    assert torch.equal(ref.logits, logits)  # the reference path is the model's forward, bitwise
    for p in model.parameters():
        assert p.grad is None
    # the float64 reference against central differences along random directions through forward_from
    ref64 = M.bp_reference(model, x, y, dtype=torch.float64)
    m64 = build(key).double().eval()
    m64.load_state_dict(model.state_dict())
    t = 1e-6
    for k, (h, g, g32) in enumerate(zip(ref64.hiddens, ref64.grads, ref.grads)):
        v = torch.randn(h.shape, generator=gen, dtype=torch.float64) * (h != 0)
        with torch.no_grad():
            lp = F.cross_entropy(m64.forward_from(k, h + t * v), y, reduction="sum")
            lm = F.cross_entropy(m64.forward_from(k, h - t * v), y, reduction="sum")
        assert torch.allclose((g * v).sum(), (lp - lm) / (2 * t), rtol=1e-6, atol=1e-9), (key, k)
        assert torch.allclose(g32.double(), g, rtol=1e-3, atol=1e-6)
    ref_mean = M.bp_reference(model, x, y, reduction="mean")
    for g_sum, g_mean in zip(ref.grads, ref_mean.grads):
        torch.testing.assert_close(g_mean * len(y), g_sum, rtol=1e-5, atol=1e-7)


class _Scale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, s):
        ctx.s = s
        return h.view_as(h)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.s, None


class _FakeWiring(nn.Module):
    """Plain forward values; the gradient reaching point k is multiplied by (k+2) (a stand-in credit method)."""

    def forward(self, model, x, return_hidden=False):
        p = model.embed(x)  # the points are the inputs of the injecting Functions: their gradient is the signal
        hs = [p]
        h = _Scale.apply(p, 2.0)
        for l, blk in enumerate(model.blocks):
            p = h.detach() + blk(h)
            hs.append(p)
            h = _Scale.apply(p, float(l + 3))
        logits = model.head(model.readout(h))
        return (logits, hs) if return_hidden else logits


def test_signals_and_reference_with_a_wiring(gen):
    model = build("resmlp")
    model.credit = _FakeWiring()
    x, y = batch(model, 5, gen)
    ref = M.bp_reference(model, x, y)
    plain = build("resmlp")
    plain.load_state_dict({k: v for k, v in model.state_dict().items()})
    ref_plain = M.bp_reference(plain, x, y)
    for a, b in zip(ref.grads, ref_plain.grads):  # bp_mode switches the wiring off
        assert torch.equal(a, b)
    sig = M.method_signals(model, x, y)
    # the wiring's signal at point L is the true gradient there times (L+2); lower points see the chain
    torch.testing.assert_close(sig[-1], ref.grads[-1] * 5.0)
    cos = M.point_cosines(sig, ref.grads)
    assert len(cos) == 4 and abs(cos[-1]["mean"] - 1) < 1e-6
    sig_plain = M.method_signals(plain, x, y)
    for a, b in zip(sig_plain, ref_plain.grads):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------ norms, growth
def test_norms_and_growth_match_formulas(gen):
    tok = torch.randn(7, 5, 4, generator=gen)
    np.testing.assert_allclose(M.per_sample_norm(tok, "seed").numpy(), np.linalg.norm(tok[:, 0].numpy(), axis=1),
                               rtol=1e-6)
    np.testing.assert_allclose(M.per_sample_norm(tok, "position").numpy(),
                               np.linalg.norm(tok.numpy(), axis=2).mean(axis=1), rtol=1e-6)
    mp = torch.randn(7, 3, 2, 2, generator=gen)
    np.testing.assert_allclose(M.per_sample_norm(mp, "seed").numpy(),
                               np.linalg.norm(mp.numpy().mean(axis=(2, 3)), axis=1), rtol=1e-6)
    np.testing.assert_allclose(M.per_sample_norm(mp, "position").numpy(),
                               np.linalg.norm(mp.numpy(), axis=1).mean(axis=(1, 2)), rtol=1e-6)
    hs = [torch.randn(9, 3, generator=gen) * s for s in (1.0, 10.0, 1000.0)]
    gr = M.block_growth(hs)
    n = [np.linalg.norm(h.numpy(), axis=1) for h in hs]
    np.testing.assert_allclose(gr["ratio_of_medians"], [np.median(n[1]) / np.median(n[0]),
                                                        np.median(n[2]) / np.median(n[1])], rtol=1e-6)
    np.testing.assert_allclose(gr["median_of_ratios"], [np.median(n[1] / n[0]), np.median(n[2] / n[1])], rtol=1e-6)
    with pytest.raises(ValueError, match="pooling must be one of"):
        M.per_sample_norm(tok, "cls")


# ------------------------------------------------------------------------------------------ ρ and nudging
def test_perturbation_correlation_limits(gen):
    model = build("vit_mini").eval()
    x, y = batch(model, 6, gen)
    ref = M.bp_reference(model, x, y)
    k = 1
    rho = M.perturbation_correlation(model, k, ref.hiddens[k], ref.grads[k], y, eps=1e-4)
    assert rho > 0.999
    noise = torch.randn(ref.grads[k].shape, generator=gen)
    rho0 = M.perturbation_correlation(model, k, ref.hiddens[k], noise, y, eps=1e-4, num_directions=64)
    assert abs(rho0) < 0.2
    # a scalar (mean) loss is accepted: one pair per direction
    rho_s = M.perturbation_correlation(model, k, ref.hiddens[k], ref.grads[k], y, eps=1e-4,
                                       loss_fn=lambda lg, t: F.cross_entropy(lg, t))
    assert rho_s > 0.999
    # matches an independent numpy Pearson on the same directions
    g1 = torch.Generator().manual_seed(3)
    r = M.perturbation_correlation(model, k, ref.hiddens[k], noise, y, num_directions=4, generator=g1)
    g2 = torch.Generator().manual_seed(3)
    h = ref.hiddens[k]
    preds, trues = [], []
    with torch.no_grad():
        base = F.cross_entropy(model.forward_from(k, h), y, reduction="none")
        for _ in range(4):
            v = torch.randn(h.shape, generator=g2, dtype=torch.float64).float()
            v = v / v.reshape(6, -1).norm(dim=1).reshape(6, 1, 1)
            d = 1e-3 * h.reshape(6, -1).norm(dim=1).reshape(6, 1, 1) * v
            preds.append((noise.double() * d.double()).reshape(6, -1).sum(1).numpy())
            trues.append((F.cross_entropy(model.forward_from(k, h + d), y, reduction="none") - base).double().numpy())
    np.testing.assert_allclose(r, np.corrcoef(np.concatenate(preds), np.concatenate(trues))[0, 1], rtol=1e-6)


def test_nudging_step_is_relative(gen):
    """With a scale-invariant head (depth 0, terminal LN), nudging h and 1e3·h gives the same loss change: the
    step scales with ‖h‖. The true gradient is a descent direction."""
    model = create_model("resmlp", dim=8, depth=0, in_features=5).eval()
    x, y = torch.randn(6, 5, generator=gen), torch.randint(0, 10, (6,), generator=gen)
    ref = M.bp_reference(model, x, y)
    h, g = ref.hiddens[0], ref.grads[0]
    a = M.nudging(model, 0, h, g, y, eta=0.01)
    b = M.nudging(model, 0, h * 1e3, g, y, eta=0.01)
    assert a["mean_delta"] < 0 and a["frac_decrease"] == 1.0
    np.testing.assert_allclose(a["mean_delta"], b["mean_delta"], rtol=1e-3)
    c = M.nudging(model, 0, h, -g, y)
    assert c["mean_delta"] > 0
    zero = M.nudging(model, 0, h, torch.zeros_like(g), y)
    assert zero["mean_delta"] == 0.0


# ------------------------------------------------------------------------------------------ weights, statistics
def test_drift_angle_ratio(gen):
    w0 = {"a": torch.randn(3, 4, generator=gen), "b": torch.zeros(3), "n": torch.tensor(3)}
    w1 = {"a": w0["a"] + 0.5 * torch.randn(3, 4, generator=gen), "b": torch.ones(3), "n": torch.tensor(5)}
    d = M.feature_drift(w0, w1)
    np.testing.assert_allclose(d["a"], np.linalg.norm((w1["a"] - w0["a"]).numpy()) / np.linalg.norm(w0["a"].numpy()),
                               rtol=1e-6)
    assert math.isnan(d["b"]) and "n" not in d
    with pytest.raises(ValueError, match="shape"):
        M.feature_drift({"a": torch.ones(2)}, {"a": torch.ones(3)})
    W = torch.randn(4, 5, generator=gen)
    assert M.weight_angle(W, W) == pytest.approx(0.0, abs=1e-5)
    assert M.weight_angle(W, -W) == pytest.approx(180.0, abs=1e-5)
    E = torch.zeros(2, 2)
    E[0, 0] = 1.0
    F_ = torch.zeros(2, 2)
    F_[1, 1] = 3.0
    assert M.weight_angle(E, F_) == pytest.approx(90.0)
    B = torch.randn(4, 5, generator=gen)
    wn, bn = W.numpy().ravel(), B.numpy().ravel()
    assert M.weight_angle(W, B) == pytest.approx(
        math.degrees(math.acos(wn @ bn / np.linalg.norm(wn) / np.linalg.norm(bn))), rel=1e-5)
    assert M.norm_ratio(W, 2 * W) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="same shape"):
        M.weight_angle(W, B.T)


def test_statistics():
    scipy_stats = pytest.importorskip("scipy.stats")
    for k, n in ((0, 10), (7, 10), (10, 10), (512, 1000)):
        ci = scipy_stats.binomtest(k, n).proportion_ci(method="wilson")
        np.testing.assert_allclose(M.wilson_interval(k, n), (ci.low, ci.high), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="correct must be"):
        M.wilson_interval(11, 10)
    lo, hi = M.bootstrap_mean_ci([0.1, 0.2, 0.3, 0.25])
    assert lo < 0.2125 < hi and (lo, hi) == M.bootstrap_mean_ci([0.1, 0.2, 0.3, 0.25])
    assert M.bootstrap_mean_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)
    assert M.bootstrap_mean_ci([0.3]) == (0.3, 0.3)
    fresh = [0.1, 0.2, 0.15, 0.05, 0.12]
    r = M.fresh_b_null(0.4, fresh)
    assert r["z"] == pytest.approx((0.4 - np.mean(fresh)) / np.std(fresh, ddof=1))
    assert r["p"] == pytest.approx(1 / 6) and r["n"] == 5
    assert M.fresh_b_null(0.12, fresh)["p"] == pytest.approx(4 / 6)  # 0.2, 0.15, 0.12 >= 0.12
    with pytest.raises(ValueError, match="at least 2"):
        M.fresh_b_null(0.1, [0.2])


def test_bad_inputs(gen):
    with pytest.raises(TypeError, match="credit-assignment protocol"):
        M.bp_reference(nn.Linear(3, 2), torch.randn(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="shapes differ"):
        M.per_sample_cosine(torch.ones(2, 3), torch.ones(3, 2))
    with pytest.raises(ValueError, match="reduction must be"):
        M.bp_reference(build("resmlp"), *batch(build("resmlp"), 2, gen), reduction="none")
    model = build("resmlp")
    x, y = batch(model, 2, gen)
    with pytest.raises(ValueError, match="scalar"):
        M.bp_reference(model, x, y, loss_fn=lambda lg, t: F.cross_entropy(lg, t, reduction="none"))
    h = torch.randn(2, 16, generator=gen)
    with pytest.raises(ValueError, match="eps must be a positive"):
        M.perturbation_correlation(model, 1, h, h, y, eps=0)
    with pytest.raises(ValueError, match="num_directions"):
        M.perturbation_correlation(model, 1, h, h, y, num_directions=1)
    with pytest.raises(ValueError, match="signal shape"):
        M.nudging(model, 1, h, h[:, :3], y)


@pytest.mark.parametrize("method,options", [("fa", {}), ("fa", {"granularity": "block", "feedback_init": "normal"}), ("dfa", {}),
                                            ("dfa", {"placement": "post_ln"})])
def test_signals_of_the_feedback_methods(method, options, gen):
    """Converted models: the reference is still exact BP (bp_mode switches the feedback off, finite differences
    agree), while method_signals sees the method's own signal (not BP) even though layers run in eval mode."""
    from tractable.feedback import convert

    model = build("resmlp")
    plain = build("resmlp")
    convert(model, method, seed=3, **options)
    x, y = batch(model, 6, gen)
    model.train()
    ref = M.bp_reference(model, x, y)
    ref_plain = M.bp_reference(plain, x, y)
    for a, b in zip(ref.grads, ref_plain.grads):
        torch.testing.assert_close(a, b)
    sig = M.method_signals(model, x, y)
    assert model.training and all(m.training for m in model.modules())
    cos = M.point_cosines(sig, ref.grads)
    assert cos[0]["mean"] < 0.99  # the embed's signal is not the BP gradient under any of these methods
    if method == "fa" and options.get("granularity") == "block":
        assert abs(cos[-1]["mean"] - 1) < 1e-6  # the top point receives the head's exact gradient
