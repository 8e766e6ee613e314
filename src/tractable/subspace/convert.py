"""``convert(model, model_fn, kind, ...)`` and the :class:`Subspace` controller it returns.

**The flow.** Conversion registers one :class:`~tractable.subspace.parametrization.Endpoints` parametrization on
every selected parameter of ``model`` (in place): the parameter becomes ``<module>.parametrizations.<name>.original``
of shape (K, *shape), its K stored points stacked along the first dimension, in this order:

* line: [ω₀ (the model's current value), ω₁ (from a fresh ``model_fn()``)];
* curve: [start ω₀, control θ, end ω₁] (θ from the first ``model_fn()`` call, or the chord midpoint);
* simplex with k vertices: [ω₀, ω₁ … ω_{k−1}] (k − 1 ``model_fn()`` calls).

Norm-layer affine parameters start identical on every endpoint by default (``norm_endpoints="shared"``, as in
the paper); ``"independent"`` takes them from ``model_fn()`` too. Parameters with ``requires_grad=False`` stay
single (a frozen backbone stays one network); ``param_filter(module_name, param_name, param) -> bool`` narrows
the selection. Recurrent layers (``nn.LSTM``/``GRU``) convert like any other: they read their weights through
the parametrized attributes at every forward. Tied parameters (one Parameter owned by two modules) are refused.

**A step.** :meth:`Subspace.sample` draws a point and writes it as new ``coeffs`` tensors (one vector for all
modules, or one per module when ``layerwise``; a module's weight and bias share it). The forward reads each
weight as ``Σ_i c_i E[i]`` (:mod:`~tractable.subspace.parametrization`: one weight path, and one fast path behind
:attr:`Subspace.mix_all`). :meth:`Subspace.regularizer` returns β·cos² whose gradient S·E reaches the stored
points directly (:mod:`~tractable.subspace.regularizer`). The backward gives each stored tensor
c ⊗ ∂L/∂w + S·E.

**State.** The :class:`Subspace` never owns tensors the model does not (BatchNorm statistics cached per point
aside), so the model's own ``state_dict`` is the checkpoint: restore by converting a fresh model the same way and
calling ``load_state_dict(strict=True)``. A deep copy of the model (an EMA, ``AveragedModel``) carries its own
controller: :func:`subspace_of` finds it.
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from tractable.subspace import batchnorm as _bn
from tractable.subspace.geometry import Point, canonical_point, check_kind, point_coeffs, sample_coeffs
from tractable.subspace.parametrization import Endpoints, MixAll, _stack_legacy_keys
from tractable.subspace.regularizer import cos2

__all__ = ["convert", "Subspace", "NORM_TYPES", "is_subspace_model", "subspace_of", "point_shape"]

NORM_TYPES: Tuple[type, ...] = tuple(t for t in (
    nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm,
    getattr(nn, "RMSNorm", None), nn.LocalResponseNorm) if t is not None)
_PARAM_RE = re.compile(r"^(?:(.*)\.)?parametrizations\.([^.]+)\.original$")
_ATTR = "_tractable_subspace"  # the controller, on the model (a deep copy of the model copies it along)


@dataclass
class _Entry:
    module_name: str
    param_name: str
    module: nn.Module
    endpoints: Endpoints
    group: int
    norm: bool
    regularized: bool

    @property
    def name(self) -> str:
        return f"{self.module_name}.{self.param_name}" if self.module_name else self.param_name

    @property
    def key(self) -> str:
        prefix = f"{self.module_name}." if self.module_name else ""
        return f"{prefix}parametrizations.{self.param_name}.original"

    def stacked(self) -> nn.Parameter:
        """The (K, *shape) Parameter of the K stored points (looked up live: ``.to()`` may replace it)."""
        return self.module.parametrizations[self.param_name].original


def is_subspace_model(model: nn.Module) -> bool:
    """Whether ``model`` already holds subspace parametrizations."""
    return any(isinstance(m, Endpoints) for m in model.modules())


def subspace_of(model: nn.Module) -> Optional["Subspace"]:
    """The :class:`Subspace` controlling ``model`` (or a deep copy of a converted model, e.g. an EMA's), else None."""
    return getattr(model, _ATTR, None)


def point_shape(p: torch.Tensor) -> torch.Size:
    """The shape of one stored point of a stacked subspace Parameter (``p.shape[1:]``), else ``p.shape``.

    For rules written on shapes: ``len(point_shape(p)) <= 1`` selects biases and norm weights on a converted
    model, where ``p.ndim <= 1`` would select nothing (a stacked bias is 2-D)."""
    return p.shape[1:] if getattr(p, "subspace_points", None) else p.shape


def _check_model_fn(model: nn.Module, built: nn.Module, i: int) -> None:
    if not isinstance(built, nn.Module):
        raise TypeError(f"model_fn: call {i} returned {type(built).__name__}, expected an nn.Module built like "
                        "the model being converted")
    ref = {n: (tuple(p.shape), p.dtype) for n, p in model.named_parameters()}
    got = {n: (tuple(p.shape), p.dtype) for n, p in built.named_parameters()}
    missing = sorted(set(ref) - set(got))
    extra = sorted(set(got) - set(ref))
    shape = sorted(n for n in set(ref) & set(got) if ref[n][0] != got[n][0])
    if missing or extra or shape:
        parts = []
        if missing:
            parts.append(f"missing parameters {missing[:5]}")
        if extra:
            parts.append(f"unexpected parameters {extra[:5]}")
        if shape:
            parts.append("different shapes " + ", ".join(f"{n}: {ref[n][0]} vs {got[n][0]}" for n in shape[:5]))
        raise ValueError(f"model_fn builds a different architecture than the model being converted (call {i}): "
                         + "; ".join(parts) + ". model_fn must build the same model with fresh weights")
    ref_types = {n: type(m).__name__ for n, m in model.named_modules()}
    for n, m in built.named_modules():
        t = ref_types.get(n)
        if t is not None and t != type(m).__name__ and not t.startswith("Parametrized"):
            raise ValueError(f"model_fn builds a different architecture (call {i}): module {n or '<root>'} is "
                             f"{type(m).__name__}, the model has {t}")


def convert(model: nn.Module, model_fn: Callable[[], nn.Module], kind: str = "line", k: Optional[int] = None,
            layerwise: bool = False, *, num_samples: int = 1,
            param_filter: Optional[Callable[[str, str, nn.Parameter], bool]] = None,
            norm_endpoints: str = "shared", control_init: str = "independent",
            allow_identical: bool = False) -> "Subspace":
    """Turn ``model`` into a subspace model in place; returns its :class:`Subspace` controller.

    Args:
        model: any ``nn.Module`` (Linear, Conv, norm, attention, Embedding, LSTM/GRU … parameters).
        model_fn: builds the same architecture with fresh weights; called K − 1 times for the extra endpoints,
            so any custom initialisation is reproduced. It must build *exactly* the model's architecture.
        kind: ``"line"`` (K = 2), ``"curve"`` (quadratic Bezier, K = 3 with a trainable middle point) or
            ``"simplex"`` (K = ``k`` >= 2 vertices).
        k: number of simplex vertices (``None`` for line and curve).
        layerwise: one draw per module in :meth:`Subspace.sample` instead of one for the whole network.
        num_samples: S > 1 splits every training batch into S chunks, each with its own point (train mode with
            autograd on; the loss over the concatenated outputs is the sample-weighted mean of chunk losses).
        param_filter: ``f(module_name, param_name, param) -> bool``; default every trainable parameter.
        norm_endpoints: ``"shared"`` (norm-layer affine parameters start identical on all endpoints) or
            ``"independent"``.
        control_init: curve only: ``"independent"`` (from ``model_fn()``) or ``"chord"`` (midpoint of the
            two ends).
        allow_identical: accept stored points that are all equal (e.g. a ``model_fn`` that loads pretrained
            weights: cos² = 1, the regulariser's gradient vanishes and the endpoints never separate). By
            default this raises.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: model must be an nn.Module, got {type(model).__name__}")
    K = check_kind(kind, k)
    if isinstance(model_fn, nn.Module):
        raise TypeError("model_fn: expected a function that builds a fresh model (the model's class, a factory "
                        f"or a lambda), got a {type(model_fn).__name__} instance")
    if not callable(model_fn):
        raise TypeError(f"model_fn: expected a callable returning a fresh model, got {type(model_fn).__name__}")
    if not isinstance(layerwise, bool):
        raise ValueError(f"layerwise: expected a bool, got {layerwise!r}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples: expected an int >= 1, got {num_samples!r}")
    if norm_endpoints not in ("shared", "independent"):
        raise ValueError(f"norm_endpoints: {norm_endpoints!r} is not accepted; accepted values: 'shared', "
                         "'independent'")
    if control_init not in ("independent", "chord"):
        raise ValueError(f"control_init: {control_init!r} is not accepted; accepted values: 'independent', "
                         "'chord'")
    if control_init == "chord" and kind != "curve":
        raise ValueError(f"control_init='chord' applies to kind='curve' only, got kind={kind!r}")
    if is_subspace_model(model):
        raise ValueError("convert: the model is already a subspace model (it holds subspace parametrizations)")

    modules = list(model.named_modules())  # registration adds submodules: never iterate the live generator
    owners: Dict[int, List[str]] = {}
    for name, m in modules:
        for pn, p in m._parameters.items():
            if p is not None:
                owners.setdefault(id(p), []).append(f"{name}.{pn}" if name else pn)
    selected: Dict[str, Tuple[str, nn.Module, str, nn.Parameter]] = {}  # full name → (module name, module, …)
    for name, m in modules:
        for pn, p in list(m._parameters.items()):
            if p is None or not p.requires_grad or (param_filter is not None and not param_filter(name, pn, p)):
                continue
            if len(owners[id(p)]) > 1:
                raise ValueError(f"convert: parameter {owners[id(p)][0]} is shared (tied) with "
                                 f"{', '.join(owners[id(p)][1:])}; tied weights are not supported (each owner "
                                 "would get its own stored points): untie them or exclude them with param_filter")
            selected[f"{name}.{pn}" if name else pn] = (name, m, pn, p)
    if not selected:
        raise ValueError("convert: no parameter selected (all frozen or excluded by param_filter)")

    built = []
    for i in range(K - 1):
        built.append(model_fn())
        _check_model_fn(model, built[-1], i + 1)
    extras = [dict(b.named_parameters()) for b in built]
    del built
    points: Dict[str, List[torch.Tensor]] = {}  # full name → the K − 1 extra stored points
    with torch.no_grad():
        for full, (_, m, _, p) in selected.items():
            if isinstance(m, NORM_TYPES) and norm_endpoints == "shared":
                points[full] = [p.detach().clone() for _ in range(K - 1)]
            else:
                points[full] = [e[full].detach().to(device=p.device, dtype=p.dtype).clone() for e in extras]
                if kind == "curve" and control_init == "chord":
                    points[full][0] = (p.detach() + points[full][1]) / 2
    del extras
    regularized = {full: p.dim() >= 2 and not isinstance(m, NORM_TYPES) for full, (_, m, _, p) in selected.items()}
    if not allow_identical:  # the tensors that must differ: the regularised ones (else all but shared norms)
        names = [n for n, r in regularized.items() if r] or [
            n for n, (_, m, _, _) in selected.items()
            if norm_endpoints == "independent" or not isinstance(m, NORM_TYPES)]
        if names and all(torch.equal(selected[n][3], e) for n in names for e in points[n]):
            raise ValueError("convert: model_fn() returned the model's own weights, so all stored points are equal "
                             "(cos² = 1, the regulariser's gradient vanishes and the endpoints never separate); "
                             "make model_fn build freshly initialised weights (load a pretrained checkpoint into "
                             "endpoint 0 only with Subspace.load_plain_state_dict), or pass allow_identical=True")

    entries: List[_Entry] = []
    group_of: Dict[int, int] = {}
    for full, (name, m, pn, p) in selected.items():
        ep = Endpoints(K, points.pop(full), dtype=p.dtype, device=p.device)
        parametrize.register_parametrization(m, pn, ep)
        m.parametrizations[pn]._register_load_state_dict_pre_hook(_stack_legacy_keys)
        m.parametrizations[pn].original.subspace_points = K
        group = group_of.setdefault(id(m), len(group_of))
        entries.append(_Entry(name, pn, m, ep, group, isinstance(m, NORM_TYPES), regularized[full]))
    return Subspace(model, model_fn, kind, K, entries, layerwise=layerwise, num_samples=num_samples)


class Subspace:
    """Controller of a converted model: points, sampling, regulariser, BN statistics, export.

    Attributes: ``model``, ``kind``, ``K`` (stored points per tensor), ``layerwise``, ``num_samples``,
    ``num_groups`` (modules with subspace tensors), ``mix_all`` (the fast path, see below).
    """

    def __init__(self, model: nn.Module, model_fn: Callable[[], nn.Module], kind: str, K: int,
                 entries: List[_Entry], *, layerwise: bool = False, num_samples: int = 1):
        self.model = model
        self.model_fn = model_fn
        self.kind = kind
        self.K = K
        self.layerwise = layerwise
        self.num_samples = num_samples
        self._entries = entries
        self.num_groups = 1 + max(e.group for e in entries)
        self._bn_cache: Dict[Tuple[float, ...], Dict[str, Dict[str, torch.Tensor]]] = {}
        self._table: Optional[torch.Tensor] = None  # (S, G, K) draws of a multi-sample step
        self._slots = [(e.endpoints._buffers, e.group) for e in entries]
        self._current = point_coeffs(kind, K, 0.0 if kind != "simplex" else [1.0] + [0.0] * (K - 1))[None]
        #: The fast path: a forward pre-hook computes every weight of the forward in one MixAll node
        #: (bit-identical to the per-tensor path). It steps aside under torch.compile tracing, inside
        #: parametrize.cached() and for num_samples > 1; set False to always mix per tensor (the runner does
        #: under DDP, so that gradients become ready layer by layer and DDP overlaps its all-reduce).
        self.mix_all = True
        self._hooks = [model.register_forward_pre_hook(self._before_forward),
                       model.register_forward_hook(self._after_forward, always_call=True)]
        object.__setattr__(model, _ATTR, self)
        if num_samples > 1:
            self._install_multi_sample()
        self._write(self._current)

    def __deepcopy__(self, memo):
        """Deep-copied with the model (an EMA, ``AveragedModel``): everything but ``model_fn``, which is shared
        (a factory; it may be bound to an object that must not be copied, e.g. the runner's trainer)."""
        new = object.__new__(type(self))
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            new.__dict__[k] = v if k == "model_fn" else copy.deepcopy(v, memo)
        return new

    # -- the fast path ----------------------------------------------------------------------------------------
    def _before_forward(self, module, args) -> None:
        self._clear_now()
        if not self.mix_all or self._table is not None or parametrize._cache_enabled or _compiling():
            return
        stacked = [e.stacked() for e in self._entries]
        coeffs = [e.endpoints.coeffs for e in self._entries]
        coeffs = [c if (c.dtype, c.device) == (t.dtype, t.device) else c.to(device=t.device, dtype=t.dtype)
                  for c, t in zip(coeffs, stacked)]
        for e, w in zip(self._entries, MixAll.apply(coeffs, *stacked)):
            e.endpoints._now = w

    def _after_forward(self, module, args, output) -> None:
        self._clear_now()

    def _clear_now(self) -> None:
        for e in self._entries:
            e.endpoints._now = None

    # -- introspection ---------------------------------------------------------------------------------------
    def __repr__(self) -> str:
        return (f"Subspace(kind={self.kind!r}, K={self.K}, tensors={len(self._entries)}, modules={self.num_groups}, "
                f"layerwise={self.layerwise}, num_samples={self.num_samples})")

    def parameters(self) -> List[nn.Parameter]:
        """The stacked (K, *shape) Parameter of every subspace tensor (all its endpoints / control points)."""
        return [e.stacked() for e in self._entries]

    def tensor_names(self) -> List[str]:
        """Original (canonical) names of the subspace parameters, e.g. ``conv1.weight``."""
        return [e.name for e in self._entries]

    def stacked(self, name: str) -> nn.Parameter:
        """The (K, *shape) Parameter of the subspace tensor with canonical name ``name`` (``conv1.weight``)."""
        for e in self._entries:
            if e.name == name:
                return e.stacked()
        raise KeyError(f"{name!r} is not a subspace parameter; some names: {self.tensor_names()[:6]}")

    def endpoint(self, name: str, i: int) -> torch.Tensor:
        """Stored point ``i`` of ``name``: a view of row ``i`` of its stacked Parameter (writable under
        ``torch.no_grad()``)."""
        if not 0 <= i < self.K:
            raise IndexError(f"endpoint: index {i} is outside the {self.K} stored points of a {self.kind}")
        return self.stacked(name)[i]

    def endpoint_grad(self, name: str, i: int) -> Optional[torch.Tensor]:
        """Row ``i`` of the stacked Parameter's ``.grad`` (``None`` before a backward)."""
        g = self.stacked(name).grad
        return None if g is None else g[i]

    @staticmethod
    def canonical_name(name: str) -> str:
        """``a.parametrizations.w.original`` → ``a.w`` (any other name unchanged)."""
        m = _PARAM_RE.match(name)
        if not m:
            return name
        return f"{m.group(1)}.{m.group(2)}" if m.group(1) else m.group(2)

    @property
    def point(self) -> torch.Tensor:
        """Current coefficients, (num_groups, K) float64 (every row equal unless layerwise)."""
        return self._current.expand(self.num_groups, self.K).clone()

    def canonical_point(self) -> Point:
        """α = 0.5 (line, curve) or the simplex centroid."""
        return canonical_point(self.kind, self.K)

    # -- writing points --------------------------------------------------------------------------------------
    @torch.no_grad()
    def _write(self, coeffs: torch.Tensor) -> None:
        """coeffs: (K,) or (G, K) float64 on the CPU → every parametrization's ``coeffs`` buffer: one new tensor
        per (device, dtype) (rows of it when the rows differ), never an in-place write, so a graph that used the
        previous point keeps it."""
        self._clear_now()  # a new point: weights computed for the old one must not be reused
        if coeffs.dim() == 1:
            coeffs = coeffs[None]
        src = coeffs[:1] if bool((coeffs == coeffs[:1]).all()) else coeffs
        self._current = src  # (1, K) stands for every module
        made: Dict[Tuple[torch.device, torch.dtype], Tuple[torch.Tensor, ...]] = {}
        for bufs, group in self._slots:
            old = bufs["coeffs"]
            rows = made.get((old.device, old.dtype))
            if rows is None:
                rows = made[(old.device, old.dtype)] = src.to(device=old.device, dtype=old.dtype,
                                                              non_blocking=True).unbind(0)
            bufs["coeffs"] = rows[0] if len(rows) == 1 else rows[group]

    def set_point(self, point: Point) -> torch.Tensor:
        """Put every module at ``point``: α in [0, 1] (line, curve) or simplex weights (length k, ≥ 0, sum 1)."""
        c = point_coeffs(self.kind, self.K, point)
        self._write(c)
        return c

    def set_coeffs(self, coeffs: torch.Tensor) -> None:
        """Write raw coefficient vectors: (K,) for every module or (num_groups, K) one per module."""
        c = torch.as_tensor(coeffs, dtype=torch.float64).cpu()
        if c.dim() == 1:
            c = c.expand(self.num_groups, -1)
        if c.shape != (self.num_groups, self.K):
            raise ValueError(f"set_coeffs: expected shape ({self.K},) or ({self.num_groups}, {self.K}), got "
                             f"{tuple(c.shape)}")
        self._write(c.clone())

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        """Draw the point(s) for the next training forward from ``generator``; returns the coefficients.

        Global: one draw (K,) used by every module. Layerwise: one draw per module, (num_groups, K).
        With ``num_samples`` S > 1: S such draws, (S, ...); the training forward uses draw s on chunk s.
        Seed the generator from (seed, step) so that every DDP rank draws the same point.
        """
        S, G = self.num_samples, (self.num_groups if self.layerwise else 1)
        draws = sample_coeffs(self.kind, self.K, generator, S * G).reshape(S, G, self.K)
        self._table = draws if S > 1 else None
        self._write(draws[0])
        out = draws[:, 0] if G == 1 else draws
        return out[0] if S == 1 else out

    def _install_multi_sample(self) -> None:
        self._inner_forward = type(self.model).forward
        self.model.forward = self._multi_sample_forward  # a bound method: a deep copy of the model gets its own

    def _multi_sample_forward(self, *args, **kwargs):
        """num_samples S > 1: in a training forward with autograd on, chunk s of the batch runs at draw s."""
        model, table = self.model, self._table
        if table is None or not (model.training and torch.is_grad_enabled()) or not args:
            return self._inner_forward(model, *args, **kwargs)
        x = args[0]
        S = table.shape[0]
        if x.shape[0] < S:
            raise ValueError(f"num_samples={S}: the batch has only {x.shape[0]} samples")
        chunks = [x.tensor_split(S)]
        for a in args[1:]:
            chunks.append(a.tensor_split(S) if isinstance(a, torch.Tensor) and a.shape[:1] == x.shape[:1]
                          else [a] * S)
        outs = []
        for s in range(S):  # every _write makes new coefficient tensors: each chunk's graph keeps its own
            self._write(table[s])
            outs.append(self._inner_forward(model, *(c[s] for c in chunks), **kwargs))
        return torch.cat(outs)

    # -- regulariser and monitoring --------------------------------------------------------------------------
    def regularizer(self, beta: float = 1.0, *, pairs: str = "random",
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """β · cos²(ω_i, ω_j) over the concatenation of all regularised tensors (paper Eq. 3).

        Regularised: tensors with ``ndim >= 2`` not owned by a norm layer (conv/linear/attention/embedding
        weights; norm parameters and biases are excluded). ``pairs="random"``: one unordered pair i ≠ j of the
        K stored points drawn from ``generator`` (a line has one pair, so it is deterministic); ``"all"``: the
        mean over all K(K−1)/2 pairs. Its gradient reaches the stored points directly (before or after the
        forward, in the same backward or a separate one).
        """
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
            raise ValueError(f"beta: the regulariser weight must be a finite number >= 0, got {beta!r}")
        if pairs not in ("random", "all"):
            raise ValueError(f"pairs: {pairs!r} is not accepted; accepted values: 'random', 'all'")
        regs = [e.stacked() for e in self._entries if e.regularized]
        if beta == 0 or not regs:
            return torch.zeros((), device=regs[0].device if regs else torch.device("cpu"))
        if pairs == "all":
            pair_list = [(i, j) for i in range(self.K) for j in range(i + 1, self.K)]
        elif self.K == 2:
            pair_list = [(0, 1)]
        else:
            if generator is None:
                raise ValueError(f"regularizer: a {self.kind} with K={self.K} draws a random pair; pass "
                                 "generator= (seeded from (seed, step) so every rank draws the same pair)")
            i, j = torch.randperm(self.K, generator=generator, device=generator.device)[:2].tolist()
            pair_list = [(min(i, j), max(i, j))]
        return cos2(regs, pair_list, beta)

    @torch.no_grad()
    def stats(self) -> Dict[str, float]:
        """``cos2_mean`` (mean cos² over all pairs of stored points, regularised tensors) and ``l2``
        (mean L2 distance between pairs, all subspace tensors)."""
        K = self.K
        gram = torch.zeros(K, K, dtype=torch.float64)
        dist = torch.zeros(K, K, dtype=torch.float64)
        for e in self._entries:
            flat = e.stacked().detach().double().reshape(K, -1)
            g = (flat @ flat.T).cpu()
            d = torch.diagonal(g)
            dist += d[:, None] + d[None, :] - 2 * g
            if e.regularized:
                gram += g
        iu = torch.triu_indices(K, K, 1)
        d = torch.diagonal(gram)
        cos2_all = (gram ** 2 / (d[:, None] * d[None, :]).clamp_min(1e-300))[iu[0], iu[1]]
        l2 = dist.clamp_min(0).sqrt()[iu[0], iu[1]]
        return {"cos2_mean": float(cos2_all.mean()), "l2": float(l2.mean())}

    # -- BatchNorm -------------------------------------------------------------------------------------------
    def _key(self, coeffs: Optional[torch.Tensor] = None) -> Tuple[float, ...]:
        c = self._current if coeffs is None else coeffs
        return tuple(round(float(v), 12) for v in c.expand(self.num_groups, self.K).flatten())

    def recompute_bn(self, loader: Iterable, num_batches: Optional[int] = None, *, cache: bool = True,
                     device=None) -> int:
        """Recompute BatchNorm statistics for the *current* point over ``loader`` (first ``num_batches``
        batches); cached per point when ``cache``. Returns the number of batches used (0 without BatchNorm)."""
        used = _bn.recompute_bn_stats(self.model, loader, num_batches, device=device)
        if cache and used:
            self._bn_cache[self._key()] = _bn.bn_buffers(self.model)
        return used

    def load_bn(self, point: Point) -> None:
        """Set ``point`` and swap in its cached BatchNorm statistics (from :meth:`recompute_bn`)."""
        self.set_point(point)
        buffers = self._bn_cache.get(self._key())
        if buffers is None:
            raise KeyError(f"load_bn: no BatchNorm statistics cached for {point!r}; call recompute_bn first")
        _bn.load_bn_buffers(self.model, buffers)

    def has_bn(self, point: Point) -> bool:
        """Whether BatchNorm statistics for ``point`` are cached."""
        return self._key(point_coeffs(self.kind, self.K, point)) in self._bn_cache

    def clear_bn_cache(self) -> None:
        self._bn_cache.clear()

    def bn_cache_state(self) -> Dict[str, Any]:
        """The BatchNorm cache as tensors and plain values (for a checkpoint); :meth:`load_bn_cache_state`."""
        return {"points": [list(k) for k in self._bn_cache],
                "buffers": [{f"{n}.{b}": v.detach().cpu().clone() for n, bufs in c.items() for b, v in bufs.items()}
                            for c in self._bn_cache.values()]}

    def load_bn_cache_state(self, state: Dict[str, Any]) -> None:
        self._bn_cache = {}
        device = next(iter(self.model.buffers()), torch.zeros(())).device
        for point, flat in zip(state.get("points", []), state.get("buffers", [])):
            bufs: Dict[str, Dict[str, torch.Tensor]] = {}
            for key, v in flat.items():
                n, b = key.rsplit(".", 1) if "." in key else ("", key)
                bufs.setdefault(n, {})[b] = v.to(device)
            self._bn_cache[tuple(float(x) for x in point)] = bufs

    # -- export ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def export(self, point: Optional[Point] = None) -> nn.Module:
        """A plain model (built with ``model_fn()``, original ``state_dict`` keys) equal to the subspace model
        at ``point`` (default: the current point). BatchNorm statistics: those cached for the point by
        :meth:`recompute_bn` if any, else the model's current buffers. The subspace model is left unchanged.
        """
        saved = self._current.clone()
        try:
            if point is not None:
                self.set_point(point)
            cached = self._bn_cache.get(self._key())
            sd = dict(self.model.state_dict())
            for e in self._entries:
                sd.pop(e.key)
                sd[e.name] = getattr(e.module, e.param_name).detach().clone()
            if cached is not None:
                for n, b in cached.items():
                    for bk, v in b.items():
                        sd[f"{n}.{bk}" if n else bk] = v.clone()
        finally:
            self._write(saved)
        with torch.random.fork_rng(devices=[]):  # building the plain model must not move the global RNG
            plain = self.model_fn()
        if not isinstance(plain, nn.Module):
            raise TypeError(f"export: model_fn returned {type(plain).__name__}, not an nn.Module")
        keys = set(plain.state_dict())
        if keys != set(sd):
            raise ValueError(f"export: model_fn builds a model whose state_dict keys differ from the subspace "
                             f"model's original keys (missing {sorted(set(sd) - keys)[:5]}, extra "
                             f"{sorted(keys - set(sd))[:5]})")
        plain.load_state_dict(sd, strict=True)
        first = next(iter(sd.values()), None)
        if isinstance(first, torch.Tensor):
            plain.to(first.device)
        plain.train(self.model.training)
        return plain

    # -- optimiser helpers -----------------------------------------------------------------------------------
    def param_groups(self, weight_decay: float, no_decay: Optional[Callable[[str, torch.Tensor], bool]] = None,
                     model: Optional[nn.Module] = None) -> List[Dict[str, Any]]:
        """Two optimiser groups of every trainable parameter of the model: ``weight_decay`` and 0 (for which
        ``no_decay(name, p)`` is true). The rule sees each tensor as the plain model has it: the original name
        (``bn1.bias``, not ``bn1.parametrizations.bias.original``) and, for a subspace tensor, one stored point
        (a view of shape ``point_shape(p)``), so ``p.ndim <= 1`` and name rules select what they select on the
        plain model."""
        model = self.model if model is None else model
        decay, plain = [], []
        for n, p in model.named_parameters():
            if not p.requires_grad:
                continue
            seen = p[0] if getattr(p, "subspace_points", None) else p
            (plain if no_decay is not None and no_decay(self.canonical_name(n), seen) else decay).append(p)
        groups = [{"params": decay, "weight_decay": weight_decay}]
        if plain:
            groups.append({"params": plain, "weight_decay": 0.0})
        return groups

    def check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Raise if ``optimizer`` holds parameters the model does not have, misses subspace tensors, or holds
        state (e.g. momentum) of a subspace tensor in its pre-conversion shape.

        Conversion keeps each parameter's object (parametrize ``set_()``s it to the stacked (K, *shape)
        tensor), so an optimizer built before :func:`convert` is fine as long as it has not stepped yet."""
        have = {id(p) for g in optimizer.param_groups for p in g["params"]}
        live = {id(p) for p in self.model.parameters()}
        if have - live:
            raise ValueError("check_optimizer: the optimizer holds parameters that are not in the model; build it "
                             "from model.parameters() after convert()")
        missing = [self.canonical_name(n) for n, p in self.model.named_parameters()
                   if id(p) not in have and p.requires_grad and _PARAM_RE.match(n)]
        if missing:
            raise ValueError(f"check_optimizer: the optimizer misses subspace tensors of {sorted(set(missing))[:5]}")
        for e in self._entries:
            p = e.stacked()
            for k, v in optimizer.state.get(p, {}).items():
                if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape != p.shape:
                    raise ValueError(f"check_optimizer: optimizer state {k!r} of {e.name} has shape "
                                     f"{tuple(v.shape)}, the stacked tensor {tuple(p.shape)}: the optimizer "
                                     "stepped before convert(); build a fresh one after converting")

    @torch.no_grad()
    def load_plain_state_dict(self, state_dict: Dict[str, torch.Tensor], endpoints: str = "first") -> None:
        """Import a plain (unconverted) checkpoint: ``"first"`` fills endpoint 0 only (the others keep their
        fresh initialisation); ``"all"`` copies it into every stored point (then cos² = 1: perturb before
        training with β > 0)."""
        if endpoints not in ("first", "all"):
            raise ValueError(f"endpoints: {endpoints!r} is not accepted; accepted values: 'first', 'all'")
        sd = dict(state_dict)
        for e in self._entries:
            if e.name not in sd:
                raise KeyError(f"load_plain_state_dict: the checkpoint has no {e.name!r}")
            value = sd.pop(e.name)
            stacked = e.stacked()
            if tuple(value.shape) != tuple(stacked.shape[1:]):
                raise ValueError(f"load_plain_state_dict: {e.name!r} has shape {tuple(value.shape)} in the "
                                 f"checkpoint, the model's is {tuple(stacked.shape[1:])}")
            (stacked if endpoints == "all" else stacked[0]).copy_(value)
        missing, unexpected = self.model.load_state_dict(sd, strict=False)
        missing = [m for m in missing if not _PARAM_RE.match(m)]
        if missing or unexpected:
            raise KeyError(f"load_plain_state_dict: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")


def _compiling() -> bool:
    """Whether torch.compile is tracing (the per-tensor path is traced then)."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return compiler.is_compiling()
    dynamo = getattr(torch, "_dynamo", None)  # pragma: no cover - older torch
    return bool(dynamo is not None and hasattr(dynamo, "is_compiling") and dynamo.is_compiling())
