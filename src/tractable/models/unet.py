"""A convolutional diffusion UNet (DDPM/ADM style) whose first layer is a 3×3 conv (the TrAct target).

Forward: ``model(x_t, t, y=None)`` → prediction with the input's shape (2C channels with ``learn_sigma``).

* ``conv_in``: Conv2d(C, ch, 3, padding 1) — ``tract_layer``;
* conditioning: sinusoidal timestep features (ch) → Linear → SiLU → Linear (4·ch), plus a label embedding
  (``num_classes`` + 1 rows, the last the null label −1) when ``class_cond``;
* encoder: per level ℓ with width ch·mult[ℓ], ``num_res_blocks`` residual blocks (GroupNorm → SiLU → 3×3 conv,
  + Linear(emb) added per channel, GroupNorm → SiLU → 3×3 conv zero-initialised; 1×1 skip when widths
  differ), self-attention blocks (GroupNorm, 1×1 qkv, zero-initialised 1×1 output) at the downsampling factors in
  ``attn_ds``, and a stride-2 3×3 conv between levels;
* middle: residual block, attention, residual block; decoder: mirror with skip concatenation and
  nearest-neighbour upsampling + 3×3 conv; output GroupNorm → SiLU → 3×3 conv (zero-initialised, so the
  initial output is 0).

Sizes (ch, mult, blocks, attention): ``unet_tiny`` (32, (1, 2), 1, none) for CPU tests, ``unet_s``
(64, (1, 2, 2), 2, ds 2), ``unet_b`` (128, (1, 2, 3, 4), 3, ds 4 and 8) with 115.9 M parameters (3 channels) — the scale of
open-TrAct's LDM-B. The image size must be divisible by 2^(levels − 1).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from tractable.models import _checks
from tractable.models.dit import timestep_embedding
from tractable.models.registry import register_model

__all__ = ["UNet"]


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, c), c)


class _ResBlock(nn.Module):
    def __init__(self, cin, cout, emb, dropout=0.0):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb, cout)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x, e):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(e))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class _AttnBlock(nn.Module):
    def __init__(self, c, heads):
        super().__init__()
        if c % heads:
            raise ValueError(f"UNet: attention width {c} is not divisible by heads={heads}")
        self.heads = heads
        self.norm = _norm(c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj = nn.Conv2d(c, c, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x, e=None):
        N, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(N, 3, self.heads, C // self.heads, H * W).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, HW, C/heads)
        return x + self.proj(out.transpose(-1, -2).reshape(N, C, H, W))


class _Down(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=1)

    def forward(self, x, e=None):
        return self.conv(x)


class _Up(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x, e=None):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """Diffusion UNet; see the module docstring."""

    tract_layer = "conv_in"

    def __init__(self, *, image_size: int = 32, in_channels: int = 3, ch: int = 64, mult: Sequence[int] = (1, 2, 2),
                 num_res_blocks: int = 2, attn_ds: Sequence[int] = (2,), heads: int = 4, dropout: float = 0.0,
                 num_classes: int = 1000, class_cond: bool = False, learn_sigma: bool = False, name: str = "UNet"):
        super().__init__()
        image_size = _checks.positive_int(name, "image_size", image_size)
        in_channels = _checks.positive_int(name, "in_channels", in_channels)
        ch = _checks.positive_int(name, "ch", ch)
        mult = _checks.int_tuple(name, "mult", mult)
        num_res_blocks = _checks.positive_int(name, "num_res_blocks", num_res_blocks)
        attn_ds = _checks.int_tuple(name, "attn_ds", attn_ds, allow_empty=True)
        num_classes = _checks.positive_int(name, "num_classes", num_classes)
        dropout = _checks.probability(name, "dropout", dropout)
        factor = 2 ** (len(mult) - 1)
        if image_size % factor:
            raise ValueError(f"{name}: image_size={image_size} must be divisible by 2^(levels-1)={factor} "
                             f"(mult={mult})")
        self.image_size, self.in_channels = image_size, in_channels
        self.out_channels = in_channels * (2 if learn_sigma else 1)
        self.num_classes, self.class_cond, self.learn_sigma = num_classes, bool(class_cond), bool(learn_sigma)
        self.ch = ch
        emb = 4 * ch
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.label_emb = nn.Embedding(num_classes + 1, emb) if class_cond else None
        self.down = nn.ModuleList()
        widths = [ch]
        c, ds = ch, 1
        for level, m in enumerate(mult):
            for _ in range(num_res_blocks):
                layers = [_ResBlock(c, ch * m, emb, dropout)]
                c = ch * m
                if ds in attn_ds:
                    layers.append(_AttnBlock(c, heads))
                self.down.append(nn.ModuleList(layers))
                widths.append(c)
            if level < len(mult) - 1:
                self.down.append(nn.ModuleList([_Down(c)]))
                widths.append(c)
                ds *= 2
        self.mid = nn.ModuleList([_ResBlock(c, c, emb, dropout), _AttnBlock(c, heads), _ResBlock(c, c, emb, dropout)])
        self.up = nn.ModuleList()
        for level, m in reversed(list(enumerate(mult))):
            for i in range(num_res_blocks + 1):
                layers = [_ResBlock(c + widths.pop(), ch * m, emb, dropout)]
                c = ch * m
                if ds in attn_ds:
                    layers.append(_AttnBlock(c, heads))
                if level > 0 and i == num_res_blocks:
                    layers.append(_Up(c))
                    ds //= 2
                self.up.append(nn.ModuleList(layers))
        self.norm_out = _norm(c)
        self.conv_out = nn.Conv2d(c, self.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"UNet: expected {self.image_size}×{self.image_size} inputs, got {tuple(x.shape[-2:])}")
        e = self.time_mlp(timestep_embedding(t, self.ch).to(x.dtype))
        if self.label_emb is not None:
            if y is None:
                y = torch.full_like(t, -1)
            e = e + self.label_emb(torch.where(y < 0, torch.full_like(y, self.num_classes), y))
        h = self.conv_in(x)
        skips = [h]
        for layers in self.down:
            for layer in layers:
                h = layer(h, e) if isinstance(layer, _ResBlock) else layer(h)
            skips.append(h)
        for layer in self.mid:
            h = layer(h, e) if isinstance(layer, _ResBlock) else layer(h)
        for layers in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            for layer in layers:
                h = layer(h, e) if isinstance(layer, _ResBlock) else layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))


_SIZES = {
    "tiny": dict(ch=32, mult=(1, 2), num_res_blocks=1, attn_ds=()),
    "s": dict(ch=64, mult=(1, 2, 2), num_res_blocks=2, attn_ds=(2,)),
    "b": dict(ch=128, mult=(1, 2, 3, 4), num_res_blocks=3, attn_ds=(4, 8)),
}


def _make(size, name):
    spec = _SIZES[size]

    def builder(*, image_size: int = 32, in_channels: int = 3, num_classes: int = 1000, class_cond: bool = False,
                learn_sigma: bool = False, dropout: float = 0.0, heads: int = 4) -> UNet:
        return UNet(image_size=image_size, in_channels=in_channels, num_classes=num_classes, class_cond=class_cond,
                    learn_sigma=learn_sigma, dropout=dropout, heads=heads, name=name, **spec)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"{name}: diffusion UNet, ch {spec['ch']}, mult {spec['mult']}, 3×3 conv_in (TrAct target)."
    return register_model(name)(builder)


unet_tiny = _make("tiny", "unet_tiny")
unet_s = _make("s", "unet_s")
unet_b = _make("b", "unet_b")
