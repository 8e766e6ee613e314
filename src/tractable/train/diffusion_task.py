"""The ``diffusion`` task: train any registered denoiser (``dit_*``, ``mdit_*``, ``unet_*``) on any image dataset.

``task=diffusion`` with options in ``task_kwargs`` (typed and validated like every config section)::

    tractable train task=diffusion data.name=digits model.name=dit_tiny_2 method.name=tract \\
        task_kwargs.prediction=x0 task_kwargs.schedule=cosine optim.name=adamw optim.lr=4e-4

The batch ``(x, y)`` is the dataset's (standardised, so roughly unit-variance) images and labels. The loss is
:meth:`tractable.diffusion.GaussianDiffusion.losses` (Min-SNR-γ by default) with the labels as condition (models
built without ``class_cond`` ignore them). ``cond_drop`` replaces labels by the null label with that probability,
which trains the unconditional branch classifier-free guidance needs; null (the default) means 0.1 for a
class-conditional model (DiT's value) and 0 otherwise. Metric: ``loss`` (lower is better), on the test split with
fixed timesteps and noise (``eval_seed``), so that evaluations are comparable across checkpoints and runs.

Defaults the task sets for the rest of the run:

* **EMA**: ``train.ema`` null means DiT's decay 0.9999 with the warm-up of :class:`~tractable.train.ema.ModelEMA`
  (:attr:`DiffusionTask.default_ema`); checkpoints export the average as ``ema.safetensors``.
* **Folder datasets** (``imagefolder``, ``imagenet``, ``tinyimagenet``): without ``data.kwargs.transform`` the
  images are resized and centre-cropped to ``data.kwargs.image_size`` with a random horizontal flip on the training
  split (``transform: diffusion``; :mod:`tractable.data.diffusion_transforms`), not the classification crops.
  ``transform: train`` (random-resized or padded random crops, which would train the model on crops) is refused
  unless ``task_kwargs.random_crops`` is true. :func:`resolve_data_defaults` applies this when the config is built
  (:meth:`Task.prepare_config`), so the saved ``config.yaml`` names the transform.

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
from tractable.train.ema import DIT_DECAY
from tractable.train.rng import mix_seed
from tractable.train.task import Task, register_task

__all__ = ["DiffusionTask", "resolve_data_defaults", "effective_cond_drop", "FOLDER_DATASETS"]

_SALT = 0xD1FF
#: datasets read from image folders, whose default training transform is a classification crop
FOLDER_DATASETS = ("imagefolder", "imagenet", "tinyimagenet")
#: label-drop probability for class-conditional models when ``cond_drop`` is null (DiT's class_dropout_prob)
DEFAULT_COND_DROP = 0.1


def _class_cond(model) -> bool:
    inner = getattr(model, "module", model)  # DDP
    inner = getattr(inner, "_orig_mod", inner)  # torch.compile
    return bool(getattr(inner, "class_cond", False))


def effective_cond_drop(cond_drop: Optional[float], model) -> float:
    """``cond_drop``, or for null: 0.1 if ``model`` is class-conditional (``model.class_cond``), else 0."""
    if cond_drop is not None:
        return float(cond_drop)
    return DEFAULT_COND_DROP if _class_cond(model) else 0.0


def resolve_data_defaults(cfg) -> None:
    """For ``task=diffusion`` on a folder dataset: default ``data.kwargs.transform`` to ``diffusion`` and refuse the
    classification crops (``train``) unless ``task_kwargs.random_crops`` is true. Raises ConfigError."""
    from tractable.train.config import ConfigError

    if cfg.task != "diffusion" or cfg.data.name.strip().lower().replace("-", "") not in FOLDER_DATASETS:
        return
    transform = cfg.data.kwargs.get("transform", "default")
    if transform == "default":
        cfg.data.kwargs["transform"] = "diffusion"
    elif transform == "train" and not bool((cfg.task_kwargs or {}).get("random_crops", False)):
        raise ConfigError("data.kwargs.transform: 'train' is the classification augmentation (random-resized or "
                          "padded random crops), which trains a diffusion model on crops; use 'diffusion' (resize + "
                          "centre crop + flip, the default) or 'diffusion_noflip', or set task_kwargs.random_crops="
                          "true to train on random crops on purpose")


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
    #: the EMA decay when ``train.ema`` is null: DiT's 0.9999 (with the warm-up)
    default_ema = DIT_DECAY

    @dataclass
    class Options:
        num_timesteps: int = 1000
        schedule: Literal["cosine", "linear"] = "cosine"
        prediction: Literal["x0", "eps", "v"] = "x0"
        weighting: Literal["min_snr", "none"] = "min_snr"
        gamma: float = 5.0
        cond_drop: Optional[float] = None  # null: 0.1 for class-conditional models, 0 otherwise
        eval_seed: int = 0
        random_crops: bool = False  # allow data.kwargs.transform=train (crops) on folder datasets

        def validate(self) -> None:
            if self.num_timesteps < 2:
                raise ValueError(f"task_kwargs.num_timesteps: must be >= 2, got {self.num_timesteps}")
            if self.gamma <= 0:
                raise ValueError(f"task_kwargs.gamma: the Min-SNR γ must be > 0, got {self.gamma}")
            if self.cond_drop is not None and not 0.0 <= self.cond_drop < 1.0:
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

    @classmethod
    def prepare_config(cls, cfg) -> None:
        resolve_data_defaults(cfg)

    def hooks(self):
        return [_NoiseHook(self)]

    def loss(self, model, batch):
        if isinstance(batch, (tuple, list)):
            x = batch[0]
            y = batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) and batch[1].dim() == 1 else None
        else:
            x, y = batch, None
        o = self.opts
        drop = effective_cond_drop(o.cond_drop, model) if model.training and y is not None else 0.0
        per_sample = self.diffusion.losses(model, x, cond=y, weighting=o.weighting, gamma=o.gamma,
                                           generator=self.generator, cond_drop=drop)
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
