"""Checkpoints: weights as safetensors, the rest of the training state as a ``weights_only`` torch file.

Layout of a checkpoint directory ``ckpt_dir``::

    ckpt_dir/step_00000120/model.safetensors   keys = model.state_dict() of the unwrapped model
    ckpt_dir/step_00000120/ema.safetensors     the EMA's weights, same keys (only when the run keeps an EMA;
                                               metadata: decay, warmup, num_updates, init_share)
    ckpt_dir/step_00000120/state.pt            optimizer, scheduler, scaler, EMA, step, epoch, RNG states, extra
    ckpt_dir/latest                            text file: the name of the newest complete checkpoint

Saving is atomic: both files are written into a hidden temporary directory, flushed, and the directory is
renamed into place (``os.replace``) before ``latest`` is rewritten through a temporary file and ``os.replace``.
A crash at any point leaves the previous checkpoint and pointer intact. Only the newest ``keep`` checkpoints are
kept. ``state.pt`` contains only tensors and plain Python values, so ``torch.load(path, weights_only=True)``
reads it.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
import torch.nn as nn

from tractable.models.checkpoint_io import CheckpointFileError, load_safetensors, load_torch_file
from tractable.train.distributed import unwrap_model
from tractable.train.rng import get_rng_state, set_rng_state

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "list_checkpoints", "load_weights",
           "read_checkpoint", "resume_candidates", "CheckpointFileError", "WEIGHTS_FILE", "EMA_FILE", "STATE_FILE"]

WEIGHTS_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "state.pt"
_LATEST = "latest"
_NAME = re.compile(r"^step_(\d+)$")


def _weights_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The unwrapped model's state dict as CPU tensors safetensors accepts.

    Tensors that share storage with an earlier entry (tied weights) or are not contiguous are cloned; the keys
    are exactly those of ``model.state_dict()`` (non-tensor entries are skipped).
    """
    out: Dict[str, torch.Tensor] = {}
    seen = set()
    for k, v in unwrap_model(model).state_dict().items():
        if not isinstance(v, torch.Tensor):
            continue
        t = v.detach().to("cpu")
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if (ptr is not None and ptr in seen) or not t.is_contiguous():
            t = t.contiguous().clone()
        elif ptr is not None:
            seen.add(ptr)
        out[k] = t
    return out


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def list_checkpoints(ckpt_dir: Union[str, Path]):
    """Complete checkpoint directories in ``ckpt_dir``, oldest first (by step)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = []
    for p in ckpt_dir.iterdir():
        m = _NAME.match(p.name)
        if m and (p / WEIGHTS_FILE).is_file() and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(ckpt_dir: Union[str, Path]) -> Optional[Path]:
    """The checkpoint named in ``ckpt_dir/latest`` (or the newest complete one if the pointer is missing)."""
    ckpt_dir = Path(ckpt_dir)
    pointer = ckpt_dir / _LATEST
    if pointer.is_file():
        name = pointer.read_text().strip()
        p = ckpt_dir / name
        if name and (p / WEIGHTS_FILE).is_file() and (p / STATE_FILE).is_file():
            return p
    found = list_checkpoints(ckpt_dir)
    return found[-1] if found else None


def resume_candidates(ckpt_dir: Union[str, Path]):
    """Complete checkpoints to resume from, best first: the one named by ``latest``, then the others newest
    first (so a damaged newest checkpoint falls back to the previous complete one)."""
    first = latest_checkpoint(ckpt_dir)
    rest = [p for p in reversed(list_checkpoints(ckpt_dir)) if p != first]
    return ([first] if first is not None else []) + rest


def read_checkpoint(path: Union[str, Path], map_location="cpu"):
    """``(state, weights)`` of one checkpoint directory, both read in full before anything is restored.

    Raises :class:`CheckpointFileError` (a ``ValueError``) naming the file when ``state.pt`` or
    ``model.safetensors`` is missing, truncated or damaged.
    """
    path = Path(path)
    state = load_torch_file(path / STATE_FILE, map_location=map_location)
    if not isinstance(state, dict) or "step" not in state or "rng" not in state:
        raise CheckpointFileError(f"{path / STATE_FILE}: not the training state of a tractable checkpoint (no "
                                  "step/rng entries)")
    weights = load_safetensors(path / WEIGHTS_FILE, device=str(map_location) if isinstance(map_location, str)
                               else "cpu")
    return state, weights


def save_checkpoint(
    ckpt_dir: Union[str, Path],
    *,
    model: nn.Module,
    optimizer=None,
    scheduler=None,
    scaler=None,
    ema=None,
    step: int,
    epoch: int,
    extra: Optional[Dict[str, Any]] = None,
    keep: Optional[int] = 3,
) -> Path:
    """Write ``ckpt_dir/step_{step:08d}`` atomically, point ``latest`` at it, prune to the newest ``keep``."""
    from safetensors.torch import save_file

    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    name = f"step_{int(step):08d}"
    final = ckpt_dir / name
    tmp = ckpt_dir / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    state = {
        "format": 1,
        "step": int(step),
        "epoch": int(epoch),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "ema": ema.state_dict() if ema is not None else None,
        "rng": get_rng_state(),
        "extra": extra or {},
    }
    weights_path = tmp / WEIGHTS_FILE
    save_file(_weights_dict(model), str(weights_path), metadata={"step": str(int(step)), "epoch": str(int(epoch))})
    if ema is not None:  # the averaged weights, loadable without torch.load (e.g. for sampling elsewhere)
        meta = {"step": str(int(step)), "decay": repr(ema.decay), "warmup": str(ema.warmup),
                "num_updates": str(ema.num_updates), "init_share": repr(ema.init_share)}
        save_file(_weights_dict(ema.module), str(tmp / EMA_FILE), metadata=meta)
    with open(tmp / STATE_FILE, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    for written in (weights_path, tmp / EMA_FILE):
        if written.is_file():
            with open(written, "rb+") as f:
                os.fsync(f.fileno())
    _fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. after a resume): replace the old copy
        old = ckpt_dir / f".old-{name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    pointer_tmp = ckpt_dir / f".{_LATEST}.tmp-{os.getpid()}"
    with open(pointer_tmp, "w") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(pointer_tmp, ckpt_dir / _LATEST)
    _fsync_dir(ckpt_dir)
    if keep is not None and keep > 0:
        for p in list_checkpoints(ckpt_dir)[:-keep]:
            if p != final:
                shutil.rmtree(p, ignore_errors=True)
    return final


def load_weights(path: Union[str, Path], model: nn.Module, *, strict: bool = True, device=None) -> nn.Module:
    """Load ``model.safetensors`` (a file, or a checkpoint directory containing it) into ``model``."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    target = unwrap_model(model)
    if device is None:
        first = next(iter(target.state_dict().values()), None)
        device = first.device if isinstance(first, torch.Tensor) else "cpu"
    _load_into(target, load_safetensors(path, device=str(device)), strict, path)
    return model


def _load_into(target: nn.Module, weights: Dict[str, torch.Tensor], strict: bool, path) -> None:
    try:
        target.load_state_dict(weights, strict=strict)
    except RuntimeError as e:  # missing/unexpected keys or shape mismatches: say which file and which model
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = "; ".join(lines[1:4]) if len(lines) > 1 else lines[0] if lines else ""
        raise ValueError(f"{path}: does not fit the model {type(target).__name__} ({detail})") from None


def load_checkpoint(
    path: Union[str, Path],
    *,
    model: Optional[nn.Module] = None,
    optimizer=None,
    scheduler=None,
    scaler=None,
    ema=None,
    restore_rng: bool = True,
    map_location="cpu",
) -> Dict[str, Any]:
    """Restore what is given from a checkpoint; returns the state dict (``step``, ``epoch``, ``extra`` …).

    ``path`` is a checkpoint directory (``…/step_00000120``) or a directory of checkpoints, in which case the one
    named by ``latest`` is used.
    """
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"load_checkpoint: no checkpoint in {path} (expected {STATE_FILE} and "
                                    f"{WEIGHTS_FILE}, or a 'latest' pointer to a step_* directory)")
        path = found
    state, weights = read_checkpoint(path, map_location=map_location)
    if model is not None:
        target = unwrap_model(model)
        first = next(iter(target.state_dict().values()), None)
        device = first.device if isinstance(first, torch.Tensor) else "cpu"
        _load_into(target, {k: v.to(device) for k, v in weights.items()}, True, path / WEIGHTS_FILE)
    for obj, key in ((optimizer, "optimizer"), (scheduler, "scheduler"), (scaler, "scaler"), (ema, "ema")):
        if obj is None:
            continue
        if state.get(key) is None:
            raise KeyError(f"load_checkpoint: {path} has no {key} state but a {key} was given")
        obj.load_state_dict(state[key])
    if restore_rng:
        set_rng_state(state["rng"])
    state["path"] = str(path)
    return state
