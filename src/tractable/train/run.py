"""``train(cfg)``: one run from a config — run directory, distributed set-up, the :class:`Trainer`, the result.

The run directory is ``out_dir/name``. A run never overwrites: if the directory exists and is not empty and
``resume`` is false, :func:`train` raises before touching anything. With ``resume=true`` it continues from the
latest checkpoint in ``out_dir/name/checkpoints`` (or starts fresh if the run has none yet; a run directory that
does not exist is an error); when the newest checkpoint is damaged (a truncated file) it falls back, with a
warning, to the previous complete one. Without ``name`` the
directory is ``{model}-{method}-{data}-s{seed}-{YYYYmmdd-HHMMSS}`` (a ``-2``, ``-3``… suffix if taken).

Under ``torchrun`` every rank calls :func:`train`; rank 0 chooses and checks the directory and writes files.

Command line (also ``python -m tractable.train``)::

    python -m tractable.train config.yaml optim.lr=0.05 train.epochs=10 run.name=my-run
"""
from __future__ import annotations

import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import torch.nn as nn
import yaml

from tractable.train.config import (
    ConfigError,
    RunConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from tractable.train.distributed import barrier, broadcast_object, cleanup, init_distributed, is_main
from tractable.train.hooks import Hook
from tractable.train.loop import Trainer
from tractable.train.task import Task

__all__ = ["RunResult", "train", "prepare_run_dir", "write_run_config", "default_run_name", "main"]

CONFIG_FILE = "config.yaml"
# keys whose change does not alter the result of a resumed run
_RESUME_SAFE = {"resume", "train.progress", "train.log_every", "train.tensorboard", "train.plots",
                "train.save_every", "train.save_every_steps", "train.keep_checkpoints", "train.eval_every"}


@dataclass
class RunResult:
    """What :func:`train` returns: the run directory, the summary (as in ``summary.json``) and the trained
    (unwrapped) model."""

    run_dir: Path
    summary: Dict[str, Any]
    model: Optional[nn.Module] = field(default=None, repr=False)


def default_run_name(cfg: RunConfig) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{cfg.model.name}-{cfg.method.name}-{cfg.data.name}-s{cfg.train.seed}-{stamp}"


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and k != "kwargs":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_resume_config(run_dir: Path, cfg: RunConfig) -> None:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return
    with open(path) as f:
        saved = yaml.safe_load(f) or {}
    try:  # normalised, so that a config written by an earlier version compares by meaning
        saved = config_to_dict(config_from_dict(saved, saved=True))
    except (ConfigError, ValueError):
        pass
    old = _flat(saved)
    new = _flat(config_to_dict(cfg))
    changed = sorted(k for k in set(old) | set(new)
                     if k not in _RESUME_SAFE and json.dumps(old.get(k), sort_keys=True)
                     != json.dumps(new.get(k), sort_keys=True))
    if changed:
        diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
        warnings.warn(f"resuming {run_dir} with a different config ({diffs}); the continuation will not match "
                      "the original run", stacklevel=3)


def prepare_run_dir(cfg: RunConfig, *, create: bool = True) -> Path:
    """Choose and check the run directory (rank 0; the others receive the path).

    Raises if it exists, is not empty and ``resume`` is false. With ``create`` the directory is made and
    ``config.yaml`` written; :func:`train` first builds data and model with ``create=False`` so that a bad config
    leaves no directory behind, then calls :func:`write_run_config`.
    """
    result: Union[str, Dict[str, str]]
    if is_main():
        try:
            result = str(_choose(cfg))
        except (ConfigError, FileExistsError, OSError) as e:
            result = {"type": type(e).__name__, "message": str(e)}
    else:
        result = ""
    result = broadcast_object(result)
    if isinstance(result, dict):
        exc = {"ConfigError": ConfigError, "FileExistsError": FileExistsError}.get(result["type"], OSError)
        raise exc(result["message"])
    run_dir = Path(result)
    if create:
        write_run_config(cfg, run_dir)
    return run_dir


def write_run_config(cfg: RunConfig, run_dir: Path) -> None:
    """Create ``run_dir`` and write the resolved ``config.yaml`` (rank 0), then synchronise."""
    if is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / CONFIG_FILE)
    barrier()


def _choose(cfg: RunConfig) -> Path:
    out_dir = Path(cfg.out_dir)
    if cfg.resume:
        if cfg.name is None:
            raise ConfigError("resume=true needs the run's name: pass run.name=<directory under out_dir>")
        run_dir = out_dir / cfg.name
        if run_dir.exists() and not run_dir.is_dir():
            raise FileExistsError(f"{run_dir} exists and is not a directory")
        if not run_dir.exists():
            raise ConfigError(f"resume=true: {run_dir} does not exist, so there is nothing to resume; check out_dir "
                              "and name, or drop resume=true to start a new run")
        if not (run_dir / CONFIG_FILE).is_file():
            raise ConfigError(f"resume=true: {run_dir} is not a run directory of `tractable train` (no {CONFIG_FILE})"
                              "; check out_dir and name")
        _check_resume_config(run_dir, cfg)
    elif cfg.name is not None:
        run_dir = out_dir / cfg.name
        if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
            raise FileExistsError(
                f"run directory {run_dir} already exists and is not empty; pass run.resume=true to continue it, "
                "or choose another run.name (or out_dir)")
    else:
        base = default_run_name(cfg)
        run_dir, i = out_dir / base, 1
        while run_dir.exists():
            i += 1
            run_dir = out_dir / f"{base}-{i}"
    return run_dir


def train(cfg: Union[RunConfig, Dict[str, Any]], *, hooks: Sequence[Hook] = (), task: Optional[Task] = None,
          model: Optional[nn.Module] = None, train_data=None, test_data=None) -> RunResult:
    """Run training as configured; returns :class:`RunResult`.

    ``hooks`` run after the learning rule's own hooks. ``task`` replaces the task named by ``cfg.task``;
    ``model`` replaces ``create_model(cfg.model...)`` (the learning rule is still attached to it);
    ``train_data``/``test_data`` replace ``load_dataset(cfg.data...)`` (``data.subset`` still applies).
    """
    if isinstance(cfg, dict):
        cfg = config_from_dict(cfg)
    if not isinstance(cfg, RunConfig):
        raise TypeError(f"train: expected a RunConfig or a dict, got {type(cfg).__name__}")
    created = init_distributed()
    try:
        run_dir = prepare_run_dir(cfg, create=False)  # checks only: nothing is written before set-up succeeds
        trainer = Trainer(cfg, run_dir, hooks=hooks, task=task, model=model, train_data=train_data,
                          test_data=test_data)
        write_run_config(cfg, run_dir)
        summary = trainer.fit()
        barrier()
        return RunResult(run_dir=run_dir, summary=summary, model=trainer.model)
    finally:
        if created:
            cleanup()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m tractable.train [config.yaml] key=value ...``; prints the summary as JSON."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    path = None
    if argv and "=" not in argv[0]:
        path = argv.pop(0)
    cfg = load_config(path, argv)
    result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"run_dir": str(result.run_dir), **result.summary}, indent=2))
    return 0
