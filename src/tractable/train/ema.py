"""Exponential moving average (EMA) of a model's parameters and buffers, for evaluation.

``ModelEMA(model, decay)`` keeps a frozen copy of the (unwrapped) model. After every optimizer step
``update(model)`` sets ``ema ← decay·ema + (1 − decay)·current`` for floating-point parameters and buffers and
copies the others (e.g. ``num_batches_tracked``). The averaged model is ``ema.module``; the loop evaluates it next
to the live model and reports both (``ema_test_acc`` …). ``state_dict`` holds tensors and plain values only.
"""
from __future__ import annotations

import copy
from typing import Any, Dict

import torch
import torch.nn as nn

__all__ = ["ModelEMA"]


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ModelEMA: decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.num_updates = 0
        self.module = copy.deepcopy(model)
        self.module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def _pairs(self, model: nn.Module):
        src = model.state_dict(keep_vars=True)
        for k, v in self.module.state_dict(keep_vars=True).items():
            if k not in src:
                raise KeyError(f"ModelEMA: the model has no entry {k!r}; was it re-parametrised after the EMA "
                               "was created?")
            yield v, src[k]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for e, m in self._pairs(model):
            m = m.detach()
            if e.shape != m.shape:  # a buffer materialised at the first forward (e.g. DFA's feedback on maps)
                e.resize_(m.shape).copy_(m)
            elif e.dtype.is_floating_point:
                e.lerp_(m.to(e.dtype), 1.0 - self.decay)
            else:
                e.copy_(m)
        self.num_updates += 1

    def state_dict(self) -> Dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        self.module.load_state_dict(state["module"])
