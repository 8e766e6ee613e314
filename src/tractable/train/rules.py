"""Learning rules: how a method plugs into the runner, and the registry behind ``method.name``.

A :class:`LearningRule` is built from the run's :class:`~tractable.train.config.MethodConfig` and is given the
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
it with the config. Method packages stay independent of the runner: the rule class lives here (or in
``tractable.experiments``) and calls the method package's public functions.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import torch.nn as nn

from tractable.train.hooks import Hook
from tractable.train.registry import ClassRegistry

__all__ = ["LearningRule", "NormalRule", "TrActRule", "register_rule", "build_rule", "list_rules"]

_RULES = ClassRegistry("learning rule", "method.name", lambda: LearningRule)


def register_rule(name: str) -> Callable[[type], type]:
    """Class decorator: make a :class:`LearningRule` subclass available as ``method.name=<name>``."""
    return _RULES.register(name)


def list_rules() -> List[str]:
    """Names accepted by ``method.name``."""
    return _RULES.names()


def build_rule(method_cfg) -> "LearningRule":
    """Instantiate the rule named ``method_cfg.name`` with the config."""
    return _RULES.get(method_cfg.name)(method_cfg)


class LearningRule:
    """Base class: plain backpropagation (every method is a no-op)."""

    name = "base"

    def __init__(self, cfg=None):
        self.cfg = cfg

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
    (e.g. ``form``).
    """

    def __init__(self, cfg):
        super().__init__(cfg)
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

    def before_optimizer_step(self, model: nn.Module) -> None:
        if self.cfg.exact:
            import tractable

            tractable.precondition_(model)

    def describe(self) -> str:
        exact = ", exact" if self.cfg.exact else ""
        return f"tract(l={self.cfg.l}{exact}, layer={self.path})"
