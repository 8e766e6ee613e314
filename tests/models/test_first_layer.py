"""``first_layer``: declared paths, fallbacks for foreign models, wrappers, errors."""
import pytest
import torch
import torch.nn as nn

import tractable
from tractable.models import create_model, first_layer


class TorchvisionStyle(nn.Module):  # stem conv at conv1, no tract_layer
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 2)  # registered first, but conv1 wins by name
        self.conv1 = nn.Conv2d(3, 8, 7, stride=2, padding=3)


class TimmStyle(nn.Module):
    def __init__(self):
        super().__init__()
        self.cls_head = nn.Linear(16, 2)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, 16, 16, stride=16)


class OpenTrActStyle(nn.Module):  # bare conv named patch_embed
    def __init__(self):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 16, 4, stride=4)


class StemStyle(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())


class FeaturesStyle(nn.Module):  # VGG/AlexNet/MobileNet
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
        self.classifier = nn.Linear(8, 2)


class Nested(nn.Module):  # nothing conventional: first Linear/Conv in named_modules order
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(4)
        self.body = nn.Sequential(nn.Identity(), nn.Sequential(nn.Conv1d(4, 4, 1)), nn.Linear(4, 4))


class Foreign(nn.Module):  # a layer named like a fallback but not a weight layer is skipped
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Identity()
        self.emb = nn.Linear(48, 32)


@pytest.mark.parametrize(
    "model, path",
    [
        (TorchvisionStyle(), "conv1"),
        (TimmStyle(), "patch_embed.proj"),
        (OpenTrActStyle(), "patch_embed"),
        (StemStyle(), "stem.0"),
        (FeaturesStyle(), "features.0"),
        (Nested(), "body.1.0"),
        (Foreign(), "emb"),
    ],
)
def test_fallbacks(model, path):
    got, layer = first_layer(model)
    assert got == path
    assert model.get_submodule(got) is layer


def test_declared_path_wins_over_fallbacks():
    model = TorchvisionStyle()
    model.tract_layer = "fc"
    assert first_layer(model) == ("fc", model.fc)


def test_no_weight_layer_is_a_clear_error():
    with pytest.raises(ValueError, match="no tract_layer"):
        first_layer(nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3)))


def test_bad_declarations():
    model = TorchvisionStyle()
    model.tract_layer = "missing.layer"
    with pytest.raises(ValueError, match="does not name a submodule"):
        first_layer(model)
    model = nn.Sequential(nn.BatchNorm1d(3))
    model.tract_layer = "0"
    with pytest.raises(ValueError, match="BatchNorm1d"):
        first_layer(model)
    with pytest.raises(TypeError, match="nn.Module"):
        first_layer("conv1")


def test_data_parallel_wrapper_prefixes_the_path():
    model = create_model("small_cnn", num_classes=3)
    wrapped = nn.DataParallel(model)
    path, layer = first_layer(wrapped)
    assert path == "module.conv1" and layer is model.conv1
    assert wrapped.get_submodule(path) is layer


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.compile's own imports
def test_compiled_model_path_is_relative_to_the_wrapper():
    model = create_model("vit_small_open")
    compiled = torch.compile(model)  # not run: wrapping only
    path, layer = first_layer(compiled)
    assert path == "_orig_mod.patch_embed.proj" and layer is model.patch_embed.proj
    assert dict(compiled.named_modules())[path] is layer


def test_still_found_after_tract_is_attached():
    model = create_model("resnet18_tract_cifar")
    conv = model.conv1
    tractable.TrAct(model.conv1, l=0.1)
    path, layer = first_layer(model)
    assert path == "conv1" and layer is conv and tractable.is_tract(layer)
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert torch.isfinite(conv.weight.grad).all()
