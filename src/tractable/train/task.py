"""Tasks: what the model is trained to do (loss) and how it is measured (metrics), plus their registry.

A :class:`Task` implements ``loss(model, batch) -> (loss, stats)``:

* ``loss`` — a scalar, the **mean** over the batch's samples (the loop weights micro-batches and ranks by
  their sample counts, so the update equals the full-batch one);
* ``stats`` — detached scalar tensors that are **sums over the batch's samples**, including ``"n"`` (the number
  of samples). Sums make the metrics exact under gradient accumulation, uneven last batches and DDP:
  :meth:`Task.summarize` divides every sum by ``n`` after the sums have been added up (and all-reduced).

:meth:`Task.evaluate` runs ``loss`` under ``no_grad`` over a loader, sums the stats, all-reduces them over
ranks and summarizes them. Register a new task (reconstruction, denoising, …) with ``@register_task("name")``;
``build_task(cfg)`` calls the class's ``from_config(cfg)``.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from tractable.train.distributed import all_reduce_sum
from tractable.train.registry import ClassRegistry
from tractable.train.schema import ConfigError

__all__ = ["Task", "Classification", "register_task", "build_task", "list_tasks", "prepare_config", "TASK_MODULES"]

#: modules that register further tasks (one per family), imported the first time the registry is read
TASK_MODULES: List[str] = ["tractable.train.diffusion_task", "tractable.train.mae_task"]
_TASKS = ClassRegistry("task", "task", lambda: Task, modules=TASK_MODULES)


def register_task(name: str) -> Callable[[type], type]:
    """Class decorator: make a :class:`Task` subclass available as ``task=<name>``."""
    return _TASKS.register(name)


def list_tasks() -> List[str]:
    return _TASKS.names()


def prepare_config(cfg) -> None:
    """Let the task named ``cfg.task`` fill in or refuse other sections (:meth:`Task.prepare_config`), when the
    config is built; an unknown task is left to :func:`build_task`'s error."""
    if cfg.task in _TASKS.names():
        _TASKS.get(cfg.task).prepare_config(cfg)


def build_task(cfg) -> "Task":
    """The task named ``cfg.task``, built from the whole :class:`~tractable.train.config.RunConfig`."""
    cls = _TASKS.get(cfg.task)
    _check_model_task(cfg)
    if getattr(cfg, "task_kwargs", None) and not hasattr(cls, "Options"):
        raise ConfigError(f"task_kwargs: task {cfg.task!r} takes no options, got {', '.join(sorted(cfg.task_kwargs))}")
    return cls.from_config(cfg)


def _check_model_task(cfg) -> None:
    """A builder that declares its task (``builder.task``, e.g. CRATE-MAE's ``masked_autoencoding``) must run under it."""
    from tractable.models.registry import model_task

    try:
        wanted = model_task(cfg.model.name)
    except ValueError:
        return  # unknown names are reported where the model is built
    if wanted is not None and wanted != cfg.task:
        raise ConfigError(f"task: model {cfg.model.name!r} is trained with task={wanted}, got task={cfg.task!r}; "
                          f"set task={wanted}")


class Task:
    """Base class. Subclasses implement :meth:`loss`; the rest has working defaults."""

    name = "base"
    #: the metric used for "best" in summaries, and whether larger is better
    primary_metric = "loss"
    higher_is_better = False
    #: the EMA decay used when ``train.ema`` is null (0: no EMA)
    default_ema = 0.0

    @classmethod
    def from_config(cls, cfg) -> "Task":
        return cls()

    @classmethod
    def prepare_config(cls, cfg) -> None:
        """Called when a config with this task is built: set defaults in other sections or raise ConfigError."""

    def loss(self, model: nn.Module, batch) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        raise NotImplementedError

    def hooks(self) -> list:
        """Hooks the loop runs after the learning rule's (e.g. to hand the task per-step generators)."""
        return []

    @staticmethod
    def batch_size(batch) -> int:
        """Number of samples in a batch (first dimension of its first tensor)."""
        first = batch[0] if isinstance(batch, (tuple, list)) else batch
        return int(first.shape[0])

    def summarize(self, sums: Dict[str, torch.Tensor]) -> Dict[str, float]:
        """Sums → means (every key except ``n``, which is reported as the sample count)."""
        n = float(sums["n"])
        out = {k: float(v) / max(n, 1.0) for k, v in sums.items() if k != "n"}
        out["n"] = int(n)
        return out

    @staticmethod
    def accumulate(total: Dict[str, torch.Tensor], stats: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Add ``stats`` into ``total`` (in float64, float32 on MPS) without synchronising the device."""
        for k, v in stats.items():
            if k in total:
                total[k].add_(v.detach())
            else:
                total[k] = v.detach().to(_acc_dtype(v.device), copy=True)
        return total

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: Iterable, *, autocast=None) -> Dict[str, float]:
        """Summed stats over ``loader`` (this rank's share), all-reduced over ranks, as means."""
        was_training = model.training
        model.eval()
        total: Dict[str, torch.Tensor] = {}
        try:
            for batch in loader:
                if self.batch_size(batch) == 0:  # a rank's share of a short last batch can be empty
                    continue
                if autocast is not None:
                    with autocast():
                        _, stats = self.loss(model, batch)
                else:
                    _, stats = self.loss(model, batch)
                self.accumulate(total, stats)
        finally:
            model.train(was_training)
        return self.summarize(reduce_stats(total))


def _acc_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def reduce_stats(total: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """All-reduce (SUM) a dict of scalar tensors in one collective; keys must agree across ranks."""
    if not total:
        return total
    keys = sorted(total)
    first = total[keys[0]]
    buf = torch.stack([total[k].reshape(()).to(first.device, _acc_dtype(first.device)) for k in keys])
    all_reduce_sum(buf)
    return {k: buf[i] for i, k in enumerate(keys)}


@register_task("classification")
class Classification(Task):
    """Cross-entropy with optional label smoothing; metrics ``loss``, ``acc`` (top-1), ``acc5`` (≥ 10 classes).

    ``batch`` is ``(x, y)`` with integer class labels. The reported ``loss`` is the training criterion
    (label smoothing included).
    """

    primary_metric = "acc"
    higher_is_better = True

    def __init__(self, label_smoothing: float = 0.0):
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"Classification: label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    @classmethod
    def from_config(cls, cfg) -> "Classification":
        return cls(label_smoothing=cfg.train.label_smoothing)

    def loss(self, model, batch):
        x, y = batch[0], batch[1]
        logits = model(x)
        per_sample = F.cross_entropy(logits.float(), y, reduction="none", label_smoothing=self.label_smoothing)
        loss = per_sample.mean()
        with torch.no_grad():
            stats = {
                "loss": per_sample.detach().sum(),
                "acc": (logits.argmax(-1) == y).sum(),
                # new_full fills on the device: no blocking host-to-device copy per step on CUDA
                "n": per_sample.new_full((), float(y.shape[0])),
            }
            if logits.shape[-1] >= 10 and not model.training:  # top-5 in evaluation only (topk is costly)
                top5 = logits.topk(5, dim=-1).indices
                stats["acc5"] = (top5 == y.unsqueeze(-1)).any(-1).sum()
        return loss, stats
