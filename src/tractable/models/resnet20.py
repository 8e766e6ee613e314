"""``resnet20_cifar``: the CIFAR ResNet-20 of He et al. (2016), the model of the subspace paper's CIFAR-10 runs.

conv3×3(16·w) stem → three stages of three BasicBlocks at widths 16·w, 32·w, 64·w (stride 2 at the start of
stages 2 and 3) → global average pool → Linear. Every conv is bias-free and followed by BatchNorm; a block whose
shape changes uses a 1×1 conv + BN projection shortcut. Convs are initialised Kaiming-normal (fan_in, ReLU gain
√2), as the subspace reference's ``conv_init kaiming_normal``; BN starts at 1/0. 272,474 parameters for w = 1
and 10 classes.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from tractable.models import _checks
from tractable.models.registry import register_model

__all__ = ["ResNet20Block", "CifarResNet20"]


class ResNet20Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet20(nn.Module):
    tract_layer = "conv1"

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, width: int = 1, blocks: int = 3):
        super().__init__()
        name = "resnet20_cifar"
        num_classes = _checks.positive_int(name, "num_classes", num_classes)
        in_channels = _checks.positive_int(name, "in_channels", in_channels)
        width = _checks.positive_int(name, "width", width)
        blocks = _checks.positive_int(name, "blocks", blocks)
        w = [16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(in_channels, w[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w[0])
        layers, cin = [], w[0]
        for i, cout in enumerate(w):
            for j in range(blocks):
                layers.append(ResNet20Block(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(w[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")

    @property
    def dfa_points(self):
        """DFA feedback points (module outputs): the stem's BatchNorm and every block."""
        return ("bn1",) + tuple(f"layers.{i}" for i in range(len(self.layers)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@register_model("resnet20_cifar")
def resnet20_cifar(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, width: int = 1,
                   blocks: int = 3) -> CifarResNet20:
    """CIFAR ResNet-20 (He et al. 2016; 6n+2 layers with n = ``blocks``), width multiplier ``width``."""
    _checks.positive_int("resnet20_cifar", "image_size", image_size, minimum=4)
    return CifarResNet20(num_classes=num_classes, in_channels=in_channels, width=width, blocks=blocks)
