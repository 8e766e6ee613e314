"""Calibration and agreement metrics on logits: accuracy, NLL, ECE (M equal-width bins), TV distance.

ECE with M bins over the max-softmax confidence (Guo et al. 2017; the subspace paper uses M = 20):
``ECE = Σ_b |Σ_{i∈b} correct_i − Σ_{i∈b} conf_i| / N``; bin b holds confidences in ((b−1)/M, b/M]
(the first bin also holds 0). Ensembles: ``combine="logits"`` averages logits (the argmax equals the paper's
sum of logits), ``"probs"`` averages softmax probabilities; the NLL and ECE of a logit ensemble use the
softmax of the averaged logits.
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch
import torch.nn.functional as F

__all__ = ["accuracy", "nll", "ece", "tv_distance", "combine_logits", "classification_metrics"]


def _check(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.dim() != 2 or labels.dim() != 1 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"expected logits (N, C) and labels (N,), got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    _check(logits, labels)
    return float((logits.argmax(-1) == labels).double().mean())


def nll(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood of the softmax of ``logits`` (float64)."""
    _check(logits, labels)
    return float(F.cross_entropy(logits.double(), labels, reduction="mean"))


def ece(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 20) -> float:
    """Expected calibration error with ``n_bins`` equal-width confidence bins (see the module docstring)."""
    _check(logits, labels)
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins: expected an int >= 1, got {n_bins!r}")
    probs = logits.double().softmax(-1)
    conf, pred = probs.max(-1)
    correct = (pred == labels).double()
    bins = (conf * n_bins).ceil().long().clamp(1, n_bins) - 1
    gap = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, bins.cpu(), (correct - conf).cpu())
    return float(gap.abs().sum() / labels.shape[0])


def tv_distance(logits_a: torch.Tensor, logits_b: torch.Tensor) -> float:
    """Mean total-variation distance ½ Σ_c |p_a − p_b| between the two softmaxes."""
    pa, pb = logits_a.double().softmax(-1), logits_b.double().softmax(-1)
    return float(0.5 * (pa - pb).abs().sum(-1).mean())


def combine_logits(members: Sequence[torch.Tensor], combine: str = "logits") -> torch.Tensor:
    """Ensemble output as logits: the mean of the logits, or the log of the mean of the probabilities."""
    if combine not in ("logits", "probs"):
        raise ValueError(f"combine: {combine!r} is not accepted; accepted values: 'logits', 'probs'")
    if not members:
        raise ValueError("combine_logits: no ensemble member")
    stacked = torch.stack([m.double() for m in members])
    if combine == "logits":
        return stacked.mean(0)
    return stacked.softmax(-1).mean(0).log()


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 20) -> Dict[str, float]:
    """``{"acc", "nll", "ece"}`` of one set of logits."""
    return {"acc": accuracy(logits, labels), "nll": nll(logits, labels), "ece": ece(logits, labels, n_bins)}
