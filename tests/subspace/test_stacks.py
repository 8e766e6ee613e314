"""A converted model inside real training stacks: activation checkpointing (both modes), parameter groups by
shape, shape-aware optimisers, EMA copies, LSTM/GRU, tied weights, identical endpoints, the BN cache's state."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import tractable.subspace as ts
from tests.subspace._models import BNCNN

X = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
Y = torch.randint(0, 5, (6,), generator=torch.Generator().manual_seed(2))


class Blocks(nn.Module):
    """conv-BN-ReLU stem, a checkpointable conv-BN-ReLU-conv block, head."""

    def __init__(self, ckpt=None):
        super().__init__()
        self.ckpt = ckpt  # None, "reentrant" or "non_reentrant"
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 8, 1))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        h = self.stem(x)
        if self.ckpt is None:
            h = self.block(h)
        else:
            h = checkpoint(self.block, h, use_reentrant=self.ckpt == "reentrant")
        return self.fc(h.mean((2, 3)))


def _grads(ckpt, mix_all, kind="curve", whole=False):
    torch.manual_seed(0)
    model = Blocks(None if whole else ckpt)
    sub = ts.convert(model, lambda: Blocks(None if whole else ckpt), kind=kind)
    sub.mix_all = mix_all
    model.train()
    for step in range(2):  # two steps: a second forward after an optimizer-like update
        g = torch.Generator().manual_seed(step)
        sub.sample(g)
        out = checkpoint(model, X, use_reentrant=False) if whole else model(X)
        (F.cross_entropy(out, Y) + sub.regularizer(1.0, generator=g)).backward()
    return {n: sub.stacked(n).grad.clone() for n in sub.tensor_names()}


@pytest.mark.parametrize("mix_all", [True, False], ids=["fast_path", "per_tensor"])
@pytest.mark.parametrize("ckpt", ["reentrant", "non_reentrant", "whole_model"])
def test_activation_checkpointing_gives_the_unchecked_gradients(ckpt, mix_all):
    """A checkpointed block recomputes its weights in the backward: the gradients of every stored point equal
    those of the model without checkpointing, with the fast path on or off; bit for bit without reentrance (the
    reentrant mode's inner backward adds its part of a gradient to ``.grad`` separately: equal up to rounding)."""
    ref = _grads(None, mix_all)
    got = _grads("non_reentrant" if ckpt == "whole_model" else ckpt, mix_all, whole=ckpt == "whole_model")
    assert set(got) == set(ref)
    for n, g in ref.items():
        assert g.abs().sum() > 0, n
        if ckpt == "reentrant":
            assert torch.allclose(got[n], g, rtol=1e-6, atol=1e-9), n
        else:
            assert torch.equal(got[n], g), n


def test_param_groups_see_each_stored_point_in_its_plain_shape():
    """``no_decay`` rules see one stored point (shape without K) under the original name, so the usual
    ``ndim <= 1`` rule selects what it selects on the plain model; ``point_shape`` is the path for rules written
    over ``model.named_parameters()``, where a stacked bias is 2-D."""
    plain = BNCNN()
    want = sorted(n for n, p in plain.named_parameters() if p.ndim <= 1)
    assert want == ["bn1.bias", "bn1.weight", "bn2.bias", "bn2.weight", "conv2.bias", "fc.bias"]
    model, sub = BNCNN(), None
    sub = ts.convert(model, BNCNN, kind="line")
    groups = sub.param_groups(5e-4, no_decay=lambda n, p: p.ndim <= 1)
    names = {id(p): sub.canonical_name(n) for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in groups[1]["params"]) == want
    assert groups[1]["weight_decay"] == 0.0 and groups[0]["weight_decay"] == 5e-4
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    # over model.named_parameters(): ndim counts the stacked dimension, point_shape does not
    assert not [n for n, p in model.named_parameters() if p.ndim <= 1]
    mine = sorted(sub.canonical_name(n) for n, p in model.named_parameters() if len(ts.point_shape(p)) <= 1)
    assert mine == want
    assert ts.point_shape(model.fc.parametrizations.weight.original) == model.fc.weight.shape
    assert ts.point_shape(torch.zeros(2, 3)) == (2, 3)  # a plain tensor keeps its shape


def test_elementwise_optimizers_do_not_couple_points_and_muon_refuses_the_stack():
    """What shape-aware optimisers see: the stacked (K, *shape) tensor. Element-wise ones (SGD, Adam) update each
    stored point exactly as they would update it alone; torch's Muon refuses the 3-D stack of a 2-D weight
    rather than orthogonalising the K points together."""
    torch.manual_seed(0)
    stacked = torch.randn(2, 4, 3).requires_grad_()
    alone = [stacked.detach()[i].clone().requires_grad_() for i in range(2)]
    opt_a, opt_b = torch.optim.Adam([stacked], lr=0.1), torch.optim.Adam(alone, lr=0.1)
    for _ in range(3):
        grad = torch.randn(2, 4, 3)
        stacked.grad, alone[0].grad, alone[1].grad = grad.clone(), grad[0].clone(), grad[1].clone()
        opt_a.step(), opt_b.step()
    assert torch.equal(stacked.detach()[0], alone[0].detach()) and torch.equal(stacked.detach()[1], alone[1].detach())
    if hasattr(torch.optim, "Muon"):
        model = nn.Linear(4, 3, bias=False)
        ts.convert(model, lambda: nn.Linear(4, 3, bias=False), kind="line")
        with pytest.raises(ValueError, match="2D"):
            torch.optim.Muon(model.parameters(), lr=0.02)


def test_a_deep_copy_carries_its_own_controller_for_an_ema():
    """ModelEMA / AveragedModel deep-copy the converted model; ``subspace_of(copy)`` controls the copy's point,
    so an EMA can be evaluated at the midpoint (the runner does this before every evaluation)."""
    from tractable.train.ema import ModelEMA

    torch.manual_seed(0)
    model = BNCNN()
    sub = ts.convert(model, BNCNN, kind="line", num_samples=2)
    assert ts.subspace_of(model) is sub and ts.subspace_of(BNCNN()) is None
    ema = ModelEMA(model, 0.5)
    esub = ts.subspace_of(ema.module)
    assert esub is not None and esub is not sub and esub.model is ema.module
    sub.sample(torch.Generator().manual_seed(0))
    model.train()
    F.cross_entropy(model(X), Y).backward()
    with torch.no_grad():
        for p in model.parameters():
            p.sub_(0.1 * p.grad)
    ema.update(model)
    esub.set_point(0.5)
    sub.set_point(0.5)
    model.eval()
    with torch.no_grad():
        stored = ema.module.fc.parametrizations.weight.original
        avg = 0.5 * stored + 0.5 * model.fc.parametrizations.weight.original  # not the live model's points
        assert not torch.equal(stored, model.fc.parametrizations.weight.original)
        # the EMA's weight at the midpoint is the midpoint of its own averaged stored points, not endpoint 0
        assert torch.allclose(ema.module.fc.weight, 0.5 * (stored[0] + stored[1]), atol=1e-7)
        assert not torch.allclose(ema.module.fc.weight, stored[0])
        assert not torch.allclose(ema.module.fc.weight, 0.5 * (avg[0] + avg[1]))
    ema.module.train()
    esub.sample(torch.Generator().manual_seed(1))  # the copy's multi-sample forward runs the copy
    got = ema.module(X)
    with torch.no_grad():
        want = torch.cat([_at(esub, esub._table[s][0], X.tensor_split(2)[s]) for s in range(2)])
    assert torch.allclose(got, want, atol=1e-6)


def _at(sub, coeffs, x):
    sub.set_coeffs(coeffs)
    plain = sub.export()
    plain.train()
    return plain(x)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_recurrent_layers_convert_forward_equals_export_and_split_gradients_exactly(cls):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = cls(3, 5, num_layers=2, batch_first=True)
            self.head = nn.Linear(5, 2)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    torch.manual_seed(0)
    model = Net()
    sub = ts.convert(model, Net, kind="line")
    assert "rnn.weight_hh_l1" in sub.tensor_names()
    x = torch.randn(4, 7, 3, generator=torch.Generator().manual_seed(3))
    for a in (0.0, 0.3, 1.0):
        sub.set_point(a)
        with torch.no_grad():
            assert torch.allclose(model(x), sub.export(a)(x), atol=1e-6)
    sub.set_point(0.3)
    model(x).square().sum().backward()
    plain = sub.export(0.3)
    plain(x).square().sum().backward()
    for n in sub.tensor_names():
        g = plain.get_parameter(n).grad
        assert torch.allclose(sub.endpoint_grad(n, 0), 0.7 * g, atol=1e-6), n
        assert torch.allclose(sub.endpoint_grad(n, 1), 0.3 * g, atol=1e-6), n


def test_tied_weights_are_refused_with_a_clear_message():
    def tied():
        net = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.Linear(4, 10, bias=False))
        net[2].weight = net[0].weight
        return net

    with pytest.raises(ValueError, match=r"0.weight is shared \(tied\) with 2.weight.*param_filter"):
        ts.convert(tied(), tied)
    net = tied()  # the documented way out: leave the tied tensor single
    sub = ts.convert(net, tied, param_filter=lambda m, n, p: p is not net[0].weight)
    assert sub.tensor_names() == ["1.weight", "1.bias"]


def test_identical_endpoints_are_refused_unless_allowed():
    """A model_fn that returns the model's own (e.g. pretrained) weights gives K equal stored points: cos² = 1,
    the regulariser's gradient vanishes and the points never separate."""
    torch.manual_seed(0)
    pretrained = BNCNN()
    state = copy.deepcopy(pretrained.state_dict())

    def load_pretrained():
        net = BNCNN()
        net.load_state_dict(state)
        return net

    with pytest.raises(ValueError, match="all stored points are equal.*allow_identical=True"):
        ts.convert(load_pretrained(), load_pretrained, kind="line")
    model = load_pretrained()
    sub = ts.convert(model, load_pretrained, kind="line", allow_identical=True)
    assert sub.regularizer(1.0).item() == pytest.approx(1.0, rel=1e-6)
    # norm layers start shared by design: they do not trip the guard
    torch.manual_seed(1)
    ts.convert(BNCNN(), BNCNN, kind="line", norm_endpoints="shared")


def test_bn_cache_state_round_trips_exactly():
    torch.manual_seed(0)
    model = BNCNN()
    sub = ts.convert(model, BNCNN, kind="line")
    for a in (0.0, 0.5):
        sub.set_point(a)
        sub.recompute_bn([(X,)])
    state = sub.bn_cache_state()
    assert all(isinstance(v, torch.Tensor) for b in state["buffers"] for v in b.values())
    torch.manual_seed(0)
    twin = BNCNN()
    sub2 = ts.convert(twin, BNCNN, kind="line")
    twin.load_state_dict(model.state_dict())
    sub2.load_bn_cache_state(state)
    for a in (0.0, 0.5):
        assert sub2.has_bn(a)
        sub.load_bn(a), sub2.load_bn(a)
        assert torch.equal(model.bn2.running_var, twin.bn2.running_var)
