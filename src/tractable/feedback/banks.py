"""Feedback matrices: deterministic draws, checksums, and verification against a checkpoint.

Every feedback matrix B is drawn **eagerly, on the CPU, in float32** from its own ``torch.Generator`` seeded by

    s = (seed · 0x9E3779B97F4A7C15 + CRC32(name) + step · 0xBF58476D1CE4E5B9) mod 2⁶³

where ``name`` is the qualified name of the layer (layer FA) or of the feedback point (``"point.3"``, block FA
``"block.2"``) and ``step`` is 0 except for brSF's per-step redraws. CRC32 is stable across processes (Python's
``hash`` of a string is salted), so B depends only on (seed, name, step): not on the device, the rank, the
global RNG or the order in which modules are converted. B is then moved to the model's device, registered as a
persistent buffer (in ``state_dict``, not in ``parameters()``), and can be regenerated from its name at any time:
:func:`verify_feedback` compares a checkpoint's matrices with the regenerated ones, :func:`feedback_checksum`
gives one float64 number per model for the DDP start-up check (:func:`check_same_on_ranks`).

Distributions (``scale`` = ``feedback_scale``):

* ``kaiming_uniform`` (layer FA default, the init of ``nn.Linear``/``nn.Conv``): U(−s/√fan_in, s/√fan_in);
* ``normal``: N(0, s²/fan) with fan = C (DFA, B ∈ ℝ^{C×d}) or d (block FA, B ∈ ℝ^{d×d}) or fan_in (layers);
* ``uniform_dim`` (TinyDFA): U(−s, s)/√d with d the point's width;
* ``match_branch`` (block FA): the ``normal`` draw times a per-block factor stored as ``credit.scale_<l>``.
"""
from __future__ import annotations

import functools
import math
import zlib
from typing import Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn as nn

__all__ = ["stable_seed", "draw", "feedback_tensors", "feedback_checksum", "verify_feedback",
           "check_same_on_ranks", "FeedbackMismatch"]

_MASK = (1 << 63) - 1


class FeedbackMismatch(ValueError):
    """A checkpoint's feedback matrices do not match the model's (shape) or their regeneration (values)."""


def stable_seed(seed: int, name: str, step: int = 0) -> int:
    """The generator seed of the matrix called ``name`` (see the module docstring); process-independent."""
    crc = zlib.crc32(name.encode("utf-8"))
    return (int(seed) * 0x9E3779B97F4A7C15 + crc + int(step) * 0xBF58476D1CE4E5B9) & _MASK


def draw(shape: Sequence[int], *, seed: int, name: str, init: str, scale: float = 1.0, fan: Optional[int] = None,
         step: int = 0) -> torch.Tensor:
    """A float32 CPU tensor of ``shape`` drawn for ``name`` (see the module docstring for ``init``)."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(stable_seed(seed, name, step))
    shape = tuple(int(s) for s in shape)
    if fan is None or fan <= 0:
        raise ValueError(f"draw({name!r}): fan must be a positive int, got {fan!r}")
    if init == "kaiming_uniform":
        bound = scale / math.sqrt(fan)
        return (torch.rand(shape, generator=gen, dtype=torch.float32) * 2 - 1) * bound
    if init == "normal":
        return torch.randn(shape, generator=gen, dtype=torch.float32) * (scale / math.sqrt(fan))
    if init == "uniform_dim":
        return (torch.rand(shape, generator=gen, dtype=torch.float32) * 2 - 1) * (scale / math.sqrt(fan))
    raise ValueError(f"draw({name!r}): unknown init {init!r}")


def _owners(model: nn.Module):
    """(prefix, module) for every module of ``model`` that owns feedback matrices."""
    for prefix, m in model.named_modules():
        if hasattr(m, "feedback_specs"):
            yield prefix, m


def feedback_tensors(model: nn.Module) -> Dict[str, torch.Tensor]:
    """``{state_dict key: B}`` for every stored feedback matrix of ``model`` (sorted by key)."""
    out = {}
    for prefix, m in _owners(model):
        for local in m.feedback_specs():
            key = f"{prefix}.{local}" if prefix else local
            own = dict(m.named_parameters(recurse=False))
            out[key] = own[local] if local in own else m.get_buffer(local)
    return dict(sorted(out.items()))


def feedback_checksum(model: nn.Module) -> float:
    """One float64 number that changes with any feedback matrix of ``model`` (0.0 when there are none).

    Σ_keys Σ_i B_i · w_i with weights w_i = 1 + (i mod 97)/97 and the key's position, so permuted entries or
    swapped matrices change it too. Used by :func:`check_same_on_ranks`.
    """
    total = 0.0
    for j, (key, t) in enumerate(feedback_tensors(model).items()):
        flat = t.detach().to(device="cpu", dtype=torch.float64).flatten()
        w = 1.0 + (torch.arange(flat.numel(), dtype=torch.float64) % 97) / 97.0
        total += (j + 1) * float((flat * w).sum())
    return total


def verify_feedback(model: nn.Module, state_dict: Optional[Mapping[str, torch.Tensor]] = None, *,
                    atol: float = 0.0) -> List[str]:
    """Check feedback matrices; returns the keys checked, raises :class:`FeedbackMismatch` otherwise.

    * ``state_dict`` given: every feedback key of ``model`` must be in it with the same shape, and equal to the
      matrix regenerated from the model's (seed, name) — for fixed draws (FA, frSF, DFA, block FA); brSF's are
      regenerated at the step stored with them; Kolen-Pollack's are learned and only shape-checked.
    * no ``state_dict``: the model's own matrices are checked against their regeneration.
    """
    keys = []
    for prefix, m in _owners(model):
        for local, expected in m.feedback_specs().items():
            key = f"{prefix}.{local}" if prefix else local
            own = feedback_tensors(m)[local]
            if state_dict is None:
                got = own
            else:
                if key not in state_dict:
                    raise FeedbackMismatch(f"verify_feedback: the checkpoint has no feedback matrix {key!r} "
                                           f"(shape {tuple(own.shape)}); was it saved from a model converted "
                                           "with the same method and options?")
                got = state_dict[key]
            if tuple(got.shape) != tuple(own.shape):
                raise FeedbackMismatch(f"verify_feedback: feedback matrix {key!r} has shape {tuple(got.shape)} in "
                                       f"the checkpoint but the model expects {tuple(own.shape)} (different "
                                       "model size, method or options such as token_feedback/conv_feedback)")
            if expected is None:  # learned (Kolen-Pollack): shape only
                keys.append(key)
                continue
            regen = expected()
            if not torch.allclose(got.detach().to("cpu", torch.float32), regen, rtol=0.0, atol=atol):
                diff = float((got.detach().to("cpu", torch.float32) - regen).abs().max())
                raise FeedbackMismatch(f"verify_feedback: feedback matrix {key!r} differs from its regeneration "
                                       f"from (seed, name) by up to {diff:.3g}; it was drawn with another seed "
                                       "or feedback_init/feedback_scale, or was modified")
            keys.append(key)
    return keys


def check_same_on_ranks(model: nn.Module, group=None) -> float:
    """DDP start-up check: every rank must hold the same feedback matrices. Returns the checksum.

    All-reduces the :func:`feedback_checksum` with MIN and MAX (float64) and raises ``RuntimeError`` when they
    differ. A no-op (returns the local checksum) without an initialised process group.
    """
    value = feedback_checksum(model)
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    dist = torch.distributed
    device = torch.device("cpu")
    if dist.get_backend(group) == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    lo = torch.tensor([value], dtype=torch.float64, device=device)
    hi = lo.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN, group=group)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX, group=group)
    if float(lo) != float(hi):
        raise RuntimeError(f"feedback matrices differ across ranks (checksum min {float(lo)!r}, max {float(hi)!r}, "
                           f"rank {dist.get_rank(group)} has {value!r}); every rank must convert the model with "
                           "the same seed and options before DDP wraps it")
    return value


class FeedbackModule(nn.Module):
    """Base of the ``model.credit`` modules: matrices registered with :meth:`register_feedback` are persistent
    buffers that :func:`verify_feedback` can regenerate, and a checkpoint with a wrong-shaped matrix is refused
    with an error naming the key and both shapes."""

    _bp_mode = False

    def __init__(self, seed: int, scale: float):
        super().__init__()
        self._feedback_seed, self._feedback_scale = int(seed), float(scale)
        self._specs: Dict[str, object] = {}

    def register_feedback(self, key: str, shape: Sequence[int], name: str, init: str, fan: int,
                          device=None, dtype=None, factor: Optional[str] = None) -> None:
        """Draw and register ``key``; ``factor`` names a 0-d buffer that multiplies the draw (``match_branch``),
        read again at regeneration so that a loaded checkpoint verifies."""
        self._specs[key] = (tuple(int(s) for s in shape), name, init, int(fan), factor)
        self.register_buffer(key, self.regenerate(key).to(device=device, dtype=dtype), persistent=True)

    def regenerate(self, key: str) -> torch.Tensor:
        """The float32 CPU matrix ``key`` drawn afresh from (seed, name)."""
        shape, name, init, fan, factor = self._specs[key]
        b = draw(shape, seed=self._feedback_seed, name=name, init=init, scale=self._feedback_scale, fan=fan)
        return b if factor is None else b * self._buffers[factor].detach().to("cpu", torch.float32)

    def feedback_specs(self):
        return {key: functools.partial(self.regenerate, key) for key in self._specs}

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        for key, own in self._buffers.items():
            full = prefix + key
            if full in state_dict and own is not None and tuple(state_dict[full].shape) != tuple(own.shape):
                error_msgs.append(f"feedback matrix {full!r}: the checkpoint has shape "
                                  f"{tuple(state_dict[full].shape)}, the model expects {tuple(own.shape)}; the "
                                  "checkpoint was made with another model size or other feedback options "
                                  "(token_feedback, conv_feedback, share_b0, train_head, ...)")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
