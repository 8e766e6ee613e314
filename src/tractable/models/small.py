"""Small baselines for quick experiments and tests: ``small_cnn``, ``mlp``, ``cnn1d``.

None reproduces a specific paper model; they are compact stand-ins in the usual shapes.

* ``small_cnn`` — conv3×3-BN-ReLU blocks of widths (32, 64, 128) with a 2×2 max-pool after every block but
  the last, global average pool, Linear head. ``conv1`` (bias-free) is the TrAct target. Works for any
  ``in_channels`` and any ``image_size`` ≥ 2^(blocks−1) (8×8 digits, 28×28 MNIST, 32×32 CIFAR): 94,762
  parameters for 3×32×32 → 10.
* ``mlp`` — flatten → ``fc1`` (TrAct target) → activation → … → ``head``; hidden widths default [256, 256].
  ``in_features`` = ``in_channels · image_size²``, or ``in_channels · input_size`` when ``input_size`` is
  given (1-D signals), or set directly. ``hidden=[]`` makes ``fc1`` the whole (linear) classifier.
* ``cnn1d`` — for MNIST-1D (Greydanus 2020, 40-sample signals): three Conv1d layers (kernel 5, 3, 3; stride 2;
  ReLU; widths 32) then flatten → Linear. Shaped after the MNIST-1D paper's small CNN (kernel-5/3/3, stride
  2), with 32 instead of 25 channels and padding chosen so any ``input_size`` ≥ 1 works. Accepts (B, 40) as
  well as (B, 1, 40) when ``in_channels=1``. 8,010 parameters for 1×40 → 10.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

from tractable.models import _checks
from tractable.models.registry import register_model

__all__ = ["SmallCNN", "MLP", "CNN1d"]

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class SmallCNN(nn.Module):
    """``conv1``-BN-ReLU, then (pool, conv-BN-ReLU) per extra width, global average pool, ``fc``."""

    tract_layer = "conv1"

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                 widths: Sequence[int] = (32, 64, 128)):
        super().__init__()
        name = "small_cnn"
        num_classes = _checks.positive_int(name, "num_classes", num_classes)
        in_channels = _checks.positive_int(name, "in_channels", in_channels)
        widths = _checks.int_tuple(name, "widths", widths)
        _checks.positive_int(name, "image_size", image_size, minimum=2 ** (len(widths) - 1))
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        layers = []
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [nn.MaxPool2d(2), nn.Conv2d(w_in, w_out, 3, padding=1, bias=False), nn.BatchNorm2d(w_out),
                       nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)

    @property
    def dfa_points(self):
        """DFA feedback points (module outputs): the ReLU ending every conv block."""
        return ("relu",) + tuple(f"features.{i}" for i, m in enumerate(self.features) if isinstance(m, nn.ReLU))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class MLP(nn.Module):
    """Flatten → ``fc1`` → act → [Linear → act]* → ``head`` (Identity when ``hidden`` is empty)."""

    tract_layer = "fc1"
    feedback_chain = True  # a plain chain of layers: DFA's feedback points are the hidden activations

    def __init__(self, in_features: int, *, num_classes: int = 10, hidden: Sequence[int] = (256, 256),
                 activation: str = "relu"):
        super().__init__()
        name = "mlp"
        in_features = _checks.positive_int(name, "in_features", in_features)
        num_classes = _checks.positive_int(name, "num_classes", num_classes)
        hidden = _checks.int_tuple(name, "hidden", hidden, allow_empty=True)
        _checks.choice(name, "activation", activation, sorted(_ACTIVATIONS))
        self.in_features = in_features
        act = _ACTIVATIONS[activation]
        widths = list(hidden) + [num_classes]
        self.fc1 = nn.Linear(in_features, widths[0])
        body = []
        for w_in, w_out in zip(widths[:-2], widths[1:-1]):
            body += [act(), nn.Linear(w_in, w_out)]
        if hidden:
            body.append(act())
        self.body = nn.Sequential(*body)
        self.head = nn.Linear(widths[-2], num_classes) if hidden else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        if x.shape[1] != self.in_features:
            raise ValueError(f"mlp: expected {self.in_features} features per sample after flattening, "
                             f"got {x.shape[1]} (input shape {tuple(x.shape)})")
        return self.head(self.body(self.fc1(x)))


class CNN1d(nn.Module):
    """Three stride-2 Conv1d-ReLU layers (``conv1``, ``conv2``, ``conv3``) → flatten → ``fc``."""

    tract_layer = "conv1"
    feedback_chain = True  # DFA's feedback points: the inputs of conv2, conv3 and fc

    def __init__(self, *, num_classes: int = 10, in_channels: int = 1, input_size: int = 40, channels: int = 32):
        super().__init__()
        name = "cnn1d"
        num_classes = _checks.positive_int(name, "num_classes", num_classes)
        in_channels = _checks.positive_int(name, "in_channels", in_channels)
        input_size = _checks.positive_int(name, "input_size", input_size)
        channels = _checks.positive_int(name, "channels", channels)
        self.in_channels, self.input_size = in_channels, input_size
        self.conv1 = nn.Conv1d(in_channels, channels, 5, stride=2, padding=2)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        length = input_size
        for _ in range(3):
            length = (length - 1) // 2 + 1  # each conv keeps ceil(L / 2) samples
        self.fc = nn.Linear(channels * length, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2 and self.in_channels == 1:
            x = x.unsqueeze(1)
        if x.dim() != 3 or x.shape[1:] != (self.in_channels, self.input_size):
            raise ValueError(f"cnn1d: expected input (B, {self.in_channels}, {self.input_size}), got {tuple(x.shape)}")
        x = self.relu(self.conv3(self.relu(self.conv2(self.relu(self.conv1(x))))))
        return self.fc(torch.flatten(x, 1))


@register_model("small_cnn")
def small_cnn(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
              widths: Sequence[int] = (32, 64, 128)) -> SmallCNN:
    """A compact conv-BN-ReLU CNN for 8×8 to 32×32 images."""
    return SmallCNN(num_classes=num_classes, in_channels=in_channels, image_size=image_size, widths=widths)


@register_model("mlp")
def mlp(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, input_size: Optional[int] = None,
        in_features: Optional[int] = None, hidden: Sequence[int] = (256, 256), activation: str = "relu") -> MLP:
    """A fully connected classifier on flattened input (``in_features`` > ``input_size`` > ``image_size``)."""
    name = "mlp"
    in_channels = _checks.positive_int(name, "in_channels", in_channels)
    if in_features is None:
        if input_size is not None:
            in_features = in_channels * _checks.positive_int(name, "input_size", input_size)
        else:
            in_features = in_channels * _checks.positive_int(name, "image_size", image_size) ** 2
    return MLP(in_features, num_classes=num_classes, hidden=hidden, activation=activation)


@register_model("cnn1d")
def cnn1d(*, num_classes: int = 10, in_channels: int = 1, input_size: int = 40, channels: int = 32) -> CNN1d:
    """A small 1-D CNN for MNIST-1D-sized signals."""
    return CNN1d(num_classes=num_classes, in_channels=in_channels, input_size=input_size, channels=channels)
