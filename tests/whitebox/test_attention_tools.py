"""cls attention from one layer's cls row (bounded memory), resize_to models, the small-input warning, the PCA
pipeline's attention-fixed polarity, Jaccard, DINO-compatible position interpolation, CRATE-MAE's encoder."""
import warnings
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tractable.models import create_model
from tractable.models.crate import interpolate_pos_embedding
from tractable.models.crate_mae import CRATEMAE
from tractable.whitebox import (cls_attention_maps, jaccard, mass_threshold, measure_layers, pca_segmentation,
                                warn_if_small)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def tiny(**kw):
    args = dict(num_classes=5, image_size=16, patch_size=4, dim=24, depth=3, heads=3)
    args.update(kw)
    return create_model("crate", **args).eval()


def test_cls_row_equals_the_full_attention_matrix_of_that_layer(gen):
    torch.manual_seed(0)
    m = tiny()
    x = torch.randn(2, 3, 16, 16, generator=gen)
    for layer in (0, 1, -1):
        maps = cls_attention_maps(m, x, layer)
        with torch.no_grad():
            full = m.forward_features(x, taps=("attn",))["attn"][layer]
        torch.testing.assert_close(maps, full[:, :, 0, 1:].reshape(2, 3, 4, 4), rtol=1e-5, atol=1e-6)
        # the cls row with the cls column sums to 1
        assert torch.allclose(maps.sum((-1, -2)) + full[:, :, 0, 0], torch.ones(2, 3), atol=1e-5)


class _PeakBytes(TorchDispatchMode):
    """Peak of the bytes held by tensors created inside the mode (each freed when its Python object dies)."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0

    def _free(self, n):
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor) and t._base is None:
                n = t.untyped_storage().nbytes()
                self.live += n
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, n)
        return out


def _peak(fn):
    mode = _PeakBytes()
    with mode:
        fn()
    return mode.peak


def test_attention_memory_is_one_layer_not_all_of_them(gen):
    """At n = 257 tokens the full (B, K, n, n) matrix is 0.8 MB per layer: the maps for the last of 8 layers must
    cost about what they cost for the last of 2, and less than one layer's full matrix."""
    x = torch.randn(1, 3, 64, 64, generator=gen)
    peaks = {}
    for depth in (2, 8):
        torch.manual_seed(0)
        m = tiny(image_size=64, depth=depth)
        peaks[depth] = _peak(lambda: cls_attention_maps(m, x, -1))
    one_matrix = 1 * 3 * 257 * 257 * 4
    assert peaks[8] < 1.3 * peaks[2], peaks
    assert peaks[8] < one_matrix, (peaks, one_matrix)
    # the old route (every layer's matrix kept) grows with the depth: the test above can fail
    torch.manual_seed(0)
    m = tiny(image_size=64, depth=8)
    with torch.no_grad():
        old = _peak(lambda: m.forward_features(x, taps=("attn",)))
    assert old > 8 * one_matrix


def test_resize_to_models_give_maps_on_the_resized_grid(gen):
    torch.manual_seed(0)
    m = tiny(image_size=8, resize_to=16)
    x = torch.randn(2, 3, 8, 8, generator=gen)
    maps = cls_attention_maps(m, x)
    assert maps.shape == (2, 3, 4, 4)
    up = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(maps, cls_attention_maps(m, up))
    stats = measure_layers(m, x)
    assert len(stats) == 3


def test_small_inputs_warn_and_resize_to_models_do_not(gen):
    m = tiny(image_size=32)
    with pytest.warns(UserWarning, match="smaller than the 32×32"):
        cls_attention_maps(m, torch.randn(1, 3, 16, 16, generator=gen))
    with pytest.warns(UserWarning, match="2×2 patch grid"):
        measure_layers(m, torch.randn(1, 3, 8, 8, generator=gen))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not warn_if_small(m, torch.randn(1, 3, 32, 32))
        assert not warn_if_small(tiny(image_size=8, resize_to=32), torch.randn(1, 3, 8, 8))


def test_pca_polarity_follows_the_attention(gen):
    """Two groups of patches differ along one direction; whichever sign the PCA picks, the mask is the group
    the attention is on."""
    B, h, w, D = 3, 4, 4, 6
    fg = torch.zeros(B, h, w, dtype=torch.bool)
    fg[:, 1:3, 1:3] = True
    base = torch.randn(B, h * w, D, generator=gen) * 0.05
    base[..., 0] += fg.reshape(B, -1).float() * 3.0
    attn = fg.float() + 0.01
    for sign in (1.0, -1.0):
        seg = pca_segmentation(base * sign, (h, w), attention=attn, fill_holes=False)
        assert torch.equal(seg["mask"], fg)
        assert seg["rgb"].shape == (B, 3, h, w) and float(seg["rgb"][~fg.unsqueeze(1).expand(-1, 3, -1, -1)].abs().max()) == 0
    # attention on the other group flips the mask
    seg = pca_segmentation(base, (h, w), attention=(~fg).float(), fill_holes=False)
    assert torch.equal(seg["mask"], ~fg)


def test_jaccard_against_counts():
    a = torch.zeros(2, 4, 4, dtype=torch.bool)
    b = torch.zeros(2, 4, 4, dtype=torch.bool)
    a[0, :2] = True      # 8 pixels
    b[0, 1:3] = True     # 8 pixels, 4 shared
    j = jaccard(a, b)
    assert j[0].item() == pytest.approx(4 / 12) and j[1].item() == 1.0  # both empty
    assert jaccard(mass_threshold(torch.ones(1, 4, 4), 1.0), torch.ones(1, 4, 4, dtype=torch.bool)).item() == 1.0


def test_dino_position_interpolation_option(gen):
    torch.manual_seed(0)
    exact, dino = tiny(), tiny(pos_interp="dino")
    dino.load_state_dict(exact.state_dict())
    assert dino.config()["pos_interp"] == "dino"
    grid = (6, 6)
    torch.testing.assert_close(dino.pos_embedding_for(grid),
                               interpolate_pos_embedding(exact.pos_embedding, (4, 4), grid, dino_compat=True))
    assert not torch.allclose(dino.pos_embedding_for(grid), exact.pos_embedding_for(grid))
    torch.testing.assert_close(dino.pos_embedding_for((4, 4)), exact.pos_embedding)  # native grid: identity
    with pytest.raises(ValueError, match="pos_interp"):
        tiny(pos_interp="nearest")


def test_crate_mae_encoder_is_a_crate_for_the_tools(gen):
    torch.manual_seed(0)
    m = CRATEMAE(image_size=16, patch_size=4, in_channels=1, dim=16, depth=2, heads=2).eval()
    x = torch.randn(2, 1, 16, 16, generator=gen)
    f = m.forward_features(x, taps=("qkv", "attn", "mid", "out"))
    assert len(f["out"]) == 2 and f["out"][0].shape == (2, 17, 16) and bool((f["out"][0] >= 0).all())
    # with nothing masked the encoder input is the official one: all patches + cls + decoder_pos_embed
    with torch.no_grad():
        enc, mask, _ = m.forward_encoder(x, 0.0)
    assert float(mask.sum()) == 0
    torch.testing.assert_close(m.norm(f["final"]), enc)
    maps = cls_attention_maps(m, x)
    torch.testing.assert_close(maps, f["attn"][-1][:, :, 0, 1:].reshape(2, 2, 4, 4), rtol=1e-5, atol=1e-6)
    stats = measure_layers(m, x)
    assert [s.layer for s in stats] == [1, 2] and all(0 < s.nonzero_mean <= 1 for s in stats)
    # another resolution: the fixed sin-cos table is recomputed for the grid
    assert m.forward_features(torch.randn(1, 1, 24, 24, generator=gen))["final"].shape == (1, 37, 16)
