"""float32 TrAct against the float64 reference, with torch's oneDNN enabled (the fast CPU products behind the Gram
and the Linear b×b form) and disabled (plain ``torch.matmul``): both paths must give the same Eq. 12 gradient."""
import copy

import pytest
import torch
import torch.nn as nn

import tractable
from tests.tract._reference import conv_rows, reference
from tests.tract.test_reference import CONFIGS, _grads, _make

# larger shapes than the exactness sweep: several chunks, n ≥ 256 (upper block triangle), b < n (b×b form)
LARGE = [
    ("patch16_n768_nxn", lambda: nn.Conv2d(3, 8, 16, stride=16), (6, 3, 96, 96), 0.1),
    ("patch16_n768_bxb", lambda: nn.Conv2d(3, 8, 16, stride=16), (1, 3, 64, 64), 0.1),
    ("groups_n288", lambda: nn.Conv2d(64, 6, 3, padding=1, groups=2), (2, 64, 9, 9), 0.1),
    ("patch4_n48", lambda: nn.Conv2d(3, 12, 4, stride=4), (16, 3, 32, 32), 0.1),
    ("linear_bxb", lambda: nn.Linear(300, 16), (40, 300), 0.1),
    ("linear_nxn", lambda: nn.Linear(40, 16), (300, 40), 0.1),
    ("conv3d_n81", lambda: nn.Conv3d(3, 4, 3, padding=1), (2, 3, 6, 8, 8), 0.1),
]


def _rel(a, b):
    return ((a.double() - b).norm() / b.norm()).item()


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "matmul"])
@pytest.mark.parametrize("cfg", CONFIGS + LARGE, ids=[c[0] for c in CONFIGS + LARGE])
def test_float32_weight_grad_matches_float64_reference(cfg, onednn):
    plain64, x64, lam = _make(cfg)
    with torch.no_grad():
        R64 = torch.randn_like(plain64(x64))
    tract_ref = reference(plain64, x64, R64, lam)[2]
    layer = tractable.TrAct(copy.deepcopy(plain64).float(), l=lam)
    with torch.backends.mkldnn.flags(enabled=onednn):
        g = _grads(layer, x64.float(), R64.float())[2]
    assert g.dtype == torch.float32
    # float32 rounding amplified by up to cond(K) ≈ (max eig(XᵀX/b) + λ)/λ (measured: ≤ 2e-5 for most configs,
    # 7e-5 for the 288-wide grouped Gram and 1.1e-4 for b×b with 16 rows and n = 768, equal on both paths);
    # a wrong or missing block product would be off by O(1)
    assert _rel(g, tract_ref) < 3e-4, cfg[0]


@pytest.mark.parametrize("cfg", LARGE, ids=[c[0] for c in LARGE])
def test_onednn_and_matmul_paths_agree(cfg):
    plain, x, lam = _make(cfg, dtype=torch.float32)
    R = torch.randn_like(plain(x))
    layer = tractable.TrAct(copy.deepcopy(plain), l=lam)
    g_dnn = _grads(layer, x, R)[2]
    with torch.backends.mkldnn.flags(enabled=False):
        g_mm = _grads(layer, x, R)[2]
    assert _rel(g_dnn, g_mm.double()) < 1e-5


GRAM_CASES = [  # (conv, input shape): n = 48, 288 per group (2 groups), 768 (upper block triangle from 256 on)
    (lambda: nn.Conv2d(3, 4, 4, stride=4), (4, 3, 16, 16)),
    (lambda: nn.Conv2d(64, 4, 3, padding=1, groups=2), (2, 64, 5, 5)),
    (lambda: nn.Conv2d(3, 4, 16, stride=16), (3, 3, 48, 32)),
]


@pytest.mark.parametrize("dtype,onednn,tol", [(torch.float64, True, 1e-12), (torch.float32, True, 1e-6),
                                              (torch.float32, False, 1e-6)], ids=["fp64", "fp32_onednn", "fp32_matmul"])
@pytest.mark.parametrize("case", GRAM_CASES, ids=["n48", "groups_n288", "n768"])
def test_public_gram_is_the_full_symmetric_second_moment(case, dtype, onednn, tol):
    """``tractable.tract.gram`` returns all of XᵀX per group (both triangles), b, in the requested dtype."""
    torch.manual_seed(0)
    conv = case[0]()
    x = torch.randn(*case[1])
    pad = [p for p in reversed(conv.padding) for _ in range(2)]
    geom = tractable.tract.Geometry("conv", conv.in_channels, conv.groups, conv.kernel_size, conv.stride,
                                    conv.dilation, tuple(pad))
    with torch.backends.mkldnn.flags(enabled=onednn):
        S, b = tractable.tract.gram(x, geom, dtype, chunk_bytes=64 << 10)  # several chunks
    X, _ = conv_rows(conv, x)
    n_g = X.shape[1] // conv.groups
    assert b == X.shape[0] and S.dtype == dtype and S.shape == (conv.groups, n_g, n_g)
    for g in range(conv.groups):
        Xg = X[:, g * n_g:(g + 1) * n_g]
        want = Xg.T @ Xg
        assert ((S[g].double() - want).norm() / want.norm()).item() < tol
        assert torch.equal(S[g], S[g].mT)


class _Tagged(torch.Tensor):
    """A tensor subclass with its own ``__torch_function__`` (TrAct must take torch's generic Function path)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.mark.parametrize("make,shape", [(lambda: nn.Conv2d(3, 8, 4, stride=4), (4, 3, 16, 16)),
                                        (lambda: nn.Linear(20, 6), (5, 20))], ids=["conv_nxn", "linear_bxb"])
def test_subclass_inputs_and_retained_graphs_give_the_same_gradients(make, shape):
    """Tensor subclasses go through ``Function.apply`` (not the C++ shortcut); a retained graph's second
    backward reuses the factor formed in the forward: both must give the plain-tensor gradient."""
    torch.manual_seed(0)
    base = make()
    x = torch.randn(*shape)
    R = torch.randn_like(base(x))
    ref_layer = tractable.TrAct(copy.deepcopy(base), l=0.1)
    (ref_layer(x) * R).sum().backward()
    ref = ref_layer.weight.grad.clone()

    sub = tractable.TrAct(copy.deepcopy(base), l=0.1)
    (sub(x.as_subclass(_Tagged)) * R).sum().backward()
    torch.testing.assert_close(sub.weight.grad.as_subclass(torch.Tensor), ref, rtol=1e-6, atol=1e-7)

    twice = tractable.TrAct(copy.deepcopy(base), l=0.1)
    loss = (twice(x) * R).sum()
    loss.backward(retain_graph=True)
    loss.backward()
    torch.testing.assert_close(twice.weight.grad, 2 * ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "matmul"])
@pytest.mark.parametrize("n", [40, 300], ids=["n40", "n300_upper"])
def test_public_gram_of_linear_rows_in_chunks(n, onednn):
    """Linear rows (here non-contiguous tokens) through the chunked buffer: all of XᵀX, exactly symmetric."""
    torch.manual_seed(0)
    x = torch.randn(50, 3, n).transpose(0, 1)  # (3, 50, n), not contiguous
    with torch.backends.mkldnn.flags(enabled=onednn):
        S, b = tractable.tract.gram(x, tractable.tract.Geometry("linear", n), torch.float32, chunk_bytes=16 * n * 4)
    X = x.reshape(-1, n).double()
    want = X.T @ X
    assert b == 150 and S.shape == (1, n, n)
    assert ((S[0].double() - want).norm() / want.norm()).item() < 1e-6
    assert torch.equal(S[0], S[0].mT)


@pytest.mark.parametrize("reentrant", [False, True], ids=["non_reentrant", "reentrant"])
def test_activation_checkpointing_recomputes_the_same_gradient(reentrant):
    """The n×n factor formed in the forward is rebuilt when checkpointing re-runs the forward."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 4, 3, padding=1))
    tractable.TrAct(net[0], l=0.1)
    ref_net = copy.deepcopy(net)
    x = torch.randn(4, 3, 8, 8, requires_grad=reentrant)  # the reentrant variant needs an input that requires grad
    ref_net(x).square().sum().backward()
    checkpoint(net, x, use_reentrant=reentrant).square().sum().backward()
    torch.testing.assert_close(net[0].weight.grad, ref_net[0].weight.grad, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(net[0].weight.grad, _plain_grad(ref_net, x), rtol=1e-3)


def _plain_grad(net, x):
    plain = copy.deepcopy(net)
    tractable.remove(plain)
    plain.zero_grad()
    plain(x).square().sum().backward()
    return plain[0].weight.grad
