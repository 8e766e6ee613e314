"""Learning rules: how a method plugs into the runner, and the registry behind ``method.name``.

Each rule declares its own typed options as a nested ``Options`` dataclass (fields annotated like the other
config sections: bool, int, float, str, ``Literal[...]``, ``Optional``, lists, mappings), optionally with a
``validate()`` method that raises ``ValueError("method.<key>: ...")``. The ``method`` section of a config holds
``name`` plus exactly those options, flat (``method.name=tract method.l=0.05``): an unknown key, a wrong type or a
value outside an enumeration is a :class:`~tractable.train.config.ConfigError` naming the key and the rule's
valid keys, and the saved ``config.yaml`` records every option. ``tractable list rules`` prints each rule with its
options (:func:`describe_rules`).

A :class:`LearningRule` is built with the validated ``Options`` instance (``self.opts``) and is given the
freshly created model *before* the optimizer exists, so it may swap layers or re-parametrise the model
(TrAct, feedback alignment, subspaces). The loop then uses:

* ``attach(model) -> model`` — once, on the plain model (before ``.to(device)``, DDP and compile);
* ``param_groups(model)`` — optimizer parameter groups, or ``None`` for ``model.parameters()``;
* ``ddp_kwargs()`` — extra ``DistributedDataParallel`` arguments (e.g. ``broadcast_buffers=False``);
* ``hooks()`` — :class:`~tractable.train.hooks.Hook` objects the loop runs with the user's hooks;
* ``before_optimizer_step(model)`` — after the last backward of a step (and after AMP unscaling), before
  clipping and ``optimizer.step`` on every rank (exact TrAct's ``precondition_``);
* ``state_dict``/``load_state_dict`` — rule state saved in checkpoints (tensors and plain values only).

Register a new rule with ``@register_rule("name")`` on a subclass; ``build_rule(method_cfg)`` instantiates
it with the config's options. Method packages stay independent of the runner: each family's rule classes live in
``tractable.experiments.<family>.rules`` (TrAct's in ``experiments/tract/rules.py``), listed in
:data:`RULE_MODULES` and imported the first time the registry is read; they call the method package's public
functions. Only ``normal`` (plain backpropagation) and the stacking machinery live here.

Stacks: ``method.name=tract+<rule>`` builds a :class:`StackedRule` of TrAct and the other rule, each with its
own options (``method.tract.l=0.1 method.fa.granularity=layer``). :func:`check_stack` says which pairs compose
and why the others do not; a rule class states its own answer in ``stack_with_tract`` and, with
``tract_after``, whether TrAct goes on the model before or after it converts the model.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import torch.nn as nn

from tractable.train.hooks import Hook
from tractable.train.registry import ClassRegistry
from tractable.train.schema import type_name

__all__ = ["LearningRule", "NormalRule", "StackedRule", "register_rule", "build_rule", "list_rules", "rule_class",
           "rules_with_option", "describe_rules", "check_stack", "RULE_MODULES", "STACK_SEPARATOR"]

#: modules that register further rules (one per method family), imported the first time the registry is read
RULE_MODULES: List[str] = ["tractable.experiments.tract.rules", "tractable.experiments.subspace.rules",
                           "tractable.experiments.feedback.rules"]
#: ``method.name=tract+fa``: TrAct stacked with one other rule
STACK_SEPARATOR = "+"
_RULES = ClassRegistry("learning rule", "method.name", lambda: LearningRule, modules=RULE_MODULES)


def register_rule(name: str) -> Callable[[type], type]:
    """Class decorator: make a :class:`LearningRule` subclass available as ``method.name=<name>``."""
    return _RULES.register(name)


def list_rules() -> List[str]:
    """Names accepted by ``method.name``."""
    return _RULES.names()


def rule_class(name: str) -> type:
    """The :class:`LearningRule` subclass registered as ``name`` (ValueError listing the accepted names)."""
    return _RULES.get(name)


def rules_with_option(key: str) -> List[str]:
    """Names of the rules that have an option called ``key`` (for "did you mean" hints)."""
    return [n for n in list_rules() if key in {f.name for f in dataclasses.fields(rule_class(n).Options)}]


def build_rule(method_cfg) -> "LearningRule":
    """Instantiate the rule(s) named ``method_cfg.name`` with their validated options (a stack: a
    :class:`StackedRule`)."""
    rules = [rule_class(name)(opts) for name, opts in method_cfg.rules.items()]
    return rules[0] if len(rules) == 1 else StackedRule(rules)


def check_stack(names: List[str]) -> Optional[str]:
    """``None`` if the rules ``names`` (from ``method.name=a+b``) compose, else the reason they do not.

    A stack is TrAct followed by one other rule: TrAct changes only the weight gradient of one layer (the
    first), ``Gᵀ X ↦ Gᵀ X (XᵀX/b + λI)⁻¹``, whatever produced G — backpropagation, a feedback-alignment signal, the
    shared gradient of a subspace's points — so it composes with any rule whose class does not say otherwise
    (``LearningRule.stack_with_tract``). Two rules that both re-define the gradients or the parameters of the
    whole model (fa+subspace, dfa+swa, …) are not stacked.
    """
    if len(names) == 1:
        return None
    if len(set(names)) != len(names):
        return f"a rule appears twice ({STACK_SEPARATOR.join(names)})"
    if len(names) > 2:
        return f"a stack is TrAct and one other rule (tract{STACK_SEPARATOR}<rule>), got {len(names)} rules"
    if names[0] != "tract":
        if "tract" in names:
            other = [n for n in names if n != "tract"][0]
            return f"write TrAct first: method.name=tract{STACK_SEPARATOR}{other}"
        return (f"only TrAct stacks with another rule (it changes one layer's weight gradient and nothing else); "
                f"{names[0]!r} and {names[1]!r} each define the whole model's training")
    reason = rule_class(names[1]).stack_with_tract
    return None if reason is None else reason


def describe_rules() -> List[str]:
    """One block per rule: its name, the first line of its docstring and its options with types and defaults;
    then the stacks (``tract+<rule>``) that compose."""
    lines = []
    for name in list_rules():
        cls = rule_class(name)
        doc = (cls.__doc__ or "").strip().splitlines()
        lines.append(f"{name}: {doc[0] if doc else ''}")
        hints = typing.get_type_hints(cls.Options)
        for f in dataclasses.fields(cls.Options):
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
            lines.append(f"    method.{f.name}: {type_name(hints[f.name])} = {default!r}")
    stacks = [f"tract{STACK_SEPARATOR}{n}" for n in list_rules() if n != "tract" and check_stack(["tract", n]) is None]
    lines.append(f"stacks (options as method.<rule>.<option>): {', '.join(stacks)}")
    return lines


class LearningRule:
    """Base class: plain backpropagation (every method is a no-op)."""

    name = "base"
    #: with TrAct in a stack (``method.name=tract+<rule>``): ``None`` when the two compose, else the reason
    stack_with_tract: Optional[str] = None
    #: in a stack, attach TrAct to the model *after* this rule (True) or before it (False); see :class:`StackedRule`
    tract_after: bool = False

    @dataclass
    class Options:
        """No options."""

    def __init__(self, options=None):
        self.opts = self.Options() if options is None else options
        self.cfg = self.opts  # the name earlier rules used

    def attach(self, model: nn.Module) -> nn.Module:
        return model

    def param_groups(self, model: nn.Module) -> Optional[List[Dict[str, Any]]]:
        return None

    def ddp_kwargs(self) -> Dict[str, Any]:
        return {}

    def hooks(self) -> List[Hook]:
        return []

    def before_optimizer_step(self, model: nn.Module) -> None:
        pass

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass

    def describe(self) -> str:
        return self.name


@register_rule("normal")
class NormalRule(LearningRule):
    """Plain backpropagation."""

    stack_with_tract = "'normal' is plain backpropagation; TrAct on backpropagation is method.name=tract"


class StackedRule(LearningRule):
    """TrAct stacked with another rule (``method.name=tract+<rule>``), built by :func:`build_rule`.

    Order of application: the other rule re-parametrises or converts the model and TrAct is put on the first
    layer of the result (``tract_after=True``: a subspace's first layer, whose weight is the mixed point), or
    TrAct is put on the plain first layer and the other rule converts the model around it (``tract_after=False``:
    feedback alignment swaps the *input* gradients of the layers and keeps TrAct's weight gradient). Either way
    the first layer's weight gradient is TrAct applied to the gradient signal the other rule produces, and every
    other parameter gets the other rule's update.

    The runner interface is the union of the two: hooks in order (TrAct's, then the other's), parameter groups
    and DDP arguments from whichever rule has them, ``before_optimizer_step`` of both, and a checkpoint state
    ``{rule name: state}``.
    """

    name = "stack"

    def __init__(self, rules: List[LearningRule]):
        super().__init__(None)
        if len(rules) != 2:
            raise ValueError(f"StackedRule: expected TrAct and one other rule, got {len(rules)} rule(s)")
        self.rules = list(rules)
        self.name = STACK_SEPARATOR.join(r.name for r in self.rules)
        self._model_fn = None

    @property
    def model_fn(self):
        return self._model_fn

    @model_fn.setter
    def model_fn(self, fn) -> None:  # the runner's model factory (subspace endpoints), handed to every rule
        self._model_fn = fn
        for r in self.rules:
            r.model_fn = fn

    def attach(self, model: nn.Module) -> nn.Module:
        tract, other = self.rules
        order = (other, tract) if other.tract_after else (tract, other)
        for rule in order:
            out = rule.attach(model)
            model = model if out is None else out
        return model

    def param_groups(self, model: nn.Module) -> Optional[List[Dict[str, Any]]]:
        groups = [g for g in (r.param_groups(model) for r in self.rules) if g is not None]
        if len(groups) > 1:
            raise ValueError(f"{self.name}: both rules define optimizer parameter groups")
        return groups[0] if groups else None

    def ddp_kwargs(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for r in self.rules:
            out.update(r.ddp_kwargs())
        return out

    def hooks(self) -> List[Hook]:
        return [h for r in self.rules for h in r.hooks()]

    def before_optimizer_step(self, model: nn.Module) -> None:
        for r in self.rules:
            r.before_optimizer_step(model)

    def state_dict(self) -> Dict[str, Any]:
        return {r.name: r.state_dict() for r in self.rules}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for r in self.rules:
            r.load_state_dict(state.get(r.name, {}))

    def describe(self) -> str:
        return STACK_SEPARATOR.join(r.describe() for r in self.rules)
