"""The three-diagnostic FA evaluation protocol, with the seed's definitions and the corrected ones side by side.

``FAProtocol(model, eval_data).run(baselines=...)`` evaluates a trained model that has the credit protocol of
:mod:`tractable.models.credit` and returns a report shaped like the original protocol's (``verdict``,
``test_acc``, ``diagnostics`` with ``D1_scale_growth``, ``D2_ref_validity``, ``D3_depth_utility``). Each
diagnostic carries the **seed-compatible** value (the original definition, computed on the model's real forward,
so its bugs are gone) and, under ``"corrected"``, the corrected definition:

D1 — scale stability (fires when the stream explodes; threshold ``d1_threshold``, default 50×)
    seed: on the first ``seed_samples`` (128) evaluation inputs, per-sample ‖pool(h_k)‖ with CLS / spatial-mean
    pooling; growth_l = med ‖h_{l+1}‖ / max(med ‖h_l‖, 1e-12); D1 = max_l growth_l.
    corrected: on ``diag_samples`` (1024) inputs, the mean per-token / per-position norm; both the ratio of
    medians and the median of per-sample ratios; fires if either exceeds the threshold. The per-block vector
    and (when ``bp_report=`` is given) the value of a BP-trained model of the same architecture are reported.

D2 — reference validity (fires when the BP reference itself cannot be trusted)
    seed: median per-sample ‖g_L‖ (same pooling) with the mean-reduced loss over the 128 inputs; fires below
    ``d2_floor`` (1e-7 = 10 × the 1e-8 clamp of ``F.cosine_similarity``). With a terminal LayerNorm ‖g_L‖ ∝
    1/‖h_L‖, so this mostly restates D1 and depends on the batch size.
    corrected: per-sample gradients (``reduction="sum"``) at every point, in the model's dtype and recomputed
    on a float64 copy; fires only on a genuine numerical failure: a non-finite value, a median norm below
    1e3 × ``finfo(dtype).tiny``, a median cos(dtype ref, float64 ref) below ``cos_floor`` (0.999), or a
    reference that disagrees with central finite differences of the forward (e.g. a feedback layer that ignores
    ``bp_mode``). Reports the scale-free ‖g_L‖·‖h_L‖.

D3 — depth utility (fires when the trained blocks do not beat a baseline by ``d3_margin``, default 2 pp)
    seed: test accuracy minus the seed's frozen-blocks baseline (``baselines["frozen_seed"]``, blocks at init,
    embed and head trained by BP).
    corrected: accuracy on the whole ``eval_data`` minus the **method-matched** frozen baseline
    (``baselines["frozen_matched"]``: blocks at init, everything else trained by the same method), averaged over
    seeds (``seed_accs``, paired with the baseline's seeds). The interval is the paired Student-t interval of
    the per-seed differences: method and baseline are scored on the same test set, so pairing by seed is what
    the design allows (pooling one test set over seeds as if its samples were independent would shrink the
    interval by √seeds without new evidence); with a single run it is the Wilson interval of that run's
    difference. Fires if the interval lies below the margin, passes if it lies above it with at least
    ``min_seeds`` (3) seeds, and is INCONCLUSIVE otherwise. **The cheap baselines bind too**: the same paired
    difference is computed against ``frozen_seed`` (BP's frozen blocks), ``shallow`` and ``head_only``; if the
    method lies below any of them with an interval below 0, D3 fires; if it lies below one on average, D3 cannot
    pass (INCONCLUSIVE at best). A method whose blocks do worse than training the head alone has no depth
    utility, whatever its matched baseline says.

Verdicts (both rules, both definitions, always computed): ``any`` — FAIL if any diagnostic fires (what the
original code does); ``readme`` — FAIL if (D1 and D2) or D3 (what the original README states). Without a D3
baseline the verdict is INCOMPLETE, never PASS; an undecided corrected D3 gives INCONCLUSIVE. ``report["verdict"]``
is the corrected verdict under ``verdict_rule``. Passing rules out these silent failures only; it does not
certify a method.

The model's train/eval modes are restored after :meth:`FAProtocol.run`. The credit metrics of
:mod:`tractable.feedback.metrics` are added under ``report["credit"]``: per-point cosine Γ_k between the
method's signal and the BP gradient at the **same** point, BP gradient norms, and (``rho_directions > 0``) the
perturbation correlation ρ_k and the nudging test per point.

>>> proto = FAProtocol(model, (x_test, y_test))                                    # doctest: +SKIP
>>> report = proto.run(baselines={"frozen_matched": [0.35, 0.36, 0.35]},          # doctest: +SKIP
...                    seed_accs=[0.41, 0.40, 0.42])
>>> print(proto.summary(report))                                                  # doctest: +SKIP
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from tractable.feedback import metrics as M

__all__ = ["FAProtocol", "BASELINES", "VERDICT_RULES", "combine_verdict", "judge", "format_report"]

BASELINES = ("frozen_seed", "frozen_matched", "shallow", "head_only")
VERDICT_RULES = ("readme", "any")


def _number(name: str, value, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
            (positive and value <= 0):
        raise ValueError(f"FAProtocol: {name} must be a {'positive ' if positive else ''}finite number, got {value!r}")
    return float(value)


def _count(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"FAProtocol: {name} must be an int >= {minimum}, got {value!r}")
    return value


def _accs(name: str, value) -> Optional[List[float]]:
    if value is None:
        return None
    vals = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    try:
        vals = [float(v) for v in vals]
    except (TypeError, ValueError):
        raise ValueError(f"FAProtocol: {name} must be an accuracy in [0, 1] or a list of them (one per seed), "
                         f"got {value!r}") from None
    if not vals or any(not (0.0 <= v <= 1.0) for v in vals):
        raise ValueError(f"FAProtocol: {name} must be accuracies in [0, 1] (one per seed), got {value!r}")
    return vals


def combine_verdict(d1: bool, d2: bool, d3: Optional[str], rule: str) -> str:
    """One verdict from the flags: ``d3`` is ``"fires"``, ``"passes"``, ``"inconclusive"`` or None (missing).

    ``rule="any"`` fails on any flag; ``"readme"`` on (D1 and D2) or D3. A failure is reported as
    ``FAIL(D1+D2)``-style strings; otherwise a missing D3 gives ``INCOMPLETE`` and an undecided one
    ``INCONCLUSIVE``.
    """
    if rule not in VERDICT_RULES:
        raise ValueError(f"verdict rule must be one of {', '.join(map(repr, VERDICT_RULES))}; got {rule!r}")
    d3_fires = d3 == "fires"
    fail = (d1 or d2 or d3_fires) if rule == "any" else ((d1 and d2) or d3_fires)
    if fail:
        flags = [n for n, f in (("D1", d1), ("D2", d2), ("D3", d3_fires)) if f]
        return "FAIL(" + "+".join(flags) + ")"
    if d3 is None:
        return "INCOMPLETE"
    if d3 == "inconclusive":
        return "INCONCLUSIVE"
    return "PASS"


class FAProtocol:
    """Evaluate ``model`` on ``eval_data`` (the test set) with the three diagnostics; see the module docstring.

    Args:
        model: a trained model with the credit protocol (DDP-wrapped models are unwrapped).
        eval_data: ``(x, y)`` tensors (model-ready inputs), an ``ArrayDataset`` (converted and normalised with
            its ``info``), or an iterable of ``(x, y)`` batches.
        loss_fn: ``loss_fn(logits, y, reduction)`` → loss; default cross-entropy.
        d1_threshold, d2_floor, d3_margin: the thresholds (seed defaults 50×, 1e-7, 0.02 = 2 pp).
        verdict_rule: which rule gives ``report["verdict"]`` (``"readme"`` or ``"any"``); both are reported.
        seed_samples, diag_samples: evaluation inputs used by the seed-compatible and corrected D1/D2.
        min_seeds: seeds needed before a corrected D3 can pass.
        cos_floor: the corrected D2's bound on cos(dtype reference, float64 reference).
        rho_directions: directions for ρ_k per sample (default 32, the protocol's M; 0 skips ρ and nudging);
            ``rho_samples`` inputs are used for them.
        batch_size: evaluation batch for the accuracy; ``device``: where to evaluate (default: the model's).
    """

    def __init__(self, model: nn.Module, eval_data, *, loss_fn: Optional[Callable] = None,
                 d1_threshold: float = 50.0, d2_floor: float = 1e-7, d3_margin: float = 0.02,
                 verdict_rule: str = "readme", seed_samples: int = 128, diag_samples: int = 1024,
                 min_seeds: int = 3, cos_floor: float = 0.999, rho_directions: int = 32, rho_samples: int = 256,
                 batch_size: int = 512, device: Optional[Union[str, torch.device]] = None, seed: int = 0):
        model = getattr(model, "module", model) if isinstance(model, nn.parallel.DistributedDataParallel) else model
        M._check_model(model)
        self.model = model
        self.d1_threshold = _number("d1_threshold", d1_threshold)
        self.d2_floor = _number("d2_floor", d2_floor)
        self.d3_margin = _number("d3_margin", d3_margin, positive=False)
        if verdict_rule not in VERDICT_RULES:
            raise ValueError(f"FAProtocol: verdict_rule must be one of {', '.join(map(repr, VERDICT_RULES))}; "
                             f"got {verdict_rule!r}")
        self.verdict_rule = verdict_rule
        self.seed_samples = _count("seed_samples", seed_samples)
        self.diag_samples = _count("diag_samples", diag_samples)
        self.min_seeds = _count("min_seeds", min_seeds)
        self.cos_floor = _number("cos_floor", cos_floor)
        self.rho_directions = _count("rho_directions", rho_directions, minimum=0)
        if self.rho_directions == 1:
            raise ValueError("FAProtocol: rho_directions must be 0 (off) or >= 2, got 1")
        self.rho_samples = _count("rho_samples", rho_samples)
        self.batch_size = _count("batch_size", batch_size)
        self.seed = seed
        self.loss_fn = loss_fn
        self.device = torch.device(device) if device is not None else _model_device(model)
        self.x, self.y = _materialise(eval_data, self.device)
        self.report: Optional[Dict[str, Any]] = None

    # ------------------------------------------------------------------------------------------------ losses
    def _loss(self, reduction: str) -> Callable:
        if self.loss_fn is None:
            return lambda logits, y: F.cross_entropy(logits, y, reduction=reduction)
        return lambda logits, y: self.loss_fn(logits, y, reduction)

    # ------------------------------------------------------------------------------------------------ run
    def run(self, baselines: Optional[Mapping[str, Any]] = None, *, test_acc: Optional[float] = None,
            seed_accs: Optional[Sequence[float]] = None, bp_report: Optional[Mapping[str, Any]] = None,
            frozen_baseline_acc: Optional[float] = None) -> Dict[str, Any]:
        """Compute every diagnostic and both verdicts; returns (and keeps in ``self.report``) the report.

        Args:
            baselines: accuracies (a number, or one per seed) under any of ``frozen_seed``, ``frozen_matched``,
                ``shallow``, ``head_only``.
            test_acc: this model's test accuracy (default: measured on the whole ``eval_data``).
            seed_accs: this method's accuracies over seeds (default ``[test_acc]``) for the corrected D3.
            bp_report: the report of a BP-trained model of the same architecture (D1 calibration).
            frozen_baseline_acc: the original API's name for ``baselines["frozen_seed"]``.
        """
        if frozen_baseline_acc is not None:
            base = dict(baselines or {})
            if "frozen_seed" in base:
                raise ValueError("FAProtocol.run: pass the seed frozen baseline once (frozen_baseline_acc or "
                                 "baselines['frozen_seed'])")
            base["frozen_seed"] = frozen_baseline_acc
            baselines = base
        _check_baselines(baselines)  # before the (slow) measurements
        _accs("seed_accs", seed_accs)
        self.report = judge(self.measure(), baselines, test_acc=test_acc, seed_accs=seed_accs, bp_report=bp_report)
        return self.report

    def measure(self) -> Dict[str, Any]:
        """Everything that needs the model: accuracy on ``eval_data``, D1, D2 and the credit metrics. The
        result is a report without baselines (D3 missing, verdict INCOMPLETE); :func:`judge` adds them later,
        also to a report read back from JSON."""
        with M.model_mode(self.model, training=False):
            measured_acc, correct = self._accuracy()
            d1_seed, d2_seed, d1_cor, d2_cor, credit = self._scale_and_reference()
        n_test = int(self.y.shape[0])
        d1_seed["corrected"], d2_seed["corrected"] = d1_cor, d2_cor
        report = {
            "verdict": None,
            "verdict_rule": self.verdict_rule,
            "verdicts": None,
            "test_acc": measured_acc,
            "measured_test_acc": measured_acc,
            "n_test": n_test,
            "diagnostics": {"D1_scale_growth": d1_seed, "D2_ref_validity": d2_seed, "D3_depth_utility": None},
            "credit": credit,
            "settings": {"d1_threshold": self.d1_threshold, "d2_floor": self.d2_floor, "d3_margin": self.d3_margin,
                         "seed_samples": min(self.seed_samples, n_test),
                         "diag_samples": min(self.diag_samples, n_test), "min_seeds": self.min_seeds,
                         "cos_floor": self.cos_floor, "dtype": str(M._param_dtype(self.model)),
                         "model": type(self.model).__name__, "depth": len(self.model.blocks),
                         "correct": correct, "seed": self.seed},
        }
        return judge(report)

    # ------------------------------------------------------------------------------------------------ parts
    def _accuracy(self) -> Tuple[float, int]:
        correct = 0
        with torch.no_grad():
            for i in range(0, self.x.shape[0], self.batch_size):
                logits = self.model(self.x[i:i + self.batch_size])
                correct += int((logits.argmax(-1) == self.y[i:i + self.batch_size]).sum())
        return correct / self.x.shape[0], correct

    def _scale_and_reference(self):
        model = self.model
        xs, ys = self.x[:self.seed_samples], self.y[:self.seed_samples]
        xd, yd = self.x[:self.diag_samples], self.y[:self.diag_samples]
        depth = len(model.blocks)

        # ---- seed-compatible D1 / D2 (on the model's own forward)
        ref_seed = M.bp_reference(model, xs, ys, loss_fn=self._loss("mean"), reduction="mean")
        g_seed = M.block_growth(ref_seed.hiddens, "seed")
        max_seed = max(g_seed["ratio_of_medians"]) if depth else 1.0
        d1_seed = {"max_growth": max_seed, "per_block_growth": g_seed["ratio_of_medians"],
                   "hidden_norms": g_seed["norms"], "threshold": self.d1_threshold,
                   "fires": bool(max_seed > self.d1_threshold), "pooling": "seed (CLS / spatial mean)",
                   "samples": int(xs.shape[0])}
        gnorms_seed = M.bp_grad_norms(ref_seed, "seed")
        d2_seed = {"g_L": gnorms_seed[-1], "bp_grad_norms": gnorms_seed, "floor": self.d2_floor,
                   "fires": bool(not gnorms_seed[-1] >= self.d2_floor), "reduction": "mean",
                   "samples": int(xs.shape[0])}

        # ---- corrected D1
        ref = M.bp_reference(model, xd, yd, loss_fn=self._loss("sum"), reduction="sum")
        g_cor = M.block_growth(ref.hiddens, "position")
        rom = max(g_cor["ratio_of_medians"]) if depth else 1.0
        mor = max(g_cor["median_of_ratios"]) if depth else 1.0
        d1_cor = {"max_growth": max(rom, mor), "max_ratio_of_medians": rom, "max_median_of_ratios": mor,
                  "per_block_growth": g_cor["ratio_of_medians"], "per_block_median_ratio": g_cor["median_of_ratios"],
                  "hidden_norms": g_cor["norms"], "threshold": self.d1_threshold,
                  "fires": bool(max(rom, mor) > self.d1_threshold), "pooling": "mean per-position norm",
                  "samples": int(xd.shape[0]), "bp_max_growth": None}

        # ---- corrected D2: the reference in the model's dtype vs a float64 copy, plus finite differences
        net64 = copy.deepcopy(model).to(torch.float64)
        x64 = xd.to(torch.float64) if xd.is_floating_point() else xd
        ref64 = M.bp_reference(net64, x64, yd, loss_fn=self._loss("sum"), reduction="sum")
        tiny = torch.finfo(ref.dtype).tiny * 1e3
        finite = all(bool(torch.isfinite(g).all()) for g in ref.grads)
        gnorms = M.bp_grad_norms(ref, "position")
        cos32_64 = [M.cosine_summary(M.per_sample_cosine(a, b))["median"] for a, b in zip(ref.grads, ref64.grads)]
        fd = _fd_check(net64, ref64, yd, self._loss("sum"), self.seed)
        prod = M.per_sample_norm(ref.grads[-1], "position", ref.layout) * \
            M.per_sample_norm(ref.hiddens[-1], "position", ref.layout)
        reasons = []
        if not finite:
            reasons.append("non-finite BP gradient")
        if any(not n >= tiny for n in gnorms):
            reasons.append(f"median |g_k| below {tiny:.1e} (1e3 x finfo.tiny)")
        if any(not c >= self.cos_floor for c in cos32_64):
            reasons.append(f"median cos(reference, float64 reference) below {self.cos_floor}")
        if not fd["ok"]:
            reasons.append("the reference disagrees with finite differences of the forward")
        d2_cor = {"g_L": gnorms[-1], "bp_grad_norms": gnorms, "g_L_times_h_L": float(prod.median()),
                  "cos_to_float64": cos32_64, "finite": finite, "floor": tiny, "cos_floor": self.cos_floor,
                  "finite_difference": fd, "fires": bool(reasons), "reasons": reasons, "reduction": "sum",
                  "samples": int(xd.shape[0])}
        del net64

        # ---- credit metrics: the method's signal at each point against the reference at the same point
        signals = M.method_signals(model, xd, yd, loss_fn=self._loss("sum"), reduction="sum")
        credit: Dict[str, Any] = {"points": [p.name for p in model.feedback_points()],
                                  "cosine": M.point_cosines(signals, ref.grads), "bp_grad_norms": gnorms}
        if self.rho_directions:
            n = min(self.rho_samples, xd.shape[0])
            rho, nudge = [], []
            gen = torch.Generator().manual_seed(self.seed)
            for k, (h, a) in enumerate(zip(ref.hiddens, signals)):
                if a is None:
                    rho.append(float("nan"))
                    nudge.append({"mean_delta": float("nan"), "frac_decrease": float("nan")})
                    continue
                rho.append(M.perturbation_correlation(model, k, h[:n], a[:n], yd[:n],
                                                      num_directions=self.rho_directions,
                                                      loss_fn=self._loss("none"), generator=gen))
                nudge.append(M.nudging(model, k, h[:n], a[:n], yd[:n], loss_fn=self._loss("none")))
            credit["rho"], credit["nudging"] = rho, nudge
        return d1_seed, d2_seed, d1_cor, d2_cor, credit

    # ------------------------------------------------------------------------------------------------ text
    def summary(self, report: Optional[Mapping[str, Any]] = None) -> str:
        """Human-readable summary: both verdict rules under both definitions, then each diagnostic."""
        r = report if report is not None else self.report
        if r is None:
            raise RuntimeError("FAProtocol.summary: call run() first or pass a report")
        return format_report(r)


def _check_baselines(baselines) -> Dict[str, Optional[List[float]]]:
    base = dict(baselines or {})
    unknown = sorted(set(base) - set(BASELINES))
    if unknown:
        raise ValueError(f"FAProtocol: unknown baseline(s) {', '.join(map(repr, unknown))}; accepted: "
                         f"{', '.join(BASELINES)}")
    return {k: _accs(f"baselines[{k!r}]", v) for k, v in base.items()}


def judge(report: Mapping[str, Any], baselines: Optional[Mapping[str, Any]] = None, *,
          test_acc: Optional[float] = None, seed_accs: Optional[Sequence[float]] = None,
          bp_report: Optional[Mapping[str, Any]] = None, verdict_rule: Optional[str] = None,
          d3_margin: Optional[float] = None, min_seeds: Optional[int] = None) -> Dict[str, Any]:
    """A copy of ``report`` (from :meth:`FAProtocol.run` / :meth:`FAProtocol.measure`, or read back from JSON)
    with D3, the BP calibration of D1 and both verdicts (re)computed from ``baselines``, ``seed_accs`` and
    ``bp_report`` (see :meth:`FAProtocol.run`); the rule and thresholds default to the report's settings."""
    r = copy.deepcopy(dict(report))
    st = r["settings"]
    margin = st["d3_margin"] if d3_margin is None else _number("d3_margin", d3_margin, positive=False)
    need = st["min_seeds"] if min_seeds is None else _count("min_seeds", min_seeds)
    rule = verdict_rule or r.get("verdict_rule") or "readme"
    if rule not in VERDICT_RULES:
        raise ValueError(f"FAProtocol: verdict_rule must be one of {', '.join(map(repr, VERDICT_RULES))}; "
                         f"got {rule!r}")
    base = _check_baselines(baselines)
    seed_list = _accs("seed_accs", seed_accs)
    acc = r["measured_test_acc"] if test_acc is None else _accs("test_acc", test_acc)[0]
    d = r["diagnostics"]
    d1, d2 = d["D1_scale_growth"], d["D2_ref_validity"]
    d3_seed, d3_cor = _depth(acc, r["n_test"], base, seed_list, margin, need, st.get("seed", 0))
    d3_seed["corrected"] = d3_cor
    d["D3_depth_utility"] = d3_seed
    c1 = d1["corrected"]
    c1["bp_max_growth"], c1["growth_over_bp"] = None, None
    if bp_report is not None:
        try:
            bp_growth = float(bp_report["diagnostics"]["D1_scale_growth"]["corrected"]["max_growth"])
        except (KeyError, TypeError):
            raise ValueError("FAProtocol: bp_report must be a report returned by FAProtocol.run") from None
        c1["bp_max_growth"] = bp_growth
        c1["growth_over_bp"] = c1["max_growth"] / bp_growth if bp_growth > 0 else float("nan")
    seed_d3 = None if d3_seed["fires"] is None else ("fires" if d3_seed["fires"] else "passes")
    r["verdicts"] = {
        "seed": {k: combine_verdict(d1["fires"], d2["fires"], seed_d3, k) for k in VERDICT_RULES},
        "corrected": {k: combine_verdict(c1["fires"], d2["corrected"]["fires"], d3_cor["status"], k)
                      for k in VERDICT_RULES},
    }
    r["verdict_rule"] = rule
    r["verdict"] = r["verdicts"]["corrected"][rule]
    r["test_acc"] = acc
    st["d3_margin"], st["min_seeds"] = margin, need
    return r


def _depth(acc: float, n_test: int, base: Dict[str, Optional[List[float]]], seed_list: Optional[List[float]],
           margin: float, min_seeds: int, seed: int):
    frozen_seed = base.get("frozen_seed")
    fs = None if frozen_seed is None else sum(frozen_seed) / len(frozen_seed)
    d3_seed = {"test_acc": acc, "frozen_baseline_acc": fs, "margin": None if fs is None else acc - fs,
               "margin_threshold": margin, "fires": None if fs is None else bool(acc - fs < margin),
               "baseline": "frozen blocks, embed and head trained by BP"}

    accs = seed_list if seed_list is not None else [acc]
    others = {}
    for name in ("frozen_seed", "shallow", "head_only"):
        if base.get(name) is not None:
            b = base[name]
            m, lo, hi = _paired_interval(accs, b, n_test)
            others[name] = {"acc_mean": sum(b) / len(b), "margin": m, "ci": [lo, hi], "n_seeds": len(b)}
    matched = base.get("frozen_matched")
    cor: Dict[str, Any] = {"method_accs": accs, "n_seeds": len(accs), "margin_threshold": margin,
                           "other_baselines": others, "n_test": n_test,
                           "baseline": "frozen blocks, embed and head trained by the same method"}
    if matched is None:
        cor.update({"status": None, "fires": None, "frozen_matched_accs": None, "margin": None, "ci": None,
                    "note": "no method-matched frozen baseline: D3 not evaluated (verdict INCOMPLETE)"})
        return d3_seed, cor
    if len(matched) not in (1, len(accs)):
        raise ValueError(f"FAProtocol: baselines['frozen_matched'] has {len(matched)} seeds and the method "
                         f"{len(accs)}; give one value or one per seed (paired)")
    diffs = [a - (matched[0] if len(matched) == 1 else b) for a, b in zip(accs, matched * len(accs))]
    mean, lo, hi = _paired_interval(accs, matched, n_test)
    ci = (lo, hi)
    boot = M.bootstrap_mean_ci(diffs, seed=seed)
    if ci[1] < margin:
        status = "fires"
    elif ci[0] >= margin and len(accs) >= min_seeds:
        status = "passes"
    else:
        status = "inconclusive"
    note = {"fires": "the interval lies below the margin",
            "passes": "the interval lies above the margin",
            "inconclusive": ("the interval straddles the margin" if ci[0] < margin else
                             f"fewer than {min_seeds} seeds")}[status]
    below = {k: v for k, v in others.items() if v["margin"] < 0}
    if below:
        sure = [k for k, v in below.items() if v["ci"][1] < 0]
        if sure:
            status, note = "fires", f"below the cheap baseline(s) {', '.join(sure)} (interval below 0)"
        elif status == "passes":
            status, note = "inconclusive", f"below the cheap baseline(s) {', '.join(below)} on average"
    cor.update({"status": status, "fires": status == "fires", "frozen_matched_accs": matched, "margin": mean,
                "diffs": diffs, "ci": list(ci), "ci_bootstrap": list(boot), "note": note,
                "interval": "paired t over seeds" if len(accs) > 1 else "Wilson, one run"})
    return d3_seed, cor


# two-sided 95 % Student t quantiles by degrees of freedom (larger: 1.96)
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        15: 2.131, 20: 2.086, 30: 2.042}


def _paired_interval(accs: Sequence[float], base: Sequence[float], n_test: int) -> Tuple[float, float, float]:
    """(mean, low, high) of acc − base: the paired 95 % t-interval over seeds (a single baseline value is used
    for every seed); with one method run, the difference of that run's and the baseline's Wilson intervals."""
    base = list(base)
    diffs = [a - (base[0] if len(base) == 1 else b) for a, b in zip(accs, base * len(accs))]
    n = len(diffs)
    mean = sum(diffs) / n
    if n == 1:
        wa = M.wilson_interval(int(round(accs[0] * n_test)), n_test)
        bm = sum(base) / len(base)
        wb = M.wilson_interval(int(round(bm * n_test)), n_test)
        return mean, wa[0] - wb[1], wa[1] - wb[0]
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    df = n - 1
    t = _T95.get(df) or next((v for k, v in sorted(_T95.items(), reverse=True) if k <= df), 1.96)
    half = t * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def format_report(r: Mapping[str, Any]) -> str:
    """The text of :meth:`FAProtocol.summary` for a report dict (e.g. read back from JSON)."""
    d = r["diagnostics"]
    d1, d2, d3 = d["D1_scale_growth"], d["D2_ref_validity"], d["D3_depth_utility"]
    c1, c2, c3 = d1["corrected"], d2["corrected"], d3["corrected"]
    v = r["verdicts"]
    vec = lambda xs, f="{:.3g}": "[" + ", ".join(f.format(x) for x in xs) + "]"  # noqa: E731
    fire = lambda b: "n/a" if b is None else ("FIRE" if b else "pass")  # noqa: E731
    lines = [
        f"Verdict ({r['verdict_rule']} rule, corrected definitions): {r['verdict']}",
        f"  rule 'any'    (FAIL if any flag):       seed-compatible {v['seed']['any']:<16} "
        f"corrected {v['corrected']['any']}",
        f"  rule 'readme' (FAIL if D1&D2, or D3):   seed-compatible {v['seed']['readme']:<16} "
        f"corrected {v['corrected']['readme']}",
        f"Test accuracy: {r['test_acc']:.4f} (n = {r['n_test']})",
        f"D1 scale stability   seed: max growth {d1['max_growth']:.3g}x per block {vec(d1['per_block_growth'])} "
        f"(CLS/spatial-mean pooling, {d1['samples']} samples; threshold {d1['threshold']:g}x) -> {fire(d1['fires'])}",
        f"                     corrected: max growth {c1['max_growth']:.3g}x (ratio of medians "
        f"{vec(c1['per_block_growth'])}, median of ratios {vec(c1['per_block_median_ratio'])}; per-position norm, "
        f"{c1['samples']} samples)"
        + (f"; BP calibration {c1['bp_max_growth']:.3g}x" if c1.get("bp_max_growth") is not None else "")
        + f" -> {fire(c1['fires'])}",
        f"D2 reference validity seed: |g_L| = {d2['g_L']:.3g} (mean-reduced loss, {d2['samples']} samples; floor "
        f"{d2['floor']:.0e}) -> {fire(d2['fires'])}",
        f"                     corrected: per-sample |g_L| = {c2['g_L']:.3g}, |g_L|*|h_L| = {c2['g_L_times_h_L']:.3g}, "
        f"min cos(ref, fp64 ref) = {min(c2['cos_to_float64']):.6f}, finite differences "
        f"{'agree' if c2['finite_difference']['ok'] else 'DISAGREE'} -> {fire(c2['fires'])}"
        + (f" ({'; '.join(c2['reasons'])})" if c2["reasons"] else ""),
    ]
    if d3["fires"] is None:
        lines.append("D3 depth utility     seed: not evaluated (no seed frozen baseline)")
    else:
        lines.append(f"D3 depth utility     seed: margin {100 * d3['margin']:+.1f} pp over frozen "
                     f"{d3['frozen_baseline_acc']:.4f} (threshold {100 * d3['margin_threshold']:.0f} pp) -> "
                     f"{fire(d3['fires'])}")
    if c3["status"] is None:
        lines.append("                     corrected: not evaluated (no method-matched frozen baseline) -> INCOMPLETE")
    else:
        lines.append(f"                     corrected: mean margin {100 * c3['margin']:+.1f} pp over method-matched "
                     f"frozen ({c3['n_seeds']} seed(s)), 95% CI [{100 * c3['ci'][0]:+.1f}, "
                     f"{100 * c3['ci'][1]:+.1f}] pp "
                     f"-> {c3['status'].upper()} ({c3['note']})")
    for name, o in c3["other_baselines"].items():
        lines.append(f"                     vs {name}: {o['acc_mean']:.4f} (margin {100 * o['margin']:+.1f} pp)")
    cr = r.get("credit") or {}
    if cr.get("cosine"):
        lines.append("Credit per point (" + ", ".join(cr["points"]) + "):")
        lines.append("  cos(signal_k, g_k) mean " + vec([c["mean"] for c in cr["cosine"]], "{:.3f}"))
        lines.append("  BP |g_k| (per sample)   " + vec(cr["bp_grad_norms"]))
        if "rho" in cr:
            lines.append("  perturbation rho_k      " + vec(cr["rho"], "{:.3f}"))
            lines.append("  nudging mean dloss      " + vec([n["mean_delta"] for n in cr["nudging"]]))
    lines.append("Passing rules out these silent failures only; it does not certify the method.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- data
def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _materialise(eval_data, device) -> Tuple[torch.Tensor, torch.Tensor]:
    if isinstance(eval_data, (tuple, list)) and len(eval_data) == 2 and all(torch.is_tensor(t) for t in eval_data):
        x, y = eval_data
    elif hasattr(eval_data, "x") and hasattr(eval_data, "y") and hasattr(eval_data, "info"):
        from tractable.data import normalize, to_float

        info = eval_data.info
        x = normalize(to_float(eval_data.x), info.mean, info.std)
        y = eval_data.y
    else:
        try:
            batches = list(eval_data)
            xs, ys = zip(*[(b[0], b[1]) for b in batches])
            x, y = torch.cat(xs), torch.cat(ys)
        except (TypeError, ValueError, IndexError, RuntimeError):
            raise ValueError("FAProtocol: eval_data must be (x, y) tensors, an ArrayDataset or an iterable of "
                             f"(x, y) batches; got {type(eval_data).__name__}") from None
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"FAProtocol: eval_data needs as many labels as inputs (>= 1), got {x.shape[0]} inputs "
                         f"and {y.shape[0]} labels")
    if y.dtype.is_floating_point or y.dim() != 1:
        raise ValueError(f"FAProtocol: labels must be a 1-d integer tensor, got shape {tuple(y.shape)} dtype {y.dtype}")
    return x.to(device), y.to(device)


def _fd_check(net64: nn.Module, ref64, y: torch.Tensor, loss_fn, seed: int, num_directions: int = 3,
              t: float = 1e-7, rtol: float = 1e-2, max_samples: int = 64) -> Dict[str, Any]:
    """⟨g_k, v⟩ against central differences of the float64 loss through ``forward_from(k)`` at the first and last
    point, along random directions, on the first ``max_samples`` inputs (the reference uses a summed loss, so
    these samples' gradients do not depend on the others). Entries where h is exactly 0 are not moved, and the
    median over directions is compared, so that a ReLU kink crossed by one step does not count; a backward that
    is not the forward's gradient (e.g. a feedback layer ignoring ``bp_mode``) is off by O(1)."""
    gen = torch.Generator().manual_seed(seed + 1)
    worst, worst_single = 0.0, 0.0
    points = sorted({0, len(ref64.hiddens) - 1})
    y = y[:max_samples]
    with M.model_mode(net64, training=False), torch.no_grad():
        for k in points:
            h, g = ref64.hiddens[k][:max_samples], ref64.grads[k][:max_samples]
            scale = float(h.abs().max()) or 1.0
            errs = []
            for _ in range(num_directions):
                v = torch.randn(h.shape, generator=gen, dtype=torch.float64).to(h.device) * (h != 0)
                step = t * scale
                lp = loss_fn(net64.forward_from(k, h + step * v), y)
                lm = loss_fn(net64.forward_from(k, h - step * v), y)
                fd = float((lp - lm) / (2 * step))
                an = float((g * v).sum())
                err = abs(fd - an) / max(abs(fd), abs(an), 1e-30)
                errs.append(0.0 if abs(fd) < 1e-12 and abs(an) < 1e-12 else err)
            worst = max(worst, sorted(errs)[len(errs) // 2])
            worst_single = max(worst_single, max(errs))
    return {"ok": bool(worst <= rtol), "median_rel_error": worst, "max_rel_error": worst_single, "points": points,
            "directions": num_directions, "rtol": rtol}
