"""The one parametrization behind every subspace tensor: ``w = Σ_i coeffs[i] · original_i``.

:class:`Endpoints` is registered with :func:`torch.nn.utils.parametrize.register_parametrization` on each
selected parameter. It owns no Parameters itself: parametrize stores the K tensors it returns from
:meth:`Endpoints.right_inverse` as ordinary leaf Parameters ``<module>.parametrizations.<name>.original{i}``, in
the original shape, so optimisers, DDP, gradient clipping and AMP see plain parameters. The point is a
non-persistent buffer ``coeffs`` of shape (K,) (it follows ``.to(device)`` and stays out of the ``state_dict``);
a tensor rather than a Python float, so ``torch.compile`` does not specialise on it.

Gradients: ∂L/∂original_i = coeffs[i] · ∂L/∂w, so every stored point trains at every step.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn

__all__ = ["Endpoints"]


class Endpoints(nn.Module):
    """Parametrization ``w = Σ_i coeffs[i]·original_i`` with K originals (``torch.lerp`` for K = 2)."""

    def __init__(self, K: int, extras: List[torch.Tensor], *, dtype: torch.dtype, device: torch.device):
        super().__init__()
        if K < 2 or len(extras) != K - 1:
            raise ValueError(f"Endpoints: need K >= 2 and K - 1 extra tensors, got K={K}, {len(extras)} extras")
        self.K = K
        self._pending: Optional[List[torch.Tensor]] = list(extras)  # handed to parametrize once
        coeffs = torch.zeros(K, dtype=dtype if dtype.is_floating_point else torch.float32, device=device)
        coeffs[0] = 1.0
        self.register_buffer("coeffs", coeffs, persistent=False)

    def forward(self, *originals: torch.Tensor) -> torch.Tensor:
        c = self.coeffs
        if len(originals) == 2:
            return torch.lerp(originals[0], originals[1], c[1])
        w = torch.mul(originals[0], c[0])  # one new tensor, then fused in-place multiply-adds
        for i in range(1, len(originals)):
            w = w.addcmul_(originals[i], c[i])
        return w

    def right_inverse(self, value: torch.Tensor):
        if self._pending is None:
            raise RuntimeError("a subspace parameter cannot be assigned directly (its value is a mixture of "
                               "K stored tensors); load the endpoints through state_dict() instead")
        extras, self._pending = self._pending, None
        return (value, *extras)

    def extra_repr(self) -> str:
        return f"K={self.K}"
