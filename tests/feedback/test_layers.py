"""Layer-level FA, sign symmetry and Kolen-Pollack against closed forms and autograd references (float64)."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tractable.feedback as fb


def _grads(module, x, g):
    x = x.clone().requires_grad_(True)
    out = module(x)
    out.backward(g)
    return x.grad, {n: p.grad.clone() for n, p in module.named_parameters()}


@pytest.mark.parametrize("shape", [(5, 7), (3, 4, 7), (2, 3, 4, 7)])
def test_falinear_with_b_equal_w_is_backprop(shape, gen):
    lin = nn.Linear(7, 6).double()
    ref = copy.deepcopy(lin)
    fb.convert(nn.Sequential(lin), "fa", seed=0)
    with torch.no_grad():
        lin.feedback.copy_(lin.weight)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    g = torch.randn(shape[:-1] + (6,), generator=gen, dtype=torch.float64)
    gx, gp = _grads(lin, x, g)
    rx, rp = _grads(ref, x, g)
    torch.testing.assert_close(gx, rx, rtol=1e-13, atol=1e-13)
    for n in rp:
        torch.testing.assert_close(gp[n], rp[n], rtol=1e-13, atol=1e-13)


def test_falinear_closed_form_random_b(gen):
    lin = fb.FALinear(7, 5, seed=3, name="l").double()
    x = torch.randn(4, 3, 7, generator=gen, dtype=torch.float64)
    g = torch.randn(4, 3, 5, generator=gen, dtype=torch.float64)
    gx, gp = _grads(lin, x, g)
    B, W = lin.feedback, lin.weight
    assert not torch.equal(B, W.detach())
    torch.testing.assert_close(gx, g @ B)                                     # g_x = g B
    torch.testing.assert_close(gp["weight"], g.reshape(-1, 5).T @ x.reshape(-1, 7))  # exact g_W
    torch.testing.assert_close(gp["bias"], g.sum((0, 1)))
    assert "feedback" in lin.state_dict() and all(n != "feedback" for n, _ in lin.named_parameters())


CONVS = [
    (nn.Conv1d, dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1), (2, 4, 11)),
    (nn.Conv2d, dict(in_channels=4, out_channels=6, kernel_size=3, padding=1), (2, 4, 7, 6)),
    (nn.Conv2d, dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=(2, 1), dilation=(1, 2),
                     groups=2, bias=False), (2, 4, 9, 8)),
    (nn.Conv2d, dict(in_channels=4, out_channels=4, kernel_size=4, padding="same"), (2, 4, 7, 7)),
    (nn.Conv2d, dict(in_channels=4, out_channels=6, kernel_size=3, padding=2, padding_mode="reflect"),
     (2, 4, 6, 7)),
    (nn.Conv1d, dict(in_channels=3, out_channels=5, kernel_size=3, padding=1, padding_mode="circular"), (2, 3, 9)),
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's note on the reference conv
@pytest.mark.parametrize("cls,kw,shape", CONVS)
def test_faconv_with_b_equal_w_is_backprop(cls, kw, shape, gen):
    conv = cls(**kw).double()
    ref = copy.deepcopy(conv)
    fb.convert(nn.Sequential(conv), "fa")
    with torch.no_grad():
        conv.feedback.copy_(conv.weight)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    g = torch.randn(ref(x).shape, generator=gen, dtype=torch.float64)
    gx, gp = _grads(conv, x, g)
    rx, rp = _grads(ref, x, g)
    torch.testing.assert_close(gx, rx, rtol=1e-12, atol=1e-12)
    for n in rp:
        torch.testing.assert_close(gp[n], rp[n], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls,kw,shape", CONVS[:3])
def test_faconv_random_b_against_autograd_conv_with_b(cls, kw, shape, gen):
    conv = cls(**kw).double()
    fb.convert(nn.Sequential(conv), "fa", seed=5)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        out = conv(x)
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    gx, gp = _grads(conv, x, g)
    # reference: the input gradient of the same convolution with weight B; the weight gradient with W
    xr = x.clone().requires_grad_(True)
    conv_fn = {1: F.conv1d, 2: F.conv2d}[len(conv.kernel_size)]
    conv_fn(xr, conv.feedback, None, conv.stride, conv.padding, conv.dilation, conv.groups).backward(g)
    torch.testing.assert_close(gx, xr.grad)
    w = conv.weight.detach().clone().requires_grad_(True)
    conv_fn(x, w, None, conv.stride, conv.padding, conv.dilation, conv.groups).backward(g)
    torch.testing.assert_close(gp["weight"], w.grad)


def test_usf_frsf_use_the_sign_of_the_current_weight(gen):
    for method in ("usf", "frsf", "brsf"):
        lin = nn.Sequential(nn.Linear(6, 4).double())
        fb.convert(lin, method, seed=1)
        layer = lin[0]
        with torch.no_grad():
            layer.weight.mul_(-1.0)  # the sign pattern must follow W
        x = torch.randn(3, 6, generator=gen, dtype=torch.float64)
        g = torch.randn(3, 4, generator=gen, dtype=torch.float64)
        gx, _ = _grads(layer, x, g)
        W = layer.weight.detach()
        if method == "usf":
            B = torch.sign(W) * W.pow(2).mean().sqrt()
        else:
            B = layer.feedback.abs() * torch.sign(W)
        torch.testing.assert_close(gx, g @ B)
        assert torch.equal(torch.sign(layer.feedback_matrix()), torch.sign(W))


def test_brsf_resample_is_a_function_of_seed_name_step():
    a, b = nn.Sequential(nn.Linear(5, 5), nn.Linear(5, 2)), nn.Sequential(nn.Linear(5, 5), nn.Linear(5, 2))
    fb.convert(a, "brsf", seed=7)
    torch.manual_seed(123)  # the global RNG plays no part
    fb.convert(b, "brsf", seed=7)
    assert fb.resample_(a, 3) == 2 and fb.resample_(b, 3) == 2
    assert torch.equal(a[0].feedback, b[0].feedback) and int(a[0].feedback_step) == 3
    r3 = a[0].feedback.clone()
    fb.resample_(a, 4)
    assert not torch.equal(a[0].feedback, r3)
    fb.resample_(a, 3)
    assert torch.equal(a[0].feedback, r3)
    assert fb.verify_feedback(a) == ["0.feedback", "1.feedback"]


def test_kolen_pollack_b_gets_w_gradient_and_w_minus_b_decays(gen):
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    fb.convert(net, "kp", seed=2)
    assert isinstance(net[0].feedback, nn.Parameter)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.1)
    gap0 = [(m.weight - m.feedback).detach().clone() for m in (net[0], net[2])]
    for step in range(3):
        x = torch.randn(5, 6, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 3, (5,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        for m in (net[0], net[2]):
            torch.testing.assert_close(m.feedback.grad, m.weight.grad, rtol=0, atol=0)
        opt.step()
    # identical Adam updates for W and B; decoupled weight decay shrinks W − B by (1 − lr·wd) per step
    for m, g0 in zip((net[0], net[2]), gap0):
        torch.testing.assert_close(m.weight - m.feedback, g0 * (1 - 1e-2 * 0.1) ** 3, rtol=1e-10, atol=1e-12)


def test_inactive_outside_training_under_grad_and_in_bp_mode(gen):
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    ref = copy.deepcopy(net)
    fb.convert(net, "fa", seed=0)
    x = torch.randn(4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        assert torch.equal(net(x), ref(x))
    net.eval()
    ref.eval()
    assert torch.equal(net(x), ref(x))
    gx = torch.autograd.grad(net(x).sum(), x)[0]
    torch.testing.assert_close(gx, torch.autograd.grad(ref(x).sum(), x)[0], rtol=0, atol=0)
    net.train()
    with fb.bp_mode(net):
        gx = torch.autograd.grad(net(x).sum(), x)[0]
    torch.testing.assert_close(gx, torch.autograd.grad(ref(x).sum(), x)[0], rtol=0, atol=0)
    assert not torch.allclose(torch.autograd.grad(net(x).sum(), x)[0], gx)  # FA again after the block


def test_autocast_bfloat16_cpu(gen):
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    fb.convert(net, "fa", seed=0)
    x = torch.randn(4, 6, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
        assert out.dtype == torch.bfloat16
        out.float().sum().backward()
    for p in net.parameters():
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
    # the same step in float32 (no autocast) agrees up to the bf16 forward
    ref = copy.deepcopy(net)
    for p in ref.parameters():
        p.grad = None
    ref(x).sum().backward()
    for p, r in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, r.grad, rtol=5e-2, atol=5e-2)


def test_exclude_and_state_dict_keys_unchanged():
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    keys = set(net.state_dict())
    names = [n for n, _ in net.named_parameters()]
    fb.convert(net, "fa", seed=0, exclude=["2"])
    assert [n for n, _ in net.named_parameters()] == names
    assert set(net.state_dict()) == keys | {"0.feedback"}
    assert fb.is_fa_layer(net[0]) and not fb.is_fa_layer(net[2])
    assert isinstance(net[0], nn.Linear) and type(net[0]) is fb.FALinear
    clone = copy.deepcopy(net)
    assert type(clone[0]) is fb.FALinear and torch.equal(clone[0].feedback, net[0].feedback)
    fresh = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    fb.convert(fresh, "fa", seed=0, exclude=["2"])
    fresh.load_state_dict(net.state_dict(), strict=True)
