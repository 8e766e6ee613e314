"""The one parametrization behind every subspace tensor: ``w = Σ_i c_i · E[i]`` over the stacked stored points E.

:class:`Endpoints` is registered with :func:`torch.nn.utils.parametrize.register_parametrization` on each
selected parameter. It owns no Parameters itself: parametrize stores the tensor returned by
:meth:`Endpoints.right_inverse` as one leaf Parameter ``<module>.parametrizations.<name>.original`` of shape
``(K, *shape)`` -- the K stored points of that tensor stacked along a new first dimension -- so optimisers, DDP,
gradient clipping and AMP see one plain parameter per original tensor (and per-tensor optimiser groups, e.g.
no weight decay on norms and biases, keep working). The point is a non-persistent buffer ``coeffs`` of shape
(K,) (it follows ``.to(device)`` and stays out of the ``state_dict``); a tensor rather than a Python float, so
``torch.compile`` does not specialise on it.

Why stacked: one (K, n) tensor per original tensor takes one operator call where K separate tensors take K --
the forward mix is one ``torch.lerp`` (K = 2) or one (1 × K)·(K × n) product, its backward one broadcast
multiply writing the whole (K, n) gradient, and the optimiser updates one tensor instead of K. The bytes moved
are the same (for a memory-bound model the step costs what they cost; docs/performance.md measures it).

Gradients (:class:`_Mix`): ∂L/∂E[i] = c_i · ∂L/∂w, so every stored point trains at every step. Both directions
are exact at a stored point: ``torch.lerp`` returns E[0] at c = (1, 0) and E[1] at c = (0, 1) bit for bit, a
product with a one-hot coefficient vector adds exact zeros, and c_i · g is one rounding (none for c_i ∈ {0, 1}).

Checkpoints written by tractable before the stacked layout (K tensors ``original0`` … ``original{K-1}``) still
load: a ``load_state_dict`` pre-hook on the parametrization list stacks them.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn
from torch.nn.utils import parametrize as _parametrize

__all__ = ["Endpoints", "MixAll", "mix", "install_fast_getter"]


def _mix_forward(stacked: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    if stacked.shape[0] == 2:  # exact at both ends (lerp switches formula at weight 0.5)
        return torch.lerp(stacked[0], stacked[1], coeffs[1])
    with torch.autocast(stacked.device.type, enabled=False):  # mm is on autocast's low-precision list
        return torch.mm(coeffs.unsqueeze(0), stacked.reshape(stacked.shape[0], -1)).view(stacked.shape[1:])


def _mix_grad(coeffs: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return torch.mul(coeffs.view((coeffs.shape[0],) + (1,) * grad.dim()), grad.unsqueeze(0))


def combine_points(m: torch.Tensor, stacked: torch.Tensor, coeffs: Optional[torch.Tensor] = None,
                   grad: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``M · E`` (+ ``c ⊗ grad``) for a K × K matrix M and stacked E (K, *shape), as a new (K, *shape) tensor.

    K broadcast multiply-adds over the whole (K, n) output (one more with the mix gradient): for small K this
    is several times faster than a (K × K)·(K × n) GEMM, which BLAS libraries do not optimise for."""
    K = stacked.shape[0]
    m = m.to(stacked.dtype).unsqueeze(-1)  # (K, K, 1): column j scales stored point j
    flat = stacked.reshape(1, K, -1)
    out = torch.mul(m[:, 0], flat[:, 0])
    for j in range(1, K):
        out.addcmul_(m[:, j], flat[:, j])
    if grad is not None:
        out.addcmul_(coeffs.to(stacked.dtype).unsqueeze(-1), grad.reshape(1, -1))
    return out.view(stacked.shape)


class _Mix(torch.autograd.Function):
    """w = Σ_i c_i E[i] for stacked E (K, *shape) and coefficients c (K,), with ∂L/∂E = c ⊗ ∂L/∂w."""

    @staticmethod
    def forward(ctx, stacked: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(coeffs)
        return _mix_forward(stacked, coeffs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (coeffs,) = ctx.saved_tensors
        return _mix_grad(coeffs, grad), None


class _MixRouted(torch.autograd.Function):
    """:class:`_Mix` plus a second output, a (K, K) *route*: the gradient M that reaches the route is applied as
    ∂L/∂E += M · E (E viewed as K × n) inside this node's backward.

    The cos² regulariser's gradient with respect to the stored points has exactly this form (M is K × K, see
    ``tractable.subspace.convert._Cos2``), so routing it here gives every stored tensor *one* gradient per step,
    computed in one pass, instead of a second gradient tensor that autograd would add out of place. The route's
    value (zeros) is never used. The node keeps E and c as attributes (no saved tensors to free), so a separate
    ``regularizer.backward()`` after ``loss.backward()`` still works; an in-place change of E in between raises,
    as autograd would.
    """

    @staticmethod
    def forward(ctx, stacked: torch.Tensor, coeffs: torch.Tensor):
        ctx.set_materialize_grads(False)
        ctx.stacked, ctx.coeffs, ctx.version = stacked, coeffs, stacked._version
        route = torch.zeros((stacked.shape[0],) * 2, dtype=stacked.dtype, device=stacked.device)
        return _mix_forward(stacked, coeffs), route

    @staticmethod
    def backward(ctx, grad, route_grad):
        stacked = ctx.stacked
        if route_grad is None:
            return (None if grad is None else _mix_grad(ctx.coeffs, grad)), None
        if stacked._version != ctx.version:
            raise RuntimeError("subspace: the stored points were modified in place (e.g. by optimizer.step()) "
                               "between the forward and the backward of the regulariser")
        return combine_points(route_grad, stacked, ctx.coeffs, grad), None


class MixAll(torch.autograd.Function):
    """Every subspace tensor of a model mixed in one autograd node: ``(w_1 … w_T, route)``.

    The same arithmetic as the per-tensor nodes (:func:`_mix_forward`, :func:`_mix_grad`,
    :func:`combine_points`), so the results are bit-identical; only the bookkeeping differs. A model's forward
    interleaves its tensors' small mixing operations with large kernels (convolutions), which evict the
    interpreter's and the dispatcher's working set from the caches: each small per-tensor node then costs
    several times what it costs back to back. Run before the forward, and as one node in the backward, they
    stay warm. ``routed[t]``: tensor t takes the regulariser's K × K gradient from the one shared ``route``.
    The node keeps the stored tensors as attributes (no saved tensors to free), like :class:`_MixRouted`.
    """

    @staticmethod
    def forward(ctx, coeffs, routed, *stacked):
        ctx.set_materialize_grads(False)
        ctx.coeffs, ctx.routed, ctx.stacked = coeffs, routed, stacked
        ctx.versions = [t._version for t in stacked]
        with torch.autocast(stacked[0].device.type, enabled=False):
            ws = [_mix_forward(t, c) for t, c in zip(stacked, coeffs)]
        K = stacked[0].shape[0]
        route = torch.zeros((K, K), dtype=stacked[0].dtype, device=stacked[0].device)
        return (*ws, route)

    @staticmethod
    def backward(ctx, *grads):
        route_grad = grads[-1]
        out = []
        for t, c, r, g, v in zip(ctx.stacked, ctx.coeffs, ctx.routed, grads[:-1], ctx.versions):
            if route_grad is not None and r:
                if t._version != v:
                    raise RuntimeError("subspace: the stored points were modified in place (e.g. by "
                                       "optimizer.step()) between the forward and the backward of the regulariser")
                out.append(combine_points(route_grad, t, c, g))
            else:
                out.append(None if g is None else _mix_grad(c, g))
        return (None, None, *out)


def mix(stacked: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """``Σ_i coeffs[i] · stacked[i]`` with the exact endpoint behaviour and fused gradient of :class:`_Mix`."""
    if coeffs.dtype != stacked.dtype or coeffs.device != stacked.device:
        coeffs = coeffs.to(device=stacked.device, dtype=stacked.dtype)
    return _Mix.apply(stacked, coeffs)


def install_fast_getter(module: nn.Module, name: str) -> None:
    """Replace parametrize's property for ``module.<name>`` by one that calls :class:`Endpoints` directly.

    parametrize's own getter goes through two ``nn.Module.__call__`` (the ParametrizationList, then the
    parametrization) — about 10–20 µs of Python per tensor per forward, which is milliseconds per step on a model
    with hundreds of tensors. This getter reads the stacked original from the module's own dictionaries (never
    from a closure: a deep copy shares the parametrized class) and falls back to parametrize's getter whenever
    that one would behave differently: inside ``parametrize.cached()``, under TorchScript, or when further
    parametrizations were registered on the same tensor.
    """
    cls = type(module)
    slow = cls.__dict__[name]

    def fget(self):
        plist = self._modules["parametrizations"]._modules[name]
        if _parametrize._cache_enabled or len(plist) != 1 or torch.jit.is_scripting():
            return slow.fget(self)
        ep = plist._modules["0"]
        w = ep._now  # computed with every other tensor of the model by Subspace's forward pre-hook
        return w if w is not None else ep.forward(plist._parameters["original"])

    setattr(cls, name, property(fget, slow.fset))


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
        self.routed = False  # set by Subspace.prepare_regularizer() on regularised tensors
        self._route = None  # (route, stacked, version) of the latest training forward
        self._now = None  # this forward's weight, from MixAll (cleared after the forward and at a new point)

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        if not (self.routed and torch.is_grad_enabled() and stacked.requires_grad):
            return mix(stacked, self.coeffs)
        coeffs = self.coeffs
        if coeffs.dtype != stacked.dtype or coeffs.device != stacked.device:
            coeffs = coeffs.to(device=stacked.device, dtype=stacked.dtype)
        w, route = _MixRouted.apply(stacked, coeffs)
        self._route = (route, stacked, stacked._version)
        return w

    def live_route(self, stacked: torch.Tensor) -> Optional[torch.Tensor]:
        """The route of the latest training forward if ``stacked`` is still the same, unmodified tensor."""
        r = self._route
        if r is None or r[1] is not stacked or stacked._version != r[2]:
            return None
        return r[0]

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        if self._pending is None:
            raise RuntimeError("a subspace parameter cannot be assigned directly (its value is a mixture of "
                               "K stored tensors); load the endpoints through state_dict() instead")
        extras, self._pending = self._pending, None
        return torch.stack([value.detach(), *extras])

    def __getstate__(self):  # deepcopy / pickling: the route belongs to a live autograd graph
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        state = dict(state)
        state["_route"] = None
        state["_now"] = None
        return state

    def extra_repr(self) -> str:
        return f"K={self.K}"
