"""tractable.stats: the shared Student-t interval against scipy and the textbook formula."""
import math

import pytest

from tractable.stats import T975, paired_t_interval, t_interval, t_quantile


def test_table_agrees_with_scipy_to_its_three_decimals_and_is_conservative_past_it():
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in range(1, 31):
        assert t_quantile(df, table=True) == T975[df - 1]
        assert abs(T975[df - 1] - scipy_stats.t.ppf(0.975, df)) < 5e-4
        assert t_quantile(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), rel=1e-12)
    assert t_quantile(200, table=True) == T975[-1] > scipy_stats.t.ppf(0.975, 200)  # past the table: wider
    with pytest.raises(ValueError):
        t_quantile(0)
    with pytest.raises(ValueError):
        t_quantile(3, 0.9, table=True)


def test_paired_interval_is_the_interval_of_the_differences():
    a, b = [0.80, 0.83, 0.81], [0.70, 0.72, 0.70]
    d = [x - y for x, y in zip(a, b)]
    m = sum(d) / 3
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / 2)
    r = paired_t_interval(a, b, table=True)
    assert r["mean"] == pytest.approx(m) and r["half"] == pytest.approx(4.303 * sd / math.sqrt(3))
    assert (r["lo"], r["hi"]) == (r["mean"] - r["half"], r["mean"] + r["half"])
    assert t_interval([1.0])["lo"] == -math.inf  # one value: never resolved
    with pytest.raises(ValueError):
        paired_t_interval([1.0, 2.0], [1.0])
