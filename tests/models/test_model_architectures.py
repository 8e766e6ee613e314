"""Architecture details: parameter counts, FLOPs, the max-pool difference, init, patching, attention, shapes."""
import math

import pytest
import torch
import torch.nn as nn

from tractable.models import (
    SelfAttention,
    create_model,
    first_layer,
    patchify,
    sincos_1d,
    sincos_2d,
)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def macs(model, x):
    """Multiply-accumulates of every Conv/Linear in one forward (what fvcore reports as FLOPs)."""
    total = [0]

    def hook(m, inp, out):
        if isinstance(m, nn.Linear):
            total[0] += out.numel() * m.in_features
        else:
            total[0] += out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return total[0]


# ------------------------------------------------------------------------------------ parameter counts
@pytest.mark.parametrize(
    "name, num_classes, exact, published, tol",
    [
        ("resnet18_tract_cifar", 10, 11_173_962, 11.17e6, 0.01),
        ("resnet18_cifar", 10, 11_173_962, 11.17e6, 0.01),
        ("resnet34_tract_cifar", 10, 21_282_122, 21.28e6, 0.01),
        ("resnet34_cifar", 10, 21_282_122, 21.28e6, 0.01),
        ("resnet50_tract_cifar", 10, 23_520_842, 23.52e6, 0.01),
        ("resnet50_cifar", 10, 23_520_842, 23.52e6, 0.01),
        ("resnet_small", 100, 2_958_500, 2.96e6, 0.02),
        ("vit_small_open", 100, 2_498_532, 2.51e6, 0.02),
        ("vit_cifar", 10, 12_470_026, 12.47e6, 0.01),
    ],
)
def test_parameter_counts(name, num_classes, exact, published, tol):
    n = n_params(create_model(name, num_classes=num_classes))
    assert abs(n - published) <= tol * published
    assert n == exact  # the hand count in the module docstring


def test_resnet_small_and_vit_small_open_flops_match_open_tract():
    x = torch.zeros(1, 3, 32, 32)
    assert macs(create_model("resnet_small", num_classes=100), x) == pytest.approx(423e6, rel=0.01)
    # 154M published; projections alone give 151.5M (attention products and norms are extra or not counted)
    assert macs(create_model("vit_small_open", num_classes=100), x) == pytest.approx(154e6, rel=0.03)


# ------------------------------------------------------------------------------------ CIFAR ResNets
def _layer_shapes(model, x):
    shapes = {}
    hooks = [
        getattr(model, f"layer{i}").register_forward_hook(lambda m, i_, o, i=i: shapes.__setitem__(i, o.shape))
        for i in range(1, 5)
    ]
    model(x)
    for h in hooks:
        h.remove()
    return shapes


@pytest.mark.parametrize("depth, expansion", [(18, 1), (50, 4)])
def test_tract_variant_keeps_the_maxpool(depth, expansion):
    x = torch.randn(2, 3, 32, 32)
    tract = _layer_shapes(create_model(f"resnet{depth}_tract_cifar"), x)
    common = _layer_shapes(create_model(f"resnet{depth}_cifar"), x)
    assert tract[1] == (2, 64 * expansion, 16, 16)
    assert common[1] == (2, 64 * expansion, 32, 32)
    assert tract[4] == (2, 512 * expansion, 2, 2)
    assert common[4] == (2, 512 * expansion, 4, 4)


def test_resnet_stems():
    for name in ("resnet18_tract_cifar", "resnet34_cifar", "resnet50_tract_cifar"):
        m = create_model(name)
        c = m.conv1
        assert (c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.bias) == (
            3, 64, (3, 3), (1, 1), (1, 1), None)
        assert first_layer(m) == ("conv1", c)
    mp = create_model("resnet18_tract_cifar").maxpool
    assert isinstance(mp, nn.MaxPool2d) and (mp.kernel_size, mp.stride, mp.padding) == (3, 2, 1)
    assert isinstance(create_model("resnet18_cifar").maxpool, nn.Identity)


def test_resnet_init():
    torch.manual_seed(0)
    tract = create_model("resnet18_tract_cifar")
    common = create_model("resnet18_cifar")
    w = tract.layer4[1].conv2.weight  # 512×512×3×3: fan_out = 4608
    assert w.std().item() == pytest.approx(math.sqrt(2 / 4608), rel=0.03)
    w = common.layer4[1].conv2.weight  # PyTorch default: U(±1/sqrt(fan_in)), std = 1/sqrt(3·fan_in)
    assert w.std().item() == pytest.approx(1 / math.sqrt(3 * 4608), rel=0.03)
    for m in tract.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    zero = create_model("resnet50_tract_cifar", zero_init_residual=True)
    assert torch.all(zero.layer1[0].bn3.weight == 0) and torch.all(zero.layer1[0].bn1.weight == 1)
    assert torch.all(tract.layer1[0].bn2.weight == 1)  # zero_init_residual=False by default


def test_resnet_layouts():
    r34 = create_model("resnet34_tract_cifar")
    assert [len(getattr(r34, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    r50 = create_model("resnet50_cifar", num_classes=100)
    assert r50.fc.in_features == 2048 and r50.fc.out_features == 100
    ds = r50.layer1[0].downsample  # 64 → 256 needs a projection even at stride 1
    assert isinstance(ds[0], nn.Conv2d) and ds[0].kernel_size == (1, 1) and isinstance(ds[1], nn.BatchNorm2d)
    assert r50.layer2[0].conv2.stride == (2, 2) and r50.layer2[0].conv1.stride == (1, 1)
    assert create_model("resnet18_cifar").layer1[0].downsample is None


# ------------------------------------------------------------------------------------ small ResNet
def test_resnet_small_structure():
    m = create_model("resnet_small", num_classes=100)
    assert not any(isinstance(x, nn.ReLU) for x in m.modules())
    assert any(isinstance(x, nn.GELU) for x in m.modules())
    shapes = []
    hooks = [s.register_forward_hook(lambda mod, i, o: shapes.append(tuple(o.shape))) for s in m.stages]
    m(torch.randn(2, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert shapes == [(2, 64, 32, 32), (2, 128, 16, 16), (2, 256, 8, 8)]
    assert [len(s) for s in m.stages] == [2, 2, 2]
    plain = create_model("resnet_small", num_classes=100, head_hidden=0)
    assert isinstance(plain.head, nn.Linear)


# ------------------------------------------------------------------------------------ ViTs
def test_patchify_against_explicit_indexing():
    B, C, H, W, p = 2, 3, 8, 12, 4
    x = torch.randn(B, C, H, W)
    got = patchify(x, p)
    assert got.shape == (B, (H // p) * (W // p), p * p * C)
    for b in range(B):
        for i in range(H // p):
            for j in range(W // p):
                for r in range(p):
                    for c in range(p):
                        for ch in range(C):
                            assert got[b, i * (W // p) + j, (r * p + c) * C + ch] == x[b, ch, i * p + r, j * p + c]
    with pytest.raises(ValueError, match="patch_size"):
        patchify(torch.randn(1, 3, 10, 10), 4)


def test_vit_cifar_embedding_and_tokens():
    m = create_model("vit_cifar")
    seen = {}
    m.emb.register_forward_hook(lambda mod, inp, out: seen.update(inp=inp[0].shape, out=out.shape))
    m(torch.randn(2, 3, 32, 32))
    assert seen["inp"] == (2, 64, 48) and seen["out"] == (2, 64, 384)
    assert isinstance(m.emb, nn.Linear) and (m.emb.in_features, m.emb.out_features) == (48, 384)
    assert m.pos_emb.shape == (1, 65, 384) and m.cls_token.shape == (1, 1, 384)
    assert len(m.blocks) == 7
    blk = m.blocks[0]
    assert blk.attn.heads == 12 and blk.attn.head_dim == 32
    assert blk.attn.scale == pytest.approx(384 ** -0.5)  # omihub777 scales by sqrt(hidden)
    assert blk.mlp.fc1.out_features == 1536 and isinstance(blk.mlp.out_act, nn.GELU)
    std = create_model("vit_cifar", attn_scale="head", mlp_out_gelu=False).blocks[0]
    assert std.attn.scale == pytest.approx(32 ** -0.5) and isinstance(std.mlp.out_act, nn.Identity)
    with pytest.raises(ValueError, match="image_size"):
        m(torch.randn(2, 3, 28, 28))


@pytest.mark.parametrize("scale", [None, 0.05])
def test_self_attention_matches_explicit_softmax(scale):
    torch.manual_seed(0)
    attn = SelfAttention(12, 3, scale=scale)
    x = torch.randn(2, 5, 12)
    B, N, D, h, d = 2, 5, 12, 3, 4
    s = scale if scale is not None else d ** -0.5
    q = attn.q(x).reshape(B, N, h, d).transpose(1, 2)
    k = attn.k(x).reshape(B, N, h, d).transpose(1, 2)
    v = attn.v(x).reshape(B, N, h, d).transpose(1, 2)
    probs = torch.softmax(q @ k.transpose(-1, -2) * s, dim=-1)
    ref = attn.o((probs @ v).transpose(1, 2).reshape(B, N, D))
    torch.testing.assert_close(attn(x), ref, rtol=1e-5, atol=1e-6)
    assert not any(isinstance(mod, nn.MultiheadAttention) for mod in create_model("vit_cifar").modules())


def test_vit_small_open_structure():
    m = create_model("vit_small_open", num_classes=100)
    assert first_layer(m) == ("patch_embed.proj", m.patch_embed.proj)
    proj = m.patch_embed.proj
    assert (proj.kernel_size, proj.stride, proj.out_channels) == ((4, 4), (4, 4), 128)
    assert len(m.blocks) == 12
    attn = m.blocks[0].attn
    assert attn.heads == 4 and attn.head_dim == 32 and attn.q.bias is None and attn.o.bias is not None
    assert m.blocks[0].mlp.fc1.out_features == 512
    # fixed positional encoding: a buffer, not a parameter, and not in the state dict
    assert "pos_embed" not in dict(m.named_parameters()) and "pos_embed" not in m.state_dict()
    torch.testing.assert_close(m.pos_embed[0], sincos_1d(64, 128))
    m2 = create_model("vit_small_open", pos_embed="sincos_2d")
    torch.testing.assert_close(m2.pos_embed[0], sincos_2d(8, 8, 128))
    tokens = m.patch_embed(torch.randn(2, 3, 32, 32))
    assert tokens.shape == (2, 64, 128)


def test_sincos_encodings():
    pe = sincos_1d(10, 8)
    torch.testing.assert_close(pe[0], torch.tensor([0.0, 1.0] * 4))
    torch.testing.assert_close(pe[3, 0], torch.tensor(math.sin(3.0)))
    torch.testing.assert_close(pe[3, 3], torch.tensor(math.cos(3.0 * 10000 ** (-2 / 8))))
    pe2 = sincos_2d(3, 4, 8)
    assert pe2.shape == (12, 8)
    torch.testing.assert_close(pe2[0], torch.tensor([0.0, 0.0, 1.0, 1.0] * 2))
    # token (row 1, col 2): column half encodes 2, row half encodes 1
    torch.testing.assert_close(pe2[1 * 4 + 2, 0], torch.tensor(math.sin(2.0)))
    torch.testing.assert_close(pe2[1 * 4 + 2, 4], torch.tensor(math.sin(1.0)))
    assert torch.cdist(pe2, pe2).fill_diagonal_(1).min() > 0  # all tokens distinct
    with pytest.raises(ValueError):
        sincos_2d(2, 2, 6)


# ------------------------------------------------------------------------------------ small models
@pytest.mark.parametrize("in_channels, size", [(1, 8), (1, 28), (3, 32), (4, 16)])
def test_small_cnn_sizes(in_channels, size):
    m = create_model("small_cnn", in_channels=in_channels, image_size=size, num_classes=10)
    assert m(torch.randn(2, in_channels, size, size)).shape == (2, 10)
    assert m.conv1.in_channels == in_channels


def test_mlp_in_features_and_layers():
    assert create_model("mlp").fc1.in_features == 3 * 32 * 32
    assert create_model("mlp", in_channels=1, image_size=8).fc1.in_features == 64
    assert create_model("mlp", in_channels=1, input_size=40).fc1.in_features == 40
    assert create_model("mlp", in_features=17).fc1.in_features == 17
    m = create_model("mlp", in_channels=1, image_size=28, hidden=[100, 50, 25], activation="tanh")
    linears = [mod for mod in m.modules() if isinstance(mod, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(784, 100), (100, 50), (50, 25), (25, 10)]
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    lin = create_model("mlp", in_channels=1, image_size=8, hidden=[], num_classes=4)
    assert (lin.fc1.in_features, lin.fc1.out_features) == (64, 4)
    assert lin(torch.randn(2, 64)).shape == (2, 4)
    with pytest.raises(ValueError, match="784"):
        m(torch.randn(2, 3, 28, 28))


def test_cnn1d_accepts_flat_signals():
    m = create_model("cnn1d")
    x = torch.randn(2, 40)
    torch.testing.assert_close(m(x), m(x.unsqueeze(1)))
    assert create_model("cnn1d", input_size=7)(torch.randn(2, 1, 7)).shape == (2, 10)
    with pytest.raises(ValueError, match=r"\(B, 1, 40\)"):
        m(torch.randn(2, 1, 41))
