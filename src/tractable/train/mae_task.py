"""The ``masked_autoencoding`` task: pre-train CRATE-MAE (``mae_crate_*``) with the runner.

``task=masked_autoencoding`` with options in ``task_kwargs``::

    tractable train task=masked_autoencoding model.name=mae_crate_tiny data.name=fashion_mnist \\
        model.kwargs.patch_size=4 model.kwargs.depth=4 optim.name=adamw optim.lr=1.5e-4 optim.weight_decay=0.05

The batch's images go through :meth:`tractable.models.crate_mae.CRATEMAE.forward`; the loss is its per-patch MSE
averaged over the masked patches. Every sample masks the same number of patches, so the batch loss is the mean of
the per-sample losses and the summed statistics are exact under accumulation and DDP. Metric: ``loss`` (lower is
better) on the test split with masks drawn from ``eval_seed``, so evaluations compare across checkpoints.
After every evaluation rank 0 writes ``plots/reconstruction_step{step}.png`` (input, masked input, reconstruction,
reconstruction pasted into the visible patches) for the first ``recon_images`` test images.

Randomness: the masks come from ``trainer.generator`` seeded by (run seed, step, rank, micro-batch) through the
task's hook — identical after a resume, different on each rank and micro-batch, independent of the global RNG.
Labels are ignored. ``mask_ratio`` overrides the model's (0.75 by default).

DDP: the official model defines ``decoder_embed`` and never calls it, so DistributedDataParallel must run with
unused parameters allowed; single-process runs are unaffected.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from tractable.train.hooks import Hook
from tractable.train.rng import mix_seed
from tractable.train.task import Task, register_task

__all__ = ["MaskedAutoencoding", "reconstruction_figure"]

_SALT = 0x3AE


class _MaskHook(Hook):
    """Hands the task a mask generator per micro-batch and draws reconstructions after each evaluation."""

    def __init__(self, task: "MaskedAutoencoding"):
        self.task = task

    def before_forward(self, trainer, batch) -> None:
        self.task.generator = trainer.generator(mix_seed(_SALT, trainer.rank, trainer.micro_index))

    def after_eval(self, trainer, metrics) -> None:
        n = self.task.opts.recon_images
        if not trainer.is_main or n == 0:
            return
        batch = next(iter(trainer.test_loader))
        images = (batch[0] if isinstance(batch, (tuple, list)) else batch)[:n]
        try:
            reconstruction_figure(trainer.model, images, Path(trainer.run_dir) / "plots" /
                                  f"reconstruction_step{trainer.step:08d}.png", self.task.opts.mask_ratio,
                                  self.task.opts.eval_seed)
        except ImportError:  # matplotlib is optional
            pass


@register_task("masked_autoencoding")
class MaskedAutoencoding(Task):
    """Masked-autoencoder pre-training (``task_kwargs``: see :class:`MaskedAutoencoding.Options`)."""

    primary_metric = "loss"
    higher_is_better = False

    @dataclass
    class Options:
        mask_ratio: Optional[float] = None  # None: the model's own (0.75)
        eval_seed: int = 0
        recon_images: int = 8

        def validate(self) -> None:
            if self.mask_ratio is not None and not 0.0 < float(self.mask_ratio) < 1.0:
                raise ValueError(f"task_kwargs.mask_ratio: must be in (0, 1) (the loss averages over masked "
                                 f"patches), got {self.mask_ratio}")
            if self.recon_images < 0:
                raise ValueError(f"task_kwargs.recon_images: must be >= 0, got {self.recon_images}")

    def __init__(self, options: Optional["MaskedAutoencoding.Options"] = None):
        self.opts = self.Options() if options is None else options
        self.opts.validate()
        self.generator: Optional[torch.Generator] = None

    @classmethod
    def from_config(cls, cfg) -> "MaskedAutoencoding":
        from tractable.train.config import ConfigError, _build

        opts = _build(cls.Options, dict(getattr(cfg, "task_kwargs", None) or {}), "task_kwargs")
        try:
            opts.validate()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return cls(opts)

    def hooks(self):
        return [_MaskHook(self)]

    def loss(self, model, batch):
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        out = model(x, mask_ratio=self.opts.mask_ratio, generator=self.generator)
        if not (isinstance(out, tuple) and len(out) == 3):
            raise ValueError("task=masked_autoencoding needs a masked autoencoder (mae_crate_*) whose forward "
                             "returns (loss, pred, mask)")
        loss = out[0]
        with torch.no_grad():
            n = loss.new_full((), float(x.shape[0]))
            stats = {"loss": loss.detach().float() * n, "n": n}
        return loss, stats

    @torch.no_grad()
    def evaluate(self, model, loader, *, autocast=None):
        from tractable.train.distributed import rank

        saved = self.generator
        self.generator = torch.Generator().manual_seed(mix_seed(_SALT, self.opts.eval_seed, rank()))
        try:
            return super().evaluate(model, loader, autocast=autocast)
        finally:
            self.generator = saved


def reconstruction_figure(model, images: torch.Tensor, path, mask_ratio: Optional[float] = None,
                          seed: int = 0) -> Path:
    """PNG rows per image: the input, the masked input, the reconstruction, and the reconstruction pasted into
    the visible patches (:meth:`tractable.models.crate_mae.CRATEMAE.reconstruct`; masks from ``seed``)."""
    from tractable.train.report import new_figure, save_figure

    def show(x):
        x = x.detach().float().cpu()
        x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-12)
        return x.permute(1, 2, 0).squeeze(-1).numpy()

    was = model.training
    model.eval()
    try:
        masked, rec, pasted = model.reconstruct(images, mask_ratio, torch.Generator().manual_seed(seed))
    finally:
        model.train(was)
    B = images.shape[0]
    fig, axes = new_figure((6, 1.5 * B + 0.3), B, 4, squeeze=False)
    for b in range(B):
        for j, (img, title) in enumerate(((images[b], "input"), (masked[b], "masked"), (rec[b], "reconstruction"),
                                          (pasted[b], "rec. + visible"))):
            axes[b, j].imshow(show(img), cmap="gray")
            axes[b, j].set_xticks([])
            axes[b, j].set_yticks([])
            if b == 0:
                axes[b, j].set_title(title, fontsize=7)
    return save_figure(fig, path, dpi=120)
