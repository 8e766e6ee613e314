"""Credit-assignment metrics, with the BP reference always taken by autograd on the model's own forward.

Every function works on models with the credit protocol of :mod:`tractable.models.credit` (``embed``,
``blocks``, ``readout``, ``head``, ``forward(x, return_hidden=True)``, ``forward_from(k, h)``,
``feedback_points()``) and on any hidden layout: ``vec`` (N, d), ``tokens`` (N, T, d), ``map`` (N, C, H, W).

Notation: h_k is the stream state at feedback point k (0 = embed output, l+1 = output of block l),
g_k = ∂L/∂h_k the true BP gradient, a_k the signal a learning rule delivers at point k.

Reference and signals
    :func:`bp_reference` runs ``model(x, return_hidden=True)`` inside :func:`~tractable.models.credit.bp_mode`
    (no injected feedback) and returns g_k = ``torch.autograd.grad(L, [h_0 … h_L])`` for L = Σ_n ℓ_n
    (``reduction="sum"``, so g_k[n] is sample n's own gradient; ``"mean"`` divides by N as the seed does).
    ``dtype=torch.float64`` recomputes it on a float64 copy of the same model. The forward is never rebuilt
    from the blocks (the seed's defect: its "reference" dropped the residual add).
    :func:`method_signals` runs the same forward with the method's wiring active and returns the gradient that
    reaches each point — the method's a_k — so signals and reference come from one code path.

Cosine (scale-free, no clamp)
    cos_n(a, g) = ⟨â_n, ĝ_n⟩ with â_n = a_n / ‖a_n‖, computed per sample in float64 on the flattened
    per-sample vectors; NaN where a norm is exactly 0. ``F.cosine_similarity`` divides by max(‖·‖, 1e-8)
    instead, so a correct direction at ‖h‖ ~ 1e6 reads 0.14 there; here it stays 1.

Norms and growth
    ``pooling="seed"``: ‖pool(h_n)‖ with pool = identity (vec), CLS token (tokens), spatial mean (map).
    ``pooling="position"``: the mean over tokens / positions of the per-position feature norm.
    :func:`block_growth`: growth_l = med_n ‖h_{l+1}‖ / max(med_n ‖h_l‖, 1e-12) (ratio of medians, the seed's)
    and med_n (‖h_{l+1,n}‖ / ‖h_{l,n}‖) (median of per-sample ratios).

Perturbation correlation ρ_k
    For M random unit directions v (per sample, any layout) and δ_n = ε ‖h_{k,n}‖ v_n (ε relative, default
    1e-3): predicted Δ_n = ⟨a_n, δ_n⟩, true Δ_n = ℓ_n(h + δ) − ℓ_n(h) through ``forward_from(k, ·)``; ρ is the
    Pearson correlation over the M·N pairs (0 when either side has zero variance). A loss that returns a
    scalar is accepted: then the pairs are (Σ_n predicted Δ_n, true ΔL) per direction.

Nudging Δ_k
    h'_n = h_n − η ‖h_n‖ a_n / ‖a_n‖ (η relative, default 0.01); returns mean_n (ℓ_n(h') − ℓ_n(h)); negative
    means the signal is a descent direction.

Weights
    :func:`feature_drift`: ‖W_T − W_0‖_F / ‖W_0‖_F per floating tensor of two state dicts (NaN when
    ‖W_0‖ = 0). :func:`weight_angle`: angle in degrees between vec(W) and vec(B); :func:`norm_ratio`:
    ‖B‖_F / ‖W‖_F (BioTorch's two metrics for layer FA and sign symmetry).

Statistics
    :func:`wilson_interval` (binomial CI of an accuracy), :func:`bootstrap_mean_ci` (percentile bootstrap of a
    mean over seeds, explicit generator), :func:`fresh_b_null` (z-score and empirical p of a training-B value
    against redraws).
"""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from tractable.models.credit import bp_mode, is_credit_model

__all__ = [
    "BPReference",
    "POOLINGS",
    "bp_reference",
    "method_signals",
    "per_sample_cosine",
    "cosine_summary",
    "point_cosines",
    "per_sample_norm",
    "hidden_norms",
    "block_growth",
    "bp_grad_norms",
    "perturbation_correlation",
    "nudging",
    "feature_drift",
    "weight_angle",
    "norm_ratio",
    "wilson_interval",
    "bootstrap_mean_ci",
    "fresh_b_null",
    "model_mode",
    "infer_layout",
]

POOLINGS = ("seed", "position")
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------------- helpers
def infer_layout(h: torch.Tensor) -> str:
    """``vec`` for (N, d), ``tokens`` for (N, T, d), ``map`` for (N, C, *spatial)."""
    if h.dim() == 2:
        return "vec"
    if h.dim() == 3:
        return "tokens"
    if h.dim() >= 4:
        return "map"
    raise ValueError(f"expected a batched hidden state (N, ...) with at least 2 dims, got shape {tuple(h.shape)}")


def _check_model(model) -> None:
    if not is_credit_model(model):
        raise TypeError(f"{type(model).__name__} does not have the credit-assignment protocol (embed, blocks, "
                        "readout, head, forward(x, return_hidden=True), forward_from(k, h), feedback_points()); "
                        "see tractable.models.credit")


def _loss_fn(loss_fn: Optional[LossFn], reduction: str) -> LossFn:
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    if loss_fn is None:
        return lambda logits, y: F.cross_entropy(logits, y, reduction=reduction)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (logits, y) -> loss, got {type(loss_fn).__name__}")
    return loss_fn


def _per_sample_loss(loss_fn: Optional[LossFn]) -> LossFn:
    if loss_fn is None:
        return lambda logits, y: F.cross_entropy(logits, y, reduction="none")
    return loss_fn


@contextlib.contextmanager
def model_mode(model: nn.Module, training: bool = False) -> Iterator[nn.Module]:
    """Put ``model`` in eval (or train) mode for the block and restore every submodule's mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.train(training)
    try:
        yield model
    finally:
        for m, t in modes:
            m.training = t


@contextlib.contextmanager
def _signal_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for every ordinary layer (BatchNorm running statistics, no dropout) but ``training=True`` on the
    modules that inject feedback — those declaring ``_bp_mode`` (the protocol model itself, feedback layers, DFA
    hubs) and the model's ``credit`` wiring — so that the method's backward is active on a deterministic forward."""
    with model_mode(model, training=False):
        for m in model.modules():
            if hasattr(m, "_bp_mode"):
                m.training = True
        wiring = getattr(model, "_modules", {}).get("credit")
        if wiring is not None:
            for m in wiring.modules():
                m.training = True
        yield model


# --------------------------------------------------------------------------------------------- reference
@dataclass
class BPReference:
    """The model's own forward on one batch and the BP gradients at its feedback points.

    ``hiddens`` [h_0 … h_L] and ``grads`` [g_0 … g_L] are detached; ``loss`` is the reduced loss;
    ``layout`` is ``vec``/``tokens``/``map``; ``dtype`` the dtype the reference was computed in.
    """

    logits: torch.Tensor
    hiddens: List[torch.Tensor]
    grads: List[torch.Tensor]
    loss: float
    layout: str
    dtype: torch.dtype
    reduction: str = "sum"
    extras: Dict[str, object] = field(default_factory=dict)


def bp_reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, loss_fn: Optional[LossFn] = None,
                 reduction: str = "sum", dtype: Optional[torch.dtype] = None, training: bool = False) -> BPReference:
    """g_k = ∂L/∂h_k by autograd on ``model``'s own forward, in :func:`bp_mode` (plain backpropagation).

    ``loss_fn(logits, y)`` must return the reduced loss (default cross-entropy with ``reduction``).
    ``dtype=torch.float64`` runs a float64 copy of the same model (the fp64 recomputation). The model runs in
    eval mode unless ``training=True``; its modes are restored afterwards. Parameters receive no gradient.
    """
    _check_model(model)
    fn = _loss_fn(loss_fn, reduction)
    net = model
    if dtype is not None and dtype != _param_dtype(model):
        net = copy.deepcopy(model).to(dtype)
        x = x.to(dtype) if x.is_floating_point() else x
    if x.is_floating_point():  # so that every hidden is in the graph, also behind frozen layers
        x = x.detach().requires_grad_(True)
    with model_mode(net, training), bp_mode(net), torch.enable_grad():
        logits, hs = net(x, return_hidden=True)
        loss = fn(logits, y)
        if loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar (reduced) loss, got shape {tuple(loss.shape)}")
        grads = torch.autograd.grad(loss, hs, allow_unused=True)
    grads = [torch.zeros_like(h) if g is None else g for h, g in zip(hs, grads)]
    return BPReference(logits=logits.detach(), hiddens=[h.detach() for h in hs], grads=[g.detach() for g in grads],
                       loss=float(loss.detach()), layout=infer_layout(hs[0]), dtype=hs[0].dtype, reduction=reduction)


def method_signals(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, loss_fn: Optional[LossFn] = None,
                   reduction: str = "sum") -> List[Optional[torch.Tensor]]:
    """The signal a_k a learning rule delivers at every feedback point: the gradient reaching h_k when the same
    forward runs with the method's wiring active (``model.credit`` and/or feedback layers), layers in eval mode.

    For a plain model this is the BP gradient. A point the method sends nothing to gives ``None``.
    """
    _check_model(model)
    fn = _loss_fn(loss_fn, reduction)
    if x.is_floating_point():
        x = x.detach().requires_grad_(True)
    with _signal_mode(model), torch.enable_grad():
        logits, hs = model(x, return_hidden=True)
        loss = fn(logits, y)
        live = [i for i, h in enumerate(hs) if h.requires_grad]  # e.g. detached points behind frozen blocks
        grads = torch.autograd.grad(loss, [hs[i] for i in live], allow_unused=True) if live and loss.requires_grad \
            else [None] * len(live)
    out: List[Optional[torch.Tensor]] = [None] * len(hs)
    for i, g in zip(live, grads):
        out[i] = None if g is None else g.detach()
    return out


def _param_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


# --------------------------------------------------------------------------------------------- cosines
def per_sample_cosine(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """(N,) float64 cosines between the flattened per-sample vectors of ``a`` and ``g``, by explicit
    normalisation (no eps clamp): scale-free for any magnitude representable in the inputs' dtype. NaN where
    either norm is exactly 0 (or not finite)."""
    if a.shape != g.shape:
        raise ValueError(f"per_sample_cosine: shapes differ, {tuple(a.shape)} vs {tuple(g.shape)}")
    if a.dim() < 1 or a.shape[0] == 0:
        raise ValueError(f"per_sample_cosine: expected a batch (N, ...) with N >= 1, got shape {tuple(a.shape)}")
    a64 = a.detach().reshape(a.shape[0], -1).to(torch.float64)
    g64 = g.detach().reshape(g.shape[0], -1).to(torch.float64)
    # scale each vector by its max-abs first so that squaring cannot overflow or underflow in float64
    a64 = a64 / a64.abs().amax(dim=1, keepdim=True)
    g64 = g64 / g64.abs().amax(dim=1, keepdim=True)
    na, ng = a64.norm(dim=1), g64.norm(dim=1)
    cos = (a64 * g64).sum(dim=1) / (na * ng)
    bad = ~(torch.isfinite(na) & torch.isfinite(ng)) | (na == 0) | (ng == 0)
    return torch.where(bad, torch.full_like(cos, float("nan")), cos.clamp(-1.0, 1.0))


def cosine_summary(cos: torch.Tensor) -> Dict[str, float]:
    """``mean``, ``median``, ``min`` over the finite per-sample cosines and ``n_nan`` (the rest)."""
    finite = cos[torch.isfinite(cos)]
    if finite.numel() == 0:
        return {"mean": float("nan"), "median": float("nan"), "min": float("nan"), "n_nan": int(cos.numel())}
    return {"mean": float(finite.mean()), "median": float(finite.median()), "min": float(finite.min()),
            "n_nan": int(cos.numel() - finite.numel())}


def point_cosines(signals: Sequence[Optional[torch.Tensor]], grads: Sequence[torch.Tensor]) -> List[Dict[str, float]]:
    """Γ_k: :func:`cosine_summary` of cos(a_k, g_k) at the **same** point k, for every k (None → NaNs)."""
    if len(signals) != len(grads):
        raise ValueError(f"point_cosines: {len(signals)} signals for {len(grads)} points")
    out = []
    for a, g in zip(signals, grads):
        if a is None:
            out.append({"mean": float("nan"), "median": float("nan"), "min": float("nan"), "n_nan": int(g.shape[0])})
        else:
            out.append(cosine_summary(per_sample_cosine(a, g)))
    return out


# --------------------------------------------------------------------------------------------- norms, growth
def per_sample_norm(h: torch.Tensor, pooling: str = "position", layout: Optional[str] = None) -> torch.Tensor:
    """(N,) float64 per-sample norms of ``h``: ``pooling="seed"`` pools first (CLS token / spatial mean),
    ``"position"`` averages the per-token / per-position feature norms. Vectors: the plain L2 norm."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(map(repr, POOLINGS))}; got {pooling!r}")
    layout = layout or infer_layout(h)
    h = h.detach().to(torch.float64)
    if layout == "vec":
        return h.reshape(h.shape[0], -1).norm(dim=1)
    if layout == "tokens":
        return h[:, 0].norm(dim=-1) if pooling == "seed" else h.norm(dim=-1).mean(dim=1)
    if layout == "map":
        if pooling == "seed":
            return h.flatten(2).mean(dim=2).norm(dim=1)
        return h.norm(dim=1).flatten(1).mean(dim=1)
    raise ValueError(f"layout must be 'vec', 'tokens' or 'map', got {layout!r}")


def hidden_norms(hiddens: Sequence[torch.Tensor], pooling: str = "position") -> List[float]:
    """Median over the batch of :func:`per_sample_norm` at every point."""
    return [float(per_sample_norm(h, pooling).median()) for h in hiddens]


def block_growth(hiddens: Sequence[torch.Tensor], pooling: str = "position") -> Dict[str, List[float]]:
    """Per-block growth: ``ratio_of_medians`` med‖h_{l+1}‖ / max(med‖h_l‖, 1e-12) (the seed's D1 statistic)
    and ``median_of_ratios`` med_n(‖h_{l+1,n}‖ / ‖h_{l,n}‖); ``norms`` are the medians per point."""
    norms = [per_sample_norm(h, pooling) for h in hiddens]
    med = [float(n.median()) for n in norms]
    rom = [med[l + 1] / max(med[l], 1e-12) for l in range(len(med) - 1)]
    mor = [float((norms[l + 1] / norms[l]).median()) for l in range(len(norms) - 1)]
    return {"norms": med, "ratio_of_medians": rom, "median_of_ratios": mor}


def bp_grad_norms(ref: BPReference, pooling: str = "position") -> List[float]:
    """Median per-sample norm of the BP gradient g_k at every point (same pooling rules as hidden norms)."""
    return [float(per_sample_norm(g, pooling, ref.layout).median()) for g in ref.grads]


# --------------------------------------------------------------------------------------------- ρ and nudging
def _unit_directions(shape, generator: torch.Generator, dtype, device) -> torch.Tensor:
    v = torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype=dtype, device=device)
    n = v.reshape(v.shape[0], -1).norm(dim=1).clamp_min(torch.finfo(dtype).tiny)
    return v / n.reshape(-1, *([1] * (v.dim() - 1)))


def _rel_step(h: torch.Tensor, scale: float) -> torch.Tensor:
    return scale * h.reshape(h.shape[0], -1).norm(dim=1).reshape(-1, *([1] * (h.dim() - 1)))


def perturbation_correlation(model: nn.Module, k: int, h: torch.Tensor, signal: torch.Tensor, y: torch.Tensor, *,
                             eps: float = 1e-3, num_directions: int = 32, loss_fn: Optional[LossFn] = None,
                             generator: Optional[torch.Generator] = None) -> float:
    """ρ_k: Pearson correlation between ⟨a, δ⟩ and the true loss change ℓ(h + δ) − ℓ(h) through
    ``model.forward_from(k, ·)``, with δ = ε‖h_n‖·v_n for ``num_directions`` random unit directions per sample.

    ``loss_fn(logits, y)`` returns per-sample losses (default cross-entropy, ``reduction="none"``) or a scalar.
    ``generator`` (CPU) draws the directions (default: seeded with 0). Runs without grad, modes unchanged.
    """
    _check_model(model)
    if signal.shape != h.shape:
        raise ValueError(f"perturbation_correlation: signal shape {tuple(signal.shape)} != h shape {tuple(h.shape)}")
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"perturbation_correlation: eps must be a positive (relative) step, got {eps!r}")
    if isinstance(num_directions, bool) or not isinstance(num_directions, int) or num_directions < 2:
        raise ValueError(f"perturbation_correlation: num_directions must be an int >= 2, got {num_directions!r}")
    fn = _per_sample_loss(loss_fn)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    preds, trues = [], []
    with torch.no_grad():
        base = fn(model.forward_from(k, h), y)
        for _ in range(num_directions):
            delta = _rel_step(h, eps) * _unit_directions(h.shape, gen, h.dtype, h.device)
            pred = (signal.to(torch.float64) * delta.to(torch.float64)).reshape(h.shape[0], -1).sum(dim=1)
            true = (fn(model.forward_from(k, h + delta), y) - base).to(torch.float64)
            if true.dim() == 0:
                pred = pred.sum().reshape(1)
                true = true.reshape(1)
            preds.append(pred)
            trues.append(true.reshape(-1))
    return _pearson(torch.cat(preds), torch.cat(trues))


def _pearson(p: torch.Tensor, t: torch.Tensor) -> float:
    p = p - p.mean()
    t = t - t.mean()
    sp, st = p.norm(), t.norm()
    if sp == 0 or st == 0 or not torch.isfinite(sp * st):
        return 0.0
    return float((p * t).sum() / (sp * st))


def nudging(model: nn.Module, k: int, h: torch.Tensor, signal: torch.Tensor, y: torch.Tensor, *, eta: float = 0.01,
            loss_fn: Optional[LossFn] = None) -> Dict[str, float]:
    """Δ_k: move each h_n by η‖h_n‖ along −a_n/‖a_n‖ and report ``mean_delta`` (mean per-sample loss change;
    negative = useful) and ``frac_decrease`` (fraction of samples whose loss went down). Samples with a zero
    signal are not moved."""
    _check_model(model)
    if signal.shape != h.shape:
        raise ValueError(f"nudging: signal shape {tuple(signal.shape)} != h shape {tuple(h.shape)}")
    if not (isinstance(eta, (int, float)) and eta > 0):
        raise ValueError(f"nudging: eta must be a positive (relative) step, got {eta!r}")
    fn = _per_sample_loss(loss_fn)
    with torch.no_grad():
        flat = signal.reshape(signal.shape[0], -1)
        na = flat.norm(dim=1).reshape(-1, *([1] * (h.dim() - 1)))
        direction = torch.where(na > 0, signal / na.clamp_min(torch.finfo(signal.dtype).tiny), torch.zeros_like(signal))
        before = fn(model.forward_from(k, h), y)
        after = fn(model.forward_from(k, h - _rel_step(h, eta) * direction), y)
        d = (after - before).to(torch.float64)
    return {"mean_delta": float(d.mean()), "frac_decrease": float((d < 0).to(torch.float64).mean())}


# --------------------------------------------------------------------------------------------- weights
def feature_drift(initial: Mapping[str, torch.Tensor], final: Mapping[str, torch.Tensor]) -> Dict[str, float]:
    """‖W_T − W_0‖_F / ‖W_0‖_F for every floating tensor present in both state dicts (float64; NaN if
    ‖W_0‖ = 0). Keys in only one of them are ignored; a shape mismatch raises."""
    out = {}
    for name, w0 in initial.items():
        if name not in final or not torch.is_tensor(w0) or not w0.is_floating_point():
            continue
        w1 = final[name]
        if w1.shape != w0.shape:
            raise ValueError(f"feature_drift: {name} has shape {tuple(w0.shape)} initially and {tuple(w1.shape)} "
                             "finally")
        a, b = w0.detach().to(torch.float64).cpu(), w1.detach().to(torch.float64).cpu()
        n0 = a.norm()
        out[name] = float((b - a).norm() / n0) if n0 > 0 else float("nan")
    return out


def weight_angle(w: torch.Tensor, b: torch.Tensor) -> float:
    """Angle in degrees between vec(W) and vec(B) (0 = aligned, 90 = orthogonal); NaN if either is zero."""
    if w.shape != b.shape:
        raise ValueError(f"weight_angle: W {tuple(w.shape)} and B {tuple(b.shape)} must have the same shape")
    cos = float(per_sample_cosine(w.reshape(1, -1), b.reshape(1, -1))[0])
    return math.degrees(math.acos(cos)) if math.isfinite(cos) else float("nan")


def norm_ratio(w: torch.Tensor, b: torch.Tensor) -> float:
    """‖B‖_F / ‖W‖_F in float64 (inf if W is zero and B is not)."""
    if w.shape != b.shape:
        raise ValueError(f"norm_ratio: W {tuple(w.shape)} and B {tuple(b.shape)} must have the same shape")
    nw, nb = float(w.detach().to(torch.float64).norm()), float(b.detach().to(torch.float64).norm())
    return nb / nw if nw > 0 else (float("inf") if nb > 0 else float("nan"))


# --------------------------------------------------------------------------------------------- statistics
def wilson_interval(correct: int, n: int, z: float = 1.959963984540054) -> Tuple[float, float]:
    """Wilson score interval (default 95 %) for ``correct`` successes out of ``n``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"wilson_interval: n must be an int >= 1, got {n!r}")
    if isinstance(correct, bool) or not isinstance(correct, int) or not 0 <= correct <= n:
        raise ValueError(f"wilson_interval: correct must be an int in [0, n={n}], got {correct!r}")
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_mean_ci(values: Sequence[float], *, level: float = 0.95, num_resamples: int = 10000,
                      seed: int = 0) -> Tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (resampling with replacement; explicit seed). One
    value gives the degenerate interval (v, v)."""
    v = torch.as_tensor(list(values), dtype=torch.float64)
    if v.numel() == 0:
        raise ValueError("bootstrap_mean_ci: needs at least one value")
    if not 0 < level < 1:
        raise ValueError(f"bootstrap_mean_ci: level must be in (0, 1), got {level!r}")
    if v.numel() == 1:
        return float(v[0]), float(v[0])
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, v.numel(), (num_resamples, v.numel()), generator=gen)
    means = v[idx].mean(dim=1)
    lo = torch.quantile(means, (1 - level) / 2)
    hi = torch.quantile(means, 1 - (1 - level) / 2)
    return float(lo), float(hi)


def fresh_b_null(train_value: float, fresh_values: Sequence[float]) -> Dict[str, float]:
    """Training-B statistic against redraws: ``mean``/``std`` (ddof 1) of the redraws, ``z`` = (train − mean)/std
    and the one-sided empirical ``p`` = (1 + #{fresh ≥ train}) / (n + 1). Needs ≥ 2 redraws."""
    f = torch.as_tensor(list(fresh_values), dtype=torch.float64)
    if f.numel() < 2:
        raise ValueError(f"fresh_b_null: needs at least 2 redraws, got {f.numel()}")
    mean, std = float(f.mean()), float(f.std(unbiased=True))
    z = (train_value - mean) / std if std > 0 else float("nan")
    p = (1 + int((f >= train_value).sum())) / (f.numel() + 1)
    return {"train": float(train_value), "mean": mean, "std": std, "z": z, "p": p, "n": int(f.numel())}
