"""Runner rule of the TrAct family: ``method.name=tract`` (and the TrAct half of ``tract+<rule>`` stacks).

TrAct (``tractable.TrAct``) is put on the model's first layer (:func:`tractable.models.first_layer`) or on the
submodule ``method.layer`` before the optimizer exists. ``method.l`` is λ; ``method.exact=true`` sums the
statistics over ranks and accumulation micro-batches and preconditions once per step in
``before_optimizer_step``; ``method.kwargs`` go to ``tractable.TrAct`` (e.g. ``form``). The layer's parameters
keep their names, so checkpoints load into the plain model with ``strict=True``.

Stacked (``method.name=tract+fa``, ``tract+subspace``, …; see :class:`tractable.train.rules.StackedRule`) the
options are written ``method.tract.<option>`` and TrAct preconditions the weight gradient the other rule
produces for the first layer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch.nn as nn

from tractable.train.hooks import Hook
from tractable.train.rules import LearningRule, register_rule

__all__ = ["TrActRule"]


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
