"""Batched crop/flip against explicit per-sample references, and their dependence on the generator only."""
import pytest
import torch

from tractable.data import (
    crop_with_offsets,
    flip_where,
    random_crop,
    random_flip,
    sample_crop_offsets,
    sample_flip_mask,
)


def g(seed):
    return torch.Generator().manual_seed(seed)


def reference_crop(x, pad, offsets, mode):
    """One sample at a time, with the padding written out by hand (reflect: mirror without the edge)."""
    out = torch.empty_like(x)
    spatial = x.shape[2:]
    for i in range(x.shape[0]):
        if mode == "constant":
            padded = torch.zeros((x.shape[1],) + tuple(s + 2 * pad for s in spatial), dtype=x.dtype)
            if len(spatial) == 2:
                padded[:, pad:pad + spatial[0], pad:pad + spatial[1]] = x[i]
            else:
                padded[:, pad:pad + spatial[0]] = x[i]
        else:  # reflect
            def mirror(n):
                return [abs(j) if j < n else 2 * (n - 1) - j for j in range(-pad, n + pad)]

            if len(spatial) == 2:
                padded = x[i][:, mirror(spatial[0])][:, :, mirror(spatial[1])]
            else:
                padded = x[i][:, mirror(spatial[0])]
        if len(spatial) == 2:
            dy, dx = offsets[i].tolist()
            out[i] = padded[:, dy:dy + spatial[0], dx:dx + spatial[1]]
        else:
            (dl,) = offsets[i].tolist()
            out[i] = padded[:, dl:dl + spatial[0]]
    return out


@pytest.mark.parametrize("mode", ["constant", "reflect"])
@pytest.mark.parametrize("shape, dtype", [((9, 3, 7, 6), torch.uint8), ((9, 2, 5, 5), torch.float32),
                                          ((9, 2, 11), torch.float32)])
def test_random_crop_matches_a_per_sample_loop(mode, shape, dtype):
    x = torch.randint(0, 256, shape, generator=g(1)).to(dtype)
    pad = 3
    offsets = sample_crop_offsets(shape[0], pad, len(shape) - 2, g(7))
    assert offsets.shape == (shape[0], len(shape) - 2) and int(offsets.min()) >= 0 and int(offsets.max()) <= 6
    assert len({tuple(o) for o in offsets.tolist()}) > 1
    ref = reference_crop(x, pad, offsets, mode)
    out = random_crop(x, pad, g(7), mode=mode)
    assert out.dtype == dtype and out.shape == x.shape
    assert torch.equal(out, ref)
    assert torch.equal(crop_with_offsets(x, pad, offsets, mode), ref)


def test_centre_offsets_and_zero_pad_are_the_identity():
    x = torch.rand(4, 3, 5, 5, generator=g(0))
    assert torch.equal(crop_with_offsets(x, 2, torch.full((4, 2), 2), "constant"), x)
    assert torch.equal(random_crop(x, 0, g(0)), x)


def test_zero_padding_shows_up_at_the_border():
    x = torch.ones(1, 1, 4, 4)
    out = crop_with_offsets(x, 2, torch.tensor([[0, 0]]))
    assert out[0, 0, :2].eq(0).all() and out[0, 0, :, :2].eq(0).all() and out[0, 0, 2:, 2:].eq(1).all()


@pytest.mark.parametrize("shape", [(64, 3, 4, 5), (64, 2, 7)])
def test_random_flip_flips_exactly_the_drawn_samples(shape):
    x = torch.rand(shape, generator=g(3))
    mask = sample_flip_mask(shape[0], g(11))
    assert mask.dtype == torch.bool and 16 < int(mask.sum()) < 48
    out = random_flip(x, g(11))
    for i in range(shape[0]):
        expected = x[i].flip(-1) if mask[i] else x[i]
        assert torch.equal(out[i], expected)
    assert torch.equal(flip_where(x, mask), out)


def test_same_seed_same_result_different_seed_different_result():
    x = torch.randint(0, 256, (32, 3, 8, 8), generator=g(0), dtype=torch.uint8)
    assert torch.equal(random_crop(x, 4, g(5)), random_crop(x, 4, g(5)))
    assert not torch.equal(random_crop(x, 4, g(5)), random_crop(x, 4, g(6)))
    assert torch.equal(random_flip(x, g(5)), random_flip(x, g(5)))
    assert not torch.equal(random_flip(x, g(5)), random_flip(x, g(6)))


def test_augmentation_does_not_touch_global_random_state():
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    random_crop(torch.rand(8, 1, 4, 4, generator=g(0)), 2, g(1))
    random_flip(torch.rand(8, 1, 4, 4, generator=g(0)), g(1))
    assert torch.equal(torch.rand(3), before)


def test_bad_inputs():
    x = torch.rand(4, 3, 8, 8)
    with pytest.raises(ValueError, match="Generator"):
        random_crop(x, 2, None)
    with pytest.raises(ValueError, match="Generator"):
        random_flip(x, 0)
    with pytest.raises(ValueError, match="pad"):
        random_crop(x, -1, g(0))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        random_crop(torch.rand(8, 8), 2, g(0))
    with pytest.raises(ValueError, match="mode"):
        random_crop(x, 2, g(0), mode="wrap")
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        crop_with_offsets(x, 2, torch.full((4, 2), 5))
    with pytest.raises(ValueError, match="p must"):
        sample_flip_mask(4, g(0), p=1.5)
