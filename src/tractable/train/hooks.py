"""Hooks: the per-step and per-eval extension points of the training loop.

A :class:`Hook` subclass overrides any of the no-op methods below; the loop calls them in this order::

    on_start(trainer)                                  once, after set-up and before a resume is restored
    per optimizer step:
        before_step(trainer)                           e.g. sample a subspace point shared by the step
        per micro-batch (grad_accum of them):
            before_forward(trainer, batch)             e.g. one draw per micro-batch
            extra_loss(trainer, batch) -> Tensor|None  regulariser added to the micro-batch's task loss
        after_backward(trainer)                        the step's gradients are in .grad (unscaled under fp16)
        [rule.before_optimizer_step, clip, optimizer.step, scheduler.step, EMA update]
        after_step(trainer)                            trainer.step already counts this step
    per evaluation:
        before_eval(trainer)                           e.g. BatchNorm re-estimation
        after_eval(trainer, metrics)                   metrics: the dict about to be logged (may be edited)
    on_end(trainer)

``extra_loss`` runs inside autocast after the task's forward of the same micro-batch. The returned scalar is
added to the task loss *before* the micro-batch/rank weighting, so a regulariser that does not depend on the
batch contributes exactly once per step (also summed over DDP ranks). Hooks that keep state across steps
implement ``state_dict`` / ``load_state_dict`` (tensors and plain Python values only, so checkpoints stay
``weights_only``-loadable); a resumed run must be given the same hooks. Randomness should come from
``trainer.generator(salt)``, derived from the run seed and the step, hence identical on every rank and after a
resume. ``on_start`` runs before a checkpoint is restored, so whatever it does to the weights or the global RNG
is replaced by the saved state.

Hooks can add scalars to the current step's log record with ``trainer.log_scalars({...})``.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch

__all__ = ["Hook"]


class Hook:
    """Base class with no-op methods; see the module docstring for when each runs."""

    def on_start(self, trainer) -> None:
        pass

    def before_step(self, trainer) -> None:
        pass

    def before_forward(self, trainer, batch) -> None:
        pass

    def extra_loss(self, trainer, batch) -> Optional[torch.Tensor]:
        return None

    def after_backward(self, trainer) -> None:
        pass

    def after_step(self, trainer) -> None:
        pass

    def before_eval(self, trainer) -> None:
        pass

    def after_eval(self, trainer, metrics: Dict[str, Any]) -> None:
        pass

    def on_end(self, trainer) -> None:
        pass

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass
