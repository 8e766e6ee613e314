"""ResNet-18/34/50 for 32×32 inputs, in two CIFAR adaptations.

Architecture: He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016), in torchvision's layout
(BasicBlock for 18/34, Bottleneck with expansion 4 and the stride on the 3×3 conv for 50; stages of
64/128/256/512 channels with [2,2,2,2] / [3,4,6,3] / [3,4,6,3] blocks; 1×1 conv + BN shortcut whenever the
shape changes; ReLU after the residual sum; adaptive average pool; linear ``fc``).

Two stems, both with ``conv1`` a 3×3 stride-1 padding-1 bias-free conv (TrAct target, n = 27 on RGB):

* ``resnet{18,34,50}_tract_cifar`` — the official TrAct CIFAR model (Petersen et al., NeurIPS 2024,
  ``examples/resnet_cifar10.py``): torchvision's ResNet "adapted for CIFAR" by swapping only the 7×7/2 conv
  for the 3×3/1 one, so the **3×3 stride-2 max-pool is kept** and ``layer1`` runs at 16×16 on 32×32 input.
  Init as torchvision: Kaiming-normal (fan_out, ReLU) convs, BN weight 1 / bias 0,
  ``zero_init_residual=False``; Linear keeps PyTorch's default.
* ``resnet{18,34,50}_cifar`` — the common CIFAR ResNet (kuangliu/pytorch-cifar): **no max-pool**, so
  ``layer1`` runs at 32×32; PyTorch's default init, as in that repository.

Deliberate differences: the kuangliu variant uses torchvision's attribute names (``downsample``, ``fc``
instead of ``shortcut``, ``linear``) so both variants share one class and one ``state_dict`` layout, and it
pools adaptively instead of with a fixed ``avg_pool2d(·, 4)``, so other input sizes work; ``in_channels`` is
configurable (``image_size`` is accepted for the common interface and only checked).

Parameters with ``num_classes=10``, both variants (the max-pool has none): ResNet-18 11,173,962,
ResNet-34 21,282,122, ResNet-50 23,520,842.
"""
from __future__ import annotations

from typing import Optional, Sequence, Type, Union

import torch
import torch.nn as nn

from tractable.models import _checks
from tractable.models.registry import register_model

__all__ = ["BasicBlock", "Bottleneck", "CifarResNet"]


def _downsample(in_planes: int, out_planes: int, stride: int) -> Optional[nn.Module]:
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity (or 1×1 conv-BN) shortcut; the activation (ReLU by default)
    after the first conv-BN and after the sum."""

    expansion = 1
    activation = nn.ReLU

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act = self.activation()
        self.downsample = _downsample(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + identity)


class Bottleneck(nn.Module):
    """1×1 reduce → 3×3 (carries the stride, "ResNet v1.5") → 1×1 expand ×4, BN after each; ReLU after sum."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_planes, out_planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """ResNet with a 3×3/1 ``conv1`` stem; ``maxpool=True`` keeps torchvision's 3×3/2 max-pool after it.

    ``init="kaiming"``: torchvision's init (Kaiming-normal fan_out convs, BN 1/0); ``init="default"``: PyTorch's.
    ``zero_init_residual=True`` zeroes the last BN weight of every block (torchvision's option).
    """

    tract_layer = "conv1"
    WIDTHS = (64, 128, 256, 512)

    def __init__(
        self,
        block: Type[Union[BasicBlock, Bottleneck]],
        layers: Sequence[int],
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        maxpool: bool = True,
        init: str = "kaiming",
        zero_init_residual: bool = False,
    ):
        super().__init__()
        name = type(self).__name__
        layers = _checks.int_tuple(name, "layers", layers)
        if len(layers) != 4:
            raise ValueError(f"{name}: layers must list 4 stage depths, got {layers!r}")
        num_classes = _checks.positive_int(name, "num_classes", num_classes)
        in_channels = _checks.positive_int(name, "in_channels", in_channels)
        _checks.choice(name, "init", init, ("kaiming", "default"))

        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if maxpool else nn.Identity()
        in_planes = 64
        for i, (width, depth) in enumerate(zip(self.WIDTHS, layers)):
            blocks = []
            for j in range(depth):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(in_planes, width, stride))
                in_planes = width * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

        if init == "kaiming":
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


_LAYOUTS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)), 50: (Bottleneck, (3, 4, 6, 3))}


def _build(name: str, depth: int, tract: bool, num_classes, in_channels, image_size, zero_init_residual):
    num_classes = _checks.positive_int(name, "num_classes", num_classes)
    in_channels = _checks.positive_int(name, "in_channels", in_channels)
    _checks.positive_int(name, "image_size", image_size)  # only checked: the network pools adaptively
    if not isinstance(zero_init_residual, bool):
        raise ValueError(f"{name}: zero_init_residual must be True or False, got {zero_init_residual!r}")
    block, layers = _LAYOUTS[depth]
    return CifarResNet(
        block, layers, num_classes=num_classes, in_channels=in_channels, maxpool=tract,
        init="kaiming" if tract else "default", zero_init_residual=zero_init_residual,
    )


@register_model("resnet18_tract_cifar")
def resnet18_tract_cifar(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                         zero_init_residual: bool = False) -> CifarResNet:
    """ResNet-18 of the official TrAct CIFAR example (3×3 stem, max-pool kept)."""
    return _build("resnet18_tract_cifar", 18, True, num_classes, in_channels, image_size, zero_init_residual)


@register_model("resnet34_tract_cifar")
def resnet34_tract_cifar(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                         zero_init_residual: bool = False) -> CifarResNet:
    """ResNet-34 of the official TrAct CIFAR example (3×3 stem, max-pool kept)."""
    return _build("resnet34_tract_cifar", 34, True, num_classes, in_channels, image_size, zero_init_residual)


@register_model("resnet50_tract_cifar")
def resnet50_tract_cifar(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                         zero_init_residual: bool = False) -> CifarResNet:
    """ResNet-50 of the official TrAct CIFAR example (3×3 stem, max-pool kept)."""
    return _build("resnet50_tract_cifar", 50, True, num_classes, in_channels, image_size, zero_init_residual)


@register_model("resnet18_cifar")
def resnet18_cifar(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                   zero_init_residual: bool = False) -> CifarResNet:
    """The common (kuangliu) CIFAR ResNet-18: 3×3 stem, no max-pool."""
    return _build("resnet18_cifar", 18, False, num_classes, in_channels, image_size, zero_init_residual)


@register_model("resnet34_cifar")
def resnet34_cifar(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                   zero_init_residual: bool = False) -> CifarResNet:
    """The common (kuangliu) CIFAR ResNet-34: 3×3 stem, no max-pool."""
    return _build("resnet34_cifar", 34, False, num_classes, in_channels, image_size, zero_init_residual)


@register_model("resnet50_cifar")
def resnet50_cifar(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                   zero_init_residual: bool = False) -> CifarResNet:
    """The common (kuangliu) CIFAR ResNet-50: 3×3 stem, no max-pool."""
    return _build("resnet50_cifar", 50, False, num_classes, in_channels, image_size, zero_init_residual)
