"""SmallResNet: open-TrAct's compact GELU ResNet for CIFAR-100 (≈2.96M parameters, ≈423M FLOPs).

Source: RGenDiff/open-tract (README table and ``TrAct_Test.ipynb``; spec ``tract.md`` §4.4), rebuilt from its
description: a 3×3 stride-1 bias-free stem conv (3→64) + BN + GELU; three stages of BasicBlocks (two 3×3
conv-BN layers, GELU inside and after the residual sum; 1×1 conv-BN shortcut when the shape changes) with
blocks (2, 2, 2) and channels (64, 128, 256), stride 2 on the first block of every stage whose width
changes (so 32×32 → 32, 16, 8); global average pool; LayerNorm(256, eps 1e-6); an MLP head
Linear(256, 512) → GELU → Linear(512, classes). PyTorch's default init.

Parameter budget with ``num_classes=100`` (matches the published 2.96M):
stem 1,728 + BN 128; stage 1 147,968; stage 2 525,568; stage 3 2,099,712; LayerNorm 512;
head 131,584 + 51,300 → **2,958,500**. (Without the 512-wide head MLP a plain Linear head would give 2.80M,
5% short; the head MLP is what closes the gap, at ~0.2M FLOPs.)

Deliberate difference: the stem conv is called ``conv1`` (open-TrAct calls it ``patch_embed``) so every ResNet
here has its TrAct layer at ``model.conv1``; ``in_channels``, stage layout and head width are configurable
(``head_hidden=0`` gives a plain Linear head).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from tractable.models import _checks
from tractable.models.registry import register_model
from tractable.models.resnet_cifar import BasicBlock

__all__ = ["SmallResNet", "GELUBasicBlock"]


class GELUBasicBlock(BasicBlock):
    """BasicBlock with GELU: conv3×3-BN-GELU-conv3×3-BN, + shortcut, GELU."""

    activation = nn.GELU


class SmallResNet(nn.Module):
    """Stem → ``stages`` (an ``nn.Sequential`` of per-stage ``nn.Sequential``) → pool → LayerNorm → MLP head."""

    tract_layer = "conv1"

    def __init__(
        self,
        *,
        num_classes: int = 100,
        in_channels: int = 3,
        blocks: Sequence[int] = (2, 2, 2),
        channels: Sequence[int] = (64, 128, 256),
        head_hidden: int = 512,
    ):
        super().__init__()
        name = "resnet_small"
        num_classes = _checks.positive_int(name, "num_classes", num_classes)
        in_channels = _checks.positive_int(name, "in_channels", in_channels)
        blocks = _checks.int_tuple(name, "blocks", blocks)
        channels = _checks.int_tuple(name, "channels", channels)
        head_hidden = _checks.positive_int(name, "head_hidden", head_hidden, minimum=0)
        if len(blocks) != len(channels):
            raise ValueError(f"{name}: blocks and channels must have the same length, got {blocks!r} and {channels!r}")

        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.act = nn.GELU()
        stages, in_planes = [], channels[0]
        for depth, width in zip(blocks, channels):
            stride = 2 if width != in_planes else 1
            stage = []
            for j in range(depth):
                stage.append(GELUBasicBlock(in_planes, width, stride if j == 0 else 1))
                in_planes = width
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.norm = nn.LayerNorm(in_planes, eps=1e-6)
        if head_hidden:
            self.head = nn.Sequential(nn.Linear(in_planes, head_hidden), nn.GELU(), nn.Linear(head_hidden, num_classes))
        else:
            self.head = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.act(self.bn1(self.conv1(x))))
        return self.head(self.norm(torch.flatten(self.pool(x), 1)))


@register_model("resnet_small")
def resnet_small(*, num_classes: int = 100, in_channels: int = 3, image_size: int = 32,
                 blocks: Sequence[int] = (2, 2, 2), channels: Sequence[int] = (64, 128, 256),
                 head_hidden: int = 512) -> SmallResNet:
    """open-TrAct's small GELU ResNet (2,958,500 parameters for 100 classes). ``image_size`` is only checked:
    the network pools globally."""
    _checks.positive_int("resnet_small", "image_size", image_size)
    return SmallResNet(num_classes=num_classes, in_channels=in_channels, blocks=blocks, channels=channels,
                       head_hidden=head_hidden)
