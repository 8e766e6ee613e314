"""Options of the credit-assignment methods, validated in one place.

``resolve_options(method, **options)`` returns a frozen :class:`FeedbackOptions`. Every option defaults to
``None`` = "the method's default"; ``compat="seed"`` changes those defaults to the method choices of the FA
evaluation protocol's reference code (never its bugs): block granularity without the identity path, per-sample
RMS normalisation, one matrix shared by the embed and the first block, N(0, 1/C) and N(0, 1/d) draws, and the
channel-broadcast conv feedback. An option given explicitly always wins over the compat default.

=========================  ===================================================  =============  ===================
option                     values                                               default        ``compat="seed"``
=========================  ===================================================  =============  ===================
``granularity`` (FA)       ``layer``, ``block``                                 ``layer``      ``block``
``skip`` (block FA)        True, False (False drops the identity: *not* FA)     True           False
``placement`` (DFA)        ``pre_ln``, ``post_ln``                              ``pre_ln``     ``pre_ln``
``normalize``              ``none``, ``rms_per_sample``, ``dim``                ``none``       ``rms_per_sample``
``share_b0`` (DFA)         False, True                                          False          True
``feedback_init``          layer: ``kaiming_uniform``, ``normal``; block:       layer          ``normal``
                           ``normal``, ``match_branch``; DFA: ``readout``,     ``kaiming_``
                           ``normal``, ``uniform_dim``                          ``uniform``;
                                                                                block ``match_
                                                                                branch``; DFA
                                                                                ``readout``
``feedback_scale``         float > 0                                            1.0; DFA       1.0
                                                                                ``readout``:
                                                                                0.1
``train_head`` (DFA)       ``bp``, ``dfa``                                      ``bp``         ``bp``
``token_feedback`` (DFA)   ``broadcast``, ``per_token``, ``per_token_error``    ``broadcast``  ``broadcast``
``conv_feedback`` (DFA)    ``full``, ``channel_broadcast``                      ``full``       ``channel_broadcast``
``exclude`` (layer FA)     qualified module names left to exact BP              ()             ()
``allow_functional``       parameter names read functionally, acknowledged      ()             ()
``points`` (DFA)           module names whose outputs are the feedback points   ()             ()
                           (default: the model's ``dfa_points``, a chain's
                           hidden activations, or the credit protocol's points)
=========================  ===================================================  =============  ===================

DFA's scale rule (``feedback_init="readout"``, the default): B_k ~ N(0, s²/D_k) with D_k the number of values
a sample's signal has at point k (d for vectors and broadcast tokens, C_k·H·W for full feature maps, T·d per
token) and s = ``feedback_scale``, **0.1 by default for DFA**. So the signal a_k = e B_k has ‖a_k‖ ≈ s·‖e‖ at
every point whatever its size. Why: under Adam the global scale of B hardly matters, but under SGD it *is* the
step size of every hidden layer, and all of them push the output the same way at once, while backpropagation's
own signal shrinks with depth (LeNet at init: ‖g_k‖/‖e‖ = 0.57, 0.24, 0.10, 0.05 from the last hidden layer
down). Measured on LeNet / Fashion-MNIST with the FA-benchmark recipe (SGD, momentum 0.9, lr 0.01, weight decay
1e-3, batch 64): s = 1 (B drawn like a Linear readout of the point) and s = 0.3 make the logits diverge within
two epochs; s = 0.1 trains stably. The reference code's N(0, 1/C) (``normal``) is √(D_k/C)/s times larger still
(×50 for 256 units and 10 classes) and diverges too.

``match_branch`` (block FA, the default) scales each B_l so that ‖B_l‖_F matches the per-position Frobenius
norm of the block's Jacobian at initialisation (a Hutchinson estimate, times ``feedback_scale``): the size of B
relative to the identity path is what decides how much of the exact signal survives. Measured on the audit's
ResMLP at initialisation, the cosine of block FA's signal to the true gradient is 0.26–0.72 with N(0, 1/d) and
0.975–0.994 with ``match_branch``.
"""
from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

__all__ = ["FeedbackOptions", "resolve_options", "METHODS", "LAYER_METHODS", "OPTION_VALUES"]

#: every method name ``convert`` accepts
METHODS = ("fa", "dfa", "usf", "frsf", "brsf", "kp")
#: methods that act on Linear/Conv layers (the sign-symmetry family and Kolen-Pollack exist only per layer)
LAYER_METHODS = ("fa", "usf", "frsf", "brsf", "kp")

OPTION_VALUES: Dict[str, Tuple[Any, ...]] = {
    "granularity": ("layer", "block"),
    "placement": ("pre_ln", "post_ln"),
    "normalize": ("none", "rms_per_sample", "dim"),
    "train_head": ("bp", "dfa"),
    "token_feedback": ("broadcast", "per_token", "per_token_error"),
    "conv_feedback": ("full", "channel_broadcast"),
    "compat": (None, "seed"),
}
_INITS = {"layer": ("kaiming_uniform", "normal"), "block": ("normal", "match_branch"),
          "dfa": ("readout", "normal", "uniform_dim")}
_BOOLS = ("skip", "share_b0")


@dataclass(frozen=True)
class FeedbackOptions:
    """The resolved options of one credit-assignment method (no ``None`` left except ``compat``)."""

    method: str
    seed: int = 0
    granularity: str = "layer"
    skip: bool = True
    placement: str = "pre_ln"
    normalize: str = "none"
    share_b0: bool = False
    feedback_init: str = "kaiming_uniform"
    feedback_scale: float = 1.0
    train_head: str = "bp"
    token_feedback: str = "broadcast"
    conv_feedback: str = "full"
    exclude: Tuple[str, ...] = ()
    allow_functional: Tuple[str, ...] = ()
    points: Tuple[str, ...] = ()
    compat: Optional[str] = None

    @property
    def kind(self) -> str:
        """``layer`` (layer FA / sign symmetry / KP), ``block`` (block FA) or ``dfa``."""
        if self.method == "dfa":
            return "dfa"
        return "block" if self.granularity == "block" else "layer"

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["exclude"], d["allow_functional"] = list(self.exclude), list(self.allow_functional)
        d["points"] = list(self.points)
        return d


def _names(value, option: str) -> Tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = (value,)
    try:
        out = tuple(value)
    except TypeError:
        out = None
    if out is None or not all(isinstance(v, str) for v in out):
        raise ValueError(f"feedback: {option} must be a list of qualified names (strings), got {value!r}")
    return out


def resolve_options(method: str, seed: int = 0, **options: Any) -> FeedbackOptions:
    """Validate ``options`` for ``method`` and fill the method's (or ``compat="seed"``'s) defaults.

    Raises ``ValueError`` naming the option and the accepted values for an unknown option, a bad value, or an
    option that does not apply to the method (e.g. ``placement`` for FA) when it is given a non-default value.
    """
    if method not in METHODS:
        raise ValueError(f"feedback: method must be one of {', '.join(map(repr, METHODS))}; got {method!r} "
                         "(backpropagation is the plain model)")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"feedback: seed must be a non-negative int, got {seed!r}")
    known = {f.name for f in dataclasses.fields(FeedbackOptions)} - {"method", "seed"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"feedback: unknown option(s) {', '.join(map(repr, unknown))}; "
                         f"valid options: {', '.join(sorted(known))}")
    compat = options.get("compat")
    if compat not in OPTION_VALUES["compat"]:
        raise ValueError(f"feedback: compat must be None or 'seed', got {compat!r}")
    given = {k: v for k, v in options.items() if v is not None}
    for key, allowed in OPTION_VALUES.items():
        if key in given and given[key] not in allowed:
            raise ValueError(f"feedback: {key} must be one of {', '.join(map(repr, allowed))}; got {given[key]!r}")
    for key in _BOOLS:
        if key in given and not isinstance(given[key], bool):
            raise ValueError(f"feedback: {key} must be True or False, got {given[key]!r}")
    if "feedback_scale" in given:
        s = given["feedback_scale"]
        if isinstance(s, bool) or not isinstance(s, numbers.Real) or not s > 0 or s != s or s == float("inf"):
            raise ValueError(f"feedback: feedback_scale must be a finite number > 0, got {s!r}")
        given["feedback_scale"] = float(s)
    seed_mode = compat == "seed"
    # the granularity decides which options apply
    if method == "dfa":
        kind = "dfa"
    else:
        gran = given.get("granularity", "block" if seed_mode and method == "fa" else "layer")
        if gran == "block" and method != "fa":
            raise ValueError(f"feedback: granularity='block' exists for method='fa' only (the sign-symmetry "
                             f"variants and Kolen-Pollack act on layers); got method={method!r}")
        given["granularity"] = gran
        kind = gran
    applies = {
        "layer": {"granularity", "feedback_init", "feedback_scale", "exclude", "allow_functional", "compat"},
        "block": {"granularity", "skip", "normalize", "feedback_init", "feedback_scale", "compat"},
        "dfa": {"placement", "normalize", "share_b0", "feedback_init", "feedback_scale", "train_head",
                "token_feedback", "conv_feedback", "points", "compat"},
    }[kind]
    stray = sorted(k for k in given if k not in applies)
    if stray:
        what = {"layer": "layer-level FA/sign symmetry/KP", "block": "block-level FA", "dfa": "DFA"}[kind]
        raise ValueError(f"feedback: option(s) {', '.join(map(repr, stray))} do not apply to {what} "
                         f"(method={method!r}); options that apply: {', '.join(sorted(applies))}")
    init = given.get("feedback_init", {"layer": "kaiming_uniform", "block": "normal" if seed_mode else "match_branch",
                                       "dfa": "normal" if seed_mode else "readout"}[kind])
    if init not in _INITS[kind]:
        raise ValueError(f"feedback: feedback_init for {kind} feedback must be one of "
                         f"{', '.join(map(repr, _INITS[kind]))}; got {init!r}")
    defaults = dict(skip=not seed_mode, normalize="rms_per_sample" if seed_mode else "none", share_b0=seed_mode,
                    conv_feedback="channel_broadcast" if seed_mode else "full")
    if "feedback_scale" not in given and kind == "dfa" and init == "readout":
        given["feedback_scale"] = 0.1  # the scale rule above
    merged = {**defaults, **given, "feedback_init": init}
    merged["exclude"] = _names(given.get("exclude"), "exclude")
    merged["allow_functional"] = _names(given.get("allow_functional"), "allow_functional")
    merged["points"] = _names(given.get("points"), "points")
    return FeedbackOptions(method=method, seed=int(seed), **merged)
