r"""CRATE: white-box transformers (Yu et al., *White-Box Transformers via Sparse Rate Reduction*, NeurIPS 2023).

Every layer is one step of optimising the sparse rate-reduction objective

    max_f  E[ R_ε(Z) − R^c_ε(Z | U_[K]) − λ‖Z‖₁ ],   Z = f(X),

with R_ε(Z) = ½ logdet(I + d/(nε²) ZᵀZ) and R^c_ε(Z | U_[K]) = ½ Σ_k logdet(I + p/(nε²) (U_kᵀZ)ᵀ(U_kᵀZ)).
Tokens are rows here: Z ∈ R^{B×n×d}, n = 1 + N (cls + patches).

* **MSSA** (multi-head subspace self-attention) — a gradient step on R^c: one *bias-free* projection
  U = ``qkv`` (d → K·d_h) is used as query, key *and* value, w = LN(z)Uᵀ split into K heads,
  A_k = softmax(w_k w_kᵀ / √d_h) (rows over keys), o_k = A_k w_k, heads concatenated, then ``to_out``
  (Linear with bias). Z^{ℓ+½} = Z^ℓ + MSSA(LN₁(Z^ℓ)).
* **ISTA** — one proximal step of the non-negative LASSO min_{Z≥0} λ‖Z‖₁ + ½‖x − DZ‖² warm-started at Z = x:
  Z^{ℓ+1} = ReLU(x + η·Dᵀ(x − Dx) − ηλ), x = LN₂(Z^{ℓ+½}), with a square dictionary D (``weight``) and
  **no residual** around it, so every layer's output is non-negative. η = 0.1 and λ = 0.1 by default (the
  official code hard-codes λ; here both are arguments and part of the model's config).
* Patch embedding: P×P patches flattened in (p1, p2, channel) order (row, column, channel last — *not* the
  NCHW order of a conv kernel) → LayerNorm(P²c) → Linear(P²c → d) → LayerNorm(d); a learned cls token and a
  learned position embedding (both N(0, 1) in the official initialisation) are added.
* Head: the cls token (``pool="cls"``) → LayerNorm → Linear. No final LayerNorm on the sequence.

The module tree mirrors the official ``model/crate.py`` so that its ``state_dict`` keys are ours and official
weights load with ``strict=True`` and no key map (8L + 12 tensors, no buffers):
``to_patch_embedding.{1,2,3}``, ``cls_token``, ``pos_embedding``,
``transformer.layers.{i}.0.{norm,fn.qkv,fn.to_out.0}``, ``transformer.layers.{i}.1.{norm,fn.weight}``,
``mlp_head.{0,1}``. :func:`load_crate_checkpoint` reads official files (``{'state_dict': ...}`` or ``{'model':
...}`` wrappers, ``module.`` prefixes, ``weights_only=True``) and fails loudly, listing every missing or
unexpected key and every shape mismatch.

Differences from the reference code, all opt-in or exact:

* ``ista_impl="fused"`` (default) computes x + η·Dᵀ(x − Dx) with 2 matmuls; ``"reference"`` is the
  official 3-matmul form (Dx, DᵀDx, Dᵀx) with the official order of operations (the official module itself is
  not vendored here, so bitwise parity with it is not tested). They agree to float rounding.
* ``attn_impl="sdpa"`` (default) uses ``F.scaled_dot_product_attention(w, w, w)``, exactly the same
  function (softmax(wwᵀ/√d_h)w) computed by a fused kernel; ``"explicit"`` materialises A. The explicit path
  is always taken when attention maps are requested (:meth:`CRATE.forward_features` with ``"attn"``).
* The position embedding is interpolated (bicubic, explicit target ``size``) for inputs whose patch grid differs
  from the one the model was built for; the official model silently slices (smaller inputs) or crashes
  (larger). At the native grid nothing is interpolated.
* ``pool="mean"`` is the official mean over *all* tokens (cls included); ``"mean_patches"`` excludes cls.

Parameter count: L(3d² + 5d) + (2P²c + P²c·d + 3d) + (N+1)d + d + (2d + dM + M); at 224², P = 16, M = 1000:
CRATE-T 6,090,856, -S 13,116,328, -B 22,796,008, -L 77,641,192.
"""
from __future__ import annotations

import argparse
import math
import numbers
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from tractable.models import _checks
from tractable.models.registry import register_model
from tractable.models.vit import patchify

__all__ = [
    "CRATE",
    "MSSA",
    "ISTA",
    "PreNorm",
    "CRATETransformer",
    "PatchFlatten",
    "crate_patchify",
    "ista_step",
    "interpolate_pos_embedding",
    "load_crate_checkpoint",
    "read_state_dict",
    "CRATE_PRESETS",
    "TAPS",
    "POS_INTERP",
]

#: d, depth, heads (d_h = d / heads) of the published presets
CRATE_PRESETS: Dict[str, Tuple[int, int, int]] = {
    "tiny": (384, 12, 6),
    "small": (576, 12, 12),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}

#: what :meth:`CRATE.forward_features` can return per layer
TAPS = ("qkv", "attn", "mid", "out")

#: position-embedding interpolation for other grids: ``exact`` (bicubic to the target size) or ``dino``
#: (DINO's / the emergence notebooks' ``scale_factor=(new + 0.1)/old``)
POS_INTERP = ("exact", "dino")

ImageSize = Union[int, Tuple[int, int]]


# ------------------------------------------------------------------------------------------------ functions
def crate_patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) → (B, (H/P)(W/P), P·P·C): patches row-major over the grid, each flattened in
    (row-in-patch, column-in-patch, channel) order — einops ``b c (h p1) (w p2) -> b (h w) (p1 p2 c)``."""
    return patchify(x, patch_size)  # the ViTs' patch order is the same


def ista_step(x: torch.Tensor, D: torch.Tensor, eta: float = 0.1, lam: float = 0.1,
              impl: str = "fused") -> torch.Tensor:
    """One non-negative ISTA step on tokens ``x`` (…, d) with dictionary ``D`` (d, d):
    ReLU(x + η·Dᵀ(x − Dx) − ηλ) (row form: ReLU(x + η(x − xDᵀ)D − ηλ)).

    ``impl="reference"`` evaluates it in the official code's order, with three matmuls
    (ReLU(x + (η(xD − xDᵀD) − ηλ))); ``"fused"`` uses two.
    """
    if impl == "fused":
        r = x - F.linear(x, D)
        return F.relu(torch.addmm(x.reshape(-1, x.shape[-1]), r.reshape(-1, r.shape[-1]), D, alpha=eta)
                      .reshape(x.shape) - eta * lam)
    if impl == "reference":
        x1 = F.linear(x, D, bias=None)
        grad_1 = F.linear(x1, D.t(), bias=None)
        grad_2 = F.linear(x, D.t(), bias=None)
        grad_update = eta * (grad_2 - grad_1) - eta * lam
        return F.relu(x + grad_update)
    raise ValueError(f"ista_step: impl must be 'fused' or 'reference', got {impl!r}")


def _pair(name: str, what: str, value) -> Tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name}: {what} must be an int or a pair (height, width), got {value!r}")
        return (_checks.positive_int(name, what, value[0]), _checks.positive_int(name, what, value[1]))
    v = _checks.positive_int(name, what, value)
    return (v, v)


def interpolate_pos_embedding(pos: torch.Tensor, old_grid: Tuple[int, int], new_grid: Tuple[int, int], *,
                              num_prefix: int = 1, mode: str = "bicubic", dino_compat: bool = False) -> torch.Tensor:
    """Resize a (1, num_prefix + h·w, d) position embedding from the ``old_grid`` (h, w) to ``new_grid``.

    The prefix rows (cls) are kept; the patch rows are reshaped to (h, w, d) and resized with ``mode``
    (bicubic, ``align_corners=False``) to exactly ``new_grid``. At ``new_grid == old_grid`` this is the identity
    (the cubic kernel at integer offsets is (0, 1, 0, 0)). ``dino_compat=True`` reproduces DINO's variant
    (``scale_factor=(new + 0.1)/old``, used by the emergence notebooks), checked to land on ``new_grid``.
    """
    if pos.dim() != 3 or pos.shape[0] != 1:
        raise ValueError(f"interpolate_pos_embedding: expected a (1, n, d) tensor, got {tuple(pos.shape)}")
    oh, ow = old_grid
    nh, nw = new_grid
    if pos.shape[1] != num_prefix + oh * ow:
        raise ValueError(f"interpolate_pos_embedding: {pos.shape[1]} rows do not fit {num_prefix} prefix rows + "
                         f"a {oh}×{ow} grid")
    prefix, grid = pos[:, :num_prefix], pos[:, num_prefix:]
    d = pos.shape[-1]
    grid = grid.reshape(1, oh, ow, d).permute(0, 3, 1, 2)
    dtype = grid.dtype
    g = grid.float() if dtype in (torch.float16, torch.bfloat16) else grid
    if dino_compat:
        g = F.interpolate(g, scale_factor=((nh + 0.1) / oh, (nw + 0.1) / ow), mode=mode, align_corners=False)
        if g.shape[-2:] != (nh, nw):
            raise ValueError(f"interpolate_pos_embedding: the DINO scale factor gave a {tuple(g.shape[-2:])} grid, "
                             f"expected {(nh, nw)}")
    else:
        g = F.interpolate(g, size=(nh, nw), mode=mode, align_corners=False)
    g = g.to(dtype).permute(0, 2, 3, 1).reshape(1, nh * nw, d)
    return torch.cat([prefix, g], dim=1)


# ------------------------------------------------------------------------------------------------ modules
class PatchFlatten(nn.Module):
    """No parameters: (B, C, H, W) → (B, N, P²C) in (p1, p2, c) order (:func:`crate_patchify`)."""

    def __init__(self, patch_size: int):
        super().__init__()
        self.patch_size = patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return crate_patchify(x, self.patch_size)

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}, order=(p1, p2, c)"


class PreNorm(nn.Module):
    """``fn(norm(x))`` — the official wrapper that names the keys ``norm.*`` and ``fn.*``."""

    def __init__(self, dim: int, fn: nn.Module, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.fn = fn

    def forward(self, x: torch.Tensor, **kwargs):
        return self.fn(self.norm(x), **kwargs)


class MSSA(nn.Module):
    """Multi-head subspace self-attention: shared bias-free U (``qkv``) as q, k and v; ``to_out`` Linear + bias.

    ``forward(x)`` returns the block output; ``forward(x, taps=dict)`` also stores ``taps["qkv"]`` (the
    (B, n, K·d_h) projection) and, if the key ``"attn"`` is present, the (B, K, n, n) attention matrices.
    """

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64, dropout: float = 0.0, attn_impl: str = "sdpa"):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.scale = dim_head ** -0.5
        self.attn_impl = attn_impl
        self.dropout = dropout
        self.qkv = nn.Linear(dim, inner, bias=False)
        project_out = not (heads == 1 and dim_head == dim)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout)) if project_out else nn.Identity()

    def forward(self, x: torch.Tensor, taps: Optional[dict] = None) -> torch.Tensor:
        B, n, _ = x.shape
        w_flat = self.qkv(x)
        w = w_flat.reshape(B, n, self.heads, self.dim_head).transpose(1, 2)
        want_attn = taps is not None and "attn" in taps
        p = self.dropout if self.training else 0.0
        if self.attn_impl == "sdpa" and not want_attn:
            out = F.scaled_dot_product_attention(w, w, w, dropout_p=p, scale=self.scale)
        else:
            attn = torch.softmax(torch.matmul(w, w.transpose(-1, -2)) * self.scale, dim=-1)
            if want_attn:
                taps["attn"] = attn
            out = torch.matmul(F.dropout(attn, p) if p else attn, w)
        if taps is not None:
            taps["qkv"] = w_flat
        return self.to_out(out.transpose(1, 2).reshape(B, n, self.heads * self.dim_head))


class ISTA(nn.Module):
    """One non-negative ISTA step with a learned square dictionary ``weight`` (d × d, no bias)."""

    def __init__(self, dim: int, eta: float = 0.1, lam: float = 0.1, impl: str = "fused"):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, dim))
        self.eta, self.lam, self.impl = float(eta), float(lam), impl
        nn.init.kaiming_uniform_(self.weight)  # a = 0: U(±√(6/d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ista_step(x, self.weight, self.eta, self.lam, self.impl)

    def extra_repr(self) -> str:
        return f"dim={self.weight.shape[0]}, eta={self.eta}, lam={self.lam}, impl={self.impl!r}"


class CRATETransformer(nn.Module):
    """``layers`` = ModuleList of [PreNorm(MSSA), PreNorm(ISTA)]; Z^{ℓ+½} = Z + MSSA(LN₁Z), Z^{ℓ+1} = ISTA(LN₂Z^{ℓ+½})."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, *, dropout: float = 0.0, eta: float = 0.1,
                 lam: float = 0.1, ista_impl: str = "fused", attn_impl: str = "sdpa"):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([
                PreNorm(dim, MSSA(dim, heads=heads, dim_head=dim_head, dropout=dropout, attn_impl=attn_impl)),
                PreNorm(dim, ISTA(dim, eta=eta, lam=lam, impl=ista_impl)),
            ])
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor, taps: Optional[Sequence[str]] = None,
                store: Optional[Dict[str, List[torch.Tensor]]] = None, upto: Optional[int] = None) -> torch.Tensor:
        for i, (attn, ista) in enumerate(self.layers):
            if upto is not None and i >= upto:
                break
            if taps:
                t = {"attn": None} if "attn" in taps else {}
                x = attn(x, taps=t) + x
                if "qkv" in taps:
                    store["qkv"].append(t["qkv"])
                if "attn" in taps:
                    store["attn"].append(t["attn"])
                if "mid" in taps:
                    store["mid"].append(x)
                x = ista(x)
                if "out" in taps:
                    store["out"].append(x)
            else:
                x = ista(attn(x) + x)
        return x


class CRATE(nn.Module):
    """The CRATE classifier (official module tree and key names; see the module docstring).

    Arguments: ``image_size`` (int or (H, W)), ``patch_size``, ``num_classes``, ``dim``, ``depth``, ``heads``,
    ``dim_head`` (default dim // heads), ``in_channels``, ``pool`` ('cls' | 'mean' | 'mean_patches'),
    ``dropout``, ``eta`` (ISTA step η), ``lam`` (ISTA λ), ``ista_impl`` ('fused' | 'reference'), ``attn_impl``
    ('sdpa' | 'explicit'), ``init`` ('official': cls and position N(0, 1) | 'vit': N(0, 0.02)).
    """

    tract_layer = "to_patch_embedding.2"

    def __init__(self, *, image_size: ImageSize = 224, patch_size: int = 16, num_classes: int = 1000, dim: int = 384,
                 depth: int = 12, heads: int = 6, dim_head: Optional[int] = None, in_channels: int = 3,
                 pool: str = "cls", dropout: float = 0.0, eta: float = 0.1, lam: float = 0.1,
                 ista_impl: str = "fused", attn_impl: str = "sdpa", init: str = "official",
                 resize_to: Optional[ImageSize] = None, pos_interp: str = "exact", name: str = "crate"):
        super().__init__()
        # resize_to: the model is built for that resolution and resizes its inputs to it (bilinear), e.g. CIFAR
        # upsampled to 224² as the official fine-tuning does; image_size is then only the data's size.
        self.resize_to = None if resize_to is None else _pair(name, "resize_to", resize_to)
        self.image_size = self.resize_to or _pair(name, "image_size", image_size)
        patch_size = _checks.positive_int(name, "patch_size", patch_size)
        num_classes = _checks.positive_int(name, "num_classes", num_classes)
        dim = _checks.positive_int(name, "dim", dim)
        depth = _checks.positive_int(name, "depth", depth)
        heads = _checks.positive_int(name, "heads", heads)
        in_channels = _checks.positive_int(name, "in_channels", in_channels)
        if dim_head is None:
            if dim % heads:
                raise ValueError(f"{name}: dim={dim} must be divisible by heads={heads} (or give dim_head)")
            dim_head = dim // heads
        dim_head = _checks.positive_int(name, "dim_head", dim_head)
        _checks.choice(name, "pool", pool, ("cls", "mean", "mean_patches"))
        _checks.choice(name, "ista_impl", ista_impl, ("fused", "reference"))
        _checks.choice(name, "attn_impl", attn_impl, ("sdpa", "explicit"))
        _checks.choice(name, "init", init, ("official", "vit"))
        self.pos_interp = _checks.choice(name, "pos_interp", pos_interp, POS_INTERP)
        dropout = _checks.probability(name, "dropout", dropout)
        for what, v in (("eta", eta), ("lam", lam)):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name}: {what} must be a finite number >= 0, got {v!r}")
        H, W = self.image_size
        if H % patch_size or W % patch_size:
            raise ValueError(f"{name}: image_size={H}×{W} must be a multiple of patch_size={patch_size}")

        self.name = name
        self.patch_size, self.in_channels, self.num_classes = patch_size, in_channels, num_classes
        self.dim, self.depth, self.heads, self.dim_head = dim, depth, heads, dim_head
        self.pool, self.eta, self.lam = pool, float(eta), float(lam)
        self.grid = (H // patch_size, W // patch_size)
        num_patches = self.grid[0] * self.grid[1]
        patch_dim = patch_size * patch_size * in_channels

        self.to_patch_embedding = nn.Sequential(
            PatchFlatten(patch_size), nn.LayerNorm(patch_dim), nn.Linear(patch_dim, dim), nn.LayerNorm(dim)
        )
        std = 1.0 if init == "official" else 0.02
        self.pos_embedding = nn.Parameter(torch.randn(1, num_patches + 1, dim) * std)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * std)
        self.dropout = nn.Dropout(dropout)  # embedding dropout (0 in every preset)
        self.transformer = CRATETransformer(dim, depth, heads, dim_head, dropout=dropout, eta=eta, lam=lam,
                                            ista_impl=ista_impl, attn_impl=attn_impl)
        self.to_latent = nn.Identity()
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

    # -- configuration ----------------------------------------------------------------------------------
    def config(self) -> dict:
        """The constructor arguments that rebuild this model (η and λ included: no state_dict stores them)."""
        mssa = self.transformer.layers[0][0].fn
        ista = self.transformer.layers[0][1].fn
        return {"image_size": list(self.image_size), "patch_size": self.patch_size, "num_classes": self.num_classes,
                "dim": self.dim, "depth": self.depth, "heads": self.heads, "dim_head": self.dim_head,
                "in_channels": self.in_channels, "pool": self.pool, "dropout": self.dropout.p, "eta": self.eta,
                "lam": self.lam, "ista_impl": ista.impl, "attn_impl": mssa.attn_impl,
                "resize_to": None if self.resize_to is None else list(self.resize_to), "pos_interp": self.pos_interp}

    def set_impl(self, *, ista_impl: Optional[str] = None, attn_impl: Optional[str] = None) -> "CRATE":
        """Switch the ISTA/attention implementation of every layer in place (same parameters)."""
        if ista_impl is not None:
            _checks.choice(self.name, "ista_impl", ista_impl, ("fused", "reference"))
        if attn_impl is not None:
            _checks.choice(self.name, "attn_impl", attn_impl, ("sdpa", "explicit"))
        for attn, ista in self.transformer.layers:
            if ista_impl is not None:
                ista.fn.impl = ista_impl
            if attn_impl is not None:
                attn.fn.attn_impl = attn_impl
        return self

    # -- forward ----------------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> Tuple[int, int]:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"{self.name}: expected images of shape (B, {self.in_channels}, H, W), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{self.name}: expected {self.in_channels} input channels (in_channels="
                             f"{self.in_channels}), got {x.shape[1]} (input shape {tuple(x.shape)})")
        H, W = x.shape[-2:]
        P = self.patch_size
        if H % P or W % P:
            raise ValueError(f"{self.name}: image height and width must be multiples of patch_size={P}, "
                             f"got {H}×{W}")
        return H // P, W // P

    def pos_embedding_for(self, grid: Tuple[int, int]) -> torch.Tensor:
        """The position embedding for a (H/P, W/P) patch ``grid`` (interpolated if it is not the native one)."""
        if tuple(grid) == self.grid:
            return self.pos_embedding
        return interpolate_pos_embedding(self.pos_embedding, self.grid, tuple(grid),
                                         dino_compat=self.pos_interp == "dino")

    def input_size(self, size: Tuple[int, int]) -> Tuple[int, int]:
        """The (H, W) the encoder sees for inputs of spatial ``size`` (``resize_to`` models resize first)."""
        return self.resize_to if self.resize_to is not None else (int(size[0]), int(size[1]))

    def input_grid(self, x: torch.Tensor) -> Tuple[int, int]:
        """The (H/P, W/P) patch grid the encoder runs on for images ``x`` (after any ``resize_to``)."""
        H, W = self.input_size(x.shape[-2:])
        return H // self.patch_size, W // self.patch_size

    def crate_layers(self) -> List[Tuple["PreNorm", "PreNorm"]]:
        """[(PreNorm(MSSA), PreNorm(ISTA))] per layer — the interface of :mod:`tractable.whitebox`."""
        return [(attn, ista) for attn, ista in self.transformer.layers]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images → Z¹ (B, 1 + N, d): patch embedding, cls token, position embedding."""
        if self.resize_to is not None and isinstance(x, torch.Tensor) and x.dim() == 4 \
                and tuple(x.shape[-2:]) != self.resize_to:
            x = F.interpolate(x, size=self.resize_to, mode="bilinear", align_corners=False)
        grid = self._check_input(x)
        tokens = self.to_patch_embedding(x)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        z = torch.cat([cls, tokens], dim=1) + self.pos_embedding_for(grid)
        return self.dropout(z)

    def head(self, z: torch.Tensor) -> torch.Tensor:
        if self.pool == "cls":
            feat = z[:, 0]
        elif self.pool == "mean":
            feat = z.mean(dim=1)
        else:
            feat = z[:, 1:].mean(dim=1)
        return self.mlp_head(self.to_latent(feat))

    @property
    def dfa_points(self):
        """DFA feedback points (module outputs): the patch embedding and every layer's ISTA output Z^{ℓ+1}."""
        return ("to_patch_embedding",) + tuple(f"transformer.layers.{i}.1"
                                               for i in range(len(self.transformer.layers)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.transformer(self.embed(x)))

    def forward_features(self, x: torch.Tensor, taps: Iterable[str] = ("out",), layers: Optional[int] = None
                         ) -> Dict[str, object]:
        """Run the encoder and return per-layer intermediates, with no hooks.

        ``taps`` ⊆ {'qkv', 'attn', 'mid', 'out'}: per layer ℓ the ``qkv`` output LN₁(Z^ℓ)Uᵀ (B, n, K·d_h), the
        attention matrices softmax(wwᵀ/√d_h) (B, K, n, n; computed explicitly), Z^{ℓ+½} (``mid``) and Z^{ℓ+1}
        (``out``, the ISTA output). ``layers`` stops after that many layers (default all). Returns
        ``{"embed": Z¹, tap: [tensor per layer], "final": last Z}``.
        """
        taps = tuple(taps)
        bad = [t for t in taps if t not in TAPS]
        if bad:
            raise ValueError(f"{self.name}.forward_features: unknown taps {bad}; accepted: {', '.join(TAPS)}")
        if layers is not None:
            layers = _checks.positive_int(self.name, "layers", layers)
            if layers > self.depth:
                raise ValueError(f"{self.name}.forward_features: layers={layers} > depth={self.depth}")
        z0 = self.embed(x)
        store: Dict[str, List[torch.Tensor]] = {t: [] for t in taps}
        z = self.transformer(z0, taps=taps or ("_",), store=store, upto=layers)
        return {"embed": z0, **store, "final": z}


# ------------------------------------------------------------------------------------------------ checkpoints
def read_state_dict(source: Union[str, Path, Mapping[str, torch.Tensor]]) -> "OrderedDict[str, torch.Tensor]":
    """A plain ``{key: tensor}`` state dict from a checkpoint file or mapping.

    Files are read with ``torch.load(weights_only=True)`` (``.safetensors`` with safetensors). Wrappers
    ``{'state_dict': …}``, ``{'model': …}``, ``{'model_state_dict': …}`` (nested any number of times) are
    unwrapped and a ``module.`` (DataParallel/DDP) or ``_orig_mod.`` (torch.compile) prefix is stripped from
    every key.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"read_state_dict: no checkpoint file at {path}")
        from tractable.models.checkpoint_io import load_safetensors, load_torch_file

        if path.suffix == ".safetensors":
            sd = load_safetensors(path)
        else:
            # the MAE codebase (CRATE-MAE's released file) stores its arguments as an argparse.Namespace beside
            # the weights: a plain attribute bag, allow-listed; anything else is still refused
            sd = load_torch_file(path, allow=[argparse.Namespace])
    else:
        sd = source
    for _ in range(4):
        if not isinstance(sd, Mapping):
            raise ValueError(f"read_state_dict: expected a mapping of tensors, got {type(sd).__name__}")
        inner = next((sd[k] for k in ("state_dict", "model", "model_state_dict") if isinstance(sd.get(k), Mapping)),
                     None)
        if inner is None:
            break
        sd = inner
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"read_state_dict: entry {k!r} is a {type(v).__name__}, not a tensor "
                             f"(top-level keys: {', '.join(map(str, list(sd)[:8]))})")
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def load_crate_checkpoint(model: nn.Module, source, *, strict: bool = True, replace_head: Optional[int] = None,
                          interpolate_pos: bool = False, drop_keys: Sequence[str] = (),
                          generator: Optional[torch.Generator] = None) -> nn.Module:
    """Load an official (or our) CRATE / CRATE-MAE checkpoint into ``model``; returns ``model``.

    ``source``: a path (``.pth``/``.pt`` via ``torch.load(weights_only=True)``, or ``.safetensors``) or a state
    dict; wrappers and ``module.`` prefixes are handled by :func:`read_state_dict`. With ``strict=True``
    (default) any missing key, unexpected key or shape mismatch raises a ``ValueError`` listing all of them —
    nothing is silently skipped (the official ``finetune.py`` loads with ``strict=False``).

    ``replace_head=M`` drops the checkpoint's ``mlp_head.1.*`` (the classifier) and keeps the model's freshly
    initialised M-class Linear (the model must have been built with ``num_classes=M``); nothing else changes.
    ``interpolate_pos=True`` resizes a ``pos_embedding`` of another grid (a 224² checkpoint into a 32² model)
    instead of failing. ``drop_keys``: key prefixes the checkpoint holds outside the model's module tree (e.g. the
    emergence notebooks' top-level ``head.`` of ``crate-demo.pth``); they are removed before the strict
    comparison, and a prefix that matches nothing is an error (so a wrong layout is never assumed silently).
    """
    sd = read_state_dict(source)
    for prefix in drop_keys:
        hit = [k for k in sd if k == prefix or k.startswith(prefix)]
        if not hit:
            raise ValueError(f"load_crate_checkpoint: drop_keys={prefix!r} matches no checkpoint key (first keys: "
                             f"{', '.join(list(sd)[:5])}); is this the layout you think it is?")
        for k in hit:
            del sd[k]
    own = model.state_dict()
    if replace_head is not None:
        replace_head = _checks.positive_int("load_crate_checkpoint", "replace_head", replace_head)
        if "mlp_head.1.weight" not in own:
            raise ValueError("load_crate_checkpoint: replace_head needs a CRATE classifier (no mlp_head.1 in the model)")
        if own["mlp_head.1.weight"].shape[0] != replace_head:
            raise ValueError(f"load_crate_checkpoint: replace_head={replace_head} but the model was built with "
                             f"{own['mlp_head.1.weight'].shape[0]} classes; build it with num_classes={replace_head}")
        for k in ("mlp_head.1.weight", "mlp_head.1.bias"):
            sd.pop(k, None)
            sd[k] = own[k]
    if interpolate_pos and "pos_embedding" in sd and "pos_embedding" in own and isinstance(model, CRATE):
        pe = sd["pos_embedding"]
        if pe.shape != own["pos_embedding"].shape:
            n = pe.shape[1] - 1
            side = math.isqrt(n)
            if side * side != n or pe.shape[-1] != own["pos_embedding"].shape[-1]:
                raise ValueError(f"load_crate_checkpoint: cannot interpolate pos_embedding {tuple(pe.shape)} "
                                 f"(not a square grid of width {own['pos_embedding'].shape[-1]})")
            sd["pos_embedding"] = interpolate_pos_embedding(pe, (side, side), model.grid)
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in sd and sd[k].shape != own[k].shape]
    if strict and (missing or unexpected or mismatched):
        lines = [f"load_crate_checkpoint: the checkpoint does not match {type(model).__name__} "
                 f"({len(sd)} checkpoint tensors, {len(own)} model tensors)"]
        if mismatched:
            lines.append("  shape mismatches (a checkpoint of another size? check the preset, image_size, "
                         "patch_size, num_classes; interpolate_pos=True / replace_head=M): " + "; ".join(mismatched))
        if missing:
            lines.append(f"  missing keys ({len(missing)}): " + ", ".join(missing[:20]) +
                         (" …" if len(missing) > 20 else ""))
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): " + ", ".join(unexpected[:20]) +
                         (" …" if len(unexpected) > 20 else ""))
        raise ValueError("\n".join(lines))
    if not strict:
        sd = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(sd, strict=strict)
    return model


# ------------------------------------------------------------------------------------------------ registry
def _pretrained(model: CRATE, pretrained: Optional[str], replace_head: bool) -> CRATE:
    """Builder option ``pretrained=PATH``: load a checkpoint strictly (positions interpolated to the model's grid;
    with ``replace_head=True`` the checkpoint's classifier is dropped and the fresh ``num_classes`` head kept)."""
    if not isinstance(replace_head, bool):
        raise ValueError(f"{model.name}: replace_head must be True or False, got {replace_head!r}")
    if pretrained is None:
        if replace_head:
            raise ValueError(f"{model.name}: replace_head=True needs pretrained=PATH")
        return model
    return load_crate_checkpoint(model, pretrained, interpolate_pos=True,
                                 replace_head=model.num_classes if replace_head else None)


def _builder(size: str, patch: int):
    dim, depth, heads = CRATE_PRESETS[size]
    reg = f"crate_{size}" if patch == 16 else f"crate_{size}_{patch}"

    def build(*, num_classes: int = 1000, in_channels: int = 3, image_size: ImageSize = 224, patch_size: int = patch,
              pool: str = "cls", dropout: float = 0.0, eta: float = 0.1, lam: float = 0.1, ista_impl: str = "fused",
              attn_impl: str = "sdpa", init: str = "official", depth: int = depth,
              resize_to: Optional[ImageSize] = None, pos_interp: str = "exact", pretrained: Optional[str] = None,
              replace_head: bool = False) -> CRATE:
        model = CRATE(image_size=image_size, patch_size=patch_size, num_classes=num_classes, dim=dim, depth=depth,
                      heads=heads, in_channels=in_channels, pool=pool, dropout=dropout, eta=eta, lam=lam,
                      ista_impl=ista_impl, attn_impl=attn_impl, init=init, resize_to=resize_to,
                      pos_interp=pos_interp, name=reg)
        return _pretrained(model, pretrained, replace_head)

    build.__name__ = build.__qualname__ = reg
    build.__doc__ = (f"CRATE-{size[0].upper()}/{patch}: d={dim}, {depth} layers, {heads} heads of "
                     f"{dim // heads} (official init and key layout).")
    return register_model(reg)(build)


for _size in CRATE_PRESETS:
    globals()[f"crate_{_size}"] = _builder(_size, 16)
for _size in ("tiny", "small", "base"):
    globals()[f"crate_{_size}_8"] = _builder(_size, 8)
del _size


@register_model("crate")
def crate(*, num_classes: int = 10, in_channels: int = 3, image_size: ImageSize = 32, patch_size: int = 4,
          dim: int = 384, depth: int = 12, heads: int = 6, dim_head: Optional[int] = None, pool: str = "cls",
          dropout: float = 0.0, eta: float = 0.1, lam: float = 0.1, ista_impl: str = "fused",
          attn_impl: str = "sdpa", init: str = "official", resize_to: Optional[ImageSize] = None,
          pos_interp: str = "exact", pretrained: Optional[str] = None, replace_head: bool = False) -> CRATE:
    """A CRATE of any shape (default: CRATE-T-shaped, patch 4, for 32² images)."""
    model = CRATE(image_size=image_size, patch_size=patch_size, num_classes=num_classes, dim=dim, depth=depth,
                  heads=heads, dim_head=dim_head, in_channels=in_channels, pool=pool, dropout=dropout, eta=eta,
                  lam=lam, ista_impl=ista_impl, attn_impl=attn_impl, init=init, resize_to=resize_to,
                  pos_interp=pos_interp, name="crate")
    return _pretrained(model, pretrained, replace_head)
