"""How a subspace weight is computed: ``w = Σ_i c_i · E[i]`` over the stacked stored points E (K, *shape).

:class:`Endpoints` is registered with :func:`torch.nn.utils.parametrize.register_parametrization` on each
selected parameter. parametrize stores what :meth:`Endpoints.right_inverse` returns as one leaf Parameter
``<module>.parametrizations.<name>.original`` of shape (K, *shape): the K stored points of that tensor stacked
along a new first dimension. The point is a non-persistent buffer ``coeffs`` of shape (K,): it follows
``.to(device)``, stays out of the ``state_dict``, and is a tensor (not a Python float), so ``torch.compile`` does
not specialise on it. Every new point is a new ``coeffs`` tensor, never an in-place write.

**The one weight path.** Reading ``module.<name>`` calls :meth:`Endpoints.forward`, which returns
:func:`mix` ``(E, coeffs)``: an autograd Function whose forward is ``torch.lerp(E[0], E[1], c_1)`` for K = 2
(exact at both ends: lerp returns E[0] at c = (1, 0) and E[1] at c = (0, 1) bit for bit) or one (1 × K)·(K × n)
product, and whose backward is ∂L/∂E = c ⊗ ∂L/∂w (one broadcast multiply; every stored point trains every
step). It keeps ``coeffs`` as an attribute rather than a saved tensor, so a region recomputed by activation
checkpointing saves exactly the tensors its first run saved.

**The one fast path** (``Subspace.mix_all``, on by default): a forward pre-hook on the model computes every
tensor's weight with the same two formulas in one :class:`MixAll` node before the forward, and
:meth:`Endpoints.forward` returns that weight (``_now``) while the forward runs. Results are bit-identical;
only the bookkeeping differs: small per-tensor nodes interleaved with convolutions run cold (the convolution
evicts the interpreter's working set), back to back they stay warm (docs/performance.md). A checkpointed region
recomputed in the backward finds ``_now`` cleared and takes the one path above, with the same values.

Checkpoints of tractable's first layout (K tensors ``original0`` … ``original{K-1}``) still load: a
``load_state_dict`` pre-hook stacks them.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn

__all__ = ["Endpoints", "MixAll", "mix", "combine_points"]


def _mix_forward(stacked: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    if stacked.shape[0] == 2:  # exact at both ends (lerp switches formula at weight 0.5)
        return torch.lerp(stacked[0], stacked[1], coeffs[1])
    with torch.autocast(stacked.device.type, enabled=False):  # mm is on autocast's low-precision list
        return torch.mm(coeffs.unsqueeze(0), stacked.reshape(stacked.shape[0], -1)).view(stacked.shape[1:])


def _mix_grad(coeffs: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return torch.mul(coeffs.view((coeffs.shape[0],) + (1,) * grad.dim()), grad.unsqueeze(0))


def combine_points(m: torch.Tensor, stacked: torch.Tensor) -> torch.Tensor:
    """``M · E`` for a K × K matrix M and stacked E (K, *shape), as a new (K, *shape) tensor.

    K broadcast multiply-adds over the (K, n) output: for small K several times faster than a (K × K)·(K × n)
    GEMM, which BLAS libraries do not optimise for."""
    K = stacked.shape[0]
    m = m.to(stacked.dtype).unsqueeze(-1)  # (K, K, 1): column j scales stored point j
    flat = stacked.reshape(1, K, -1)
    out = torch.mul(m[:, 0], flat[:, 0])
    for j in range(1, K):
        out.addcmul_(m[:, j], flat[:, j])
    return out.view(stacked.shape)


class _Mix(torch.autograd.Function):
    """w = Σ_i c_i E[i] for stacked E (K, *shape) and coefficients c (K,), with ∂L/∂E = c ⊗ ∂L/∂w."""

    @staticmethod
    def forward(ctx, stacked: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
        ctx.coeffs = coeffs  # an attribute, not a saved tensor: see the module docstring (checkpointing)
        return _mix_forward(stacked, coeffs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _mix_grad(ctx.coeffs, grad), None


class MixAll(torch.autograd.Function):
    """The fast path: every subspace tensor of a model mixed in one node, ``(w_1 … w_T)``, with the arithmetic
    of :class:`_Mix` (bit-identical results)."""

    @staticmethod
    def forward(ctx, coeffs, *stacked):
        ctx.set_materialize_grads(False)
        ctx.coeffs = coeffs
        with torch.autocast(stacked[0].device.type, enabled=False):
            return tuple(_mix_forward(t, c) for t, c in zip(stacked, coeffs))

    @staticmethod
    def backward(ctx, *grads):
        return (None, *(None if g is None else _mix_grad(c, g) for c, g in zip(ctx.coeffs, grads)))


def mix(stacked: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """``Σ_i coeffs[i] · stacked[i]``, exact at the stored points, with ∂L/∂stacked = coeffs ⊗ ∂L/∂w."""
    if coeffs.dtype != stacked.dtype or coeffs.device != stacked.device:
        coeffs = coeffs.to(device=stacked.device, dtype=stacked.dtype)
    return _Mix.apply(stacked, coeffs)


def _stack_legacy_keys(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    """``original0`` … ``original{K-1}`` (tractable's first layout) → one stacked ``original``."""
    key = prefix + "original"
    if key in state_dict or prefix + "original0" not in state_dict:
        return
    parts = []
    while prefix + f"original{len(parts)}" in state_dict:
        parts.append(state_dict.pop(prefix + f"original{len(parts)}"))
    state_dict[key] = torch.stack(parts)


class Endpoints(nn.Module):
    """Parametrization ``w = Σ_i coeffs[i] · original[i]`` of one stacked original of shape (K, *shape)."""

    def __init__(self, K: int, extras: List[torch.Tensor], *, dtype: torch.dtype, device: torch.device):
        super().__init__()
        if K < 2 or len(extras) != K - 1:
            raise ValueError(f"Endpoints: need K >= 2 and K - 1 extra tensors, got K={K}, {len(extras)} extras")
        self.K = K
        self._pending: Optional[List[torch.Tensor]] = list(extras)  # handed to parametrize once
        coeffs = torch.zeros(K, dtype=dtype if dtype.is_floating_point else torch.float32, device=device)
        coeffs[0] = 1.0
        self.register_buffer("coeffs", coeffs, persistent=False)
        self._now: Optional[torch.Tensor] = None  # this forward's weight from the fast path (MixAll), else None

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        return self._now if self._now is not None else mix(stacked, self.coeffs)

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        if self._pending is None:
            raise RuntimeError("a subspace parameter cannot be assigned directly (its value is a mixture of "
                               "K stored tensors); load the endpoints through state_dict() instead")
        extras, self._pending = self._pending, None
        return torch.stack([value.detach(), *extras])

    def __getstate__(self):  # deepcopy / pickling: the fast path's weight belongs to a live autograd graph
        state = dict(super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__)
        state["_now"] = None
        return state

    def extra_repr(self) -> str:
        return f"K={self.K}"
