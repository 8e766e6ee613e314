"""CRATE-MAE: counts, key layout, masking with an explicit generator, masked-patch-only loss, mask ratio 0."""
import pytest
import torch

from tractable.models import create_model
from tractable.models.crate_mae import CRATEMAE, random_masking


def small(**kw):
    args = dict(image_size=16, patch_size=4, in_channels=3, dim=16, depth=2, heads=2)
    args.update(kw)
    return CRATEMAE(**args)


@pytest.mark.parametrize("name, total, trainable", [("mae_crate_tiny", 11_555_328, None),
                                                    ("mae_crate_small", 25_405_824, 25_178_880),
                                                    ("mae_crate_base", 44_638_464, 44_335_872)])
def test_counts(name, total, trainable):
    m = create_model(name)
    assert sum(p.numel() for p in m.parameters()) == total
    if trainable is not None:
        assert sum(p.numel() for p in m.parameters() if p.requires_grad) == trainable


def test_official_key_layout():
    keys = set(small().state_dict())
    want = {"patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "pos_embed", "mask_token",
            "decoder_pos_embed", "norm.weight", "norm.bias", "decoder_embed.weight", "decoder_embed.bias",
            "decoder_norm.weight", "decoder_norm.bias", "decoder_pred.weight", "decoder_pred.bias"}
    for i in range(2):
        e, d = f"blocks.{i}.layers.0", f"decoder_blocks.{i}.layers.0"
        want |= {f"{e}.0.norm.weight", f"{e}.0.norm.bias", f"{e}.0.fn.qkv.weight", f"{e}.0.fn.to_out.0.weight",
                 f"{e}.0.fn.to_out.0.bias", f"{e}.1.norm.weight", f"{e}.1.norm.bias", f"{e}.1.fn.weight",
                 f"{d}.0.norm.weight", f"{d}.0.norm.bias", f"{d}.0.fn.weight", f"{d}.1.norm.weight",
                 f"{d}.1.norm.bias", f"{d}.1.fn.qkv.weight", f"{d}.1.fn.to_out.0.weight", f"{d}.1.fn.to_out.0.bias"}
    assert keys == want


def test_forward_shapes_and_visible_count(gen):
    m = create_model("mae_crate_tiny", depth=1, decoder_depth=1)
    x = torch.randn(2, 3, 224, 224, generator=gen)
    loss, pred, mask = m(x, generator=torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and pred.shape == (2, 196, 768)
    assert (mask.sum(1) == 196 - 49).all()  # 49 visible patches at mask ratio 0.75


def test_masking_is_reproducible_from_the_generator():
    a = random_masking(3, 16, 0.75, torch.Generator().manual_seed(5))
    b = random_masking(3, 16, 0.75, torch.Generator().manual_seed(5))
    c = random_masking(3, 16, 0.75, torch.Generator().manual_seed(6))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[1], c[1])
    ids_keep, mask, ids_restore = a
    assert (mask.gather(1, ids_keep) == 0).all() and (mask.sum(1) == 12).all()


def test_loss_is_over_masked_patches_only(gen):
    m = small()
    x = torch.randn(2, 3, 16, 16, generator=gen)
    latent, mask, _ = m.forward_encoder(x, 0.5, torch.Generator().manual_seed(1))
    pred = m.forward_decoder(latent).detach().requires_grad_(True)
    loss = m.forward_loss(x, pred, mask)
    loss.backward()
    visible = mask == 0
    assert (pred.grad[visible] == 0).all() and (pred.grad[~visible].abs().sum(-1) > 0).all()
    target = m.patchify(x)
    manual = (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()
    torch.testing.assert_close(loss, manual)
    # norm_pix_loss: the target is normalised per patch
    m.norm_pix_loss = True
    t = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    torch.testing.assert_close(m.forward_loss(x, pred, mask), (((pred - t) ** 2).mean(-1) * mask).sum() / mask.sum())


def test_mask_ratio_zero(gen):
    m = small()
    x = torch.randn(2, 3, 16, 16, generator=gen)
    with pytest.raises(ValueError, match="mask_ratio=0 masks no patch"):
        m(x, mask_ratio=0.0)
    masked_in, rec, pasted = m.reconstruct(x, mask_ratio=0.0)  # reconstructions are still defined
    assert torch.equal(masked_in, x) and rec.shape == x.shape and torch.equal(pasted, x)
    all_loss = small(loss_on="all")
    all_loss.load_state_dict(m.state_dict())
    loss, pred, mask = all_loss(x, mask_ratio=0.0)
    assert mask.sum() == 0 and torch.isfinite(loss)


def test_patchify_round_trip_and_bad_inputs(gen):
    m = small()
    x = torch.randn(2, 3, 16, 16, generator=gen)
    assert torch.equal(m.unpatchify(m.patchify(x)), x)
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\)"):
        m(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match="mask_ratio must be a float in"):
        small(mask_ratio=1.0)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        small(image_size=18)


def test_official_format_mae_checkpoint_loads_strictly(tmp_path, gen):
    from tractable.models.crate import load_crate_checkpoint

    src = small()
    sd = {k: torch.randn(v.shape, generator=gen) for k, v in src.state_dict().items()}
    path = tmp_path / "checkpoint-799.pth"
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 799}, path)
    m = load_crate_checkpoint(small(), path)
    assert all(torch.equal(v, sd[k]) for k, v in m.state_dict().items())
    assert not m.pos_embed.requires_grad and not m.decoder_pos_embed.requires_grad
    del sd["decoder_embed.weight"]
    with pytest.raises(ValueError, match="missing keys \\(1\\): decoder_embed.weight"):
        load_crate_checkpoint(small(), sd)
