"""T6/T9/T14/T15: forms, limits, Lemma 2, the solver's fallback, gradcheck, double backward, training."""
import copy
import pathlib
import re

import pytest
import torch
import torch.nn as nn

import tractable
from tests.tract._reference import conv_rows, reference


def _wgrad(layer, x, R):
    layer.weight.grad = None
    (layer(x) * R).sum().backward()
    return layer.weight.grad


@pytest.mark.parametrize("make,shape", [
    (lambda: nn.Linear(20, 6), (5, 20)),  # b = 5 < n = 20
    (lambda: nn.Conv2d(3, 8, 16, stride=16), (1, 3, 32, 32)),  # patch-16 embedding at B = 1: b = 4 < n = 768
], ids=["linear_b5_n20", "patch16_B1"])
def test_bxb_and_nxn_forms_agree_and_match_the_reference(make, shape):
    torch.manual_seed(0)
    base = make().double()
    x = torch.randn(*shape, dtype=torch.float64)
    R = torch.randn_like(base(x))
    grads = {}
    for form in ("nxn", "bxb", "auto"):
        grads[form] = _wgrad(tractable.TrAct(copy.deepcopy(base), l=0.1, form=form), x, R)
    ref = reference(base, x, R, 0.1)[2]
    for form, g in grads.items():
        assert ((g - ref).norm() / ref.norm()).item() < 1e-10, form
    assert ((grads["bxb"] - grads["nxn"]).norm() / grads["nxn"].norm()).item() < 1e-10


def test_bxb_form_in_float32_is_close():
    torch.manual_seed(0)
    base = nn.Linear(64, 8)
    x = torch.randn(6, 64)
    R = torch.randn(6, 8)
    g = _wgrad(tractable.TrAct(copy.deepcopy(base), form="bxb"), x, R)
    ref = reference(base, x, R, 0.1)[2].float()
    assert ((g - ref).norm() / ref.norm()).item() < 1e-4


def test_large_lambda_recovers_the_plain_gradient_scaled():
    torch.manual_seed(0)
    base = nn.Conv2d(3, 4, 3, padding=1).double()
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    R = torch.randn(4, 4, 6, 6, dtype=torch.float64)
    plain = _wgrad(copy.deepcopy(base), x, R)
    lam = 1e8
    tr = _wgrad(tractable.TrAct(copy.deepcopy(base), l=lam), x, R)
    assert ((lam * tr - plain).norm() / plain.norm()).item() < 1e-6


def test_plain_gradients_switch_is_bitwise_plain():
    torch.manual_seed(0)
    base = nn.Conv2d(3, 4, 3)
    x = torch.randn(2, 3, 6, 6)
    R = torch.randn(2, 4, 4, 4)
    plain = _wgrad(copy.deepcopy(base), x, R)
    m = tractable.TrAct(copy.deepcopy(base))
    with tractable.plain_gradients():
        assert torch.equal(_wgrad(m, x, R), plain)
    with tractable.plain_gradients(m):
        assert torch.equal(_wgrad(m, x, R), plain)
    assert not m.tract_plain_grad
    m.tract_plain_grad = True
    assert torch.equal(_wgrad(m, x, R), plain)
    m.tract_plain_grad = False
    assert not torch.allclose(_wgrad(m, x, R), plain)


def test_lemma2_preconditioned_grad_times_K_is_the_plain_grad():
    torch.manual_seed(0)
    base = nn.Conv2d(2, 3, 3, padding=1, groups=1).double()
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    R = torch.randn(3, 3, 5, 5, dtype=torch.float64)
    lam = 0.1
    tr = _wgrad(tractable.TrAct(copy.deepcopy(base), l=lam), x, R).reshape(3, -1)
    plain = _wgrad(copy.deepcopy(base), x, R).reshape(3, -1)
    X, _ = conv_rows(base, x)
    K = X.T @ X / X.shape[0] + lam * torch.eye(18, dtype=torch.float64)
    torch.testing.assert_close(tr @ K, plain, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("batch,form", [(4, "nxn"), (4, "auto"), (64, "nxn"), (64, "auto")],
                         ids=["b64<n_nxn", "b64<n_bxb", "b1024>n_nxn", "b1024>n_auto"])
def test_ill_conditioned_0_255_inputs_stay_finite_and_accurate(batch, form):
    """Raw [0, 255] pixels, n = 768, λ = 1e-3: cond(K) far beyond 1/ε_fp32.

    The preconditioning itself must be accurate: it is compared with P applied in float64 to the layer's own
    float32 plain gradient. With b ≥ n the result must also match the all-float64 reference. (With b < n,
    P amplifies the plain gradient's own float32 rounding by up to 1/λ in the null space of X; no
    float32 layer can avoid that, so there the all-float64 comparison is not meaningful.)
    """
    torch.manual_seed(0)
    base = nn.Conv2d(3, 8, 16, stride=16)  # n = 768
    x = (torch.rand(batch, 3, 64, 64) * 255).round()
    R = torch.randn(batch, 8, 4, 4)
    lam = 1e-3
    layer = tractable.TrAct(copy.deepcopy(base), l=lam, form=form)
    with pytest.warns(UserWarning, match="standardised"):
        g = _wgrad(layer, x, R)
    with tractable.plain_gradients():
        plain32 = _wgrad(layer, x, R).double().reshape(8, -1)
    X, _ = conv_rows(base, x)
    K = X.T @ X / X.shape[0] + lam * torch.eye(768, dtype=torch.float64)
    want = torch.linalg.solve(K, plain32.T).T.reshape(g.shape)
    assert torch.isfinite(g).all()
    assert ((g.double() - want).norm() / want.norm()).item() < 1e-4
    if X.shape[0] >= 768:
        ref = reference(base.double(), x.double(), R.double(), lam)[2]
        assert ((g.double() - ref).norm() / ref.norm()).item() < 1e-3


@pytest.mark.parametrize("shape", [(1, 3, 8, 8), (4, 3, 8, 8)], ids=["batch1", "batch4"])
def test_rank_deficient_batches_give_finite_gradients(shape):
    base = nn.Conv2d(3, 4, 3, padding=1)
    x = torch.ones(*shape)  # one constant image (or several identical): XᵀX has rank ≤ 2
    g = _wgrad(tractable.TrAct(copy.deepcopy(base), l=0.05), x, torch.randn(shape[0], 4, 8, 8))
    assert torch.isfinite(g).all()


def test_nan_input_propagates_like_the_plain_gradient():
    base = nn.Linear(4, 3)
    x = torch.randn(5, 4)
    x[2, 1] = float("nan")
    R = torch.randn(5, 3)
    plain = _wgrad(copy.deepcopy(base), x, R)
    g = _wgrad(tractable.TrAct(copy.deepcopy(base)), x, R)
    assert torch.isnan(plain).any() and torch.isnan(g).any()


def test_source_never_forms_an_explicit_inverse():
    src = pathlib.Path(tractable.tract.__file__).parent
    for path in src.glob("*.py"):
        text = path.read_text()
        assert not re.search(r"\b(inverse|linalg\.inv|cholesky_inverse|pinv)\s*\(", text), path.name


def test_gradcheck_input_path_and_debug_mode():
    torch.manual_seed(0)
    layer = tractable.TrAct(nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect").double())
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    layer.weight.requires_grad_(False)
    assert torch.autograd.gradcheck(layer, (x,))
    layer.weight.requires_grad_(True)
    with tractable.plain_gradients():
        w = layer.weight
        assert torch.autograd.gradcheck(lambda x, w: layer._conv_forward(x, w, layer.bias), (x, w))


def test_weight_grad_is_linear_in_the_output_gradient():
    torch.manual_seed(0)
    layer = tractable.TrAct(nn.Conv1d(2, 3, 3).double())
    x = torch.randn(4, 2, 9, dtype=torch.float64)
    out = layer(x)
    G1, G2 = torch.randn_like(out), torch.randn_like(out)
    g1, = torch.autograd.grad(out, layer.weight, G1, retain_graph=True)
    g2, = torch.autograd.grad(out, layer.weight, G2, retain_graph=True)
    g12, = torch.autograd.grad(out, layer.weight, 2.0 * G1 - 3.0 * G2)
    torch.testing.assert_close(g12, 2.0 * g1 - 3.0 * g2, rtol=1e-10, atol=1e-12)


def test_double_backward_through_the_weight_path_works():
    torch.manual_seed(0)
    layer = tractable.TrAct(nn.Linear(4, 3).double())
    x = torch.randn(6, 4, dtype=torch.float64)
    g, = torch.autograd.grad(layer(x).square().sum(), layer.weight, create_graph=True)
    g.square().sum().backward()
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()


def _train(model, x, y, steps, lr, tract_lr=None):
    groups = [{"params": [p for n, p in model.named_parameters() if n != "0.weight"], "lr": lr},
              {"params": [model[0].weight], "lr": tract_lr or lr}]
    opt = torch.optim.SGD(groups, lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _stem_net(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(32, 4)).to(dtype)


def test_training_with_a_tract_stem_reduces_the_loss():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 3, 8, 8, generator=g)
    y = (x[:, 0, :4].mean((1, 2)) > 0).long() * 2 + (x[:, 1, :, :4].mean((1, 2)) > 0).long()  # learnable
    model = _stem_net()
    tractable.TrAct(model[0], l=0.1)
    losses = _train(model, x, y, 50, 0.5)
    assert losses[-1] < 0.6 * losses[0]


def test_huge_lambda_with_lr_times_lambda_tracks_plain_training():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, 6, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (16,), generator=g)
    plain = _stem_net(torch.float64)
    tr = copy.deepcopy(plain)
    lam = 1e6
    tractable.TrAct(tr[0], l=lam)
    lp = _train(plain, x, y, 20, 0.05)
    lt = _train(tr, x, y, 20, 0.05, tract_lr=0.05 * lam)
    assert max(abs(a - b) for a, b in zip(lp, lt)) < 1e-4
    for a, b in zip(plain.parameters(), tr.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
