"""Statistics of the TrAct study over paired seeds: per-epoch intervals and the paper's speed-up.

Every arm of the study (plain, TrAct at some λ) is trained with the same seeds, so seed s of TrAct and seed s of
plain share the initial weights, the batch order and the test set. With ``curves[s][e]`` the test accuracy of
seed s after epoch e + 1:

* :func:`t_interval` (from :mod:`tractable.stats`) — mean and two-sided Student-t interval of the mean (``level`` 0.95 by default; n − 1
  degrees of freedom). :func:`paired_differences` applies it at every epoch to ``tract[s][e] − plain[s][e]``;
  an effect is called only where the interval excludes 0.
* :func:`epochs_to_reach` — the paper's speed-up statistic on one curve: the (fractional) number of epochs a
  curve needs to reach ``target``, by linear interpolation between the evaluated epochs; ``None`` if it never
  does. A curve already at the target after its first evaluation gives 1 (an upper bound: nothing earlier was
  measured). :func:`speedup` = E / epochs_to_reach(mean TrAct curve, mean plain final accuracy), where E is the
  plain run's length — "TrAct reaches the baseline's final accuracy in E/speedup epochs" (Petersen et al.,
  arXiv 2410.23970, Sec. 4; their runs are separate budgets, ours are points of one cosine run, see the docs).
* :func:`speedup_bootstrap` — percentile bootstrap over seeds (paired: a resample draws seed indices and takes
  both arms of each drawn seed), with an explicit generator seed. A resample whose TrAct curve never reaches the
  target counts as speed-up 0 (i.e. "below 1"); the fraction of resamples that reach it is reported.
"""
from __future__ import annotations

import math
import random
from typing import Dict, List, Optional, Sequence

from tractable.stats import t_interval, t_quantile

__all__ = ["t_quantile", "t_interval", "paired_differences", "epochs_to_reach", "speedup", "speedup_bootstrap",
           "mean_curve"]

def mean_curve(curves: Sequence[Sequence[float]]) -> List[float]:
    """Element-wise mean of equally long curves."""
    if not curves:
        raise ValueError("mean_curve: no curves")
    E = len(curves[0])
    if any(len(c) != E for c in curves):
        raise ValueError(f"mean_curve: curves of different lengths {[len(c) for c in curves]}")
    return [sum(c[e] for c in curves) / len(curves) for e in range(E)]


def paired_differences(tract: Sequence[Sequence[float]], plain: Sequence[Sequence[float]],
                       level: float = 0.95) -> List[Dict[str, float]]:
    """Per epoch: :func:`t_interval` of ``tract[s][e] − plain[s][e]`` over seeds s (same seed order in both)."""
    if len(tract) != len(plain):
        raise ValueError(f"paired_differences: {len(tract)} TrAct seeds vs {len(plain)} plain seeds")
    E = len(plain[0])
    return [t_interval([t[e] - p[e] for t, p in zip(tract, plain)], level) for e in range(E)]


def epochs_to_reach(curve: Sequence[float], target: float, epochs: Optional[Sequence[float]] = None
                    ) -> Optional[float]:
    """Epochs for ``curve`` (values at ``epochs``, default 1 … E) to reach ``target``, linearly interpolated
    between evaluations; the first evaluated epoch if it is already there; ``None`` if never."""
    xs = list(epochs) if epochs is not None else list(range(1, len(curve) + 1))
    for i, (x, y) in enumerate(zip(xs, curve)):
        if y >= target:
            if i == 0:
                return float(x)
            x0, y0 = xs[i - 1], curve[i - 1]
            return float(x0 + (target - y0) / (y - y0) * (x - x0))
    return None


def speedup(tract: Sequence[Sequence[float]], plain: Sequence[Sequence[float]]) -> Optional[float]:
    """E / epochs for the mean TrAct curve to reach the mean final plain accuracy (``None``: never reached)."""
    target = mean_curve(plain)[-1]
    e = epochs_to_reach(mean_curve(tract), target)
    return None if e is None else len(plain[0]) / e


def speedup_bootstrap(tract: Sequence[Sequence[float]], plain: Sequence[Sequence[float]], *,
                      num_resamples: int = 10000, level: float = 0.95, seed: int = 0) -> Dict[str, float]:
    """``{"speedup", "lo", "hi", "reached"}``: :func:`speedup` on all seeds, a percentile bootstrap interval over
    paired seed resamples (never reached → 0) and the fraction of resamples in which TrAct reached the target."""
    n = len(plain)
    if n != len(tract) or n < 1:
        raise ValueError(f"speedup_bootstrap: needs equal, non-zero seed counts, got {len(tract)} and {n}")
    point = speedup(tract, plain)
    point = 0.0 if point is None else point
    if n == 1:  # one seed: no interval
        return {"speedup": point, "lo": 0.0, "hi": math.inf, "reached": float(point > 0)}
    rng = random.Random(seed)
    vals = []
    for _ in range(num_resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        s = speedup([tract[i] for i in idx], [plain[i] for i in idx])
        vals.append(0.0 if s is None else s)
    vals.sort()
    lo = vals[int(math.floor((1 - level) / 2 * (num_resamples - 1)))]
    hi = vals[int(math.ceil((1 + level) / 2 * (num_resamples - 1)))]
    return {"speedup": point, "lo": lo, "hi": hi,
            "reached": sum(v > 0 for v in vals) / num_resamples}
