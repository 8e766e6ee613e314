"""BatchNorm statistics for one point of a subspace.

During subspace training the running statistics are an exponential average over batches drawn at *random*
points: they describe a mixture of networks and are wrong for every particular point. Before a point is
evaluated its statistics are recomputed exactly as :func:`torch.optim.swa_utils.update_bn` does:

1. running mean ← 0, running variance ← 1, ``num_batches_tracked`` ← 0 (``reset_running_stats``);
2. ``momentum = None`` (cumulative average: batch b enters with weight 1/b);
3. one ``no_grad`` forward pass in train mode over the given batches (the first tensor of tuple batches);
4. momentum and train/eval mode restored.

GroupNorm/LayerNorm models have nothing to recompute (their statistics are per sample).
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["batchnorm_modules", "recompute_bn_stats", "bn_buffers", "load_bn_buffers"]


def batchnorm_modules(model: nn.Module):
    """``(name, module)`` of every BatchNorm (incl. SyncBatchNorm) that tracks running statistics."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def _input(batch):
    if isinstance(batch, (list, tuple)):
        return batch[0]
    if isinstance(batch, dict):
        raise TypeError("recompute_bn: dict batches are not supported; pass a loader of tensors or (x, y) tuples")
    return batch


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, loader: Iterable, num_batches: Optional[int] = None,
                       device: Optional[torch.device] = None) -> int:
    """Recompute the BatchNorm running statistics of ``model`` over ``loader``; returns the batches used."""
    if num_batches is not None and (isinstance(num_batches, bool) or not isinstance(num_batches, int)
                                    or num_batches < 1):
        raise ValueError(f"num_batches: expected an int >= 1 or None (the whole loader), got {num_batches!r}")
    bns = batchnorm_modules(model)
    if not bns:
        return 0
    if device is None:
        device = bns[0][1].running_mean.device
    momenta = [m.momentum for _, m in bns]
    was_training = model.training
    for _, m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    used = 0
    try:
        for batch in loader:
            if num_batches is not None and used >= num_batches:
                break
            x = _input(batch)
            if x.shape[0] == 0:
                continue
            model(x.to(device, non_blocking=True))
            used += 1
    finally:
        for (_, m), mom in zip(bns, momenta):
            m.momentum = mom
        model.train(was_training)
    if used == 0:
        raise ValueError("recompute_bn: the loader gave no batch")
    return used


def bn_buffers(model: nn.Module) -> Dict[str, Dict[str, torch.Tensor]]:
    """A copy of every BatchNorm's running statistics, by module name."""
    return {n: {"running_mean": m.running_mean.detach().clone(), "running_var": m.running_var.detach().clone(),
                "num_batches_tracked": m.num_batches_tracked.detach().clone()} for n, m in batchnorm_modules(model)}


@torch.no_grad()
def load_bn_buffers(model: nn.Module, buffers: Dict[str, Dict[str, torch.Tensor]]) -> None:
    """Copy statistics saved by :func:`bn_buffers` back into ``model`` (in place, bit-exact)."""
    for n, m in batchnorm_modules(model):
        b = buffers[n]
        m.running_mean.copy_(b["running_mean"])
        m.running_var.copy_(b["running_var"])
        m.num_batches_tracked.copy_(b["num_batches_tracked"])
