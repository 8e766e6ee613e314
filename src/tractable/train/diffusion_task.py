"""The ``diffusion`` task: train any registered denoiser (``dit_*``, ``mdit_*``, ``unet_*``) on any image dataset.

``task=diffusion`` with options in ``task_kwargs`` (typed and validated like every config section)::

    tractable train task=diffusion data.name=digits model.name=dit_tiny_2 method.name=tract \\
        task_kwargs.prediction=x0 task_kwargs.schedule=cosine optim.name=adamw optim.lr=4e-4 train.ema=0.999

The batch ``(x, y)`` is the dataset's (standardised, so roughly unit-variance) images and labels. The loss is
:meth:`tractable.diffusion.GaussianDiffusion.losses` (Min-SNR-γ by default) with the labels as condition (models
built without ``class_cond`` ignore them); ``cond_drop`` trains the null label for classifier-free guidance.
Metric: ``loss`` (lower is better), on the test split with fixed timesteps and noise (``eval_seed``), so that
evaluations are comparable across checkpoints and runs.

Randomness: t, ε and the label drop come from ``trainer.generator`` seeded by (run seed, step, rank, micro-batch)
through the task's hook — identical after a resume, different on each rank and micro-batch, and independent of the
global RNG.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch

from tractable.diffusion import GaussianDiffusion
from tractable.train.hooks import Hook
from tractable.train.rng import mix_seed
from tractable.train.task import Task, register_task

__all__ = ["DiffusionTask"]

_SALT = 0xD1FF


class _NoiseHook(Hook):
    """Hands the task a generator for each micro-batch: (seed, step, rank, micro-batch)."""

    def __init__(self, task: "DiffusionTask"):
        self.task = task

    def before_forward(self, trainer, batch) -> None:
        salt = mix_seed(_SALT, trainer.rank, trainer.micro_index)
        self.task.generator = trainer.generator(salt, device=trainer.device)


@register_task("diffusion")
class DiffusionTask(Task):
    """Gaussian diffusion training (``task_kwargs``: see :class:`DiffusionTask.Options`)."""

    primary_metric = "loss"
    higher_is_better = False

    @dataclass
    class Options:
        num_timesteps: int = 1000
        schedule: Literal["cosine", "linear"] = "cosine"
        prediction: Literal["x0", "eps", "v"] = "x0"
        weighting: Literal["min_snr", "none"] = "min_snr"
        gamma: float = 5.0
        cond_drop: float = 0.0
        eval_seed: int = 0

        def validate(self) -> None:
            if self.num_timesteps < 2:
                raise ValueError(f"task_kwargs.num_timesteps: must be >= 2, got {self.num_timesteps}")
            if self.gamma <= 0:
                raise ValueError(f"task_kwargs.gamma: the Min-SNR γ must be > 0, got {self.gamma}")
            if not 0.0 <= self.cond_drop < 1.0:
                raise ValueError(f"task_kwargs.cond_drop: must be in [0, 1), got {self.cond_drop}")

    def __init__(self, options: Optional["DiffusionTask.Options"] = None):
        self.opts = self.Options() if options is None else options
        self.opts.validate()
        self.diffusion = GaussianDiffusion(self.opts.num_timesteps, self.opts.schedule, self.opts.prediction)
        self.generator: Optional[torch.Generator] = None

    @classmethod
    def options_from_dict(cls, data) -> "DiffusionTask.Options":
        from tractable.train.schema import ConfigError, build

        opts = build(cls.Options, dict(data or {}), "task_kwargs")
        try:
            opts.validate()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return opts

    @classmethod
    def from_config(cls, cfg) -> "DiffusionTask":
        return cls(cls.options_from_dict(getattr(cfg, "task_kwargs", {})))

    def hooks(self):
        return [_NoiseHook(self)]

    def loss(self, model, batch):
        if isinstance(batch, (tuple, list)):
            x = batch[0]
            y = batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) and batch[1].dim() == 1 else None
        else:
            x, y = batch, None
        o = self.opts
        per_sample = self.diffusion.losses(model, x, cond=y, weighting=o.weighting, gamma=o.gamma,
                                           generator=self.generator, cond_drop=o.cond_drop if model.training else 0.0)
        with torch.no_grad():
            stats = {"loss": per_sample.detach().sum(), "n": per_sample.new_full((), float(x.shape[0]))}
        return per_sample.mean(), stats

    @torch.no_grad()
    def evaluate(self, model, loader, *, autocast=None):
        from tractable.train.distributed import rank

        device = next(model.parameters()).device
        saved = self.generator
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(mix_seed(_SALT, self.opts.eval_seed, rank()))
        try:
            return super().evaluate(model, loader, autocast=autocast)
        finally:
            self.generator = saved
