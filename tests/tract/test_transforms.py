"""T10: torch.func (grad, vmap per-sample gradients) and torch.compile(fullgraph=True)."""
import copy

import pytest
import torch
import torch.nn as nn
from torch.func import functional_call, grad, vmap

import tractable


def _net(kind):
    torch.manual_seed(0)
    if kind == "linear":
        net = nn.Sequential(nn.Linear(10, 8), nn.Tanh(), nn.Linear(8, 3))
        x = torch.randn(6, 10)
    else:
        net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), nn.Tanh(), nn.Flatten(),
                            nn.Linear(4 * 5 * 5, 3))
        x = torch.randn(6, 3, 5, 5)
    tractable.TrAct(net[0], l=0.1)
    y = torch.randint(0, 3, (6,), generator=torch.Generator().manual_seed(1))
    return net, x, y


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_func_grad_equals_eager(kind):
    net, x, y = _net(kind)
    params = {k: v.detach() for k, v in net.named_parameters()}

    def loss(p, x, y):
        return nn.functional.cross_entropy(functional_call(net, p, (x,)), y)

    g = grad(loss)(params, x, y)
    loss(dict(net.named_parameters()), x, y).backward()
    for k, p in net.named_parameters():
        torch.testing.assert_close(g[k], p.grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_vmap_per_sample_grads_equal_a_loop(kind):
    net, x, y = _net(kind)
    net = net.double()
    x = x.double()
    params = {k: v.detach() for k, v in net.named_parameters()}

    def loss(p, xi, yi):
        return nn.functional.cross_entropy(functional_call(net, p, (xi[None],)), yi[None])

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(x.shape[0]):
        net.zero_grad()
        loss(dict(net.named_parameters()), x[i], y[i]).backward()
        torch.testing.assert_close(per_sample["0.weight"][i], net[0].weight.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_compile_fullgraph_has_no_graph_breaks_and_matches_eager(kind):
    import torch._dynamo

    torch._dynamo.reset()
    net, x, y = _net(kind)
    ref = copy.deepcopy(net)
    plain = tractable.remove(copy.deepcopy(net))

    def step(model, x, y):
        return nn.functional.cross_entropy(model(x), y)

    explanation = torch._dynamo.explain(net)(x)
    assert explanation.graph_break_count == 0
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    step(compiled, x, y).backward()
    step(ref, x, y).backward()
    for (k, a), (_, b) in zip(net.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
    step(plain, x, y).backward()
    assert not torch.allclose(net[0].weight.grad, plain[0].weight.grad, rtol=1e-3)


def test_compile_with_a_tensor_lambda():
    import torch._dynamo

    torch._dynamo.reset()
    net, x, y = _net("conv")
    ref = copy.deepcopy(net)
    net[0].tract_lambda = torch.tensor(0.2)
    ref[0].tract_lambda = 0.2
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    nn.functional.cross_entropy(compiled(x), y).backward()
    nn.functional.cross_entropy(ref(x), y).backward()
    torch.testing.assert_close(net[0].weight.grad, ref[0].weight.grad, rtol=1e-5, atol=1e-6)
