"""T3/T4: API errors, aliases, module identity, state_dict, pickling, remove()."""
import copy
import io
import math
import pickle

import pytest
import torch
import torch.nn as nn

import tractable
from tractable.tract import tract_modules


def test_l_and_lambda_alias_give_the_same_gradient():
    torch.manual_seed(0)
    base = nn.Linear(5, 3)
    x = torch.randn(8, 5)
    a = tractable.TrAct(copy.deepcopy(base), l=0.3)
    b = tractable.TrAct(copy.deepcopy(base), lambda_=0.3)
    c = tractable.TrAct(copy.deepcopy(base), 0.3)
    for m in (a, b, c):
        m(x).square().sum().backward()
    assert a.tract_lambda == b.tract_lambda == c.tract_lambda == 0.3
    assert torch.equal(a.weight.grad, b.weight.grad) and torch.equal(a.weight.grad, c.weight.grad)
    assert tractable.TrAct(nn.Linear(2, 2)).tract_lambda == 0.1  # paper default


def test_conflicting_l_and_lambda_raise():
    with pytest.raises(ValueError, match="aliases"):
        tractable.TrAct(nn.Linear(2, 2), l=0.1, lambda_=0.2)
    tractable.TrAct(nn.Linear(2, 2), l=0.2, lambda_=0.2)  # same value is fine


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, math.nan, math.inf, -math.inf, "0.1", True, [0.1],
                                 torch.tensor([0.1])])
def test_bad_lambda_raises_valueerror(bad):
    with pytest.raises(ValueError, match="λ"):
        tractable.TrAct(nn.Linear(2, 2), l=bad)


@pytest.mark.parametrize("module", [nn.ConvTranspose2d(2, 2, 3), nn.ConvTranspose1d(2, 2, 3), nn.Embedding(5, 3),
                                    nn.Bilinear(2, 2, 2), nn.BatchNorm2d(3), nn.Sequential(nn.Linear(2, 2))])
def test_unsupported_modules_raise_typeerror(module):
    with pytest.raises(TypeError, match="nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d"):
        tractable.TrAct(module)


def test_uninitialised_lazy_module_raises_and_initialised_one_works():
    lazy = nn.LazyConv2d(4, 3)
    with pytest.raises(TypeError, match="lazy"):
        tractable.TrAct(lazy)
    lazy(torch.randn(1, 3, 5, 5))
    m = tractable.TrAct(lazy)
    m(torch.randn(2, 3, 5, 5)).sum().backward()
    assert m.weight.grad is not None


def test_bad_form_and_exact_bxb():
    with pytest.raises(ValueError, match="form"):
        tractable.TrAct(nn.Linear(2, 2), form="fast")
    with pytest.raises(ValueError, match="exact"):
        tractable.TrAct(nn.Linear(2, 2), exact=True, form="bxb")
    with pytest.raises(ValueError, match="chunk_bytes"):
        tractable.TrAct(nn.Linear(2, 2), chunk_bytes=0)


def test_identity_attributes_hooks_and_isinstance_are_kept():
    conv = nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect", bias=False)
    conv.my_attr = "kept"
    calls = []
    conv.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    weight = conv.weight
    m = tractable.TrAct(conv, l=0.2)
    assert m is conv and m.weight is weight
    assert isinstance(m, nn.Conv2d) and isinstance(m, tractable.TrAct) and tractable.is_tract(m)
    assert m.kernel_size == (3, 3) and m.in_channels == 3 and m.padding_mode == "reflect" and m.my_attr == "kept"
    m(torch.randn(1, 3, 4, 4))
    assert calls == [torch.Size([1, 8, 4, 4])]
    r = repr(m)
    assert "Conv2d(3, 8" in r and "tract_lambda=0.2" in r
    lin = tractable.TrAct(nn.Linear(4, 2), l=0.05)
    assert lin.in_features == 4 and "tract_lambda=0.05" in repr(lin)


@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_keys_and_strict_loading_both_ways(bias):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=bias), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 6, 6))
    plain_sd = copy.deepcopy(model.state_dict())
    tractable.TrAct(model[0], exact=True)
    model(torch.randn(2, 3, 6, 6)).sum().backward()  # creates exact-mode statistics
    assert list(model.state_dict().keys()) == list(plain_sd.keys())
    fresh = nn.Sequential(nn.Conv2d(3, 4, 3, bias=bias), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2))
    fresh.load_state_dict(model.state_dict(), strict=True)  # TrAct -> plain
    model.load_state_dict(plain_sd, strict=True)  # plain -> TrAct
    assert torch.equal(model[0].weight, plain_sd["0.weight"])


def test_optimizer_built_before_wrapping_updates_the_same_tensors():
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    before = lin.weight.detach().clone()
    tractable.TrAct(lin)
    lin(torch.randn(8, 4)).square().sum().backward()
    opt.step()
    assert not torch.equal(lin.weight.detach(), before)


def _roundtrip_pickle(m):
    return pickle.loads(pickle.dumps(m))


def _roundtrip_torch_save(m):
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize("copier", [copy.deepcopy, _roundtrip_pickle, _roundtrip_torch_save],
                         ids=["deepcopy", "pickle", "torch.save"])
def test_copies_stay_tract_and_compute_the_same_gradient(copier):
    torch.manual_seed(0)
    model = nn.Sequential(tractable.TrAct(nn.Conv2d(3, 4, 3), l=0.2), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    clone = copier(model)
    assert type(clone[0]) is type(model[0]) and clone[0].tract_lambda == 0.2
    x = torch.randn(2, 3, 6, 6)
    model(x).sum().backward()
    clone(x).sum().backward()
    assert torch.equal(model[0].weight.grad, clone[0].weight.grad)
    assert clone[0].weight is not model[0].weight


def test_remove_restores_the_plain_class_and_bitwise_plain_training():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(64, 2))
    model = copy.deepcopy(plain)
    tractable.TrAct(model[0], exact=True)
    out = tractable.remove(model)
    assert out is model and type(model[0]) is nn.Conv2d and not tractable.is_tract(model[0])
    assert not any(k.startswith("tract") or k.startswith("_tract") for k in model[0].__dict__)
    assert list(tract_modules(model)) == []
    x = torch.randn(4, 3, 6, 6)
    for m in (plain, model):
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        for _ in range(3):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    for a, b in zip(plain.parameters(), model.parameters()):
        assert torch.equal(a, b)
    assert tractable.unwrap is tractable.remove


def test_rewrapping_updates_options_and_direct_construction_is_refused():
    m = tractable.TrAct(nn.Linear(3, 2), l=0.1)
    assert tractable.TrAct(m, l=0.5) is m and m.tract_lambda == 0.5
    with pytest.raises(TypeError):
        type(m)(nn.Linear(3, 2))
    with pytest.raises(TypeError):
        tractable.TrAct()


def test_lambda_is_mutable_and_accepts_a_tensor():
    torch.manual_seed(0)
    base = nn.Linear(5, 3)
    x = torch.randn(16, 5)
    a = tractable.TrAct(copy.deepcopy(base), l=0.1)
    a.tract_lambda = 0.4
    b = tractable.TrAct(copy.deepcopy(base), l=torch.tensor(0.4))
    for m in (a, b):
        m(x).square().sum().backward()
    torch.testing.assert_close(a.weight.grad, b.weight.grad)
