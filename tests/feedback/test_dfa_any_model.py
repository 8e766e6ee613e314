"""DFA on any feed-forward model (plain CNN chains with full feedback, marked points, the registry's CNNs, ViTs,
CRATE), the DFA scale rule, self-driving brSF, Kolen-Pollack's decay check, the alignment hook."""
import copy
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tractable.feedback as fb
from tractable.models import create_model


def _lenet_seq():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                         nn.Linear(84, 10)).double()


def _grads(model, x, y):
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_dfa_on_a_plain_sequential_lenet_equals_hand_written_full_feedback_dfa(gen):
    """Defaults: points at the inputs of conv2, fc1, fc2, fc3; full C·H·W feedback drawn at the first forward;
    δ at each point = e B_k reshaped to the point, through the previous ReLU and max-pool (Nøkland 2016)."""
    net = _lenet_seq()
    fb.convert(net, "dfa", seed=3)
    assert tuple(net.credit.B_1.shape) == (10, 0)  # the map's size is known only at the first forward
    x = torch.randn(5, 1, 28, 28, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (5,), generator=gen)
    grads = _grads(net, x, y)
    B = [net.credit.B_1, net.credit.B_2, net.credit.B_3, net.credit.B_4]
    assert [tuple(b.shape) for b in B] == [(10, 6 * 14 * 14), (10, 400), (10, 120), (10, 84)]
    # the readout scale rule: N(0, 0.1²/D_k), drawn from (seed, point name)
    for b, name in zip(B, ("3", "7", "9", "11")):
        ref = fb.draw(b.shape, seed=3, name=f"point.{name}", init="normal", scale=0.1, fan=b.shape[1])
        torch.testing.assert_close(b.float(), ref)
    # hand-written DFA: every stage recomputed from detached inputs, the signal injected by autograd.grad
    c1, c2, l1, l2, l3 = net[0], net[3], net[7], net[9], net[11]
    a1 = c1(x)
    p1 = F.max_pool2d(F.relu(a1), 2)
    a2 = c2(p1.detach())
    p2 = F.max_pool2d(F.relu(a2), 2).flatten(1)
    h3 = F.relu(l1(p2.detach()))
    h4 = F.relu(l2(h3.detach()))
    logits = l3(h4.detach())
    e = (torch.softmax(logits, -1) - F.one_hot(y, 10)) / x.shape[0]
    ref = {}
    for name, point, b, params in (("0", p1, B[0], c1), ("3", p2, B[1], c2), ("7", h3, B[2], l1),
                                   ("9", h4, B[3], l2)):
        sig = (e @ b).view_as(point)
        gw, gb = torch.autograd.grad(point, (params.weight, params.bias), sig)
        ref[f"{name}.weight"], ref[f"{name}.bias"] = gw, gb
    ref["11.weight"], ref["11.bias"] = e.T @ h4, e.sum(0)
    assert set(grads) == set(ref)
    for k in ref:
        torch.testing.assert_close(grads[k], ref[k], rtol=1e-10, atol=1e-12)


def test_lazy_feedback_round_trips_through_a_checkpoint_and_verifies(gen):
    net = _lenet_seq()
    fb.convert(net, "dfa", seed=1)
    x = torch.randn(2, 1, 28, 28, generator=gen, dtype=torch.float64)
    net(x).sum().backward()
    fresh = _lenet_seq()
    fb.convert(fresh, "dfa", seed=1)
    fresh.load_state_dict(net.state_dict())  # strict: the placeholder takes the saved shape
    assert torch.equal(fresh.credit.B_1, net.credit.B_1)
    assert len(fb.verify_feedback(fresh, net.state_dict())) == 4
    wrong = _lenet_seq()
    fb.convert(wrong, "dfa", seed=2)
    wrong(x).sum().backward()
    with pytest.raises(fb.FeedbackMismatch):
        fb.verify_feedback(wrong, net.state_dict())
    conv = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 2))
    fb.convert(conv, "dfa")
    conv(torch.randn(2, 1, 8, 8)).sum().backward()
    assert tuple(conv.credit.B_1.shape) == (2, 3 * 6 * 6)
    with pytest.raises(ValueError, match="per-sample shape"):  # full feedback fixes the input size
        conv(torch.randn(2, 1, 9, 9))


def _tiny(name):
    kw = {"resnet20_cifar": dict(num_classes=4, in_channels=3, image_size=8),
          "small_cnn": dict(num_classes=4, in_channels=3, image_size=8, widths=(4, 8)),
          "vit_cifar": dict(num_classes=4, in_channels=3, image_size=8, patch_size=4, hidden=16, mlp_hidden=32,
                            heads=2, depth=2),
          "vit_small_open": dict(num_classes=4, in_channels=3, image_size=8, patch_size=4, hidden=16, depth=2,
                                 heads=2, head_hidden=8),
          "crate": dict(num_classes=4, in_channels=3, image_size=8, patch_size=4, dim=16, depth=2, heads=2),
          "lenet": dict(num_classes=4, in_channels=3, image_size=28),
          "cnn1d": dict(num_classes=4, in_channels=1, input_size=40, channels=8)}[name]
    return create_model(name, **kw)


@pytest.mark.parametrize("name", ["resnet20_cifar", "small_cnn", "vit_cifar", "vit_small_open", "crate", "lenet",
                                  "cnn1d"])
def test_dfa_trains_the_registry_models(name, gen):
    torch.manual_seed(0)
    model = _tiny(name)
    fb.convert(model, "dfa", seed=0)
    shape = (8, 1, 40) if name == "cnn1d" else (8, 3, 28, 28) if name == "lenet" else (8, 3, 8, 8)
    x = torch.randn(*shape, generator=gen)
    y = torch.arange(8) % 4
    opt = torch.optim.Adam(model.parameters(), lr=2e-3 if name == "lenet" else 1e-2)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        losses.append(float(loss.detach()))
        opt.step()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert all(l == l for l in losses) and losses[-1] < 0.95 * losses[0]
    # the points' signals are DFA's, not BP's: the first point's layer gradient differs from backprop
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    first = next(p for p in model.parameters() if p.dim() > 1)
    g_dfa = first.grad.clone()
    model.zero_grad()
    with fb.bp_mode(model):
        F.cross_entropy(model(x), y).backward()
    assert not torch.allclose(g_dfa, first.grad)


def test_marked_points_on_a_user_model_and_errors():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Sequential(nn.Linear(6, 8), nn.Tanh())
            self.b = nn.Sequential(nn.Linear(8, 8), nn.Tanh())
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.b(self.a(x)))

    with pytest.raises(ValueError, match="needs feedback points"):
        fb.convert(Net(), "dfa")
    with pytest.raises(ValueError, match="points must name submodules"):
        fb.convert(Net(), "dfa", points=["nope"])
    net = fb.convert(Net().double(), "dfa", points=["a", "b"], seed=0)
    x = torch.randn(4, 6, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0])
    g = _grads(net, x, y)
    h1 = net.a(x)
    h2 = net.b(h1.detach())
    e = (torch.softmax(net.head(h2), -1) - F.one_hot(y, 3)) / 4
    ref = torch.autograd.grad(h2, net.b[0].weight, e @ net.credit.B_2)[0]
    torch.testing.assert_close(g["b.0.weight"], ref)
    torch.testing.assert_close(g["head.weight"], e.T @ h2)

    class Shared(Net):
        def forward(self, x):
            return self.head(self.a[1](self.b(self.a(x))))  # a.1 runs twice

    with pytest.raises(RuntimeError, match="ran twice"):
        fb.convert(Shared(), "dfa", points=["a.1"])(torch.randn(2, 6)).sum()


def test_dfa_default_scale_rule_and_seed_compat():
    o = fb.resolve_options("dfa")
    assert (o.feedback_init, o.feedback_scale) == ("readout", 0.1)
    s = fb.resolve_options("dfa", compat="seed")
    assert (s.feedback_init, s.feedback_scale, s.conv_feedback) == ("normal", 1.0, "channel_broadcast")
    assert fb.resolve_options("dfa", feedback_scale=1.0).feedback_scale == 1.0
    assert fb.resolve_options("fa", granularity="block").feedback_init == "match_branch"


# ------------------------------------------------------------------------------------------------ brSF
def _brsf_net():
    torch.manual_seed(0)
    return fb.convert(nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)), "brsf", seed=3)


def _brsf_train(net, steps, x, y, accum=2):
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    seen = []
    for _ in range(steps):
        opt.zero_grad()
        for mb in torch.arange(len(x)).chunk(accum):
            F.cross_entropy(net(x[mb]), y[mb]).backward()
            seen.append(net[2].feedback.clone())
        opt.step()
    return seen, opt


def test_brsf_redraws_once_per_step_without_resample_and_is_reproducible(gen):
    x = torch.randn(8, 5, generator=gen)
    y = torch.randint(0, 3, (8,), generator=gen)
    a, _ = _brsf_train(_brsf_net(), 4, x, y)
    b, _ = _brsf_train(_brsf_net(), 4, x, y)
    assert all(torch.equal(u, v) for u, v in zip(a, b))  # reproducible
    assert all(torch.equal(a[2 * t], a[2 * t + 1]) for t in range(4))  # both micro-batches of a step share R
    assert not any(torch.equal(a[2 * t], a[2 * t + 2]) for t in range(3))  # a new R every step
    net = _brsf_net()
    _brsf_train(net, 4, x, y)
    assert int(net[2].feedback_step) == 3
    R = fb.draw((3, 6), seed=3, name="2", init="kaiming_uniform", fan=6, step=3)
    torch.testing.assert_close(net[2].feedback, R)  # R_t from (seed, name, t)
    with torch.no_grad():  # evaluation never advances the counter
        net.eval()
        net(x)
    assert int(net[2].feedback_step) == 3


def test_brsf_resume_from_a_checkpoint_continues_the_sequence(gen):
    x = torch.randn(8, 5, generator=gen)
    y = torch.randint(0, 3, (8,), generator=gen)
    full, _ = _brsf_train(_brsf_net(), 5, x, y)
    first = _brsf_net()
    _, opt = _brsf_train(first, 2, x, y)
    state, ostate = copy.deepcopy(first.state_dict()), copy.deepcopy(opt.state_dict())
    resumed = _brsf_net()
    resumed.load_state_dict(state)
    opt2 = torch.optim.SGD(resumed.parameters(), lr=0.1)
    opt2.load_state_dict(ostate)
    rest = []
    for _ in range(3):
        opt2.zero_grad()
        for mb in torch.arange(8).chunk(2):
            F.cross_entropy(resumed(x[mb]), y[mb]).backward()
            rest.append(resumed[2].feedback.clone())
        opt2.step()
    assert all(torch.equal(u, v) for u, v in zip(full[4:], rest))


# ------------------------------------------------------------------------------------------------ KP
def test_kp_warns_without_decay_and_aligns_with_it(gen):
    net = fb.convert(nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)), "kp", seed=0)
    with pytest.warns(UserWarning, match="W − B stays constant"):
        fb.check_kp_decay(torch.optim.SGD(net.parameters(), lr=0.1), net)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fb.check_kp_decay(torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=1e-2), net) == []
    x = torch.randn(16, 5, generator=gen)
    y = torch.randint(0, 3, (16,), generator=gen)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=0.05)
    d0 = float((net[2].weight - net[2].feedback).norm())
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    d1 = float((net[2].weight - net[2].feedback).norm())
    assert d1 == pytest.approx(d0 * (1 - 0.1 * 0.05) ** 20, rel=1e-4)


# ------------------------------------------------------------------------------------------------ hook
def test_alignment_hook_angles_are_zero_for_b_equal_w_and_large_for_random_b(gen):
    from tractable.experiments.feedback.alignment import gradient_angles

    x = torch.randn(16, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (16,), generator=gen)
    torch.manual_seed(0)
    net = fb.convert(nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double(), "fa", seed=0)

    def loss_fn(m, b):
        return F.cross_entropy(m(b[0]), b[1])

    angles = gradient_angles(net, loss_fn, (x, y))
    assert angles["2"] == pytest.approx(0.0, abs=1e-5)  # the last layer's gradient is exact
    assert angles["0"] > 10.0
    with torch.no_grad():
        net[2].feedback.copy_(net[2].weight)
    assert gradient_angles(net, loss_fn, (x, y))["0"] == pytest.approx(0.0, abs=1e-5)
