"""The same smoke test for every registered model: output shape, a finite gradient for every parameter, and
the first-layer contract."""
import pytest
import torch
import torch.nn as nn

from tractable.models import WEIGHT_LAYERS, create_model, first_layer, list_models, model_defaults

NUM_CLASSES = 7  # not any model's default, so the argument is known to be honoured
BATCH = 2
# Masked autoencoders (mae_crate_*) are not classifiers; tests/models/test_crate_mae.py covers them.
CLASSIFIERS = [n for n in list_models() if not n.startswith("mae_")]
# Diffusion denoisers (dit_*, mdit_*, unet_*) are not classifiers; tests/models/test_diffusion_models.py covers them.
CLASSIFIERS = [n for n in CLASSIFIERS if not n.startswith(("dit_", "mdit_", "unet_"))]
# CRATE presets at 224² whose step takes seconds on one thread: smoke-tested under -m slow only
# (tests/models/test_crate.py checks their counts and key layout in the default suite).
SLOW = {"crate_small", "crate_base", "crate_large", "crate_tiny_8", "crate_small_8", "crate_base_8"}
MODELS = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in CLASSIFIERS]


def example_input(name: str, gen: torch.Generator) -> torch.Tensor:
    """A batch shaped by the builder's own defaults: (B, C, L) for 1-D models, (B, C, S, S) otherwise."""
    d = model_defaults(name)
    if "image_size" in d:
        return torch.randn(BATCH, d["in_channels"], d["image_size"], d["image_size"], generator=gen)
    return torch.randn(BATCH, d["in_channels"], d["input_size"], generator=gen)


def test_every_model_accepts_the_common_kwargs():
    for name in CLASSIFIERS:
        d = model_defaults(name)
        assert {"num_classes", "in_channels"} <= set(d), name
        assert "image_size" in d or "input_size" in d, name


@pytest.mark.parametrize("name", MODELS)
def test_smoke(name, gen):
    torch.manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES)
    model.train()
    x = example_input(name, gen)
    out = model(x)
    assert out.shape == (BATCH, NUM_CLASSES)
    assert torch.isfinite(out).all()

    # A random projection of the logits, so no parameter's gradient cancels by symmetry.
    (out * torch.randn(out.shape, generator=gen)).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient reached {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient in {pname}"
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient in {pname}"

    path, layer = first_layer(model)
    assert isinstance(layer, WEIGHT_LAYERS)
    assert model.get_submodule(path) is layer
    assert path == model.tract_layer


@pytest.mark.parametrize("name", MODELS)
def test_eval_mode_and_single_channel(name, gen):
    """Built for 1 input channel, every model runs in eval mode (BatchNorm running stats) on a batch of 1."""
    model = create_model(name, num_classes=3, in_channels=1).eval()
    d = model_defaults(name)
    shape = (1, 1, d["image_size"], d["image_size"]) if "image_size" in d else (1, 1, d["input_size"])
    with torch.no_grad():
        out = model(torch.randn(shape, generator=gen))
    assert out.shape == (1, 3) and torch.isfinite(out).all()
    _, layer = first_layer(model)
    if not isinstance(layer, nn.Linear):
        assert layer.in_channels == 1
