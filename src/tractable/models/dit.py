"""Diffusion Transformers (DiT, Peebles & Xie 2023) with adaLN-Zero blocks, and the 1×1-patch variant (MDiT).

Forward: ``model(x_t, t, y=None)`` → the prediction, shape (N, C_out, H, W) with C_out = C (or 2C with
``learn_sigma=True``, the official DiT's learned-variance head; :class:`tractable.diffusion.GaussianDiffusion`
uses only the first half). ``t`` holds integer timesteps (N,); ``y`` class labels, −1 meaning "no class" (the
classifier-free-guidance null label; ignored unless ``class_cond=True``).

Architecture (as the official implementation, written afresh):

* **patch embedding** ``x_embedder.proj``: Conv2d(C, D, p, stride p) — the TrAct target (``tract_layer``);
  tokens get a *fixed* 2-D sin-cos position embedding (half of D encodes the row, half the column);
* **conditioning** c = timestep embedding (sinusoid of 256 frequencies → Linear → SiLU → Linear) + label
  embedding (``num_classes`` + 1 rows, the last one the null label);
* **adaLN-Zero block**: LayerNorm without affine parameters, modulated by c: ``(shift, scale, gate) × 2`` from
  SiLU → Linear(D, 6D) (zero-initialised), x ← x + gate·Attn(LN(x)(1 + scale) + shift), the same for the MLP
  (ratio 4, tanh-GELU). At initialisation every block is the identity;
* **final layer**: adaLN (shift, scale) + Linear(D, p²·C_out), zero-initialised, so the initial output is 0.

Registered sizes (``dit_s_2``/``dit_b_2`` as in the paper; D, depth, heads): tiny (64, 4, 4), S (384, 12, 6),
B (768, 12, 12). With 32×32×4 inputs, ``learn_sigma=True``, ``class_cond=True`` and 1000 classes the trainable
parameter counts are the official ones: DiT-S/2 32,865,056, DiT-B/2 130,315,808 (the position embedding is a
buffer-like frozen parameter, not counted).

Precision: the model runs as float32, or as a pure bfloat16 or float64 model (``model.to(dtype)``): the timestep
sinusoid is computed in float32 (float64 for a float64 model) and cast to the weights' dtype, the position
embedding follows the input's dtype.

``mdit_*``: the same transformer with 1×1 patches (one token per pixel; open-TrAct's "MDiT with 1×1 patch
embeddings" — its exact architecture is not public, this is the plain DiT with p = 1). The sequence length is
H·W, so use it on small images or latents.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from tractable.models import _checks
from tractable.models.registry import register_model

__all__ = ["DiT", "DiTBlock", "timestep_embedding", "sincos_2d_grid"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(N,) timesteps → (N, dim) [cos | sin] features with frequencies max_period^(−i/half), i < half; computed in
    float32 (float64 when ``dtype`` is float64) and returned as ``dtype``."""
    half = dim // 2
    work = torch.float64 if dtype == torch.float64 else torch.float32
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=work, device=t.device) / half)
    args = t.to(work)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb.to(dtype)


def sincos_2d_grid(dim: int, grid: int) -> torch.Tensor:
    """(grid², dim) fixed 2-D position embedding: the first half of the channels encodes the row index, the second
    half the column index, each as [sin | cos] with frequencies 10000^(−2i/(dim/2))."""
    if dim % 4:
        raise ValueError(f"sincos_2d_grid: dim must be divisible by 4, got {dim}")
    q = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(q, dtype=torch.float64) / q)
    coords = torch.arange(grid, dtype=torch.float64)
    rows = coords.repeat_interleave(grid)  # token k = (row k // grid, column k % grid)
    cols = coords.repeat(grid)

    def enc(pos):
        a = pos[:, None] * omega[None]
        return torch.cat([torch.sin(a), torch.cos(a)], dim=1)

    return torch.cat([enc(rows), enc(cols)], dim=1).float()


def _modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class _PatchEmbed(nn.Module):
    def __init__(self, in_channels, dim, patch):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, T, D), tokens in row-major order


class _Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        N, T, D = x.shape
        q, k, v = self.qkv(x).reshape(N, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(N, T, D))


class _Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block (see the module docstring)."""

    def __init__(self, dim, heads, mlp_ratio=4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c):
        s1, sc1, g1, s2, sc2, g2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + g1.unsqueeze(1) * self.attn(_modulate(self.norm1(x), s1, sc1))
        return x + g2.unsqueeze(1) * self.mlp(_modulate(self.norm2(x), s2, sc2))


class _FinalLayer(nn.Module):
    def __init__(self, dim, patch, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch * patch * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(_modulate(self.norm_final(x), shift, scale))


class _TimestepEmbedder(nn.Module):
    def __init__(self, dim, freq_dim=256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t):  # the sinusoid in the weights' dtype: the model runs in float32, bfloat16 or float64
        return self.mlp(timestep_embedding(t, self.freq_dim, dtype=self.mlp[0].weight.dtype))


class DiT(nn.Module):
    """Diffusion Transformer; ``patch_size=1`` gives the 1×1-patch variant. See the module docstring."""

    tract_layer = "x_embedder.proj"

    def __init__(self, *, image_size: int = 32, in_channels: int = 4, patch_size: int = 2, hidden: int = 384,
                 depth: int = 12, heads: int = 6, mlp_ratio: float = 4.0, num_classes: int = 1000,
                 class_cond: bool = False, learn_sigma: bool = False, name: str = "DiT"):
        super().__init__()
        image_size = _checks.positive_int(name, "image_size", image_size)
        in_channels = _checks.positive_int(name, "in_channels", in_channels)
        patch_size = _checks.positive_int(name, "patch_size", patch_size)
        hidden = _checks.positive_int(name, "hidden", hidden)
        depth = _checks.positive_int(name, "depth", depth)
        heads = _checks.positive_int(name, "heads", heads)
        num_classes = _checks.positive_int(name, "num_classes", num_classes)
        if image_size % patch_size:
            raise ValueError(f"{name}: image_size={image_size} is not divisible by patch_size={patch_size}")
        if hidden % heads or hidden % 4:
            raise ValueError(f"{name}: hidden={hidden} must be divisible by heads={heads} and by 4")
        self.image_size, self.in_channels, self.patch_size = image_size, in_channels, patch_size
        self.out_channels = in_channels * (2 if learn_sigma else 1)
        self.num_classes, self.class_cond, self.learn_sigma = num_classes, bool(class_cond), bool(learn_sigma)
        self.grid = image_size // patch_size
        self.x_embedder = _PatchEmbed(in_channels, hidden, patch_size)
        self.t_embedder = _TimestepEmbedder(hidden)
        self.y_embedder = nn.Embedding(num_classes + 1, hidden) if class_cond else None  # last row: null label
        self.pos_embed = nn.Parameter(sincos_2d_grid(hidden, self.grid).unsqueeze(0), requires_grad=False)
        self.blocks = nn.ModuleList(DiTBlock(hidden, heads, mlp_ratio) for _ in range(depth))
        self.final_layer = _FinalLayer(hidden, patch_size, self.out_channels)
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:  # adaLN-Zero
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for lin in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, p²·C) → (N, C, H, W); each token's channels are ordered (row-in-patch, column-in-patch, C)."""
        p, g, c = self.patch_size, self.grid, self.out_channels
        x = x.reshape(x.shape[0], g, g, p, p, c)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(x.shape[0], c, g * p, g * p)

    def condition(self, t: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
        c = self.t_embedder(t)
        if self.y_embedder is not None:
            if y is None:
                y = torch.full_like(t, -1)
            idx = torch.where(y < 0, torch.full_like(y, self.num_classes), y)
            c = c + self.y_embedder(idx)
        return c

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"DiT: expected {self.image_size}×{self.image_size} inputs, got {tuple(x.shape[-2:])}")
        h = self.x_embedder(x) + self.pos_embed.to(x.dtype)
        c = self.condition(t, y)
        for block in self.blocks:
            h = block(h, c)
        return self.unpatchify(self.final_layer(h, c))


_SIZES = {"tiny": (64, 4, 4), "s": (384, 12, 6), "b": (768, 12, 12)}


def _make(size, patch, name):
    hidden, depth, heads = _SIZES[size]

    def builder(*, image_size: int = 32, in_channels: int = 4, num_classes: int = 1000, class_cond: bool = False,
                learn_sigma: bool = False, patch_size: int = patch, mlp_ratio: float = 4.0) -> DiT:
        return DiT(image_size=image_size, in_channels=in_channels, patch_size=patch_size, hidden=hidden,
                   depth=depth, heads=heads, mlp_ratio=mlp_ratio, num_classes=num_classes, class_cond=class_cond,
                   learn_sigma=learn_sigma, name=name)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"{name}: DiT with hidden {hidden}, depth {depth}, {heads} heads, {patch}×{patch} patches."
    return register_model(name)(builder)


dit_tiny_2 = _make("tiny", 2, "dit_tiny_2")
dit_s_2 = _make("s", 2, "dit_s_2")
dit_b_2 = _make("b", 2, "dit_b_2")
mdit_tiny = _make("tiny", 1, "mdit_tiny")
mdit_s = _make("s", 1, "mdit_s")
mdit_b = _make("b", 1, "mdit_b")
