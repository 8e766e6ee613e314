"""``lenet``: LeNet-5 as in the feedback-alignment benchmark (Sanfiz & Akrout 2021, BioTorch's ``le_net_mnist``).

conv5×5(6) → ReLU → max-pool 2 → conv5×5(16) → ReLU → max-pool 2 → flatten (16·5·5 = 400) → Linear(120) →
ReLU → Linear(84) → ReLU → Linear(classes), on 32×32 inputs. Smaller images (28×28 MNIST / Fashion-MNIST) are
zero-padded to 32×32 by ``conv1``'s padding ((32 − image_size)/2 per side), so the feature maps have the 32×32
LeNet's shapes. PyTorch's default (Kaiming-uniform) init. 61,706 parameters for 1×32×32 → 10.

A plain chain of layers (``feedback_chain = True``): DFA's feedback points are the inputs of ``conv2``,
``fc1``, ``fc2`` and ``fc3`` (see :mod:`tractable.feedback.chain`).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from tractable.models import _checks
from tractable.models.registry import register_model

__all__ = ["LeNet"]


class LeNet(nn.Module):
    """LeNet-5: ``conv1`` → ``conv2`` → ``fc1`` → ``fc2`` → ``fc3`` with ReLU and 2×2 max-pooling."""

    tract_layer = "conv1"
    feedback_chain = True

    def __init__(self, *, num_classes: int = 10, in_channels: int = 1, image_size: int = 32):
        super().__init__()
        name = "lenet"
        num_classes = _checks.positive_int(name, "num_classes", num_classes)
        in_channels = _checks.positive_int(name, "in_channels", in_channels)
        image_size = _checks.positive_int(name, "image_size", image_size)
        if image_size > 32 or (32 - image_size) % 2:
            raise ValueError(f"{name}: image_size must be 32 or smaller by an even number (it is zero-padded to "
                             f"32×32), got {image_size}")
        self.image_size = image_size
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=(32 - image_size) // 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"lenet: expected input (N, C, {self.image_size}, {self.image_size}), "
                             f"got {tuple(x.shape)}")
        x = self.pool(self.act(self.conv1(x)))
        x = self.pool(self.act(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = self.act(self.fc1(x))
        x = self.act(self.fc2(x))
        return self.fc3(x)


@register_model("lenet")
def lenet(*, num_classes: int = 10, in_channels: int = 1, image_size: int = 32) -> LeNet:
    """LeNet-5 of the feedback-alignment benchmark (32×32 inputs; 28×28 are zero-padded by ``conv1``)."""
    return LeNet(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
