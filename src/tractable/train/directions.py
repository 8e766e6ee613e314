"""Which way is better, for every metric the package logs: ``"max"``, ``"min"`` or ``None`` (a description, not
a score — e.g. the disagreement of an ensemble's members).

``tractable compare`` and the run summaries report a "best" value only for metrics with a direction, taken from
here; a metric that is not listed gets no "best" (rather than a guess: the largest ECE is not the best one).
A task, rule or command that logs a new metric adds it with :func:`declare_metric`.
"""
from __future__ import annotations

from typing import Dict, Optional

__all__ = ["METRIC_DIRECTIONS", "metric_direction", "declare_metric"]

#: base metric name (without ``train_``/``test_``/``ema_test_`` prefixes) → "max", "min" or None
METRIC_DIRECTIONS: Dict[str, Optional[str]] = {
    "acc": "max", "acc5": "max",  # classification accuracy, top-5
    "loss": "min", "nll": "min",  # the training criterion; negative log-likelihood
    "ece": "min",  # expected calibration error (subspace / SWA evaluation)
    "fid": "min",  # Fréchet distance (diffusion)
    "tv": None, "disagreement": None,  # diversity of an ensemble's members: neither better nor worse
    "swa_n_averaged": None,
}
_PREFIXES = ("ema_test_", "test_", "train_", "val_")


def _base(name: str) -> str:
    for p in _PREFIXES:
        if name.startswith(p):
            return name[len(p):]
    return name


def metric_direction(name: str) -> Optional[str]:
    """``"max"``, ``"min"`` or ``None`` for a logged metric name such as ``test_acc`` or ``ema_test_loss``."""
    return METRIC_DIRECTIONS.get(_base(name))


def declare_metric(name: str, direction: Optional[str]) -> None:
    """Declare a new base metric's direction (``"max"``, ``"min"`` or ``None``)."""
    if direction not in ("max", "min", None):
        raise ValueError(f"declare_metric: direction must be 'max', 'min' or None, got {direction!r}")
    base = _base(name)
    if base in METRIC_DIRECTIONS and METRIC_DIRECTIONS[base] != direction:
        raise ValueError(f"declare_metric: {base!r} is already declared as {METRIC_DIRECTIONS[base]!r}")
    METRIC_DIRECTIONS[base] = direction
