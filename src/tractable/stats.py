"""Student-t intervals over paired seeds: the one implementation every study and report uses.

With values v_1 … v_n (e.g. the per-seed differences TrAct − plain, each seed sharing initial weights, batch order
and test set between the arms), the mean m, the sample standard deviation s (n − 1 in the denominator) and the
two-sided interval of the mean at ``level``

    m ± t_{(1 + level)/2, n−1} · s / √n .

An effect is called only where the interval excludes 0. One value carries no spread: its interval is
(−∞, +∞), never "resolved".

The quantile comes either from scipy (``t_quantile(df)``, exact; the 0.95 table below when scipy is missing) or
from the table itself (``table=True``: the three-decimal values a reader checks against a printed table; past
df = 30 the df = 30 value, slightly wider than the exact quantile). The table-based reports (the FA benchmark,
the CRATE and subspace studies) state their intervals that way; the tests pin both conventions.
"""
from __future__ import annotations

import math
from typing import Dict, Sequence

__all__ = ["T975", "t_quantile", "t_interval", "paired_t_interval"]

#: two-sided 95 % quantiles t_{0.975, df} of Student's t for df = 1 … 30, three decimals
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile(df: int, level: float = 0.95, *, table: bool = False) -> float:
    """Two-sided Student-t quantile for ``df`` degrees of freedom: scipy's (the table for 0.95 without scipy), or
    with ``table=True`` the three-decimal table :data:`T975` (level 0.95 only)."""
    if df < 1:
        raise ValueError(f"t_quantile: df must be >= 1, got {df}")
    if table:
        if level != 0.95:
            raise ValueError(f"t_quantile: the table holds level 0.95 only, got {level}")
        return T975[min(df, len(T975)) - 1]
    try:
        from scipy.stats import t

        return float(t.ppf(0.5 + level / 2, df))
    except ImportError:
        if level != 0.95:
            raise ImportError("t_quantile: levels other than 0.95 need scipy (pip install scipy)") from None
        return T975[df - 1] if df <= len(T975) else 1.959963984540054


def t_interval(values: Sequence[float], level: float = 0.95, *, table: bool = False) -> Dict[str, float]:
    """``{"mean", "lo", "hi", "half", "sd", "n"}``: mean and Student-t interval of the mean, ``half`` its
    half-width (one value says nothing about the spread: lo = −inf, hi = +inf, half = inf, sd = nan)."""
    v = [float(x) for x in values]
    n = len(v)
    if n == 0:
        raise ValueError("t_interval: needs at least one value")
    m = sum(v) / n
    if n == 1:
        return {"mean": m, "lo": -math.inf, "hi": math.inf, "half": math.inf, "sd": math.nan, "n": 1}
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (n - 1))
    half = t_quantile(n - 1, level, table=table) * sd / math.sqrt(n)
    return {"mean": m, "lo": m - half, "hi": m + half, "half": half, "sd": sd, "n": n}


def paired_t_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95, *,
                      table: bool = False) -> Dict[str, float]:
    """:func:`t_interval` of the paired differences a_i − b_i."""
    if len(a) != len(b):
        raise ValueError(f"paired_t_interval: {len(a)} values against {len(b)}; the arms must be paired")
    return t_interval([x - y for x, y in zip(a, b)], level, table=table)
