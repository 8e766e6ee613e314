"""Runner hook: log TrAct's diagnostics (:mod:`tractable.tract.diagnostics`) for the TrAct layer every N steps.

``method.name=tract method.diag_every=N`` (default 100; 0 = off). On every optimizer step whose index is a
multiple of N the hook registers a forward hook on the TrAct layer of the unwrapped model; the first training
forward of that step hands it the layer's input and registers a tensor hook on the layer's output, which keeps
the output gradient G. After the step's backward (``after_backward``) the hook computes, in float64,
``cond``, ``eff_rank``, ``cond_k``, ``cosine``, ``gain`` and ``mean_sq`` of that micro-batch and adds them to the
next step record as ``tract_<name>`` (``trainer.log_scalars``), so they land in ``metrics.jsonl``/``metrics.csv``
and ``tractable plot RUN`` draws them (``plots/tract_diagnostics.png``). With gradient accumulation or DDP the
numbers describe the first micro-batch of the main rank; in exact mode they describe that micro-batch's own
statistics (exact mode preconditions with the statistics of the whole step). Cost: one extra plain weight
gradient of the layer and an n×n float64 eigen-decomposition every N steps; nothing is kept between steps and
the training computation is unchanged.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from tractable.train.hooks import Hook

__all__ = ["TrActDiagnosticsHook", "PREFIX"]

PREFIX = "tract_"


class TrActDiagnosticsHook(Hook):
    """Log ``tract_cond``, ``tract_eff_rank``, ``tract_cond_k``, ``tract_cosine``, ``tract_gain``, ``tract_mean_sq``
    for the layer at ``path`` every ``every`` optimizer steps."""

    def __init__(self, path: str, every: int):
        if every < 1:
            raise ValueError(f"method.diag_every: must be >= 1 to log diagnostics (0 turns them off), got {every}")
        self.path, self.every = path, every
        self._handle = None
        self._x: Optional[torch.Tensor] = None
        self._g: Optional[torch.Tensor] = None

    def before_step(self, trainer) -> None:
        if trainer.step % self.every or not trainer.is_main:
            return
        self._x = self._g = None
        self._handle = trainer.model.get_submodule(self.path).register_forward_hook(self._forward)

    def _forward(self, module, args, output) -> None:
        self._remove()  # the first forward of the step only (the first micro-batch)
        if not (torch.is_grad_enabled() and isinstance(output, torch.Tensor) and output.requires_grad):
            return
        self._x = args[0].detach()
        output.register_hook(self._keep_grad)

    def _keep_grad(self, grad: torch.Tensor) -> None:
        self._g = grad.detach()

    def after_backward(self, trainer) -> None:
        self._remove()
        if self._x is None or self._g is None:
            return
        from tractable.tract.diagnostics import layer_diagnostics

        stats = layer_diagnostics(trainer.model.get_submodule(self.path), self._x, self._g)
        self._x = self._g = None
        trainer.log_scalars({PREFIX + k: v for k, v in stats.items()})

    def _remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def on_end(self, trainer) -> None:
        self._remove()

    def state_dict(self) -> Dict[str, Any]:
        return {}
