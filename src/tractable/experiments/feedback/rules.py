"""Runner rules of the credit-assignment family: ``method.name`` = ``fa``, ``dfa``, ``usf``, ``frsf``, ``brsf``,
``kp`` (backpropagation is ``normal``).

Each rule converts the freshly built model with :func:`tractable.feedback.convert` before the optimizer exists
(one optimizer, one backward), with its own typed options — ``method.placement=post_ln`` or a typo gets the
same ConfigError as any other key. Options left at ``None`` take the method's default, or the reference code's
choice under ``method.compat=seed``; ``describe()`` (the run summary's ``method``) lists the resolved values.

* ``method.seed`` — the feedback matrices' seed; ``None`` = the run's ``train.seed``. Matrices are drawn on the
  CPU from (seed, layer/point name), so every rank holds the same ones: at start-up the rule all-reduces a
  float64 checksum (MIN and MAX) and stops with a clear error if they differ. They are buffers of the model,
  so checkpoints carry them and a resumed run continues with the same ones.
* ``method.align_every`` — every N steps (default 100; 0: off) log, per layer, the angle between the method's
  weight gradient and BP's on the same batch, angle(W, B) and ‖B‖/‖W‖ (:mod:`.alignment`; ``tractable plot``
  draws them).
* ``method.find_unused_parameters`` — passed to ``DistributedDataParallel``; the methods work with either value
  (DFA's hub reaches every parameter through one autograd node, no nested backward). When the model's only
  buffers are feedback matrices, DDP's per-forward buffer broadcast is switched off (``broadcast_buffers=False``):
  they are identical on every rank by construction and by the start-up check, and re-sending them would double
  layer FA's communication. Models with other buffers (BatchNorm statistics) keep DDP's default.
* brSF redraws its sign-magnitudes by itself once per optimizer step from (seed, name, step counter): equal on
  all ranks and after a resume (the counter is a buffer in the checkpoint).
* Feedback matrices whose size depends on the input (DFA on full feature maps) are drawn at the first training
  forward; the rank check is repeated after the first step so that they are covered too.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional

import torch
import torch.nn as nn

from tractable.train.hooks import Hook
from tractable.train.rules import LearningRule, register_rule

__all__ = ["FARule", "DFARule", "USFRule", "FRSFRule", "BRSFRule", "KPRule"]

_RUNNER_KEYS = ("seed", "find_unused_parameters", "align_every", "decay")


def _validate(method: str, opts) -> None:
    from tractable.feedback import resolve_options

    try:
        resolve_options(method, 0, **_method_options(opts))
    except ValueError as e:
        raise ValueError(str(e).replace("feedback: ", "method.", 1)) from None
    every = getattr(opts, "align_every", 0)
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise ValueError(f"method.align_every: must be an int >= 0 (0: off), got {every!r}")
    if opts.seed is not None and (isinstance(opts.seed, bool) or opts.seed < 0):
        raise ValueError(f"method.seed: must be a non-negative int or null (the run's train.seed), got {opts.seed!r}")


def _method_options(opts) -> Dict[str, Any]:
    out = {}
    for f in dataclasses.fields(opts):
        v = getattr(opts, f.name)
        if f.name in _RUNNER_KEYS or v is None or (isinstance(v, list) and not v):
            continue
        out[f.name] = v
    return out


class _FirstStepCheck(Hook):
    """Repeat the rank check after the first step (matrices drawn at the first forward are then present)."""

    def __init__(self):
        self.done = False

    def after_step(self, trainer) -> None:
        if not self.done:
            from tractable.feedback import check_same_on_ranks

            check_same_on_ranks(trainer.model)
            self.done = True


class _FeedbackRule(LearningRule):
    method = "fa"

    def __init__(self, options=None):
        super().__init__(options)
        self.resolved = None
        self.checksum: Optional[float] = None
        self.only_feedback_buffers = False

    def attach(self, model: nn.Module) -> nn.Module:
        import tractable.feedback as fb

        # the runner seeds the global RNG with train.seed right before building the model
        seed = self.opts.seed if self.opts.seed is not None else torch.initial_seed() & ((1 << 63) - 1)
        fb.convert(model, self.method, seed=int(seed), **_method_options(self.opts))
        self.resolved = model.feedback_options
        self.checksum = fb.check_same_on_ranks(model)  # before DDP's own broadcast could hide a difference
        from tractable.feedback.banks import FeedbackModule

        owners = [m for m in model.modules() if isinstance(m, (fb.FALayer, FeedbackModule))]
        own = {id(b) for m in owners for b in m.buffers(recurse=False)}
        self.only_feedback_buffers = all(id(b) in own for b in model.buffers())
        return model

    def ddp_kwargs(self) -> Dict[str, Any]:
        kw: Dict[str, Any] = {"find_unused_parameters": bool(self.opts.find_unused_parameters)}
        if self.only_feedback_buffers:
            # the only buffers are the feedback matrices: identical on every rank (checked at start-up, brSF
            # redrawn from the step), so DDP need not re-send them before every forward
            kw["broadcast_buffers"] = False
        return kw

    def hooks(self) -> List[Hook]:
        from tractable.experiments.feedback.alignment import AlignmentHook

        hooks: List[Hook] = [_FirstStepCheck()]
        if self.opts.align_every:
            hooks.append(AlignmentHook(int(self.opts.align_every)))
        return hooks

    def describe(self) -> str:
        o = self.resolved
        if o is None:
            return self.method
        if o.kind == "layer":
            parts = [f"layer, init={o.feedback_init}"]
            if o.exclude:
                parts.append(f"exclude={','.join(o.exclude)}")
        elif o.kind == "block":
            parts = [f"block, skip={o.skip}, normalize={o.normalize}"]
        else:
            parts = [f"placement={o.placement}, normalize={o.normalize}, share_b0={o.share_b0}",
                     f"train_head={o.train_head}"]
            if o.points:
                parts.append(f"points={','.join(o.points)}")
        if o.feedback_scale != 1.0:
            parts.append(f"scale={o.feedback_scale:g}")
        if o.compat:
            parts.append(f"compat={o.compat}")
        parts.append(f"seed={o.seed}")
        return f"{self.method}({', '.join(parts)})"


@register_rule("fa")
class FARule(_FeedbackRule):
    """Feedback alignment (Lillicrap et al. 2016): random fixed B in place of Wᵀ, per layer or per residual block."""

    method = "fa"

    @dataclass
    class Options:
        granularity: Optional[Literal["layer", "block"]] = None  # None: layer (compat=seed: block)
        skip: Optional[bool] = None  # block FA: keep the exact identity path (None: True; compat=seed: False)
        normalize: Optional[Literal["none", "rms_per_sample", "dim"]] = None  # block FA
        feedback_init: Optional[Literal["kaiming_uniform", "normal", "match_branch"]] = None  # layer: kaiming_uniform
        feedback_scale: float = 1.0
        exclude: List[str] = field(default_factory=list)  # layer FA: modules left on exact BP (e.g. head)
        allow_functional: List[str] = field(default_factory=list)
        compat: Optional[Literal["seed"]] = None
        seed: Optional[int] = None
        find_unused_parameters: bool = False
        align_every: int = 100  # log gradient/weight alignment with BP every N steps (0: off)

        def validate(self) -> None:
            _validate("fa", self)


def _layer_options(doc: str):
    @dataclass
    class Options:
        feedback_init: Optional[Literal["kaiming_uniform", "normal"]] = None
        feedback_scale: float = 1.0
        exclude: List[str] = field(default_factory=list)
        allow_functional: List[str] = field(default_factory=list)
        seed: Optional[int] = None
        find_unused_parameters: bool = False
        align_every: int = 100  # log gradient/weight alignment with BP every N steps (0: off)

    Options.__doc__ = doc
    return Options


@register_rule("usf")
class USFRule(_FeedbackRule):
    """Uniform sign-concordant feedback (Liao et al. 2016): B = RMS(W)·sign(W) per layer, from the current W."""

    method = "usf"

    class Options(_layer_options("uSF options")):
        def validate(self) -> None:
            _validate("usf", self)


@register_rule("frsf")
class FRSFRule(_FeedbackRule):
    """Fixed random-magnitude sign-concordant feedback: B = |R| ⊙ sign(W), R drawn once."""

    method = "frsf"

    class Options(_layer_options("frSF options")):
        def validate(self) -> None:
            _validate("frsf", self)


@register_rule("brsf")
class BRSFRule(_FeedbackRule):
    """Batchwise random-magnitude sign-concordant feedback: B = |R_t| ⊙ sign(W), R_t redrawn every step."""

    method = "brsf"

    class Options(_layer_options("brSF options")):
        def validate(self) -> None:
            _validate("brsf", self)


class _KPDecay(Hook):
    """Kolen-Pollack: make sure W and B of every KP layer decay (see :class:`KPRule`)."""

    def __init__(self, decay: Optional[float]):
        self.decay = decay

    def on_start(self, trainer) -> None:
        import warnings

        from tractable.feedback import check_kp_decay

        group = next((g for g in trainer.optimizer.param_groups if g.get("kp_group")), None)
        if group is not None and self.decay is None and float(group.get("weight_decay", 0.0)) == 0.0:
            group["weight_decay"] = KP_DEFAULT_DECAY
            if trainer.is_main:
                warnings.warn(f"kp: optim.weight_decay is 0, which would leave W − B constant (no alignment); the "
                              f"KP layers' W and B use weight decay {KP_DEFAULT_DECAY:g} (method.decay sets it)",
                              stacklevel=2)
        check_kp_decay(trainer.optimizer, trainer.model, warn=trainer.is_main)


#: weight decay of the KP layers' W and B when neither method.decay nor optim.weight_decay gives one
KP_DEFAULT_DECAY = 1e-3


@register_rule("kp")
class KPRule(_FeedbackRule):
    """Kolen-Pollack (Akrout et al. 2019): B learned with W's gradient and weight decay, so W − B decays.

    The KP layers' W and B form one optimizer group whose weight decay is ``method.decay``; ``None`` (default)
    takes ``optim.weight_decay``, or 1e-3 when that is 0 (with a warning): without decay W − B never changes."""

    method = "kp"

    @dataclass
    class Options(_layer_options("Kolen-Pollack options")):
        decay: Optional[float] = None  # weight decay of the KP layers' W and B (None: optim's, or 1e-3 if 0)

        def validate(self) -> None:
            _validate("kp", self)
            if self.decay is not None and (isinstance(self.decay, bool) or not self.decay >= 0):
                raise ValueError(f"method.decay: must be a number >= 0 or null, got {self.decay!r}")

    def param_groups(self, model: nn.Module):
        import tractable.feedback as fb

        kp = [p for _, m in fb.fa_layers(model) if m.fa_method == "kp" for p in (m.weight, m.feedback)]
        ids = {id(p) for p in kp}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        group = {"params": kp, "kp_group": True}
        if self.opts.decay is not None:
            group["weight_decay"] = float(self.opts.decay)
        return ([{"params": rest}] if rest else []) + [group]

    def hooks(self) -> List[Hook]:
        return super().hooks() + [_KPDecay(self.opts.decay)]


@register_rule("dfa")
class DFARule(_FeedbackRule):
    """Direct feedback alignment (Nøkland 2016): the true ∂L/∂logits sent to every feedback point through B_k."""

    method = "dfa"

    @dataclass
    class Options:
        placement: Optional[Literal["pre_ln", "post_ln"]] = None  # None: pre_ln
        normalize: Optional[Literal["none", "rms_per_sample", "dim"]] = None  # None: none (compat=seed: rms)
        share_b0: Optional[bool] = None  # None: False (compat=seed: True)
        feedback_init: Optional[Literal["readout", "normal", "uniform_dim"]] = None  # None: readout N(0, s²/D_k)
        feedback_scale: Optional[float] = None  # None: 0.1 for readout (compat=seed: 1.0)
        points: List[str] = field(default_factory=list)  # module names whose outputs are the feedback points
        train_head: Optional[Literal["bp", "dfa"]] = None  # None: bp
        token_feedback: Optional[Literal["broadcast", "per_token", "per_token_error"]] = None
        conv_feedback: Optional[Literal["full", "channel_broadcast"]] = None  # None: full (compat=seed: channel)
        compat: Optional[Literal["seed"]] = None
        seed: Optional[int] = None
        find_unused_parameters: bool = False
        align_every: int = 100  # log gradient/weight alignment with BP every N steps (0: off)

        def validate(self) -> None:
            _validate("dfa", self)
