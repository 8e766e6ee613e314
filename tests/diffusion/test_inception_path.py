"""The Inception-FID input path: the reference (TensorFlow 1.x) bilinear resize against a float64 per-pixel loop,
the uint8/RGB conversion, torchmetrics asked for that resize (antialias=False), and — when torch-fidelity is
installed — its resize equal to ours (skipped otherwise: it is not a dependency)."""
import sys
import types

import pytest
import torch

from tractable.diffusion import InceptionFeatures, inception_input, reference_resize


def _loop_resize(x, size):
    """TF 1.x resize_bilinear(align_corners=False), one output pixel at a time, in float64."""
    n, c, h, w = x.shape
    out = torch.zeros(n, c, size, size, dtype=torch.float64)
    for i in range(size):
        sy = i * h / size
        y0 = min(int(sy), h - 1)
        y1 = min(y0 + 1, h - 1)
        fy = sy - y0
        for j in range(size):
            sx = j * w / size
            x0 = min(int(sx), w - 1)
            x1 = min(x0 + 1, w - 1)
            fx = sx - x0
            top = (1 - fx) * x[:, :, y0, x0].double() + fx * x[:, :, y0, x1].double()
            bot = (1 - fx) * x[:, :, y1, x0].double() + fx * x[:, :, y1, x1].double()
            out[:, :, i, j] = (1 - fy) * top + fy * bot
    return out


@pytest.mark.parametrize("hw,size", [((5, 7), 13), ((8, 8), 29), ((9, 6), 4), ((6, 6), 6)])
def test_reference_resize_against_a_loop(hw, size):
    x = torch.randint(0, 256, (2, 3, *hw), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    out = reference_resize(x, size)
    assert out.dtype == torch.float64 and out.shape == (2, 3, size, size)
    assert torch.allclose(out, _loop_resize(x, size), rtol=0, atol=1e-10)
    if hw == (size, size):
        assert torch.equal(out, x.double())  # same size: the identity


def test_antialiased_resize_is_not_the_reference():
    """torchmetrics' default (PyTorch's half-pixel bilinear with antialias) moves 32² → 299² images by whole grey
    levels against the reference resize; why InceptionFeatures asks for antialias=False."""
    x = torch.randint(0, 256, (4, 3, 32, 32), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    ref = reference_resize(x, 299)
    aa = torch.nn.functional.interpolate(x.double(), size=(299, 299), mode="bilinear", align_corners=False,
                                         antialias=True)
    assert (aa - ref).abs().mean() > 5.0


def test_inception_input():
    img = torch.tensor([[[[0.0, 0.5], [1.2, -0.1]]]])  # (1, 1, 2, 2) grey, out of range values clamp
    x = inception_input(img)
    assert x.dtype == torch.uint8 and x.shape == (1, 3, 2, 2)
    assert x[0, :, 0, 1].tolist() == [128, 128, 128] and x[0, 0].tolist() == [[0, 128], [255, 0]]
    with pytest.raises(ValueError, match="expected \\(N, 1 or 3, H, W\\)"):
        inception_input(torch.zeros(2, 2, 4, 4))


def test_inception_features_ask_for_the_reference_resize(monkeypatch):
    """With a stand-in torchmetrics (no weights offline): the network is built with antialias=False, moved to the
    device, and given uint8 RGB images."""
    calls = {}

    class FakeNet(torch.nn.Module):
        def __init__(self, name, features_list, feature_extractor_weights_path=None, antialias=True):
            super().__init__()
            calls.update(name=name, features=features_list, antialias=antialias)
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, x):
            calls["input"] = x
            return x.float().mean((2, 3)) * self.w

    fid_mod = types.ModuleType("torchmetrics.image.fid")
    fid_mod.NoTrainInceptionV3 = FakeNet
    monkeypatch.setitem(sys.modules, "torchmetrics", types.ModuleType("torchmetrics"))
    monkeypatch.setitem(sys.modules, "torchmetrics.image", types.ModuleType("torchmetrics.image"))
    monkeypatch.setitem(sys.modules, "torchmetrics.image.fid", fid_mod)
    feats = InceptionFeatures(device="cpu")
    out = feats(torch.full((2, 1, 5, 5), 0.5))
    assert calls["antialias"] is False and calls["name"] == "inception-v3-compat" and calls["features"] == ["2048"]
    assert calls["input"].dtype == torch.uint8 and calls["input"].shape == (2, 3, 5, 5)
    assert out.dtype == torch.float64 and torch.allclose(out, torch.full((2, 3), 128.0, dtype=torch.float64))


def _torch_fidelity_resize_module():
    """torch-fidelity's interpolate_compat_tensorflow.py, loaded by file (its package __init__ needs torchvision)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("torch-fidelity is not installed (pip install torch-fidelity)")
    path = Path(list(spec.submodule_search_locations)[0]) / "interpolate_compat_tensorflow.py"
    sub = importlib.util.spec_from_file_location("_tf_compat_resize", path)
    mod = importlib.util.module_from_spec(sub)
    sub.loader.exec_module(mod)
    return mod


def test_torch_fidelity_resize_equals_ours():
    tf = _torch_fidelity_resize_module()
    x = torch.randint(0, 256, (2, 3, 32, 32), generator=torch.Generator().manual_seed(2)).to(torch.uint8)
    theirs = tf.interpolate_bilinear_2d_like_tensorflow1x(x.float(), size=(299, 299), align_corners=False)
    assert torch.allclose(theirs.double(), reference_resize(x, 299), atol=1e-3)


def test_inception_fid_equals_torch_fidelity_on_a_few_images(tmp_path):
    """Real Inception features (needs torchmetrics, torch-fidelity and the FID weights, downloaded or cached)."""
    pytest.importorskip("torchmetrics")
    fidelity = pytest.importorskip("torch_fidelity")
    try:
        feats = InceptionFeatures()
    except Exception as e:  # no weights offline
        pytest.skip(f"Inception weights unavailable: {e}")
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    ref_net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    imgs = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    ours = feats(imgs)
    theirs = ref_net(inception_input(imgs))[0].double()
    assert fidelity is not None and torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4)
