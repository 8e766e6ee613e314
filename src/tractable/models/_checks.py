"""Argument checks shared by the model builders: every bad value becomes a ``ValueError`` naming the model,
the argument and what is accepted (no architecture here)."""
from __future__ import annotations

import numbers
from typing import Iterable, Sequence, Tuple


def positive_int(model: str, name: str, value, minimum: int = 1) -> int:
    """``value`` as an int ≥ ``minimum`` (bools are rejected)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise ValueError(f"{model}: {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def probability(model: str, name: str, value) -> float:
    """``value`` as a float in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{model}: {name} must be a float in [0, 1), got {value!r}")
    return float(value)


def choice(model: str, name: str, value, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{model}: {name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def int_tuple(model: str, name: str, value, minimum: int = 1, allow_empty: bool = False) -> Tuple[int, ...]:
    """A list/tuple of ints ≥ ``minimum`` as a tuple."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{model}: {name} must be a list or tuple of ints >= {minimum}, got {value!r}")
    if not value and not allow_empty:
        raise ValueError(f"{model}: {name} must not be empty")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or int(v) < minimum:
            raise ValueError(f"{model}: {name} must be a list or tuple of ints >= {minimum}, got {value!r}")
        out.append(int(v))
    return tuple(out)
