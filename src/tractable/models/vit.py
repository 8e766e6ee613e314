"""Pre-norm Vision Transformer parts and two CIFAR ViTs.

Architecture: Dosovitskiy et al., "An Image is Worth 16x16 Words" (ICLR 2021), pre-norm form
(``x + attn(LN(x))``, ``x + mlp(LN(x))``). Attention uses explicit ``q``/``k``/``v``/``o`` Linear layers and
``F.scaled_dot_product_attention`` (not ``nn.MultiheadAttention``), so every projection is an ordinary Linear
that learning rules (TrAct, feedback alignment, subspaces) can address by name.

Registered models:

* ``vit_cifar`` — the ViT of the TrAct paper's CIFAR-10 experiment (Fig. 4), omihub777/ViT-CIFAR: the image is
  cut into 4×4 patches, each flattened in (row, column, channel) order into 48 values, giving (B, 64, 48)
  tokens; ``emb = nn.Linear(48, 384)`` embeds them (TrAct target, b = 64·B rows); a learnable cls token and
  learnable positional embedding (65 tokens, both N(0, 1) as in the source) are added; 7 encoder layers,
  12 heads, hidden 384, MLP hidden 1536, dropout 0; LayerNorm + Linear on the cls token. Two quirks of the
  source are kept by default because the paper's numbers were obtained with them: attention logits are
  scaled by 1/√hidden rather than 1/√d_head (``attn_scale="hidden"``; ``"head"`` gives the standard one), and
  the MLP applies GELU after *both* Linears (``mlp_out_gelu=True``). Unlike the source we take ``patch_size``
  in pixels (the source's ``patch`` is patches per side) and support ``in_channels`` ≠ 3.
  Parameters with 10 classes: 12,470,026.
* ``vit_small_open`` — open-TrAct's CIFAR-100 ViT (RGenDiff/open-tract, spec ``tract.md`` §4.4): Conv2d patch
  embedding ``patch_embed.proj`` (4×4, stride 4; TrAct target), fixed (not learned) sinusoidal positional
  encoding, L = 12 blocks of d = 128, h = 4 (d_k = 32) with timm's block layout (bias-free q/k/v, MLP ratio 4,
  LayerNorm eps 1e-5), token mean-pool, LayerNorm(eps 1e-6), MLP head Linear(128, 512) → GELU →
  Linear(512, classes); PyTorch default init. Parameters with 100 classes: 2,498,532 (published: 2.51M; the
  12 blocks are 2,374,656, the head MLP 117,348 — with a plain Linear head it would be 2.39M, −5%).
  Deliberate difference: the source wraps a bare Conv2d called ``patch_embed``; ours sits at
  ``patch_embed.proj`` as in timm/DeiT. ``pos_embed="sincos_1d"`` (default, as the source: Vaswani's 1-D
  encoding over the token index) or ``"sincos_2d"`` (separate row/column encodings).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from tractable.models import _checks
from tractable.models.registry import register_model

__all__ = [
    "PatchEmbed",
    "SelfAttention",
    "FeedForward",
    "TransformerBlock",
    "CifarViT",
    "OpenViT",
    "patchify",
    "sincos_1d",
    "sincos_2d",
]


# ----------------------------------------------------------------------------------------------- parts
def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) → (B, (H/p)(W/p), p·p·C) non-overlapping patches, rows then columns; each patch flattened
    in (row-in-patch, column-in-patch, channel) order."""
    if x.dim() != 4:
        raise ValueError(f"patchify: expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    B, C, H, W = x.shape
    p = patch_size
    if H % p or W % p:
        raise ValueError(f"patchify: H and W must be multiples of patch_size={p}, got {H}×{W}")
    x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(B, (H // p) * (W // p), p * p * C)


def sincos_1d(num_tokens: int, dim: int) -> torch.Tensor:
    """(num_tokens, dim) sinusoidal encoding of the token index (Vaswani et al. 2017): even channels sin,
    odd channels cos, frequencies 10000^(−2i/dim)."""
    if dim % 2:
        raise ValueError(f"sincos_1d: dim must be even, got {dim}")
    pos = torch.arange(num_tokens, dtype=torch.float64).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    pe = torch.zeros(num_tokens, dim, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe.float()


def sincos_2d(height: int, width: int, dim: int) -> torch.Tensor:
    """(height·width, dim) 2-D sinusoidal encoding (row-major tokens): the first half of the channels encode
    the column, the second half the row, each as [sin, cos] over dim/4 frequencies 10000^(−i/(dim/4))."""
    if dim % 4:
        raise ValueError(f"sincos_2d: dim must be a multiple of 4, got {dim}")
    q = dim // 4
    omega = 1.0 / 10000.0 ** (torch.arange(q, dtype=torch.float64) / q)
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )
    c = cols.reshape(-1, 1) * omega
    r = rows.reshape(-1, 1) * omega
    return torch.cat([c.sin(), c.cos(), r.sin(), r.cos()], dim=1).float()


class PatchEmbed(nn.Module):
    """Conv2d patch embedding (kernel = stride = ``patch_size``) → (B, N, dim) tokens; the conv is ``proj``."""

    def __init__(self, image_size: int, patch_size: int, in_channels: int, dim: int):
        super().__init__()
        self.image_size, self.patch_size = image_size, patch_size
        self.grid = image_size // patch_size
        self.num_patches = self.grid * self.grid
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"PatchEmbed: expected input (B, C, {self.image_size}, {self.image_size}) "
                f"(image_size={self.image_size}), got {tuple(x.shape)}"
            )
        return self.proj(x).flatten(2).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate ``q``, ``k``, ``v``, ``o`` Linear layers.

    ``scale`` multiplies the logits (default 1/√d_head); ``dropout`` acts on the output projection (as in
    the ViT sources we follow; attention probabilities are not dropped).
    """

    def __init__(self, dim: int, heads: int, *, qkv_bias: bool = True, scale: Optional[float] = None,
                 dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"SelfAttention: dim={dim} must be divisible by heads={heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.scale = scale if scale is not None else self.head_dim ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.o = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(B, N, self.heads, self.head_dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)), scale=self.scale)
        return self.drop(self.o(out.transpose(1, 2).reshape(B, N, D)))


class FeedForward(nn.Module):
    """``fc1`` → GELU → dropout → ``fc2`` [→ GELU] → dropout (``out_gelu`` reproduces omihub777's MLP)."""

    def __init__(self, dim: int, hidden: int, *, dropout: float = 0.0, out_gelu: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.out_act = nn.GELU() if out_gelu else nn.Identity()
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.out_act(self.fc2(x)))


class TransformerBlock(nn.Module):
    """Pre-norm encoder block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int, *, dropout: float = 0.0, qkv_bias: bool = True,
                 attn_scale: Optional[float] = None, mlp_out_gelu: bool = False, norm_eps: float = 1e-5):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = SelfAttention(dim, heads, qkv_bias=qkv_bias, scale=attn_scale, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = FeedForward(dim, mlp_hidden, dropout=dropout, out_gelu=mlp_out_gelu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


# ----------------------------------------------------------------------------------------------- models
class CifarViT(nn.Module):
    """omihub777's CIFAR ViT: Linear patch embedding ``emb`` on flattened patches, cls token, learned PE."""

    tract_layer = "emb"

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, patch_size: int = 4,
                 hidden: int = 384, mlp_hidden: int = 1536, heads: int = 12, depth: int = 7, dropout: float = 0.0,
                 attn_scale: str = "hidden", mlp_out_gelu: bool = True):
        super().__init__()
        name = "vit_cifar"
        num_classes = _checks.positive_int(name, "num_classes", num_classes)
        in_channels = _checks.positive_int(name, "in_channels", in_channels)
        image_size = _checks.positive_int(name, "image_size", image_size)
        patch_size = _checks.positive_int(name, "patch_size", patch_size)
        hidden = _checks.positive_int(name, "hidden", hidden)
        mlp_hidden = _checks.positive_int(name, "mlp_hidden", mlp_hidden)
        heads = _checks.positive_int(name, "heads", heads)
        depth = _checks.positive_int(name, "depth", depth)
        dropout = _checks.probability(name, "dropout", dropout)
        _checks.choice(name, "attn_scale", attn_scale, ("hidden", "head"))
        if not isinstance(mlp_out_gelu, bool):
            raise ValueError(f"{name}: mlp_out_gelu must be True or False, got {mlp_out_gelu!r}")
        if image_size % patch_size:
            raise ValueError(f"{name}: image_size={image_size} must be a multiple of patch_size={patch_size}")
        if hidden % heads:
            raise ValueError(f"{name}: hidden={hidden} must be divisible by heads={heads}")

        self.image_size, self.patch_size = image_size, patch_size
        num_patches = (image_size // patch_size) ** 2
        self.emb = nn.Linear(patch_size * patch_size * in_channels, hidden)
        self.cls_token = nn.Parameter(torch.randn(1, 1, hidden))
        self.pos_emb = nn.Parameter(torch.randn(1, num_patches + 1, hidden))
        scale = hidden ** -0.5 if attn_scale == "hidden" else None
        self.blocks = nn.ModuleList(
            TransformerBlock(hidden, heads, mlp_hidden, dropout=dropout, attn_scale=scale, mlp_out_gelu=mlp_out_gelu)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, num_classes)

    @property
    def dfa_points(self):
        """DFA feedback points (module outputs): the patch embedding and every block."""
        return ("emb",) + tuple(f"blocks.{i}" for i in range(len(self.blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"vit_cifar: expected input (B, C, {self.image_size}, {self.image_size}) "
                f"(image_size={self.image_size}), got {tuple(x.shape)}"
            )
        tokens = self.emb(patchify(x, self.patch_size))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1) + self.pos_emb
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))


class OpenViT(nn.Module):
    """open-TrAct's CIFAR ViT: Conv2d patch embedding, fixed sinusoidal PE, mean-pool, LayerNorm, MLP head."""

    tract_layer = "patch_embed.proj"

    def __init__(self, *, num_classes: int = 100, in_channels: int = 3, image_size: int = 32, patch_size: int = 4,
                 hidden: int = 128, depth: int = 12, heads: int = 4, mlp_ratio: float = 4.0, head_hidden: int = 512,
                 dropout: float = 0.0, pos_embed: str = "sincos_1d"):
        super().__init__()
        name = "vit_small_open"
        num_classes = _checks.positive_int(name, "num_classes", num_classes)
        in_channels = _checks.positive_int(name, "in_channels", in_channels)
        image_size = _checks.positive_int(name, "image_size", image_size)
        patch_size = _checks.positive_int(name, "patch_size", patch_size)
        hidden = _checks.positive_int(name, "hidden", hidden)
        depth = _checks.positive_int(name, "depth", depth)
        heads = _checks.positive_int(name, "heads", heads)
        head_hidden = _checks.positive_int(name, "head_hidden", head_hidden, minimum=0)
        dropout = _checks.probability(name, "dropout", dropout)
        _checks.choice(name, "pos_embed", pos_embed, ("sincos_1d", "sincos_2d"))
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or mlp_ratio <= 0:
            raise ValueError(f"{name}: mlp_ratio must be a positive number, got {mlp_ratio!r}")
        if image_size % patch_size:
            raise ValueError(f"{name}: image_size={image_size} must be a multiple of patch_size={patch_size}")
        if hidden % heads:
            raise ValueError(f"{name}: hidden={hidden} must be divisible by heads={heads}")
        if hidden % (4 if pos_embed == "sincos_2d" else 2):
            raise ValueError(f"{name}: hidden={hidden} must be divisible by {4 if pos_embed == 'sincos_2d' else 2} "
                             f"for pos_embed={pos_embed!r}")

        self.patch_embed = PatchEmbed(image_size, patch_size, in_channels, hidden)
        grid = self.patch_embed.grid
        pe = sincos_1d(grid * grid, hidden) if pos_embed == "sincos_1d" else sincos_2d(grid, grid, hidden)
        self.register_buffer("pos_embed", pe.unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList(
            TransformerBlock(hidden, heads, int(hidden * mlp_ratio), dropout=dropout, qkv_bias=False)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(hidden, eps=1e-6)
        if head_hidden:
            self.head = nn.Sequential(nn.Linear(hidden, head_hidden), nn.GELU(), nn.Linear(head_hidden, num_classes))
        else:
            self.head = nn.Linear(hidden, num_classes)

    @property
    def dfa_points(self):
        """DFA feedback points (module outputs): the patch embedding and every block."""
        return ("patch_embed",) + tuple(f"blocks.{i}" for i in range(len(self.blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x.mean(dim=1)))


@register_model("vit_cifar")
def vit_cifar(*, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, patch_size: int = 4,
              hidden: int = 384, mlp_hidden: int = 1536, heads: int = 12, depth: int = 7, dropout: float = 0.0,
              attn_scale: str = "hidden", mlp_out_gelu: bool = True) -> CifarViT:
    """The TrAct paper's CIFAR-10 ViT (omihub777/ViT-CIFAR; 12,470,026 parameters for 10 classes)."""
    return CifarViT(num_classes=num_classes, in_channels=in_channels, image_size=image_size, patch_size=patch_size,
                    hidden=hidden, mlp_hidden=mlp_hidden, heads=heads, depth=depth, dropout=dropout,
                    attn_scale=attn_scale, mlp_out_gelu=mlp_out_gelu)


@register_model("vit_small_open")
def vit_small_open(*, num_classes: int = 100, in_channels: int = 3, image_size: int = 32, patch_size: int = 4,
                   hidden: int = 128, depth: int = 12, heads: int = 4, mlp_ratio: float = 4.0, head_hidden: int = 512,
                   dropout: float = 0.0, pos_embed: str = "sincos_1d") -> OpenViT:
    """open-TrAct's CIFAR-100 ViT (2,498,532 parameters for 100 classes)."""
    return OpenViT(num_classes=num_classes, in_channels=in_channels, image_size=image_size, patch_size=patch_size,
                   hidden=hidden, depth=depth, heads=heads, mlp_ratio=mlp_ratio, head_hidden=head_hidden,
                   dropout=dropout, pos_embed=pos_embed)
