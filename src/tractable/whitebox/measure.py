r"""Layer-wise white-box measurements of a CRATE model, through ``model.forward_features`` (no hooks).

For each layer ℓ and a batch of images: R^c (:func:`~tractable.whitebox.coding_rate.compression_rate`; mean
and std over the batch), the coding rate R and ΔR = R − R^c of the same features, and the zero fraction of the
ISTA output Z^{ℓ+1} (:func:`~tractable.whitebox.sparsity.zero_fraction`; the reference plots the non-zero
fraction ``1 − zero_mean``).

Features per ``mode``: ``"official"`` — R^c on the ``qkv`` output LN₁(Z^ℓ)Uᵀ (unit-normalised head tokens,
linear ε = 0.01; what the reference repository plots, although its figure label says Z^{ℓ+½}) and R on
LN₁(Z^ℓ) with the same convention; ``"paper"`` — R^c on U_kᵀZ^{ℓ+½} (unnormalised, ε²) and R on Z^{ℓ+½}.

ΔR = R − R^c, the paper's rate reduction (larger = the K subspaces code the tokens more cheaply than the whole
space does). Its sign means something only in ``"paper"`` mode, where both terms are the paper's formulas on the
same Z^{ℓ+½}; it can still be negative there because the learned U is not orthonormal. In ``"official"`` mode the
two terms normalise differently (per head vs per token), and R^c sums K logdets of unit vectors, so the difference
is negative by construction: it is kept in the JSON for completeness and the commands print it only in paper mode.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, List, Optional

import torch
import torch.nn.functional as F

from tractable.whitebox.coding_rate import coding_rate, compression_rate
from tractable.whitebox.inputs import warn_if_small
from tractable.whitebox.sparsity import zero_fraction

__all__ = ["LayerStats", "measure_layers", "merge_stats"]


@dataclass
class LayerStats:
    """Measurements of one layer (1-based ``layer``) over ``count`` samples."""

    layer: int
    rc_mean: float
    rc_std: float
    r_mean: float
    delta_r_mean: float
    zero_mean: float
    zero_std: float
    count: int

    @property
    def nonzero_mean(self) -> float:
        return 1.0 - self.zero_mean

    def to_dict(self) -> dict:
        return {**asdict(self), "nonzero_mean": self.nonzero_mean}


def _std(x: torch.Tensor) -> float:
    return float(x.std(unbiased=True)) if x.numel() > 1 else 0.0


@torch.no_grad()
def layer_values(model, images: torch.Tensor, mode: str = "official", eps: Optional[float] = None):
    """Per-layer per-sample tensors ``[(rc, r, zero_frac)]`` (each (B,) float64) for one batch."""
    if mode not in ("official", "paper"):
        raise ValueError(f"measure_layers: mode must be 'official' or 'paper', got {mode!r}")
    if not hasattr(model, "forward_features") or not hasattr(model, "crate_layers"):
        raise ValueError(f"measure_layers: expected a CRATE or CRATE-MAE model (tractable.models.crate.CRATE, "
                         f"tractable.models.crate_mae.CRATEMAE), got {type(model).__name__}")
    eps = (0.01 if mode == "official" else 0.1) if eps is None else eps
    warn_if_small(model, images, "measure_layers")
    feats = model.forward_features(images, taps=("qkv", "mid", "out"))
    out = []
    z_prev = feats["embed"]
    for i, (attn_block, _) in enumerate(model.crate_layers()):
        mssa = attn_block.fn
        if mode == "official":
            X = feats["qkv"][i]
            R = coding_rate(attn_block.norm(z_prev), eps, "official")
        else:
            X = F.linear(feats["mid"][i], mssa.qkv.weight)
            R = coding_rate(feats["mid"][i], eps, "paper")
        rc = compression_rate(X, mssa.heads, eps, mode)
        out.append((rc, R, zero_fraction(feats["out"][i])))
        z_prev = feats["out"][i]
    return out


def merge_stats(per_batch: List[list]) -> List[LayerStats]:
    """Combine the :func:`layer_values` of several batches into one :class:`LayerStats` per layer."""
    layers = len(per_batch[0])
    stats = []
    for i in range(layers):
        rc = torch.cat([b[i][0] for b in per_batch])
        r = torch.cat([b[i][1] for b in per_batch])
        z = torch.cat([b[i][2] for b in per_batch])
        stats.append(LayerStats(layer=i + 1, rc_mean=float(rc.mean()), rc_std=_std(rc), r_mean=float(r.mean()),
                                delta_r_mean=float((r - rc).mean()), zero_mean=float(z.mean()), zero_std=_std(z),
                                count=int(rc.numel())))
    return stats


def measure_layers(model, batches: Iterable[torch.Tensor], mode: str = "official",
                   eps: Optional[float] = None) -> List[LayerStats]:
    """:class:`LayerStats` per layer of ``model`` over one image tensor or an iterable of image batches."""
    if isinstance(batches, torch.Tensor):
        batches = [batches]
    was = model.training
    model.eval()
    try:
        per_batch = [layer_values(model, x, mode, eps) for x in batches]
    finally:
        model.train(was)
    if not per_batch:
        raise ValueError("measure_layers: no images")
    return merge_stats(per_batch)
