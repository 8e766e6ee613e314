"""TrAct: first-layer gradient preconditioning (Petersen, Borgelt, Ermon, NeurIPS 2024, arXiv 2410.23970).

``∇_W ← Gᵀ X (XᵀX/b + λI)⁻¹`` for the first layer's weight, with X the b rows (samples, tokens or
receptive fields) the weight multiplies. Forward values, bias and input gradients stay plain.

>>> import torch, tractable
>>> conv = tractable.TrAct(torch.nn.Conv2d(3, 64, 3, padding=1), l=0.1)
"""
from tractable.tract.diagnostics import layer_diagnostics, plain_weight_gradient, tract_diagnostics
from tractable.tract.exact import attach, pending, precondition_
from tractable.tract.function import TrActWeight, tract_gradient
from tractable.tract.gram import Geometry, gram
from tractable.tract.module import (TrAct, is_tract, layer_geometry, plain_gradients, remove, tract_modules,
                                    unwrap)

__all__ = [
    "TrAct",
    "TrActWeight",
    "Geometry",
    "attach",
    "gram",
    "is_tract",
    "layer_diagnostics",
    "layer_geometry",
    "pending",
    "plain_gradients",
    "plain_weight_gradient",
    "precondition_",
    "remove",
    "tract_diagnostics",
    "tract_gradient",
    "tract_modules",
    "unwrap",
]
