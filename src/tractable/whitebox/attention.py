r"""Attention-map segmentation of CRATE (CPAL 2024 "Emergence of Segmentation"; DINO-style).

* :func:`cls_attention_maps` — at layer ℓ (default the last) A = softmax(wwᵀ/√d_h) on LN₁(Z^ℓ) (B, K, n, n);
  head k's saliency map is the cls row over the patch columns ``A[:, k, 0, 1:]`` on the (H/P, W/P) grid.
* :func:`upsample_maps` — nearest upsampling by the patch size to the image size.
* :func:`mass_threshold` — renormalise each map over its patches, sort ascending, cumulative sum, keep the
  patches where it exceeds 1 − mass: the smallest set of top patches holding ``mass`` (60 %) of the attention.
* :func:`pca_segmentation` — the notebooks' full pipeline: PCA → foreground mask (polarity fixed by the
  attention) → a second PCA on the foreground patches only; :func:`jaccard` scores a mask against a reference.
* :func:`pca_maps` — PCA of patch features (e.g. the ``qkv`` output of the last layer, cls dropped) fitted
  *jointly over all images*, each component min-max normalised per image on the patch grid; the reference
  shows the last three of four components as RGB and thresholds one at 0.5 for a foreground mask
  (:func:`foreground_mask`, holes filled with scipy when it is installed).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from tractable.whitebox.inputs import warn_if_small

__all__ = ["cls_attention_maps", "upsample_maps", "mass_threshold", "pca_maps", "foreground_mask",
           "pca_segmentation", "jaccard"]


@torch.no_grad()
def cls_attention_maps(model, images: torch.Tensor, layer: int = -1) -> torch.Tensor:
    """(B, K, H/P, W/P) cls-token attention of every head at ``layer`` (0-based; negative counts from the end).

    Memory is bounded by one layer: the layers before ``layer`` run their ordinary forward (fused attention, no
    matrix kept), and at ``layer`` only the cls query's row softmax(w_cls wᵀ/√d_h) is formed — (B, K, n), not
    the (B, K, n, n) matrix. The grid is the one the encoder runs on (after a ``resize_to`` model's resize).
    Works for any model with ``embed``, ``crate_layers()`` and ``input_grid`` (CRATE, the CRATE-MAE encoder).
    """
    if not hasattr(model, "crate_layers") or not hasattr(model, "embed"):
        raise ValueError(f"cls_attention_maps: expected a CRATE or CRATE-MAE model, got {type(model).__name__}")
    layers = model.crate_layers()
    depth = len(layers)
    idx = layer + depth if layer < 0 else layer
    if not 0 <= idx < depth:
        raise ValueError(f"cls_attention_maps: layer must be in [-{depth}, {depth - 1}], got {layer}")
    warn_if_small(model, images, "cls_attention_maps")
    z = model.embed(images)
    for attn, ista in layers[:idx]:
        z = ista(attn(z) + z)
    block = layers[idx][0]
    mssa = block.fn
    B, n, _ = z.shape
    w = mssa.qkv(block.norm(z)).reshape(B, n, mssa.heads, mssa.dim_head).transpose(1, 2)  # (B, K, n, dh)
    row = torch.softmax(torch.matmul(w[:, :, :1], w.transpose(-1, -2)) * mssa.scale, dim=-1)  # (B, K, 1, n)
    gh, gw = model.input_grid(images)
    return row[:, :, 0, 1:].reshape(B, mssa.heads, gh, gw)


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


def pca_segmentation(features: torch.Tensor, grid: Tuple[int, int], attention: Optional[torch.Tensor] = None,
                     threshold: float = 0.5, fill_holes: bool = True) -> Dict[str, torch.Tensor]:
    """The emergence notebooks' PCA pipeline on patch ``features`` (B, h·w, D) (cls dropped):

    1. PCA(4) fitted jointly over the batch, each component min-max normalised per image (:func:`pca_maps`);
    2. foreground = the first component thresholded at ``threshold``, holes filled. A component's sign is
       arbitrary, so the **polarity is fixed per image by the attention**: of the two sides of the threshold,
       the foreground is the one with the higher mean of ``attention`` (B, h, w) (e.g. the head-mean cls map);
       without ``attention`` the side above the threshold is taken (the notebooks' default);
    3. a second PCA(3) fitted on the foreground patches of all images only, min-max normalised per image over
       its foreground, as RGB; background patches are 0.

    Returns ``{"components": (B, 4, h, w), "mask": (B, h, w) bool, "rgb": (B, 3, h, w), "inverted": (B,) bool}``.
    """
    B = features.shape[0]
    comps = pca_maps(features, grid, n_components=min(4, features.shape[-1], B * grid[0] * grid[1]))
    first = comps[:, 0]
    above = foreground_mask(first, threshold, invert=False, fill_holes=fill_holes)
    below = foreground_mask(first, threshold, invert=True, fill_holes=fill_holes)
    inverted = torch.zeros(B, dtype=torch.bool)
    if attention is not None:
        if tuple(attention.shape) != (B, *grid):
            raise ValueError(f"pca_segmentation: attention must be (B, h, w) = {(B, *grid)}, got "
                             f"{tuple(attention.shape)}")
        a = attention.float()

        def mean_in(mask):
            return (a * mask).sum((-1, -2)) / mask.sum((-1, -2)).clamp_min(1)

        inverted = mean_in(below.float()) > mean_in(above.float())
    mask = torch.where(inverted.view(B, 1, 1), below, above)
    rgb = torch.zeros(B, 3, *grid)
    flat_mask = mask.reshape(B, -1)
    fg = features.reshape(B, -1, features.shape[-1])[flat_mask].to(torch.float64)
    if fg.shape[0] >= 3:
        X = fg - fg.mean(0, keepdim=True)
        V = torch.linalg.svd(X, full_matrices=False)[2][:3]
        proj = X @ V.T  # (#fg, ≤3)
        k = proj.shape[1]
        full = torch.zeros(B, grid[0] * grid[1], k, dtype=torch.float64)
        full[flat_mask] = proj
        for b in range(B):
            m = flat_mask[b]
            if m.any():
                v = full[b, m]
                lo, hi = v.amin(0, keepdim=True), v.amax(0, keepdim=True)
                full[b, m] = (v - lo) / (hi - lo).clamp_min(1e-12)
        rgb[:, :k] = full.permute(0, 2, 1).reshape(B, k, *grid).float()
    return {"components": comps, "mask": mask, "rgb": rgb, "inverted": inverted}


def jaccard(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """|pred ∩ target| / |pred ∪ target| over the last two dimensions of boolean masks (1 when both are empty)."""
    if pred.shape[-2:] != target.shape[-2:]:
        raise ValueError(f"jaccard: masks of different sizes {tuple(pred.shape)} and {tuple(target.shape)}")
    p, t = pred.bool(), target.bool()
    inter = (p & t).sum((-1, -2)).double()
    union = (p | t).sum((-1, -2)).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
