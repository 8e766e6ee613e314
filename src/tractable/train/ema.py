"""Exponential moving average (EMA) of a model's parameters and buffers, for evaluation and sampling.

``ModelEMA(model, decay, warmup=True)`` keeps a frozen copy of the (unwrapped) model. The k-th call of
``update(model)`` (k = 0, 1, …, after each optimizer step) sets ``ema ← d_k·ema + (1 − d_k)·current`` for
floating-point parameters and buffers and copies the others (e.g. ``num_batches_tracked``), with

    d_k = min(decay, (1 + k)/(10 + k))   (warm-up, as TensorFlow's ``ExponentialMovingAverage(num_updates=)``
                                          and timm's ``ModelEmaV2`` warm-up)       or   d_k = decay  (no warm-up)

Without the warm-up the initial weights keep the share Π d_k = decay^K of the average after K updates
(0.99^92 = 40 %; 0.9999^10000 = 37 %); with it their share falls below 10⁻⁵ within ~10 updates, and the
averaging window grows as ≈ k/9 until it reaches 1/(1 − decay). ``init_share`` tracks that share;
``warmed_up`` is ``init_share < 0.01`` (samplers print a note when they use an EMA that is not).

DiT (Peebles & Xie 2023) uses ``decay = 0.9999`` (:data:`DIT_DECAY`, the diffusion task's default). The averaged
model is ``ema.module``; the loop evaluates it next to the live model and reports both (``ema_test_acc`` …), and
checkpoints export it as ``ema.safetensors`` next to ``model.safetensors``. ``state_dict`` holds tensors and plain
values only.
"""
from __future__ import annotations

import copy
from typing import Any, Dict

import torch
import torch.nn as nn

__all__ = ["ModelEMA", "DIT_DECAY"]

#: the EMA decay of DiT's training script
DIT_DECAY = 0.9999


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ModelEMA: decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.init_share = 1.0  # weight of the initial parameters in the average
        self.module = copy.deepcopy(model)
        self.module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        """d_k for the next update (see the module docstring)."""
        if not self.warmup:
            return self.decay
        k = self.num_updates
        return min(self.decay, (1.0 + k) / (10.0 + k))

    @property
    def warmed_up(self) -> bool:
        """Whether the initial weights make less than 1 % of the average."""
        return self.init_share < 0.01

    def _pairs(self, model: nn.Module):
        src = model.state_dict(keep_vars=True)
        for k, v in self.module.state_dict(keep_vars=True).items():
            if k not in src:
                raise KeyError(f"ModelEMA: the model has no entry {k!r}; was it re-parametrised after the EMA "
                               "was created?")
            yield v, src[k]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        for e, m in self._pairs(model):
            m = m.detach()
            if e.shape != m.shape:  # a buffer materialised at the first forward (e.g. DFA's feedback on maps)
                e.resize_(m.shape).copy_(m)
            elif e.dtype.is_floating_point:
                e.lerp_(m.to(e.dtype), 1.0 - d)
            else:
                e.copy_(m)
        self.num_updates += 1
        self.init_share *= d

    def state_dict(self) -> Dict[str, Any]:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "init_share": self.init_share, "module": self.module.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        self.warmup = bool(state.get("warmup", False))  # states written before the warm-up existed had none
        self.init_share = float(state.get("init_share", self.decay ** self.num_updates))
        self.module.load_state_dict(state["module"])
