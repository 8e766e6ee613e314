"""FAProtocol on constructed cases: healthy BP passes, exploding residuals fire D1, a huge terminal-LN
stream fires the seed's D2 but not the corrected one, non-finite gradients fire the corrected D2, D3 fires /
passes / is inconclusive as the interval says, a missing baseline gives INCOMPLETE, both verdict rules."""
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tractable.feedback.protocol import FAProtocol, combine_verdict, format_report
from tractable.models.credit import resmlp

IN = 8


def teacher_data(n, gen):
    x = torch.randn(n, IN, generator=gen)
    w = torch.randn(IN, 3, generator=torch.Generator().manual_seed(7))
    return x, (x @ w).argmax(1)


@pytest.fixture(scope="module")
def trained():
    """A small ResMLP trained by BP on a linear teacher (3 classes)."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = resmlp(in_features=IN, num_classes=3, dim=16, depth=3)
    x, y = teacher_data(2048, gen)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for i in range(150):
        idx = torch.randint(0, 2048, (128,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model


@pytest.fixture(scope="module")
def big_eval():
    return teacher_data(20000, torch.Generator().manual_seed(1))


def proto(model, data, **kw):
    kw.setdefault("rho_directions", 0)
    return FAProtocol(model, data, **kw)


def test_healthy_bp_model_passes(trained, big_eval):
    p = proto(trained, big_eval, rho_directions=4)
    acc = p.run()["test_acc"]
    assert acc > 0.9
    r = p.run(baselines={"frozen_matched": [acc - 0.2] * 3, "frozen_seed": acc - 0.2},
              seed_accs=[acc, acc - 0.002, acc + 0.002])
    assert r["verdict"] == "PASS"
    assert r["verdicts"] == {"seed": {"any": "PASS", "readme": "PASS"}, "corrected": {"any": "PASS", "readme": "PASS"}}
    cr = r["credit"]
    assert all(abs(c["mean"] - 1) < 1e-6 for c in cr["cosine"])  # BP's own signal is the reference
    assert all(rho > 0.99 for rho in cr["rho"]) and all(n["mean_delta"] < 0 for n in cr["nudging"])
    json.dumps(r)  # the report is plain JSON
    text = p.summary()
    assert "rule 'any'" in text and "rule 'readme'" in text and "PASS" in text


def test_missing_baseline_is_incomplete(trained, big_eval):
    r = proto(trained, big_eval).run()
    assert r["verdict"] == "INCOMPLETE"
    assert r["verdicts"]["seed"]["any"] == "INCOMPLETE"  # never PASS without D3
    assert r["diagnostics"]["D3_depth_utility"]["fires"] is None
    assert r["diagnostics"]["D3_depth_utility"]["corrected"]["status"] is None
    assert "INCOMPLETE" in format_report(r)


def exploding(trained, blocks=(0, 1, 2), factor=100.0):
    """Each chosen block's branch scaled so that the stream grows by about ``factor`` there."""
    model = resmlp(in_features=IN, num_classes=3, dim=16, depth=3)
    model.load_state_dict(trained.state_dict())
    x = torch.randn(256, IN, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for l in blocks:
            h = model(x, return_hidden=True)[1][l]
            f = model.blocks[l](h)
            s = factor * h.norm(dim=1).median() / f.norm(dim=1).median()
            model.blocks[l].fc2.weight.mul_(s)
            model.blocks[l].fc2.bias.mul_(s)
    return model


def test_exploding_residuals_fire_d1_and_the_seed_d2(trained, big_eval):
    model = exploding(trained)  # ~1e6 overall: terminal LN makes |g_L| ~ 1/|h_L| fall below 1e-7
    r = proto(model, big_eval).run(baselines={"frozen_matched": 0.3, "frozen_seed": 0.3},
                                   seed_accs=[0.9, 0.9, 0.9])
    d1, d2 = r["diagnostics"]["D1_scale_growth"], r["diagnostics"]["D2_ref_validity"]
    assert d1["fires"] and d1["corrected"]["fires"] and d1["max_growth"] > 50
    assert all(g > 50 for g in d1["corrected"]["per_block_growth"])
    assert d2["fires"] and d2["g_L"] < 1e-7  # the seed's definition fires ...
    assert not d2["corrected"]["fires"]      # ... but the reference is perfectly valid
    healthy = proto(trained, big_eval).run()["diagnostics"]["D2_ref_validity"]["corrected"]
    assert d2["corrected"]["g_L_times_h_L"] == pytest.approx(healthy["g_L_times_h_L"], rel=0.5)
    assert r["verdicts"]["seed"] == {"any": "FAIL(D1+D2)", "readme": "FAIL(D1+D2)"}
    assert r["verdicts"]["corrected"]["any"] == "FAIL(D1)"
    assert r["verdicts"]["corrected"]["readme"] == "PASS"


def test_d1_alone_passes_readme_and_fails_any(trained, big_eval):
    model = exploding(trained, blocks=(1,), factor=100.0)
    r = proto(model, big_eval).run(baselines={"frozen_matched": [0.3] * 3, "frozen_seed": 0.3},
                                   seed_accs=[0.9, 0.9, 0.9])
    d1, d2 = r["diagnostics"]["D1_scale_growth"], r["diagnostics"]["D2_ref_validity"]
    assert d1["fires"] and not d2["fires"]
    assert r["verdicts"]["seed"] == {"any": "FAIL(D1)", "readme": "PASS"}
    assert r["verdicts"]["corrected"] == {"any": "FAIL(D1)", "readme": "PASS"}
    strict = proto(model, big_eval, verdict_rule="any").run(baselines={"frozen_matched": 0.3},
                                                            seed_accs=[0.9, 0.9, 0.9])
    assert strict["verdict"] == "FAIL(D1)"


def test_non_finite_gradient_fires_corrected_d2(trained, big_eval):
    def loss_fn(logits, y, reduction):  # finite loss, infinite gradient
        u = (logits - logits.detach()).abs().sqrt()
        return u.sum() if reduction == "sum" else (u.mean() if reduction == "mean" else u.sum(1))

    r = proto(trained, big_eval, loss_fn=loss_fn).run(baselines={"frozen_matched": 0.3})
    c = r["diagnostics"]["D2_ref_validity"]["corrected"]
    assert c["fires"] and not c["finite"] and "non-finite BP gradient" in c["reasons"]


class _WrongBackward(torch.autograd.Function):
    """A 'feedback layer' that ignores bp_mode: forward x Wᵀ, backward through a fixed random matrix."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, b)
        return x @ w.t()

    @staticmethod
    def backward(ctx, g):
        x, b = ctx.saved_tensors
        return g @ b, g.t() @ x, None


class _FALin(nn.Linear):
    def __init__(self, lin):
        super().__init__(lin.in_features, lin.out_features, dtype=lin.weight.dtype)
        self.load_state_dict(lin.state_dict())
        self.register_buffer("B", torch.randn(lin.weight.shape, generator=torch.Generator().manual_seed(5)))

    def forward(self, x):
        return _WrongBackward.apply(x, self.weight, self.B.to(x.dtype)) + self.bias


def test_reference_not_matching_the_forward_fires_corrected_d2(trained, big_eval):
    model = resmlp(in_features=IN, num_classes=3, dim=16, depth=3)
    model.load_state_dict(trained.state_dict())
    model.blocks[0].fc1 = _FALin(model.blocks[0].fc1)
    c = proto(model, big_eval).run()["diagnostics"]["D2_ref_validity"]["corrected"]
    assert c["fires"] and not c["finite_difference"]["ok"]
    assert any("finite differences" in reason for reason in c["reasons"])


@pytest.mark.parametrize("delta,seeds,status", [
    (0.01, 3, "fires"),          # acc = frozen + 1 pp, tight interval
    (0.05, 3, "passes"),         # + 5 pp, tight interval
    (0.02, 3, "inconclusive"),   # the interval straddles the 2 pp margin
    (0.05, 1, "inconclusive"),   # too few seeds to pass
    (-0.05, 1, "fires"),         # ... but enough to fail
])
def test_d3_interval(trained, big_eval, delta, seeds, status):
    base = 0.8
    accs = [base + delta + e for e in (0.0, 0.001, -0.001)[:seeds]]
    r = proto(trained, big_eval).run(baselines={"frozen_matched": [base] * seeds}, seed_accs=accs)
    c = r["diagnostics"]["D3_depth_utility"]["corrected"]
    assert c["status"] == status, c
    assert c["ci"][0] <= c["margin"] <= c["ci"][1]
    verdict = {"fires": "FAIL(D3)", "passes": "PASS", "inconclusive": "INCONCLUSIVE"}[status]
    assert r["verdicts"]["corrected"]["readme"] == verdict


def test_model_equal_to_its_frozen_baseline_fires_d3(trained, big_eval):
    p = proto(trained, big_eval)
    acc = p.run()["test_acc"]
    r = p.run(baselines={"frozen_matched": [acc] * 3, "frozen_seed": acc}, seed_accs=[acc] * 3)
    assert r["diagnostics"]["D3_depth_utility"]["fires"]
    assert r["diagnostics"]["D3_depth_utility"]["corrected"]["status"] == "fires"
    assert r["verdict"] == "FAIL(D3)" and r["verdicts"]["seed"]["readme"] == "FAIL(D3)"


def test_mode_restored_and_original_api(trained, big_eval):
    trained.train()
    r = proto(trained, big_eval).run(frozen_baseline_acc=0.5)
    assert trained.training
    assert r["diagnostics"]["D3_depth_utility"]["frozen_baseline_acc"] == 0.5
    trained.eval()
    proto(trained, big_eval).run()
    assert not trained.training


def test_eval_data_forms(trained, big_eval):
    x, y = big_eval[0][:600], big_eval[1][:600]
    a = proto(trained, (x, y)).run()
    b = proto(trained, [(x[:300], y[:300]), (x[300:], y[300:])]).run()
    assert a["test_acc"] == b["test_acc"] and a["n_test"] == 600


def test_combine_verdict_table():
    assert combine_verdict(True, True, "passes", "readme") == "FAIL(D1+D2)"
    assert combine_verdict(True, False, "passes", "readme") == "PASS"
    assert combine_verdict(True, False, "passes", "any") == "FAIL(D1)"
    assert combine_verdict(False, True, None, "readme") == "INCOMPLETE"
    assert combine_verdict(False, True, None, "any") == "FAIL(D2)"
    assert combine_verdict(False, False, "inconclusive", "any") == "INCONCLUSIVE"
    assert combine_verdict(True, True, "fires", "any") == "FAIL(D1+D2+D3)"


def test_bad_inputs(trained, big_eval):
    with pytest.raises(TypeError, match="credit-assignment protocol"):
        FAProtocol(nn.Linear(3, 3), big_eval)
    with pytest.raises(ValueError, match="verdict_rule must be one of"):
        FAProtocol(trained, big_eval, verdict_rule="majority")
    with pytest.raises(ValueError, match="d1_threshold must be a positive"):
        FAProtocol(trained, big_eval, d1_threshold=0)
    with pytest.raises(ValueError, match="rho_directions"):
        FAProtocol(trained, big_eval, rho_directions=1)
    with pytest.raises(ValueError, match="eval_data must be"):
        FAProtocol(trained, 42)
    with pytest.raises(ValueError, match="as many labels"):
        FAProtocol(trained, (big_eval[0][:5], big_eval[1][:4]))
    p = proto(trained, (big_eval[0][:300], big_eval[1][:300]))
    with pytest.raises(ValueError, match="unknown baseline"):
        p.run(baselines={"frozen": 0.3})
    with pytest.raises(ValueError, match=r"accuracies in \[0, 1\]"):
        p.run(baselines={"frozen_matched": 35.0})
    with pytest.raises(ValueError, match="one per seed"):
        p.run(baselines={"frozen_matched": [0.3, 0.3]}, seed_accs=[0.5, 0.5, 0.5])
    with pytest.raises(RuntimeError, match="call run"):
        proto(trained, big_eval).summary()


def test_judge_a_stored_report(trained, big_eval):
    """measure() once, store as JSON, add baselines later: the same report as run() with the baselines."""
    from tractable.feedback.protocol import judge

    p = proto(trained, big_eval)
    stored = json.loads(json.dumps(p.measure()))
    assert stored["verdict"] == "INCOMPLETE"
    kw = dict(baselines={"frozen_matched": [0.5] * 3, "shallow": 0.4}, seed_accs=[0.9, 0.91, 0.92])
    later = judge(stored, **kw)
    direct = json.loads(json.dumps(p.run(**kw)))
    assert later == direct
    assert judge(stored, verdict_rule="any")["verdict_rule"] == "any"
    bp = judge(stored, bp_report=direct)
    assert bp["diagnostics"]["D1_scale_growth"]["corrected"]["growth_over_bp"] == pytest.approx(1.0)


@pytest.mark.parametrize("head_only,status", [
    (0.90, "fires"),          # clearly below head-only (paired interval below 0): D3 fires
    (0.853, "inconclusive"),  # below head-only on average only: cannot pass
    (0.70, "passes"),         # above every cheap baseline: the matched comparison decides
])
def test_a_method_below_a_cheap_baseline_cannot_pass(trained, big_eval, head_only, status):
    """The seed-FA case of the quick audit: far above its matched baseline, below head-only."""
    accs = [0.85, 0.851, 0.849]
    heads = [head_only + e for e in (0.0, 0.004, -0.003)]
    r = proto(trained, big_eval).run(baselines={"frozen_matched": [0.60, 0.61, 0.59], "head_only": heads,
                                                "frozen_seed": [0.5] * 3, "shallow": [0.5] * 3},
                                     seed_accs=accs)
    c = r["diagnostics"]["D3_depth_utility"]["corrected"]
    assert c["status"] == status, c
    assert c["other_baselines"]["head_only"]["margin"] == pytest.approx(sum(accs) / 3 - sum(heads) / 3)
    assert r["verdicts"]["corrected"]["readme"] != "PASS" or status == "passes"


def test_d3_interval_is_the_paired_t_interval_over_seeds(trained, big_eval):
    accs, base = [0.80, 0.83, 0.81], [0.70, 0.72, 0.70]
    r = proto(trained, big_eval).run(baselines={"frozen_matched": base}, seed_accs=accs)
    c = r["diagnostics"]["D3_depth_utility"]["corrected"]
    d = [a - b for a, b in zip(accs, base)]
    m = sum(d) / 3
    sd = (sum((x - m) ** 2 for x in d) / 2) ** 0.5
    half = 4.303 * sd / 3 ** 0.5  # t(0.975, df 2)
    assert c["ci"] == pytest.approx([m - half, m + half])
    assert c["interval"] == "paired t over seeds"


def test_shallow_baselines_depend_on_the_input():
    from tractable.models import create_model

    for name, shape in (("vit_mini", (4, 3, 8, 8)), ("resmlp", (4, 3, 8, 8)), ("small_resnet_credit", (4, 3, 8, 8))):
        torch.manual_seed(0)
        kw = {"image_size": 8, "depth": 0}
        if name == "vit_mini":
            kw.update(dim=16, heads=2)
        m = create_model(name, **kw).eval()
        x = torch.randn(*shape)
        out = m(x)
        assert not torch.allclose(out[0], out[1]), name  # logits change with the input


def test_rho_uses_32_directions_by_default(trained, big_eval):
    assert FAProtocol(trained, big_eval).rho_directions == 32
