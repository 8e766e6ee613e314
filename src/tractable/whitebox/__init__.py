r"""White-box measurements of CRATE models (Yu et al., NeurIPS 2023; CPAL 2024): coding rates, sparsity,
attention maps.

* :func:`compression_rate` — the per-layer compression term R^c. ``mode="official"`` is what the reference
  code (``vis_utils/coding_rate.py``) measures and plots: on the ``qkv`` output X = LN₁(Z^ℓ)Uᵀ split into K heads
  of d_h, every token's per-head vector normalised to unit ℓ₂ norm,
  R^c = ½ Σ_k logdet(I_n + d_h/(n·ε) X̂_k X̂_kᵀ) with ε = 0.01 entering *linearly*; ``mode="paper"``:
  R^c_ε(Z | U) = ½ Σ_k logdet(I + d_h/(nε²)(U_kᵀZ)ᵀ(U_kᵀZ)) on the unnormalised U_kᵀZ^{ℓ+½}.
  Both use Sylvester's identity logdet(I_n + cXXᵀ) = logdet(I_dh + cXᵀX) and float64 Cholesky.
* :func:`coding_rate` — R_ε(Z) = ½ logdet(I + d/(nε²) ZᵀZ) per sample; ΔR = R − R^c (absent from the official
  repository).
* :func:`zero_fraction` — the fraction of exact zeros of an ISTA output Z^{ℓ+1} over all n·d entries (cls
  included); the reference plot shows the non-zero fraction 1 − mean with error bars std.
* :func:`measure_layers` — both per layer of a CRATE model, through ``model.forward_features`` (no hooks).
* :func:`cls_attention_maps`, :func:`upsample_maps`, :func:`mass_threshold`, :func:`pca_maps` — DINO-style
  cls-token attention per head on the patch grid, nearest upsampling, the 60 %-mass threshold, and the PCA
  foreground visualisation of the patch features; :func:`pca_segmentation` the notebooks' two-stage PCA with the
  mask polarity fixed by the attention; :func:`jaccard` for masks. Attention maps need only one layer's memory.
"""
from tractable.whitebox.coding_rate import coding_rate, compression_rate, logdet_psd
from tractable.whitebox.sparsity import zero_fraction
from tractable.whitebox.measure import LayerStats, measure_layers
from tractable.whitebox.attention import (cls_attention_maps, foreground_mask, jaccard, mass_threshold, pca_maps,
                                          pca_segmentation, upsample_maps)
from tractable.whitebox.inputs import warn_if_small

__all__ = [
    "coding_rate",
    "compression_rate",
    "logdet_psd",
    "zero_fraction",
    "LayerStats",
    "measure_layers",
    "cls_attention_maps",
    "upsample_maps",
    "mass_threshold",
    "pca_maps",
    "foreground_mask",
    "pca_segmentation",
    "jaccard",
    "warn_if_small",
]
