r"""Attention-map segmentation of CRATE (CPAL 2024 "Emergence of Segmentation"; DINO-style).

* :func:`cls_attention_maps` — at layer ℓ (default the last) A = softmax(wwᵀ/√d_h) on LN₁(Z^ℓ) (B, K, n, n);
  head k's saliency map is the cls row over the patch columns ``A[:, k, 0, 1:]`` on the (H/P, W/P) grid.
* :func:`upsample_maps` — nearest upsampling by the patch size to the image size.
* :func:`mass_threshold` — renormalise each map over its patches, sort ascending, cumulative sum, keep the
  patches where it exceeds 1 − mass: the smallest set of top patches holding ``mass`` (60 %) of the attention.
* :func:`pca_maps` — PCA of patch features (e.g. the ``qkv`` output of the last layer, cls dropped) fitted
  *jointly over all images*, each component min-max normalised per image on the patch grid; the reference
  shows the last three of four components as RGB and thresholds one at 0.5 for a foreground mask
  (:func:`foreground_mask`, holes filled with scipy when it is installed).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

__all__ = ["cls_attention_maps", "upsample_maps", "mass_threshold", "pca_maps", "foreground_mask"]


@torch.no_grad()
def cls_attention_maps(model, images: torch.Tensor, layer: int = -1) -> torch.Tensor:
    """(B, K, H/P, W/P) cls-token attention of every head at ``layer`` (0-based; negative counts from the end)."""
    if not hasattr(model, "forward_features"):
        raise ValueError(f"cls_attention_maps: expected a CRATE model, got {type(model).__name__}")
    depth = model.depth
    idx = layer + depth if layer < 0 else layer
    if not 0 <= idx < depth:
        raise ValueError(f"cls_attention_maps: layer must be in [-{depth}, {depth - 1}], got {layer}")
    feats = model.forward_features(images, taps=("attn",), layers=idx + 1)
    A = feats["attn"][idx]
    gh, gw = images.shape[-2] // model.patch_size, images.shape[-1] // model.patch_size
    return A[:, :, 0, 1:].reshape(A.shape[0], A.shape[1], gh, gw)


def upsample_maps(maps: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(…, h, w) → (…, h·P, w·P) by nearest interpolation."""
    if maps.dim() < 2:
        raise ValueError(f"upsample_maps: expected (..., h, w) maps, got shape {tuple(maps.shape)}")
    lead = maps.shape[:-2]
    x = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    x = F.interpolate(x, scale_factor=patch_size, mode="nearest")
    return x.reshape(*lead, *x.shape[-2:])


def mass_threshold(maps: torch.Tensor, mass: float = 0.6) -> torch.Tensor:
    """Boolean mask (same shape as ``maps`` (…, h, w)) of the top patches holding ``mass`` of each map."""
    if not 0.0 < float(mass) <= 1.0:
        raise ValueError(f"mass_threshold: mass must be in (0, 1], got {mass!r}")
    shape = maps.shape
    flat = maps.reshape(-1, shape[-2] * shape[-1]).to(torch.float64)
    if bool((flat < 0).any()):
        raise ValueError("mass_threshold: maps must be non-negative (attention weights)")
    flat = flat / flat.sum(dim=-1, keepdim=True)
    vals, idx = torch.sort(flat, dim=-1)
    cum = torch.cumsum(vals, dim=-1)
    keep_sorted = cum > (1.0 - mass)
    keep = torch.zeros_like(keep_sorted)
    keep.scatter_(-1, idx, keep_sorted)
    return keep.reshape(shape)


def pca_maps(features: torch.Tensor, grid: Tuple[int, int], n_components: int = 4) -> torch.Tensor:
    """(B, n_components, h, w): PCA of patch ``features`` (B, h·w, D), fitted jointly over the batch, each component
    min-max normalised per image. Signs are fixed so that each component's largest loading is positive."""
    if features.dim() != 3 or features.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"pca_maps: expected features (B, {grid[0] * grid[1]}, D) for a {grid} grid, got "
                         f"{tuple(features.shape)}")
    B, N, D = features.shape
    if not 1 <= n_components <= min(B * N, D):
        raise ValueError(f"pca_maps: n_components must be in [1, {min(B * N, D)}], got {n_components}")
    X = features.reshape(B * N, D).to(torch.float64)
    X = X - X.mean(dim=0, keepdim=True)
    _, _, Vh = torch.linalg.svd(X, full_matrices=False)
    V = Vh[:n_components]
    sign = torch.sign(V.gather(1, V.abs().argmax(dim=1, keepdim=True)))
    proj = (X @ (V * sign).T).reshape(B, N, n_components)
    lo, hi = proj.amin(dim=1, keepdim=True), proj.amax(dim=1, keepdim=True)
    proj = (proj - lo) / (hi - lo).clamp_min(1e-12)
    return proj.permute(0, 2, 1).reshape(B, n_components, *grid).float()


def foreground_mask(component: torch.Tensor, threshold: float = 0.5, invert: bool = False,
                    fill_holes: bool = True) -> torch.Tensor:
    """Boolean (…, h, w) mask ``component > threshold`` (``<`` with ``invert``), holes filled (scipy, if installed)."""
    mask = component < threshold if invert else component > threshold
    if fill_holes:
        try:
            from scipy.ndimage import binary_fill_holes
        except ImportError:  # optional: scipy not installed → masks as thresholded
            return mask
        flat = mask.reshape(-1, *mask.shape[-2:]).cpu().numpy()
        filled = [torch.from_numpy(binary_fill_holes(m)) for m in flat]
        mask = torch.stack(filled).reshape(mask.shape).to(mask.device)
    return mask
