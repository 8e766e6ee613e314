"""FA on a TrAct'd network: the first layer's weight gradient is TrAct applied to the FA signal.

Math: FA changes only input gradients (g_x = g B); TrAct changes only the first layer's weight gradient
(GᵀX ↦ GᵀX (XᵀX/b + λI)⁻¹). Composed, the first layer gets ((g₂B₂) ⊙ f′(a₁))ᵀ X · (XᵀX/b + λI)⁻¹, where g₂B₂
is the FA signal at its output, and every other layer its FA gradient. With B := W this is TrAct on BP.
"""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

import tractable
import tractable.feedback as fb


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def _grads(net, x, y):
    net.zero_grad()
    F.cross_entropy(net(x), y).backward()
    return [p.grad.clone() for p in net.parameters()]


def test_fa_on_a_tract_first_layer_closed_form(gen):
    lam = 0.1
    net = _net()
    tractable.TrAct(net[0], l=lam)
    fb.convert(net, "fa", seed=1)
    assert tractable.is_tract(net[0]) and fb.is_fa_layer(net[0]) and fb.is_fa_layer(net[2])
    x = torch.randn(10, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (10,), generator=gen)
    gw1, gb1, gw2, gb2 = _grads(net, x, y)
    W1, b1, W2, b2 = [p.detach() for p in net.parameters()]
    a1 = x @ W1.T + b1
    h1 = torch.tanh(a1)
    logits = h1 @ W2.T + b2
    e = (torch.softmax(logits, -1) - F.one_hot(y, 3)) / x.shape[0]
    G1 = (e @ net[2].feedback) * (1 - h1 ** 2)  # FA signal through the activation
    P = torch.linalg.inv(x.T @ x / x.shape[0] + lam * torch.eye(6, dtype=torch.float64))
    torch.testing.assert_close(gw1, G1.T @ x @ P)
    torch.testing.assert_close(gb1, G1.sum(0))
    torch.testing.assert_close(gw2, e.T @ h1)


def test_fa_with_b_equal_w_on_tract_is_tract_on_backprop(gen):
    ref = _net()
    tractable.TrAct(ref[0], l=0.1)
    net = copy.deepcopy(ref)
    fb.convert(net, "fa", seed=1)
    with torch.no_grad():
        for m in (net[0], net[2]):
            m.feedback.copy_(m.weight)
    x = torch.randn(10, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (10,), generator=gen)
    for a, b in zip(_grads(net, x, y), _grads(ref, x, y)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_tract_after_fa_equals_fa_after_tract_and_is_not_backprop(gen):
    """TrAct∘FA and FA∘TrAct on the same layers: identical gradients, different from TrAct on BP."""
    a = _net()
    tractable.TrAct(a[0], l=0.1)
    tractable.TrAct(a[2], l=0.1)
    fb.convert(a, "fa", seed=1)
    b = _net()
    fb.convert(b, "fa", seed=1)
    tractable.TrAct(b[0], l=0.1)
    tractable.TrAct(b[2], l=0.1)
    bp = _net()
    tractable.TrAct(bp[0], l=0.1)
    tractable.TrAct(bp[2], l=0.1)
    assert all(fb.is_fa_layer(m) and tractable.is_tract(m) for m in (a[0], a[2], b[0], b[2]))
    x = torch.randn(10, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (10,), generator=gen)
    ga, gb, gbp = _grads(a, x, y), _grads(b, x, y), _grads(bp, x, y)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(ga[0], gbp[0])  # the first layer's gradient carries FA's signal, not BP's
    # the closed form: TrAct's preconditioner on the FA signal, last layer's input Gram for its weight
    W1, b1, W2, b2 = [p.detach() for p in a.parameters()]
    h1 = torch.tanh(x @ W1.T + b1)
    e = (torch.softmax(h1 @ W2.T + b2, -1) - F.one_hot(y, 3)) / x.shape[0]
    G1 = (e @ a[2].feedback) * (1 - h1 ** 2)
    P1 = torch.linalg.inv(x.T @ x / x.shape[0] + 0.1 * torch.eye(6, dtype=torch.float64))
    P2 = torch.linalg.inv(h1.T @ h1 / x.shape[0] + 0.1 * torch.eye(8, dtype=torch.float64))
    torch.testing.assert_close(ga[0], G1.T @ x @ P1)
    torch.testing.assert_close(ga[2], e.T @ h1 @ P2)


def test_tract_after_fa_conv_keeps_fa_input_gradient(gen):
    conv = nn.Conv2d(2, 3, 3, padding=1).double()
    net = nn.Sequential(conv)
    fb.convert(net, "fa", seed=0)
    tractable.TrAct(conv, l=0.1)
    x = torch.randn(2, 2, 5, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, 5, 5, generator=gen, dtype=torch.float64)
    net(x).backward(g)
    ref = torch.nn.grad.conv2d_input(x.shape, conv.feedback, g, padding=1)
    torch.testing.assert_close(x.grad, ref)
