"""The credit-assignment protocol models (resmlp, resmlp_d512_l2, vit_mini, small_resnet_credit): the protocol
members, the stream rule checked against hand-written forwards, exact BP hidden gradients (against float64
central differences), shapes for any input size / channel count, the baselines (shallow, frozen, head-only),
the ``credit`` extension point, ``bp_mode`` and bad inputs."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tractable.models.credit as credit  # registers the models even before the package re-exports them
from tractable.models import create_model, first_layer, list_models

SMALL = {  # small sizes of every architecture (same code paths as the defaults)
    "resmlp": dict(dim=16, depth=3),
    "resmlp_d512_l2": dict(dim=12),
    "vit_mini": dict(image_size=8, dim=16, heads=2, depth=2),
    "small_resnet_credit": dict(image_size=6, width=4, depth=2),
    "small_resnet_credit_preact": dict(image_size=6, width=4, depth=2, preact=True),
}


def build(key, **kw):
    name = "small_resnet_credit" if key.startswith("small_resnet_credit") else key
    args = dict(SMALL[key])
    args.update(kw)
    return create_model(name, **args)


def inputs(model, n=3, gen=None, in_channels=3):
    if isinstance(model, credit.ResMLP):
        return torch.randn(n, model.embed.in_features, generator=gen)
    size = model.embed.image_size if isinstance(model, credit.ViTMini) else model.image_size
    return torch.randn(n, in_channels, size, size, generator=gen)


@pytest.mark.parametrize("name", ["resmlp", "resmlp_d512_l2", "vit_mini", "small_resnet_credit"])
def test_registered_with_protocol_defaults(name):
    assert name in list_models()
    model = create_model(name)
    assert credit.is_credit_model(model)
    expected = {"resmlp": (256, 4), "resmlp_d512_l2": (512, 2), "vit_mini": (128, 4), "small_resnet_credit": (64, 4)}
    d, L = expected[name]
    assert model.depth == L and model.feedback_points()[0].dim == d
    assert len(model.feedback_points()) == L + 1
    path, layer = first_layer(model)
    assert path == model.tract_layer
    if name == "vit_mini":
        assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
        assert model.embed.proj.kernel_size == (4, 4) and model.blocks[0].attn.heads == 4
        assert model.feedback_points()[0].shape == (65, 128)


@pytest.mark.parametrize("key", list(SMALL))
def test_forward_is_the_stream(key, gen):
    """logits and hiddens come from one forward and follow h_{l+1} = h_l + f_l, z = readout(h_L)."""
    torch.manual_seed(0)
    model = build(key).eval()
    x = inputs(model, gen=gen)
    logits, hs = model(x, return_hidden=True)
    assert len(hs) == model.depth + 1
    assert torch.equal(logits, model(x))
    assert torch.equal(hs[0], model.embed(x))
    for l, block in enumerate(model.blocks):
        assert torch.equal(hs[l + 1], hs[l] + block(hs[l]))
    assert torch.equal(logits, model.head(model.readout(hs[-1])))
    for k in range(model.depth + 1):
        assert torch.equal(model.forward_from(k, hs[k]), logits)
    for p in model.feedback_points():
        assert tuple(hs[p.index].shape[1:]) == p.shape


def test_vit_block_equals_two_pre_ln_sublayers(gen):
    """h + f(h) is ``x + attn(LN1 x)`` then ``x + mlp(LN2 x)`` with SDPA attention written out by hand."""
    torch.manual_seed(0)
    model = build("vit_mini").double()
    blk = model.blocks[0]
    h = torch.randn(2, model.embed.num_tokens, 16, generator=gen, dtype=torch.float64)
    a_in = blk.norm1(h)
    B, T, D = a_in.shape
    nh, hd = blk.attn.heads, blk.attn.head_dim
    q, k, v = (lin(a_in).reshape(B, T, nh, hd).transpose(1, 2) for lin in (blk.attn.q, blk.attn.k, blk.attn.v))
    att = torch.softmax(q @ k.transpose(-1, -2) / hd ** 0.5, dim=-1) @ v
    x = h + blk.attn.o(att.transpose(1, 2).reshape(B, T, D))
    x = x + blk.fc2(F.gelu(blk.fc1(blk.norm2(x))))
    torch.testing.assert_close(h + blk(h), x, rtol=1e-12, atol=1e-12)


def test_resnet_post_activation_block_is_the_basic_block(gen):
    torch.manual_seed(0)
    model = build("small_resnet_credit").double().eval()
    blk = model.blocks[1]
    h = torch.randn(2, 4, 6, 6, generator=gen, dtype=torch.float64)
    ref = F.relu(h + blk.bn2(blk.conv2(F.relu(blk.bn1(blk.conv1(h))))))
    torch.testing.assert_close(h + blk(h), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("key", list(SMALL))
def test_hidden_gradients_are_exact_bp(key, gen):
    """autograd on the real forward's hiddens equals float64 central differences of the loss through
    forward_from, along random directions, at every point."""
    torch.manual_seed(0)
    model = build(key).double().eval()  # eval: BatchNorm uses running stats, so forward_from is per-sample
    x = inputs(model, gen=gen).double()
    y = torch.tensor([0, 1, 2])
    logits, hs = model(x, return_hidden=True)
    loss = F.cross_entropy(logits, y, reduction="sum")
    grads = torch.autograd.grad(loss, hs)
    t = 1e-6
    for k, (h, g) in enumerate(zip(hs, grads)):
        v = torch.randn(h.shape, generator=gen, dtype=torch.float64)
        v = v * (h != 0)  # ReLU outputs that are exactly 0 sit on a kink: no two-sided derivative there
        with torch.no_grad():
            lp = F.cross_entropy(model.forward_from(k, h + t * v), y, reduction="sum")
            lm = F.cross_entropy(model.forward_from(k, h - t * v), y, reduction="sum")
        fd = (lp - lm) / (2 * t)
        assert torch.allclose((g * v).sum(), fd, rtol=1e-6, atol=1e-9), (key, k)


@pytest.mark.parametrize("key,kw,shape", [
    ("resmlp", dict(in_channels=1, image_size=28), (2, 1, 28, 28)),
    ("resmlp", dict(in_channels=1, input_size=40), (2, 1, 40)),
    ("resmlp", dict(in_features=7), (2, 7)),
    ("vit_mini", dict(in_channels=1, image_size=12, patch_size=4), (2, 1, 12, 12)),
    ("small_resnet_credit", dict(in_channels=5, image_size=9), (2, 5, 9, 9)),
])
def test_any_input_size_and_channels(key, kw, shape, gen):
    model = build(key, num_classes=5, **kw)
    out = model(torch.randn(shape, generator=gen))
    assert out.shape == (2, 5) and torch.isfinite(out).all()


@pytest.mark.parametrize("key", list(SMALL))
def test_shallow_depth_zero(key, gen):
    model = build(key, depth=0)
    assert model.depth == 0 and len(model.feedback_points()) == 1
    x = inputs(model, gen=gen)
    logits, hs = model(x, return_hidden=True)
    assert len(hs) == 1 and torch.equal(logits, model.head(model.readout(model.embed(x))))
    assert torch.equal(model.forward_from(0, hs[0]), logits)


@pytest.mark.parametrize("key", ["resmlp", "small_resnet_credit"])
def test_freeze_baselines(key, gen):
    model = build(key, freeze="blocks")
    assert all(not p.requires_grad for p in model.blocks.parameters())
    assert all(p.requires_grad for p in model.embed.parameters())
    model.train()
    assert not any(m.training for m in model.blocks.modules()) and model.embed.training
    before = {n: b.clone() for n, b in model.named_buffers()}
    model(inputs(model, gen=gen)).sum().backward()
    for n, b in model.named_buffers():  # frozen BatchNorm keeps its running statistics
        if n.startswith("blocks."):
            assert torch.equal(b, before[n]), n
    assert all(p.grad is None for p in model.blocks.parameters())
    assert all(p.grad is not None for p in model.head.parameters())

    head_only = build(key, freeze="embed_blocks")
    trainable = [n for n, p in head_only.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("head.") for n in trainable)


def test_residual_add_false_is_a_plain_stack(gen):
    model = build("resmlp", residual_add=False).eval()
    x = inputs(model, gen=gen)
    logits, hs = model(x, return_hidden=True)
    for l, block in enumerate(model.blocks):
        assert torch.equal(hs[l + 1], block(hs[l]))
    assert torch.equal(model.forward_from(1, hs[1]), logits)


class _Recorder(nn.Module):
    """A stand-in credit wiring: the plain forward, counting calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.register_buffer("B", torch.ones(2))

    def forward(self, model, x, return_hidden=False):
        self.calls += 1
        return model.forward_plain(x, return_hidden=return_hidden)


def test_credit_extension_point_and_bp_mode(gen):
    model = build("resmlp")
    model.credit = _Recorder()
    assert "credit.B" in model.state_dict()
    x = inputs(model, gen=gen)
    model.train()
    model(x)
    assert model.credit.calls == 1
    with torch.no_grad():
        model(x)
    model.eval()
    model(x)
    model.train()
    with credit.bp_mode(model):
        assert model._bp_mode
        model(x)
    assert model.credit.calls == 1 and not model._bp_mode and "_bp_mode" not in model.__dict__
    with pytest.raises(RuntimeError):
        with credit.bp_mode(model):
            raise RuntimeError("inside")
    assert not model._bp_mode


@pytest.mark.parametrize("name,kw,match", [
    ("resmlp", dict(freeze="all"), "freeze must be one of"),
    ("resmlp", dict(depth=-1), "depth must be an int >= 0"),
    ("resmlp", dict(w2_std=-1.0), "w2_std must be a non-negative number"),
    ("resmlp", dict(residual_add=1), "residual_add must be True or False"),
    ("vit_mini", dict(image_size=30), "multiple of patch_size"),
    ("vit_mini", dict(dim=130), "divisible by heads"),
    ("small_resnet_credit", dict(width=0), "width must be an int >= 1"),
])
def test_bad_arguments(name, kw, match):
    with pytest.raises(ValueError, match=match):
        create_model(name, **kw)


def test_bad_inputs(gen):
    with pytest.raises(ValueError, match="features per sample"):
        build("resmlp")(torch.randn(2, 5, generator=gen))
    with pytest.raises(ValueError, match="expected input"):
        build("vit_mini")(torch.randn(2, 3, 9, 9, generator=gen))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        build("small_resnet_credit")(torch.randn(2, 3, generator=gen))
    model = build("resmlp")
    with pytest.raises(ValueError, match=r"k must be an int in 0\.\.3"):
        model.forward_from(4, torch.randn(2, 16, generator=gen))
