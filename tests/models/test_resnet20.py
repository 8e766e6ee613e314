"""resnet20_cifar: the He et al. CIFAR ResNet-20 (3 stages × 3 BasicBlocks, widths 16/32/64)."""
import pytest
import torch

from tractable.models import create_model


def test_resnet20_shape_and_size():
    m = create_model("resnet20_cifar", num_classes=10)
    assert sum(p.numel() for p in m.parameters()) == 272474
    convs = [n for n, mod in m.named_modules() if isinstance(mod, torch.nn.Conv2d) and mod.kernel_size == (3, 3)]
    assert len(convs) == 19  # + the linear head: 20 weight layers
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    wide = create_model("resnet20_cifar", num_classes=100, width=2, in_channels=1, image_size=28)
    assert wide(torch.randn(1, 1, 28, 28)).shape == (1, 100)
    with pytest.raises(ValueError, match="width"):
        create_model("resnet20_cifar", width=0)
