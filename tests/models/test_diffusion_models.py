"""Diffusion denoisers (dit_*, mdit_*, unet_*): official DiT parameter counts, adaLN-Zero identity at init, a few
TrAct training steps on the first layer for every model, conditioning, bad inputs."""
import math

import pytest
import torch

import tractable
from tractable.diffusion import GaussianDiffusion
from tractable.models import create_model, first_layer, list_models
from tractable.models.dit import DiT, sincos_2d_grid

TINY = ["dit_tiny_2", "mdit_tiny", "unet_tiny"]
LARGE = ["dit_s_2", "dit_b_2", "mdit_s", "mdit_b", "unet_s", "unet_b"]


def test_registered():
    assert set(TINY + LARGE) <= set(list_models())


@pytest.mark.parametrize("name,count", [("dit_s_2", 32_865_056), ("dit_b_2", 130_315_808)])
def test_official_dit_parameter_counts(name, count):
    with torch.device("meta"):
        m = create_model(name, image_size=32, in_channels=4, num_classes=1000, class_cond=True, learn_sigma=True)
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == count
    assert not m.pos_embed.requires_grad


def test_b_scale_sizes():
    with torch.device("meta"):
        for name in ("mdit_b", "unet_b"):
            n = sum(p.numel() for p in create_model(name, image_size=32).parameters() if p.requires_grad)
            assert 100e6 < n < 140e6, (name, n)


def test_adaln_zero_output_and_blocks_are_identity_at_init():
    torch.manual_seed(0)
    m = create_model("dit_tiny_2", image_size=8, in_channels=3, class_cond=True, num_classes=10)
    x, t, y = torch.randn(3, 3, 8, 8), torch.tensor([0, 500, 999]), torch.tensor([1, -1, 9])
    assert torch.equal(m(x, t, y), torch.zeros(3, 3, 8, 8))
    h = torch.randn(3, 16, 64)
    c = m.condition(t, y)
    for block in m.blocks:
        assert torch.equal(block(h, c), h)
    # after one optimizer step the output is no longer zero
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    GaussianDiffusion(1000).loss(m, x, cond=y, generator=torch.Generator().manual_seed(0)).backward()
    opt.step()
    assert m(x, t, y).abs().sum() > 0


def test_pos_embed_and_unpatchify():
    pe = sincos_2d_grid(8, 3)  # 9 tokens × 8 channels: 4 for the row, 4 for the column
    row, col, w = 2, 1, 1 / 10000 ** 0.5
    tok = pe[row * 3 + col]
    expected = [math.sin(row), math.sin(row * w), math.cos(row), math.cos(row * w),
                math.sin(col), math.sin(col * w), math.cos(col), math.cos(col * w)]
    assert torch.allclose(tok, torch.tensor(expected), atol=1e-6)
    m = DiT(image_size=8, in_channels=2, patch_size=2, hidden=16, depth=1, heads=2)
    x = torch.randn(2, 2, 8, 8)
    # tokens in row-major order, channels (row-in-patch, column-in-patch, channel): written out here
    tokens = torch.stack([torch.stack([x[n, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].permute(1, 2, 0).reshape(-1)
                                       for i in range(4) for j in range(4)]) for n in range(2)])
    assert torch.equal(m.unpatchify(tokens), x)


@pytest.mark.parametrize("name", TINY + [pytest.param(n, marks=pytest.mark.slow) for n in LARGE])
@pytest.mark.parametrize("class_cond", [False, True])
def test_trains_with_tract_on_first_layer(name, class_cond):
    torch.manual_seed(0)
    size = 8 if name in TINY else 16
    m = create_model(name, image_size=size, in_channels=1, num_classes=10, class_cond=class_cond)
    path, layer = first_layer(m)
    assert path == m.tract_layer
    plain_w = layer.weight.detach().clone()
    tractable.TrAct(layer, l=0.1)
    assert tractable.is_tract(m.get_submodule(path))
    d = GaussianDiffusion(1000, prediction="x0")
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(8, 1, size, size, generator=g)
    t = torch.randint(0, 1000, (8,), generator=g)
    noise = torch.randn(8, 1, size, size, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    losses = []
    for _ in range(6 if name in TINY else 2):
        opt.zero_grad()
        loss = d.loss(m, x0, t, noise, cond=y)
        loss.backward()
        assert torch.isfinite(layer.weight.grad).all()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert not torch.equal(layer.weight.detach(), plain_w)
    if name in TINY:
        assert losses[-1] < losses[0]


def test_tract_gradient_differs_from_plain_on_the_patch_embedding():
    torch.manual_seed(0)
    m = create_model("dit_tiny_2", image_size=8, in_channels=1)
    d = GaussianDiffusion(100)
    x0 = torch.randn(4, 1, 8, 8)
    t, noise = torch.tensor([1, 20, 50, 90]), torch.randn(4, 1, 8, 8)
    # make the output depend on the embedding (adaLN-Zero gives it no gradient through a zero head)
    torch.nn.init.normal_(m.final_layer.linear.weight, std=0.1)
    d.loss(m, x0, t, noise).backward()
    plain = m.x_embedder.proj.weight.grad.clone()
    m.zero_grad()
    tractable.TrAct(m.x_embedder.proj, l=0.1)
    d.loss(m, x0, t, noise).backward()
    assert plain.abs().sum() > 0 and not torch.allclose(m.x_embedder.proj.weight.grad, plain)


def test_bad_inputs():
    with pytest.raises(ValueError, match="image_size=10 is not divisible by patch_size=4"):
        create_model("dit_tiny_2", image_size=10, patch_size=4)
    with pytest.raises(ValueError, match="image_size=9 is not divisible by patch_size=2"):
        create_model("dit_s_2", image_size=9)
    with pytest.raises(ValueError, match=r"unet_s: image_size=6 must be divisible by 2\^\(levels-1\)=4"):
        create_model("unet_s", image_size=6)
    m = create_model("mdit_tiny", image_size=4, in_channels=1)
    with pytest.raises(ValueError, match="expected 4×4 inputs"):
        m(torch.zeros(1, 1, 8, 8), torch.zeros(1, dtype=torch.long))
    with pytest.raises(TypeError, match="accepted"):
        create_model("unet_tiny", patch_size=2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_dit_runs_as_a_pure_bf16_or_fp64_model(dtype):
    """model.to(dtype): the timestep sinusoid follows the weights' dtype, so the forward and backward run and agree
    with the float32 model (bf16 to its precision; fp64 to float32 round-off)."""
    torch.manual_seed(0)
    m32 = DiT(image_size=8, in_channels=2, patch_size=2, hidden=32, depth=2, heads=2, class_cond=True, num_classes=3)
    for p in m32.parameters():  # leave adaLN-Zero's zero init so that the output depends on every block
        if p.requires_grad:
            p.data.normal_(0, 0.05)
    m = DiT(image_size=8, in_channels=2, patch_size=2, hidden=32, depth=2, heads=2, class_cond=True, num_classes=3)
    m.load_state_dict(m32.state_dict())
    m = m.to(dtype)
    x, t, y = torch.randn(4, 2, 8, 8), torch.tensor([0, 10, 500, 999]), torch.tensor([0, 2, -1, 1])
    out = m(x.to(dtype), t, y)
    ref = m32(x, t, y)
    assert out.dtype == dtype and torch.isfinite(out).all()
    tol = 3e-2 if dtype == torch.bfloat16 else 1e-5
    assert (out.float() - ref).abs().max() <= tol * ref.abs().max()
    out.float().pow(2).sum().backward()
    assert all(p.grad.dtype == dtype and torch.isfinite(p.grad).all() for p in m.parameters() if p.requires_grad)
