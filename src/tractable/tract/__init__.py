"""TrAct: first-layer gradient preconditioning (Petersen, Borgelt, Ermon, NeurIPS 2024, arXiv 2410.23970).

``∇_W ← Gᵀ X (XᵀX/b + λI)⁻¹`` for the first layer's weight, with X the b rows (samples, tokens or
receptive fields) the weight multiplies. Forward values, bias and input gradients stay plain.

>>> import torch, tractable
>>> conv = tractable.TrAct(torch.nn.Conv2d(3, 64, 3, padding=1), l=0.1)
"""
from tractable.tract.exact import attach, pending, precondition_
from tractable.tract.function import TrActWeight, tract_gradient
from tractable.tract.gram import Geometry, gram
from tractable.tract.module import TrAct, is_tract, plain_gradients, remove, tract_modules, unwrap

__all__ = [
    "TrAct",
    "TrActWeight",
    "Geometry",
    "attach",
    "gram",
    "is_tract",
    "pending",
    "plain_gradients",
    "precondition_",
    "remove",
    "tract_gradient",
    "tract_modules",
    "unwrap",
]
