r"""CRATE-MAE (Pai et al., *Masked Completion via Structured Diffusion with White-Box Transformers*, ICLR 2024).

A masked autoencoder whose encoder layers are CRATE layers (MSSA + ISTA, :mod:`tractable.models.crate`) and whose
decoder layers invert them: x ← D̃·LN₁(x) (a bias-free linear map, no ReLU, no residual), then
x ← x − MSSA(LN₂(x)) (subtractive attention). Module tree and key names follow the official
``model/crate_ae/crate_ae.py`` (``patch_embed.proj``, ``cls_token``, ``mask_token``, ``pos_embed``,
``decoder_pos_embed``, ``blocks.{i}.layers.0.{0,1}``, ``norm``, ``decoder_embed``, ``decoder_blocks.{i}.layers.0.{0,1}``,
``decoder_norm``, ``decoder_pred``), so its checkpoints load with ``strict=True``
(:func:`tractable.models.crate.load_crate_checkpoint`).

Forward pass (as the official code, which differs from the ViT MAE — *mask tokens go through the encoder*):

1. Conv patch embedding of all N patches; keep ``int(N·(1 − mask_ratio))`` per sample chosen by an argsort
   of uniform noise drawn from an explicit ``torch.Generator``.
2. Prepend cls, append mask tokens, un-shuffle to the original patch order, add ``decoder_pos_embed`` (a fixed
   2-D sin-cos table; ``pos_embed`` is stored but unused, as in the official code).
3. Encoder blocks on all N + 1 tokens → ``norm`` (LN, eps 1e-6) → decoder blocks → ``decoder_norm`` →
   ``decoder_pred`` (Linear d → P²c) → drop cls: per-patch pixel predictions (B, N, P²c).
4. Loss: per-patch MSE against the patchified image ((p1, p2, c) order; per-patch normalised with
   ``norm_pix_loss=True``), averaged over the **masked** patches only. With ``mask_ratio=0`` no patch is
   masked and the masked-patch loss is undefined: :meth:`CRATEMAE.forward` raises a ``ValueError`` saying so
   (use :meth:`CRATEMAE.reconstruct` for reconstructions without a loss, or ``loss_on="all"``).

Official quirks kept (they decide the key layout and the numbers): ``decoder_embed`` is defined and counted
but never called; the fixed position tables are ``requires_grad=False`` parameters stored in the state dict.
The encoder's ISTA λ defaults to 0.5 (the module default of the official code; its released checkpoint was
trained with λ = 5, the book says 0.1) — η and λ are not stored in any state dict, so they are constructor
arguments. Parameters at 224²/16: tiny 11,555,328; small 25,405,824 (trainable 25,178,880); base 44,638,464
(trainable 44,335,872). The decoder's D̃ is applied like ``nn.Linear`` (x ↦ x D̃ᵀ per token).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from tractable.models import _checks
from tractable.models.crate import CRATE_PRESETS, ImageSize, MSSA, PreNorm, CRATETransformer, _pair, crate_patchify
from tractable.models.registry import register_model
from tractable.models.vit import sincos_2d

__all__ = ["CRATEMAE", "DecoderLinear", "CRATEDecoderLayer", "random_masking", "sincos_table"]


def sincos_table(grid: Tuple[int, int], dim: int) -> torch.Tensor:
    """(1, 1 + h·w, dim) fixed 2-D sin-cos table with a zero cls row (MAE's ``get_2d_sincos_pos_embed``)."""
    return torch.cat([torch.zeros(1, dim), sincos_2d(grid[0], grid[1], dim)], dim=0).unsqueeze(0)


def random_masking(batch: int, num_patches: int, mask_ratio: float, generator: Optional[torch.Generator] = None,
                   device=None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's per-sample random masking: ``(ids_keep (B, k), mask (B, N) with 1 = masked, ids_restore (B, N))``,
    k = int(N·(1 − mask_ratio)); the noise comes from ``generator`` (on the CPU; moved to ``device``)."""
    if not 0.0 <= float(mask_ratio) < 1.0:
        raise ValueError(f"random_masking: mask_ratio must be in [0, 1), got {mask_ratio!r}")
    keep = int(num_patches * (1 - mask_ratio))
    if keep < 1:
        raise ValueError(f"random_masking: mask_ratio={mask_ratio} keeps no patch of {num_patches}")
    noise = torch.rand(batch, num_patches, generator=generator).to(device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(batch, num_patches, device=device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_shuffle[:, :keep], mask, ids_restore


class DecoderLinear(nn.Module):
    """D̃: a bias-free square linear map ``weight`` (Kaiming-uniform), applied as ``F.linear(x, weight)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, dim))
        nn.init.kaiming_uniform_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class CRATEDecoderLayer(nn.Module):
    """``layers[0]`` = [PreNorm(D̃), PreNorm(MSSA)]: x ← D̃·LN₁(x); x ← x − MSSA(LN₂(x))."""

    def __init__(self, dim: int, heads: int, dim_head: int, attn_impl: str = "sdpa"):
        super().__init__()
        self.layers = nn.ModuleList([nn.ModuleList([
            PreNorm(dim, DecoderLinear(dim)),
            PreNorm(dim, MSSA(dim, heads=heads, dim_head=dim_head, attn_impl=attn_impl)),
        ])])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for lin, attn in self.layers:
            x = lin(x)
            x = x - attn(x)
        return x


class CRATEMAE(nn.Module):
    """CRATE-MAE (see the module docstring). ``forward(imgs, mask_ratio=None, generator=None)`` →
    ``(loss, pred (B, N, P²c), mask (B, N))``; :meth:`forward_features` runs the encoder unmasked (white-box tools, probes)."""

    tract_layer = "patch_embed.proj"

    def __init__(self, *, image_size: ImageSize = 224, patch_size: int = 16, in_channels: int = 3, dim: int = 384,
                 depth: int = 12, heads: int = 6, decoder_depth: Optional[int] = None, mask_ratio: float = 0.75,
                 norm_pix_loss: bool = False, eta: float = 0.1, lam: float = 0.5, loss_on: str = "masked",
                 attn_impl: str = "sdpa", name: str = "crate_mae"):
        super().__init__()
        self.name = name
        self.image_size = _pair(name, "image_size", image_size)
        P = self.patch_size = _checks.positive_int(name, "patch_size", patch_size)
        C = self.in_channels = _checks.positive_int(name, "in_channels", in_channels)
        dim = _checks.positive_int(name, "dim", dim)
        depth = _checks.positive_int(name, "depth", depth)
        heads = _checks.positive_int(name, "heads", heads)
        decoder_depth = depth if decoder_depth is None else _checks.positive_int(name, "decoder_depth", decoder_depth)
        self.mask_ratio = _checks.probability(name, "mask_ratio", mask_ratio)
        _checks.choice(name, "loss_on", loss_on, ("masked", "all"))
        _checks.choice(name, "attn_impl", attn_impl, ("sdpa", "explicit"))
        if not isinstance(norm_pix_loss, bool):
            raise ValueError(f"{name}: norm_pix_loss must be True or False, got {norm_pix_loss!r}")
        if dim % heads:
            raise ValueError(f"{name}: dim={dim} must be divisible by heads={heads}")
        if dim % 4:
            raise ValueError(f"{name}: dim={dim} must be a multiple of 4 (2-D sin-cos position table)")
        H, W = self.image_size
        if H % P or W % P:
            raise ValueError(f"{name}: image_size={H}×{W} must be a multiple of patch_size={P}")
        self.grid = (H // P, W // P)
        self.num_patches = self.grid[0] * self.grid[1]
        self.norm_pix_loss, self.loss_on, self.dim = norm_pix_loss, loss_on, dim
        dh = dim // heads

        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(C, dim, kernel_size=P, stride=P)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(sincos_table(self.grid, dim), requires_grad=False)
        self.blocks = nn.ModuleList(
            CRATETransformer(dim, 1, heads, dh, eta=eta, lam=lam, attn_impl=attn_impl) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_embed = nn.Linear(dim, dim)  # official: defined, never called
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.decoder_pos_embed = nn.Parameter(sincos_table(self.grid, dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(CRATEDecoderLayer(dim, heads, dh, attn_impl) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(dim, eps=1e-6)
        self.decoder_pred = nn.Linear(dim, P * P * C)
        self._init_weights()

    def _init_weights(self) -> None:
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # -- the encoder as a CRATE (white-box tools, linear probes) ------------------------------------------
    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def heads(self) -> int:
        return self.blocks[0].layers[0][0].fn.heads

    def crate_layers(self):
        """[(PreNorm(MSSA), PreNorm(ISTA))] of the encoder — the interface of :mod:`tractable.whitebox`."""
        return [tuple(blk.layers[0]) for blk in self.blocks]

    def input_size(self, size) -> Tuple[int, int]:
        return int(size[0]), int(size[1])

    def input_grid(self, x: torch.Tensor) -> Tuple[int, int]:
        return x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size

    def embed(self, imgs: torch.Tensor) -> torch.Tensor:
        """Unmasked encoder input (B, 1 + N, d): all patches, cls, and the fixed sin-cos table the official encoder
        adds (``decoder_pos_embed``; recomputed exactly for a grid other than the model's)."""
        if not isinstance(imgs, torch.Tensor) or imgs.dim() != 4 or imgs.shape[1] != self.in_channels:
            got = tuple(imgs.shape) if isinstance(imgs, torch.Tensor) else type(imgs).__name__
            raise ValueError(f"{self.name}: expected images of shape (B, {self.in_channels}, H, W), got {got}")
        P = self.patch_size
        if imgs.shape[-2] % P or imgs.shape[-1] % P:
            raise ValueError(f"{self.name}: image height and width must be multiples of patch_size={P}, got "
                             f"{imgs.shape[-2]}×{imgs.shape[-1]}")
        x = self.patch_embed.proj(imgs).flatten(2).transpose(1, 2)
        grid = self.input_grid(imgs)
        pos = self.decoder_pos_embed if grid == self.grid else sincos_table(grid, self.dim).to(x)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + pos

    def forward_features(self, imgs: torch.Tensor, taps=("out",), layers: Optional[int] = None):
        """The encoder on **unmasked** images, as :meth:`tractable.models.crate.CRATE.forward_features`:
        ``{"embed", tap: [per layer], "final"}`` with taps ⊆ {'qkv', 'attn', 'mid', 'out'}; ``"final"`` is the last
        layer's output before ``norm`` (``"encoded"`` adds ``norm(final)``, the features a linear probe reads)."""
        from tractable.models.crate import TAPS

        taps = tuple(taps)
        bad = [t for t in taps if t not in TAPS]
        if bad:
            raise ValueError(f"{self.name}.forward_features: unknown taps {bad}; accepted: {', '.join(TAPS)}")
        n = self.depth if layers is None else _checks.positive_int(self.name, "layers", layers)
        if n > self.depth:
            raise ValueError(f"{self.name}.forward_features: layers={n} > depth={self.depth}")
        z0 = self.embed(imgs)
        store = {t: [] for t in taps}
        z = z0
        for blk in self.blocks[:n]:
            z = blk(z, taps=taps, store=store) if taps else blk(z)
        return {"embed": z0, **store, "final": z, "encoded": self.norm(z)}

    # -- pieces -------------------------------------------------------------------------------------------
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, N, P²C) targets in (p1, p2, c) order."""
        return crate_patchify(imgs, self.patch_size)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, P²C) → (B, C, H, W)."""
        (gh, gw), P, C = self.grid, self.patch_size, self.in_channels
        x = x.reshape(x.shape[0], gh, gw, P, P, C).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(x.shape[0], C, gh * P, gw * P)

    def _check(self, imgs: torch.Tensor) -> None:
        exp = (self.in_channels, *self.image_size)
        if not isinstance(imgs, torch.Tensor) or imgs.dim() != 4 or tuple(imgs.shape[1:]) != exp:
            got = tuple(imgs.shape) if isinstance(imgs, torch.Tensor) else type(imgs).__name__
            raise ValueError(f"{self.name}: expected images of shape (B, {exp[0]}, {exp[1]}, {exp[2]}) "
                             f"(in_channels, image_size), got {got}")

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, generator: Optional[torch.Generator] = None):
        """→ (encoded tokens (B, N + 1, d) after ``norm``, mask (B, N), ids_restore (B, N))."""
        self._check(imgs)
        x = self.patch_embed.proj(imgs).flatten(2).transpose(1, 2)
        B, N, d = x.shape
        ids_keep, mask, ids_restore = random_masking(B, N, mask_ratio, generator, device=x.device)
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
        masks = self.mask_token.to(x.dtype).expand(B, N - x.shape[1], -1)
        x = torch.cat([x, masks], dim=1)
        x = torch.gather(x, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))  # un-shuffle
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1) + self.decoder_pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-patch MSE averaged over masked patches (``loss_on="masked"``) or all patches (``"all"``)."""
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        loss = ((pred.float() - target.float()) ** 2).mean(dim=-1)
        if self.loss_on == "all":
            return loss.mean()
        if mask.sum() == 0:
            raise ValueError(f"{self.name}: mask_ratio=0 masks no patch, so the masked-patch loss is undefined; "
                             f"use mask_ratio > 0, loss_on='all', or reconstruct() for reconstructions")
        return (loss * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, mask_ratio: Optional[float] = None,
                generator: Optional[torch.Generator] = None):
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, _ = self.forward_encoder(imgs, ratio, generator)
        pred = self.forward_decoder(latent)
        return self.forward_loss(imgs, pred, mask), pred, mask

    @torch.no_grad()
    def reconstruct(self, imgs: torch.Tensor, mask_ratio: Optional[float] = None,
                    generator: Optional[torch.Generator] = None):
        """(masked input image, reconstruction, reconstruction pasted into the visible patches), each (B, C, H, W).
        With ``norm_pix_loss`` the prediction is de-normalised with the true patch mean/std (as MAE's demo)."""
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, _ = self.forward_encoder(imgs, ratio, generator)
        pred = self.forward_decoder(latent)
        if self.norm_pix_loss:
            t = self.patchify(imgs)
            pred = pred * (t.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + t.mean(dim=-1, keepdim=True)
        m = mask.unsqueeze(-1).to(pred.dtype)
        target = self.patchify(imgs)
        return (self.unpatchify(target * (1 - m)), self.unpatchify(pred),
                self.unpatchify(target * (1 - m) + pred * m))


def _mae_builder(size: str):
    dim, depth, heads = CRATE_PRESETS[size]
    reg = f"mae_crate_{size}"

    def build(*, in_channels: int = 3, image_size: ImageSize = 224, patch_size: int = 16, mask_ratio: float = 0.75,
              norm_pix_loss: bool = False, eta: float = 0.1, lam: float = 0.5, loss_on: str = "masked",
              attn_impl: str = "sdpa", depth: int = depth, decoder_depth: Optional[int] = None,
              pretrained: Optional[str] = None) -> CRATEMAE:
        if pretrained is not None:
            from tractable.models.crate_pretrained import lambda_from_filename

            stated = lambda_from_filename(pretrained)
            if stated is not None and stated != float(lam):
                raise ValueError(f"{reg}: {pretrained} was trained with ISTA λ = {stated:g} (its name says lmd"
                                 f"{stated:g}) but lam={lam:g}; pass lam={stated:g} (no state dict stores λ), or "
                                 f"use tractable.models.crate_pretrained.load_pretrained")
        model = CRATEMAE(image_size=image_size, patch_size=patch_size, in_channels=in_channels, dim=dim, depth=depth,
                         heads=heads, decoder_depth=decoder_depth, mask_ratio=mask_ratio,
                         norm_pix_loss=norm_pix_loss, eta=eta, lam=lam, loss_on=loss_on, attn_impl=attn_impl, name=reg)
        if pretrained is not None:
            from tractable.models.crate import load_crate_checkpoint

            load_crate_checkpoint(model, pretrained)
        return model

    build.__name__ = build.__qualname__ = reg
    build.__doc__ = f"CRATE-MAE-{size[0].upper()}: d={dim}, {depth}+{depth} layers, {heads} heads (masked autoencoder)."
    build.task = "masked_autoencoding"  # the runner task (tractable.train.mae_task); forward returns (loss, pred, mask)
    return register_model(reg)(build)


for _size in ("tiny", "small", "base"):
    globals()[f"mae_crate_{_size}"] = _mae_builder(_size)
del _size
