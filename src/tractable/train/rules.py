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
it with the config's options. Method packages stay independent of the runner: the rule class lives here or in a
module listed in :data:`RULE_MODULES` (imported the first time the registry is read) and calls the method
package's public functions.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch.nn as nn

from tractable.train.hooks import Hook
from tractable.train.registry import ClassRegistry

__all__ = ["LearningRule", "NormalRule", "TrActRule", "register_rule", "build_rule", "list_rules", "rule_class",
           "rules_with_option", "describe_rules", "RULE_MODULES"]

#: modules that register further rules (one per method family), imported the first time the registry is read
RULE_MODULES: List[str] = ["tractable.experiments.subspace.rules", "tractable.experiments.feedback.rules"]
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
    """Instantiate the rule named ``method_cfg.name`` with its validated options."""
    return rule_class(method_cfg.name)(method_cfg.options)


def describe_rules() -> List[str]:
    """One block per rule: its name, the first line of its docstring and its options with types and defaults."""
    from tractable.train.config import _type_name

    lines = []
    for name in list_rules():
        cls = rule_class(name)
        doc = (cls.__doc__ or "").strip().splitlines()
        lines.append(f"{name}: {doc[0] if doc else ''}")
        hints = typing.get_type_hints(cls.Options)
        for f in dataclasses.fields(cls.Options):
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
            lines.append(f"    method.{f.name}: {_type_name(hints[f.name])} = {default!r}")
    return lines


class LearningRule:
    """Base class: plain backpropagation (every method is a no-op)."""

    name = "base"

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


@register_rule("tract")
class TrActRule(LearningRule):
    """TrAct on the model's first layer (``tractable.models.first_layer``) or on ``method.layer``.

    ``method.l`` is λ; ``method.exact=True`` sums the statistics over ranks and accumulation micro-batches and
    preconditions once per step in :meth:`before_optimizer_step`. ``method.kwargs`` go to ``tractable.TrAct``
    (e.g. ``form``). ``method.diag_every=N`` logs the layer's TrAct diagnostics every N steps (0 = off; see
    :mod:`tractable.experiments.tract.diagnostics`).
    """

    @dataclass
    class Options:
        l: float = 0.1  # noqa: E741 - the paper's λ
        exact: bool = False
        layer: Optional[str] = None
        kwargs: Dict[str, Any] = field(default_factory=dict)
        diag_every: int = 100

        def validate(self) -> None:
            if self.l <= 0:
                raise ValueError(f"method.l: TrAct's λ must be > 0 (paper default 0.1), got {self.l}")
            if self.diag_every < 0:
                raise ValueError(f"method.diag_every: steps between diagnostics, >= 0 (0 = off), got {self.diag_every}")

    def __init__(self, options=None):
        super().__init__(options)
        self.path: Optional[str] = None

    def attach(self, model: nn.Module) -> nn.Module:
        import tractable

        if self.cfg.layer is not None:
            try:
                layer = model.get_submodule(self.cfg.layer)
            except AttributeError as e:
                names = [n for n, _ in model.named_modules() if n]
                raise ValueError(f"method.layer: {self.cfg.layer!r} is not a submodule of "
                                 f"{type(model).__name__}; some valid paths: {', '.join(names[:12])}") from e
            self.path = self.cfg.layer
        else:
            from tractable.models import first_layer

            self.path, layer = first_layer(model)
        tractable.TrAct(layer, l=self.cfg.l, exact=self.cfg.exact, **dict(self.cfg.kwargs))
        return model

    def hooks(self) -> List[Hook]:
        from tractable.experiments.tract.diagnostics import TrActDiagnosticsHook

        return [TrActDiagnosticsHook(self.path, self.cfg.diag_every)] if self.cfg.diag_every else []

    def before_optimizer_step(self, model: nn.Module) -> None:
        if self.cfg.exact:
            import tractable

            tractable.precondition_(model)

    def describe(self) -> str:
        exact = ", exact" if self.cfg.exact else ""
        return f"tract(l={self.cfg.l}{exact}, layer={self.path})"
