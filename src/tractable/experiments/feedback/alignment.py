"""Alignment over training: a runner hook that logs how a credit-assignment method's updates line up with BP.

Every ``every`` optimizer steps, on the step's first micro-batch and the model being trained (no copy):

* ``align/<layer>/grad_angle`` — the angle (degrees) between the method's weight gradient of ``<layer>``
  (what the rule hands the optimizer) and backpropagation's gradient on the same batch and weights, computed
  by autograd on the model's own forward inside :func:`tractable.feedback.bp_mode`;
* ``align/<layer>/wb_angle`` — the angle between vec(W) and vec(B) (layer methods: FA, sign symmetry, KP);
* ``align/<layer>/norm_ratio`` — ‖B‖ / ‖W‖ (the same layers).

These are the curves every FA paper shows (Lillicrap et al. 2016, Fig. 2; BioTorch's ``compute_matrix_angle``
and ``compute_weight_ratio``). The two extra forward/backward passes run in training mode with BatchNorm
running statistics saved and restored, so the training run itself is unchanged (its RNG streams aside:
dropout layers draw during the extra passes). They run on every rank on its own micro-batch and are logged
by rank 0. ``tractable plot RUN_DIR`` draws them into ``plots/align.png``.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from tractable.train.hooks import Hook

__all__ = ["AlignmentHook", "gradient_angles"]

_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _angle(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return float("nan")
    c = float((a @ b) / (na * nb))
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))


def _layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, _WEIGHTED) and getattr(m, "weight", None) is not None and m.weight.requires_grad]


def gradient_angles(model: nn.Module, loss_fn, batch) -> Dict[str, float]:
    """``{layer: angle (deg) between the method's and BP's weight gradient}`` on ``batch``.

    ``loss_fn(model, batch) → scalar``. The model trains (its credit-assignment wiring active) for the method's
    gradient and runs inside :func:`~tractable.feedback.bp_mode` for BP's; BatchNorm statistics are restored.
    """
    from tractable.feedback import bp_mode

    layers = _layers(model)
    weights = [m.weight for _, m in layers]
    stats = {k: v.clone() for k, v in model.state_dict(keep_vars=True).items()
             if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    was = model.training
    model.train()
    try:
        with torch.enable_grad():
            g_method = torch.autograd.grad(loss_fn(model, batch), weights, allow_unused=True)
            with bp_mode(model):
                g_bp = torch.autograd.grad(loss_fn(model, batch), weights, allow_unused=True)
    finally:
        model.train(was)
        if stats:
            with torch.no_grad():
                own = model.state_dict(keep_vars=True)
                for k, v in stats.items():
                    own[k].copy_(v)
    out = {}
    for (name, _), gm, gb in zip(layers, g_method, g_bp):
        if gm is not None and gb is not None:
            out[name] = _angle(gm, gb)
    return out


class AlignmentHook(Hook):
    """Log the alignment scalars of the module docstring every ``every`` steps (see there)."""

    def __init__(self, every: int):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"AlignmentHook: every must be an int >= 1, got {every!r}")
        self.every = every
        self._batch = None

    def before_step(self, trainer) -> None:
        self._batch = None

    def before_forward(self, trainer, batch) -> None:
        if self._batch is None and (trainer.step + 1) % self.every == 0:  # logged with step record t·every
            self._batch = batch

    def after_step(self, trainer) -> None:
        batch, self._batch = self._batch, None
        if batch is None:
            return
        model = trainer.model
        task = trainer.task

        def loss_fn(m, b):
            with trainer.autocast():
                return task.loss(m, b)[0]

        values: Dict[str, float] = {}
        for name, angle in gradient_angles(model, loss_fn, batch).items():
            values[f"align/{name}/grad_angle"] = angle
        from tractable.feedback import fa_layers

        for name, m in fa_layers(model):
            B = m.feedback_matrix()
            values[f"align/{name}/wb_angle"] = _angle(m.weight, B)
            nw = float(m.weight.detach().double().norm())
            values[f"align/{name}/norm_ratio"] = float(B.detach().double().norm()) / nw if nw else float("nan")
        trainer.log_scalars(values)

    def state_dict(self) -> Dict[str, Optional[int]]:
        return {}
