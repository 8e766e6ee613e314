"""Optimizers and learning-rate schedules from :class:`OptimConfig` / :class:`ScheduleConfig`.

The schedule is a ``torch.optim.lr_scheduler.LambdaLR`` stepped once per optimizer step, so its state (the
iteration count) is saved and restored with the checkpoint. The lr of optimizer step ``t`` (0-based) is
``lr_group · f(t)`` with, for ``T = epochs·steps_per_epoch`` and ``W = round(warmup_epochs·steps_per_epoch)``:

* warm-up (any schedule, ``t < W``): ``f(t) = (t + 1) / W`` times the schedule's factor;
* ``none``: 1;
* ``cosine``: ``m + (1 − m)·½(1 + cos(π·(t − W)/(T − W)))`` for ``t ≥ W``, with ``m = min_lr / lr_group``;
* ``step``: ``gamma ** #{milestones e : t ≥ round(e·steps_per_epoch)}`` (milestones in epochs).
"""
from __future__ import annotations

import math
from typing import Iterable, List, Sequence, Union

import torch

__all__ = ["build_optimizer", "build_scheduler", "lr_factor"]


def build_optimizer(params_or_groups: Union[Iterable[torch.nn.Parameter], List[dict]], cfg) -> torch.optim.Optimizer:
    """``sgd`` (momentum, nesterov), ``adam``, ``adamw`` or ``lion`` (``lion-pytorch``) from an OptimConfig."""
    params = list(params_or_groups)
    if not params:
        raise ValueError("build_optimizer: the model has no parameters to optimise")
    name = cfg.name
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                weight_decay=cfg.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                 weight_decay=cfg.weight_decay)
    if name == "lion":
        try:
            from lion_pytorch import Lion
        except ImportError as e:
            raise ImportError("optim.name='lion' needs the lion-pytorch package: pip install lion-pytorch") from e
        return Lion(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    raise ValueError(f"optim.name: unknown optimizer {name!r}; accepted values: 'sgd', 'adam', 'adamw', 'lion'")


def lr_factor(t: int, cfg, steps_per_epoch: int, epochs: int, base_lr: float = 1.0) -> float:
    """The multiplier ``f(t)`` of the module docstring for optimizer step ``t`` (0-based)."""
    total = max(1, int(epochs) * int(steps_per_epoch))
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    w = (t + 1) / warm if t < warm else 1.0
    if cfg.name == "none":
        return w
    if cfg.name == "cosine":
        if t < warm:
            return w
        m = cfg.min_lr / base_lr if base_lr > 0 else 0.0
        span = max(1, total - warm)
        p = min(1.0, (t - warm) / span)
        return m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * p))
    if cfg.name == "step":
        k = sum(1 for e in cfg.milestones if t >= int(round(e * steps_per_epoch)))
        return w * cfg.gamma ** k
    raise ValueError(f"schedule.name: unknown schedule {cfg.name!r}; accepted values: 'none', 'cosine', 'step'")


class _Factor:
    """Picklable per-group lr multiplier (LambdaLR saves its ``__dict__``, which holds plain values only)."""

    def __init__(self, cfg, steps_per_epoch: int, epochs: int, base_lr: float):
        self.name = cfg.name
        self.warmup_epochs = float(cfg.warmup_epochs)
        self.milestones = [float(m) for m in cfg.milestones]
        self.gamma = float(cfg.gamma)
        self.min_lr = float(cfg.min_lr)
        self.steps_per_epoch = int(steps_per_epoch)
        self.epochs = int(epochs)
        self.base_lr = float(base_lr)

    def __call__(self, t: int) -> float:
        return lr_factor(t, self, self.steps_per_epoch, self.epochs, self.base_lr)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, steps_per_epoch: int, epochs: int):
    """Per-iteration ``LambdaLR`` for a ScheduleConfig (see the module docstring for the formulas)."""
    if steps_per_epoch < 1:
        raise ValueError(f"build_scheduler: steps_per_epoch must be >= 1, got {steps_per_epoch}")
    for m in cfg.milestones:
        if m < 0:
            raise ValueError(f"schedule.milestones: epochs must be >= 0, got {list(cfg.milestones)}")
    if cfg.name not in ("none", "cosine", "step"):
        raise ValueError(f"schedule.name: unknown schedule {cfg.name!r}; accepted values: 'none', 'cosine', 'step'")
    lambdas: Sequence[_Factor] = [
        _Factor(cfg, steps_per_epoch, epochs, g.get("initial_lr", g["lr"])) for g in optimizer.param_groups
    ]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=list(lambdas))
