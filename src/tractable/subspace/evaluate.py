"""Evaluating a trained subspace honestly: BatchNorm statistics recomputed for every evaluated point.

* :func:`evaluate_grid` (line, curve): the α grid 0, step, …, 1 (default step 0.05: 21 points). For every α the
  accuracy / NLL / ECE of the network at α; for every α0 ≤ 0.5 the ensemble of the networks at α0 and
  α1 = 1 − α0 (each with its own statistics; logits averaged by default, as the paper's sum of logits), its
  metrics and the mean total-variation distance between the two softmaxes. α0 = 0 is the endpoint ensemble;
  at α0 = 0.5 the "ensemble" is the midpoint itself.
* :func:`evaluate_simplex`: the centroid, every vertex, the ensemble of the vertices, an ensemble of random
  points (Dirichlet(1) draws from an explicit generator, each with its own statistics) and, for k = 3, a
  barycentric grid for the heat-map.
* :func:`evaluate_models`: plain models and their ensemble (the two-independent-models baseline).

Every point's statistics come from :meth:`Subspace.recompute_bn` over ``train_loader`` (``bn_batches`` limits
the pass) and are cached, so a point used twice (α and an ensemble member) is recomputed once. Both grid
evaluations leave the model as they found it: its point and its BatchNorm buffers are restored afterwards.
"""
from __future__ import annotations

import itertools
import contextlib
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from tractable.subspace import batchnorm as _bn
from tractable.subspace.metrics import classification_metrics, combine_logits, tv_distance

__all__ = ["predict", "evaluate_point", "evaluate_grid", "evaluate_simplex", "evaluate_models", "alpha_grid"]


def _device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable) -> Tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, CPU) and labels of ``model`` in eval mode over ``loader`` of (x, y) batches."""
    was = model.training
    model.eval()
    device = _device(model)
    outs, ys = [], []
    try:
        for batch in loader:
            x, y = batch[0], batch[1]
            if x.shape[0] == 0:
                continue
            outs.append(model(x.to(device)).float().cpu())
            ys.append(y.cpu())
    finally:
        model.train(was)
    if not outs:
        raise ValueError("predict: the loader gave no batch")
    return torch.cat(outs), torch.cat(ys)


def alpha_grid(step: float = 0.05) -> List[float]:
    """0, step, 2·step, …, 1 (``1/step`` must be a whole number)."""
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0 < step <= 1:
        raise ValueError(f"step: expected a number in (0, 1], got {step!r}")
    n = round(1.0 / step)
    if abs(n * step - 1.0) > 1e-9:
        raise ValueError(f"step: 1/step must be a whole number so that the grid ends at 1, got {step}")
    return [round(i / n, 10) for i in range(n + 1)]


def evaluate_point(sub, point, train_loader, test_loader, *, bn_batches: Optional[int] = None
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Logits/labels of the network at ``point`` with its own (cached) BatchNorm statistics."""
    if _bn.batchnorm_modules(sub.model):
        if sub.has_bn(point):
            sub.load_bn(point)
        else:
            sub.set_point(point)
            sub.recompute_bn(train_loader, bn_batches)
    else:
        sub.set_point(point)
    return predict(sub.model, test_loader)


@contextlib.contextmanager
def _restored(sub):
    """Put the model's point and BatchNorm buffers back after the block."""
    point, buffers = sub.point, _bn.bn_buffers(sub.model)
    try:
        yield
    finally:
        sub.set_coeffs(point)
        _bn.load_bn_buffers(sub.model, buffers)


def _metrics(logits, labels, n_bins) -> Dict[str, float]:
    return classification_metrics(logits, labels, n_bins)


def evaluate_grid(sub, train_loader, test_loader, *, step: float = 0.05, combine: str = "logits",
                  bn_batches: Optional[int] = None, n_bins: int = 20, mixture_bn: bool = True) -> Dict[str, Any]:
    """The α-grid evaluation of a line or curve (see the module docstring); returns a JSON-ready dict.

    ``mixture_bn``: also report the midpoint with the training-time (mixture) statistics, before any
    recompute — what skipping the recompute costs.
    """
    if sub.kind not in ("line", "curve") and not (sub.kind == "simplex" and sub.K == 2):
        raise ValueError(f"evaluate_grid: α grids are for lines and curves; use evaluate_simplex for a "
                         f"{sub.kind} with k={sub.K}")
    with _restored(sub):
        return _evaluate_grid(sub, train_loader, test_loader, step, combine, bn_batches, n_bins, mixture_bn)


def _evaluate_grid(sub, train_loader, test_loader, step, combine, bn_batches, n_bins, mixture_bn):
    alphas = alpha_grid(step)
    out: Dict[str, Any] = {"kind": sub.kind, "K": sub.K, "step": step, "combine": combine, "n_bins": n_bins,
                           "bn_batches": bn_batches}
    if mixture_bn and _bn.batchnorm_modules(sub.model):
        saved = _bn.bn_buffers(sub.model)
        sub.set_point(0.5)
        out["midpoint_mixture_bn"] = _metrics(*predict(sub.model, test_loader), n_bins)
        _bn.load_bn_buffers(sub.model, saved)
    logits: Dict[float, torch.Tensor] = {}
    labels = None
    for a in alphas:
        logits[a], labels = evaluate_point(sub, a, train_loader, test_loader, bn_batches=bn_batches)
    out["points"] = [{"alpha": a, **_metrics(logits[a], labels, n_bins)} for a in alphas]
    pairs = []
    for a0 in alphas:
        a1 = round(1.0 - a0, 10)
        if a0 > a1 or a1 not in logits:
            continue
        ens = combine_logits([logits[a0], logits[a1]], combine)
        m = _metrics(ens, labels, n_bins)
        pairs.append({"alpha0": a0, "alpha1": a1, "acc0": out["points"][alphas.index(a0)]["acc"],
                      "acc1": out["points"][alphas.index(a1)]["acc"], "ens_acc": m["acc"], "ens_nll": m["nll"],
                      "ens_ece": m["ece"], "tv": tv_distance(logits[a0], logits[a1])})
    out["pairs"] = pairs
    mid = next(p for p in out["points"] if abs(p["alpha"] - 0.5) < 1e-9) if 0.5 in logits else None
    out["midpoint"] = mid
    out["endpoints"] = [out["points"][0], out["points"][-1]]
    out["endpoint_ensemble"] = pairs[0] if pairs else None
    out["best_pair"] = max(pairs, key=lambda p: p["ens_acc"]) if pairs else None
    return out


def evaluate_simplex(sub, train_loader, test_loader, *, generator: Optional[torch.Generator] = None,
                     ensemble_size: int = 0, bn_batches: Optional[int] = None, combine: str = "logits",
                     n_bins: int = 20, heatmap_step: Optional[float] = None) -> Dict[str, Any]:
    """Centroid, vertices, vertex ensemble, optional random-point ensemble and (k = 3) heat-map grid."""
    with _restored(sub):
        return _evaluate_simplex(sub, train_loader, test_loader, generator, ensemble_size, bn_batches, combine,
                                 n_bins, heatmap_step)


def _evaluate_simplex(sub, train_loader, test_loader, generator, ensemble_size, bn_batches, combine, n_bins,
                      heatmap_step):
    K = sub.K
    out: Dict[str, Any] = {"kind": sub.kind, "K": K, "combine": combine, "n_bins": n_bins, "bn_batches": bn_batches}
    centroid = [1.0 / K] * K
    lc, labels = evaluate_point(sub, centroid, train_loader, test_loader, bn_batches=bn_batches)
    out["centroid"] = _metrics(lc, labels, n_bins)
    vertex_logits = []
    verts = []
    for i in range(K):
        t = [0.0] * K
        t[i] = 1.0
        lv, _ = evaluate_point(sub, t, train_loader, test_loader, bn_batches=bn_batches)
        vertex_logits.append(lv)
        verts.append({"vertex": i, **_metrics(lv, labels, n_bins)})
    out["vertices"] = verts
    out["vertex_ensemble"] = _metrics(combine_logits(vertex_logits, combine), labels, n_bins)
    if ensemble_size:
        if generator is None:
            raise ValueError("evaluate_simplex: ensemble_size > 0 draws random points; pass generator=")
        from tractable.subspace.geometry import sample_coeffs

        members = []
        for t in sample_coeffs("simplex", K, generator, ensemble_size):
            lm, _ = evaluate_point(sub, t.tolist(), train_loader, test_loader, bn_batches=bn_batches)
            members.append(lm)
        out["random_ensemble"] = {"size": ensemble_size, **_metrics(combine_logits(members, combine), labels, n_bins)}
    if heatmap_step is not None:
        if K != 3:
            raise ValueError(f"heatmap_step: the heat-map is drawn for k = 3 simplexes, this one has k = {K}")
        n = round(1.0 / heatmap_step)
        grid = []
        for i, j in itertools.product(range(n + 1), repeat=2):
            if i + j > n:
                continue
            t = [i / n, j / n, (n - i - j) / n]
            lg, _ = evaluate_point(sub, t, train_loader, test_loader, bn_batches=bn_batches)
            grid.append({"t": t, **_metrics(lg, labels, n_bins)})
        out["heatmap"] = grid
    return out


def evaluate_models(models: Sequence[nn.Module], test_loader, *, combine: str = "logits", n_bins: int = 20
                    ) -> Dict[str, Any]:
    """Each plain model's metrics and those of their ensemble, plus pairwise TV distance and disagreement."""
    if not models:
        raise ValueError("evaluate_models: no model given")
    logits, labels = [], None
    for m in models:
        lg, labels = predict(m, test_loader)
        logits.append(lg)
    out: Dict[str, Any] = {"members": [_metrics(lg, labels, n_bins) for lg in logits]}
    if len(models) > 1:
        out["ensemble"] = _metrics(combine_logits(logits, combine), labels, n_bins)
        tv, dis = [], []
        for a, b in itertools.combinations(logits, 2):
            tv.append(tv_distance(a, b))
            dis.append(float((a.argmax(-1) != b.argmax(-1)).double().mean()))
        out["tv"] = sum(tv) / len(tv)
        out["disagreement"] = sum(dis) / len(dis)
    return out
