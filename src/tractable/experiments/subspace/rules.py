"""Runner rules of the subspace family: ``method.name=subspace`` and the ``swa`` baseline.

``subspace`` converts the model with :func:`tractable.subspace.convert` before the optimizer exists (endpoints
from fresh calls of the runner's own model factory, so they get the registry model's initialisation; a factory
that returns identical weights is refused unless ``method.allow_identical=true``). Two random streams per step,
seeded by (train.seed, step) so that every DDP rank and a resumed run draw the same: the point of micro-batch j
from ``trainer.generator(_SALT_POINT + j)``, the regulariser's pair (curves, simplexes) from
``trainer.generator(_SALT_PAIR)``, a salt no micro-batch index reaches. The cos² regulariser is the hook's
``extra_loss``.

Before every evaluation the model is put at the midpoint (simplex: centroid), and so is an EMA copy
(``train.ema``: its own stored points, averaged, at the same point). With ``method.eval_bn=recompute`` (default)
their BatchNorm statistics are recomputed over the training set (no augmentation; ``method.bn_batches`` limits
the pass, the same batches on every rank) at every ``method.bn_every``-th evaluation and at the last one; the
evaluations in between use the training-time (mixture) statistics and log ``subspace_bn_recomputed = 0``. So
``test_acc`` is the midpoint's honest accuracy where ``subspace_bn_recomputed = 1``; ``test_ece`` (20 bins) is
logged next to it. The training-time statistics are put back after the evaluation, so evaluation never changes
the training state; the midpoint's recomputed statistics are kept in the subspace's BN cache and saved with the
checkpoint (the rule's state, with the step they belong to). The full α-grid evaluation is
``tractable subspace-eval RUN``.

``swa`` is stochastic weight averaging with :mod:`torch.optim.swa_utils`: from epoch ⌊swa_start·epochs⌋ on, the
learning rate is held at ``method.swa_lr`` and an :class:`~torch.optim.swa_utils.AveragedModel` takes the weights
at the end of every epoch; before the last evaluation the averaged weights replace the model's and
:func:`~torch.optim.swa_utils.update_bn` recomputes the BatchNorm statistics, so the final metrics and the final
checkpoint are SWA's.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Optional

import torch
import torch.nn as nn

from tractable.train.hooks import Hook
from tractable.train.rules import LearningRule, register_rule

__all__ = ["SubspaceRule", "SWARule", "reinit_factory"]

_SALT_POINT = 0x5B5  # + the micro-batch index
_SALT_PAIR = 0x5B6 << 40  # beyond any _SALT_POINT + micro-batch index
_SALT_REINIT = 0x5B7


def reinit_factory(model: nn.Module):
    """A model factory for a model given directly (no registry entry): a deep copy with every submodule's
    ``reset_parameters()`` called (the layers' default initialisation, not a custom one). Call i draws from its
    own seed, mixed from the global seed in force when the factory was made (the runner's train.seed), so the
    fresh weights never repeat the model's own (which the runner built right after seeding)."""
    from tractable.train.rng import mix_seed

    template = copy.deepcopy(model)
    base, calls = torch.initial_seed(), [0]

    def build():
        calls[0] += 1
        fresh = copy.deepcopy(template)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seed(base, _SALT_REINIT, calls[0]))
            for m in fresh.modules():
                if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
                    m.reset_parameters()
        return fresh

    return build


def _bn_loader(trainer):
    """The training set without augmentation or shuffling, whole on every rank (the same statistics everywhere)."""
    from tractable.train.loaders import build_loader

    cfg = trainer.cfg
    return build_loader(trainer.train_data, cfg.data.eval_batch_size, train=False, cfg=cfg.data, seed=cfg.train.seed,
                        device=trainer.device, rank=0, world_size=1)


def _test_ece(trainer, model) -> float:
    from tractable.subspace import ece, predict
    from tractable.train.loaders import build_loader

    cfg = trainer.cfg
    loader = build_loader(trainer.test_data, cfg.data.eval_batch_size, train=False, cfg=cfg.data,
                          seed=cfg.train.seed, device=trainer.device, rank=0, world_size=1)
    logits, labels = predict(model, loader)
    return ece(logits, labels, 20)


@register_rule("subspace")
class SubspaceRule(LearningRule):
    """Neural-network subspace (Wortsman et al. 2021): a line, curve or simplex of the model trained in one run."""

    #: ``tract+subspace``: TrAct goes on the converted model's first layer, whose weight is the mixed point
    #: W(α) = Σ cᵢ(α) Wᵢ, so every stored point gets cᵢ(α) · (TrAct's gradient of W)
    tract_after = True

    @dataclass
    class Options:
        kind: Literal["line", "curve", "simplex"] = "line"
        k: Optional[int] = None  # simplex vertices (>= 2)
        beta: float = 1.0  # cos² regulariser weight (paper: 1)
        layerwise: bool = False
        num_samples: int = 1  # points per step, each on its own chunk of the batch
        pairs: Literal["random", "all"] = "random"
        norm_endpoints: Literal["shared", "independent"] = "shared"
        control_init: Literal["independent", "chord"] = "independent"
        eval_bn: Literal["recompute", "mixture"] = "recompute"
        bn_batches: Optional[int] = None  # batches of the BN recompute (null: the whole training set)
        bn_every: int = 1  # recompute at every n-th evaluation and the last (the reference: every 10 epochs)
        allow_identical: bool = False  # accept a model factory that gives every endpoint the same weights

        def validate(self) -> None:
            if self.bn_every < 1:
                raise ValueError(f"method.bn_every: must be >= 1 (recompute BatchNorm statistics at every n-th "
                                 f"evaluation), got {self.bn_every}")
            if self.beta < 0:
                raise ValueError(f"method.beta: must be >= 0, got {self.beta}")
            if self.kind == "simplex" and (self.k is None or self.k < 2):
                raise ValueError(f"method.k: a simplex needs k >= 2 vertices, got {self.k}")
            if self.kind != "simplex" and self.k is not None:
                raise ValueError(f"method.k: only for method.kind=simplex (a {self.kind} has a fixed number of "
                                 f"points), got k={self.k}")
            if self.num_samples < 1:
                raise ValueError(f"method.num_samples: must be >= 1, got {self.num_samples}")
            if self.bn_batches is not None and self.bn_batches < 1:
                raise ValueError(f"method.bn_batches: must be >= 1 or null (the whole training set), got "
                                 f"{self.bn_batches}")
            if self.control_init == "chord" and self.kind != "curve":
                raise ValueError("method.control_init: 'chord' applies to method.kind=curve only")

    def __init__(self, options=None):
        super().__init__(options)
        self.sub = None
        self.model_fn = None
        self.evaluations = 0
        self.bn_cache_step = -1  # the step whose midpoint statistics the BN cache holds (-1: none)

    def attach(self, model: nn.Module) -> nn.Module:
        from tractable.subspace import convert

        o = self.opts
        fn = self.model_fn if self.model_fn is not None else reinit_factory(model)
        self.sub = convert(model, fn, kind=o.kind, k=o.k, layerwise=o.layerwise, num_samples=o.num_samples,
                           norm_endpoints=o.norm_endpoints, control_init=o.control_init,
                           allow_identical=o.allow_identical)
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            # one mixing node per forward would make every gradient ready only at the end of the backward, and
            # DDP could not overlap its all-reduce with it; the per-tensor path gives the same numbers
            self.sub.mix_all = False
        return model

    def state_dict(self) -> Dict[str, Any]:
        """The midpoint's recomputed BatchNorm statistics (the subspace's BN cache), the step they belong to and
        the number of evaluations so far (``bn_every``)."""
        if self.sub is None:
            return {}
        return {"bn_cache": self.sub.bn_cache_state(), "bn_cache_step": self.bn_cache_step,
                "evaluations": self.evaluations}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state and self.sub is not None:
            self.sub.load_bn_cache_state(state["bn_cache"])
            self.bn_cache_step = int(state["bn_cache_step"])
            self.evaluations = int(state["evaluations"])

    def hooks(self) -> List[Hook]:
        return [_SubspaceHook(self)]

    def describe(self) -> str:
        o = self.opts
        k = f", k={o.k}" if o.kind == "simplex" else ""
        extra = (", layerwise" if o.layerwise else "") + (f", samples={o.num_samples}" if o.num_samples > 1 else "")
        return f"subspace({o.kind}{k}, beta={o.beta}{extra})"


class _SubspaceHook(Hook):
    def __init__(self, rule: SubspaceRule):
        self.rule = rule
        self._bn = None
        self._saved: List[Any] = []
        self._recomputed = False

    def before_forward(self, trainer, batch) -> None:
        self.rule.sub.sample(trainer.generator(_SALT_POINT + trainer.micro_index))

    def extra_loss(self, trainer, batch) -> Optional[torch.Tensor]:
        o = self.rule.opts
        if o.beta == 0:
            return None
        return self.rule.sub.regularizer(o.beta, pairs=o.pairs, generator=trainer.generator(_SALT_PAIR))

    def after_step(self, trainer) -> None:
        if trainer.step % trainer.cfg.train.log_every == 0:
            trainer.log_scalars({f"subspace_{k}": v for k, v in self.rule.sub.stats().items()})

    def before_eval(self, trainer) -> None:
        from tractable.subspace import bn_buffers, subspace_of

        rule, o = self.rule, self.rule.opts
        last = trainer.epoch + 1 >= trainer.cfg.train.epochs
        self._recomputed = o.eval_bn == "recompute" and (rule.evaluations % o.bn_every == 0 or last)
        rule.evaluations += 1
        models = [(trainer.model, rule.sub)]
        if trainer.ema is not None:  # the EMA copy carries its own controller: the same point for it
            models.append((trainer.ema.module, subspace_of(trainer.ema.module)))
        self._saved = []
        for model, sub in models:
            sub.set_point(sub.canonical_point())
            if self._recomputed:
                if self._bn is None:
                    self._bn = _bn_loader(trainer)
                self._saved.append((model, bn_buffers(model)))
                sub.clear_bn_cache()
                sub.recompute_bn(self._bn, o.bn_batches)
        if self._recomputed:
            rule.bn_cache_step = trainer.step

    def after_eval(self, trainer, metrics: Dict[str, Any]) -> None:
        from tractable.subspace import load_bn_buffers

        metrics["subspace_bn_recomputed"] = float(self._recomputed)
        if trainer.is_main:
            metrics["test_ece"] = _test_ece(trainer, trainer.model)
        for model, saved in self._saved:  # the running (mixture) statistics return: training is unchanged
            load_bn_buffers(model, saved)
        self._saved = []


@register_rule("swa")
class SWARule(LearningRule):
    """Stochastic weight averaging (torch.optim.swa_utils) with its BatchNorm update: the SWA baseline."""

    @dataclass
    class Options:
        swa_start: float = 0.75  # fraction of train.epochs after which the weights are averaged
        swa_lr: float = 0.05  # constant learning rate of the averaging phase
        bn_batches: Optional[int] = None  # batches of update_bn (null: the whole training set)

        def validate(self) -> None:
            if not 0.0 <= self.swa_start < 1.0:
                raise ValueError(f"method.swa_start: the fraction of epochs before averaging must be in [0, 1), "
                                 f"got {self.swa_start}")
            if self.swa_lr <= 0:
                raise ValueError(f"method.swa_lr: must be > 0, got {self.swa_lr}")
            if self.bn_batches is not None and self.bn_batches < 1:
                raise ValueError(f"method.bn_batches: must be >= 1 or null, got {self.bn_batches}")

    def hooks(self) -> List[Hook]:
        return [_SWAHook(self.opts)]

    def describe(self) -> str:
        return f"swa(start={self.opts.swa_start}, lr={self.opts.swa_lr})"


class _SWAHook(Hook):
    def __init__(self, opts):
        self.opts = opts
        self.avg = None
        self.start = 0

    def on_start(self, trainer) -> None:
        from torch.optim.swa_utils import AveragedModel

        epochs = trainer.cfg.train.epochs
        self.start = min(int(self.opts.swa_start * epochs), epochs - 1)
        self.avg = AveragedModel(trainer.model)

    def before_step(self, trainer) -> None:
        if trainer.epoch >= self.start:
            for g in trainer.optimizer.param_groups:
                g["lr"] = self.opts.swa_lr

    def after_step(self, trainer) -> None:
        if trainer.epoch >= self.start and trainer.batch_index == trainer.steps_per_epoch - 1:
            self.avg.update_parameters(trainer.model)

    @torch.no_grad()
    def before_eval(self, trainer) -> None:
        if trainer.epoch + 1 != trainer.cfg.train.epochs or int(self.avg.n_averaged) == 0:
            return
        from torch.optim.swa_utils import update_bn

        from tractable.subspace import recompute_bn_stats

        for p, q in zip(trainer.model.parameters(), self.avg.module.parameters()):
            p.copy_(q)
        if self.opts.bn_batches is None:
            update_bn(_bn_loader(trainer), trainer.model)
        else:  # the same procedure over the first bn_batches batches
            recompute_bn_stats(trainer.model, _bn_loader(trainer), self.opts.bn_batches)

    def after_eval(self, trainer, metrics: Dict[str, Any]) -> None:
        metrics["swa_n_averaged"] = int(self.avg.n_averaged)
        if trainer.is_main and trainer.epoch + 1 == trainer.cfg.train.epochs:
            metrics["test_ece"] = _test_ece(trainer, trainer.model)

    def state_dict(self) -> Dict[str, Any]:
        return {k: v.detach().cpu().clone() for k, v in self.avg.state_dict().items()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state:
            self.avg.load_state_dict(state)
