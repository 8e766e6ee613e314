"""T1/T2/T5: weight gradient vs an independent float64 reference; forward and input gradient vs the plain layer."""
import copy

import pytest
import torch
import torch.nn as nn

import tractable
from tests.tract._reference import reference

C1, C2, C3 = nn.Conv1d, nn.Conv2d, nn.Conv3d

# (id, layer factory, input shape, λ)
CONFIGS = [
    ("linear_2d", lambda: nn.Linear(6, 4), (9, 6), 0.1),
    ("linear_tokens", lambda: nn.Linear(5, 3), (2, 7, 5), 0.05),
    ("linear_4d", lambda: nn.Linear(4, 3, bias=False), (2, 3, 2, 4), 0.2),
    ("linear_unbatched", lambda: nn.Linear(5, 3), (5,), 0.1),
    ("conv1d_k3", lambda: C1(2, 3, 3), (3, 2, 11), 0.1),
    ("conv1d_s2_reflect", lambda: C1(2, 4, 5, stride=2, padding=2, padding_mode="reflect"), (2, 2, 13), 0.05),
    ("conv1d_same_dil2", lambda: C1(2, 3, 3, padding="same", dilation=2), (2, 2, 9), 0.2),
    ("conv1d_same_even", lambda: C1(2, 3, 4, padding="same"), (2, 2, 9), 0.1),
    ("conv1d_groups_circular", lambda: C1(4, 6, 3, padding=1, groups=2, padding_mode="circular"), (2, 4, 8), 0.1),
    ("conv1d_depthwise_replicate", lambda: C1(3, 3, 3, padding=2, groups=3, padding_mode="replicate"), (2, 3, 7), 0.1),
    ("conv1d_valid_nobias", lambda: C1(2, 3, 3, padding="valid", bias=False), (2, 2, 6), 0.05),
    ("conv2d_k3_p1", lambda: C2(3, 4, 3, padding=1), (2, 3, 6, 6), 0.1),
    ("conv2d_s2_tuplepad", lambda: C2(2, 3, 3, stride=2, padding=(1, 2)), (2, 2, 7, 6), 0.1),
    ("conv2d_dil2", lambda: C2(2, 3, 3, dilation=2), (2, 2, 8, 8), 0.2),
    ("conv2d_groups2", lambda: C2(4, 6, 3, padding=1, groups=2), (2, 4, 5, 5), 0.1),
    ("conv2d_depthwise", lambda: C2(3, 6, 3, padding=1, groups=3), (2, 3, 5, 5), 0.05),
    ("conv2d_reflect", lambda: C2(2, 3, 3, padding=1, padding_mode="reflect"), (2, 2, 5, 6), 0.1),
    ("conv2d_replicate_s2", lambda: C2(2, 3, 3, stride=2, padding=2, padding_mode="replicate"), (2, 2, 6, 6), 0.1),
    ("conv2d_circular_dil", lambda: C2(2, 3, 3, padding=2, dilation=2, padding_mode="circular"), (2, 2, 6, 5), 0.1),
    ("conv2d_same_even_dil", lambda: C2(2, 3, (4, 2), padding="same", dilation=(1, 2)), (2, 2, 7, 6), 0.1),
    ("conv2d_same_reflect", lambda: C2(2, 3, 3, padding="same", padding_mode="reflect"), (2, 2, 5, 5), 0.2),
    ("conv2d_valid", lambda: C2(2, 3, 3, padding="valid"), (2, 2, 5, 5), 0.1),
    ("conv2d_patch4", lambda: C2(3, 5, 4, stride=4), (2, 3, 8, 10), 0.1),
    ("conv2d_patch4_crop", lambda: C2(3, 5, 4, stride=4), (2, 3, 9, 11), 0.1),
    ("conv2d_1x1", lambda: C2(4, 3, 1), (2, 4, 3, 3), 0.1),
    ("conv2d_rect_nobias", lambda: C2(2, 3, (3, 5), stride=(2, 1), padding=(1, 2), bias=False), (2, 2, 6, 7), 0.05),
    ("conv2d_unbatched", lambda: C2(2, 3, 3, padding=1), (2, 5, 5), 0.1),
    ("conv2d_channels_last", lambda: C2(3, 4, 3, padding=1), "channels_last", 0.1),
    # n ≥ 256: the Gram comes from the conv weight-gradient kernel
    ("conv2d_patch16_large_n", lambda: C2(3, 8, 16, stride=16), (13, 3, 64, 128), 0.1),
    ("conv2d_large_n_groups_reflect", lambda: C2(64, 6, 3, stride=2, padding=1, groups=2, padding_mode="reflect"),
     (2, 64, 5, 6), 0.1),
    ("conv2d_large_n_dil_circular", lambda: C2(32, 4, (3, 3), dilation=(2, 1), padding=2, padding_mode="circular"),
     (2, 32, 6, 5), 0.2),
    ("conv3d_k3_p1", lambda: C3(2, 3, 3, padding=1), (1, 2, 4, 4, 4), 0.1),
    ("conv3d_s2_dil", lambda: C3(2, 3, 3, stride=2, dilation=(1, 2, 1), padding=1), (2, 2, 5, 7, 5), 0.1),
    ("conv3d_groups_replicate", lambda: C3(3, 3, 3, padding=1, groups=3, padding_mode="replicate"), (1, 3, 4, 4, 3), 0.2),
    ("conv3d_same", lambda: C3(2, 2, (2, 3, 2), padding="same"), (1, 2, 4, 4, 4), 0.1),
    ("conv3d_circular", lambda: C3(2, 2, 3, padding=1, padding_mode="circular"), (1, 2, 3, 4, 4), 0.05),
]


def _make(cfg, dtype=torch.float64, seed=0):
    name, factory, shape, lam = cfg
    torch.manual_seed(seed)
    layer = factory().to(dtype)
    if shape == "channels_last":
        x = torch.randn(2, 3, 5, 6, dtype=dtype).to(memory_format=torch.channels_last)
    else:
        x = torch.randn(*shape, dtype=dtype)
    if name == "linear_tokens":
        x = torch.randn(7, 2, 5, dtype=dtype).transpose(0, 1)  # non-contiguous tokens
        assert not x.is_contiguous()
    return layer, x, lam


def _grads(layer, x, R):
    x = x.detach().clone().requires_grad_(True)
    out = layer(x)
    (out * R).sum().backward()
    return out, x.grad, layer.weight.grad, None if layer.bias is None else layer.bias.grad


MAX_REL = {}


@pytest.mark.parametrize("cfg", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_weight_grad_matches_float64_reference(cfg):
    plain, x, lam = _make(cfg)
    tr = tractable.TrAct(copy.deepcopy(plain), l=lam)
    with torch.no_grad():
        R = torch.randn_like(plain(x))
    out_ref, plain_ref, tract_ref = reference(plain, x, R, lam)
    out_p, gx_p, gw_p, gb_p = _grads(plain, x, R)
    out_t, gx_t, gw_t, gb_t = _grads(tr, x, R)
    # forward equals the independent reference (validates the padding semantics the reference assumes)
    torch.testing.assert_close(out_p, out_ref, rtol=1e-12, atol=1e-12)
    # forward, input grad and bias grad of TrAct are bitwise the plain layer's
    assert torch.equal(out_t, out_p)
    assert torch.equal(gx_t, gx_p)
    if gb_p is not None:
        assert torch.equal(gb_t, gb_p)
    # plain grad sanity vs reference, then TrAct grad vs reference
    torch.testing.assert_close(gw_p, plain_ref, rtol=1e-10, atol=1e-12)
    rel = ((gw_t - tract_ref).norm() / tract_ref.norm()).item()
    MAX_REL[cfg[0]] = rel
    assert rel <= 1e-10, f"{cfg[0]}: relative error {rel:.2e}"
    # TrAct really changed the gradient (the test could fail if it silently returned the plain one)
    assert ((gw_t - gw_p).norm() / gw_p.norm()).item() > 1e-3


@pytest.mark.parametrize("cfg", CONFIGS, ids=[c[0] for c in CONFIGS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_forward_bitwise_identical(cfg, dtype):
    plain, x, lam = _make(cfg, dtype=dtype)
    tr = tractable.TrAct(copy.deepcopy(plain), l=lam)
    assert torch.equal(tr(x), plain(x))
    with torch.no_grad():
        assert torch.equal(tr(x), plain(x))


CHUNKED = ["conv1d_s2_reflect", "conv2d_k3_p1", "conv2d_replicate_s2", "conv2d_patch4", "conv2d_patch16_large_n",
           "conv2d_large_n_groups_reflect", "conv2d_large_n_dil_circular", "conv3d_k3_p1", "conv3d_s2_dil"]


@pytest.mark.parametrize("chunk", [64, 2048])
@pytest.mark.parametrize("name", CHUNKED)
def test_chunking_does_not_change_the_result(name, chunk):
    cfg = next(c for c in CONFIGS if c[0] == name)
    plain, x, lam = _make(cfg)
    R = torch.randn_like(plain(x))
    a = tractable.TrAct(copy.deepcopy(plain), l=lam)
    b = tractable.TrAct(copy.deepcopy(plain), l=lam, chunk_bytes=chunk)
    ga, gb = _grads(a, x, R)[2], _grads(b, x, R)[2]
    torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-14)


def test_tract_layer_second_in_a_network_passes_gradients_to_the_first():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1))
    ref = copy.deepcopy(net)
    tractable.TrAct(net[2])
    x = torch.randn(2, 3, 6, 6)
    net(x).square().sum().backward()
    ref(x).square().sum().backward()
    assert net[0].weight.grad is not None
    assert torch.equal(net[0].weight.grad, ref[0].weight.grad)
    assert not torch.allclose(net[2].weight.grad, ref[2].weight.grad)
