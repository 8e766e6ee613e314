"""Randomness: one seed for everything, RNG state capture/restore for checkpoints, per-step generators.

* :func:`seed_everything` seeds Python ``random``, NumPy's global generator and torch (CPU and CUDA).
* :func:`get_rng_state` / :func:`set_rng_state` convert all of them to tensors and plain values so the state fits
  in a ``torch.load(weights_only=True)`` checkpoint.
* :func:`step_generator` is a ``torch.Generator`` seeded from ``(seed, step, salt)`` by a fixed integer hash: the
  same on every rank and after a resume, and independent of the global RNG (for hooks that sample per step).
"""
from __future__ import annotations

import random
from typing import Any, Dict

import numpy as np
import torch

__all__ = ["seed_everything", "get_rng_state", "set_rng_state", "mix_seed", "step_generator"]

_MASK64 = (1 << 64) - 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)  # also seeds every CUDA device


def mix_seed(*values: int) -> int:
    """A stable 63-bit hash of integers (splitmix64 chain); unlike ``hash()`` it is the same in every process."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        z = h
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        h = z ^ (z >> 31)
    return h >> 1


def step_generator(seed: int, step: int, salt: int = 0, device="cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(mix_seed(seed, step, salt))
    return g


def get_rng_state() -> Dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA RNG states as tensors / plain values."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss": None if gauss is None else float(gauss)},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
