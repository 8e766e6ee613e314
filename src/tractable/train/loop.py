"""The training loop: :class:`Trainer` builds everything from a :class:`RunConfig` and runs it.

Set-up order (each step may rely on the previous ones)::

    seed → data (datasets, loaders) → seed again → model (create_model with the data's shape) → rule.attach
    → .to(device) → EMA copy → DDP wrap (after attach) → torch.compile → optimizer (rule.param_groups)
    → schedule → GradScaler (fp16)

:meth:`Trainer.fit` then calls ``hook.on_start``, restores the latest checkpoint when ``resume`` is set, and
loops over epochs and batches. One optimizer step:

1. ``zero_grad``; ``hook.before_step``;
2. the batch is split into ``grad_accum`` micro-batches; for each: ``hook.before_forward``; under autocast,
   ``task.loss`` + Σ ``hook.extra_loss``; the loss is weighted by ``n_micro · world / n_global`` (so micro-batch
   and rank means combine into the full-batch mean) and back-propagated, under DDP's ``no_sync`` for all but
   the last micro-batch;
3. fp16: ``scaler.unscale_``; ``hook.after_backward``; ``rule.before_optimizer_step``; gradient clipping;
   ``optimizer.step`` (through the scaler for fp16); ``scheduler.step``; EMA update; ``hook.after_step``;
4. every ``log_every`` steps: a step record (metrics all-reduced over ranks).

At the end of an epoch: train metrics (running sums, all-reduced), evaluation every ``eval_every`` epochs and at
the last one (``hook.before_eval`` → test metrics, EMA test metrics → ``hook.after_eval``), an epoch record and a
checkpoint every ``save_every`` epochs and at the last one; checkpoints also every ``save_every_steps`` steps.
A checkpoint records the position inside the epoch, the running sums and the RNG states, so a resumed run
continues bit for bit (on CPU) as if it had not stopped.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from tractable.train.checkpoint import (CheckpointFileError, load_checkpoint, read_checkpoint, resume_candidates,
                                       save_checkpoint)
from tractable.train.distributed import (
    barrier,
    broadcast_buffers,
    local_rank,
    rank,
    world_size,
    wrap_ddp,
)
from tractable.train.ema import ModelEMA
from tractable.train.hooks import Hook
from tractable.train.loaders import apply_subset, build_dataset, build_loader, model_shape_kwargs
from tractable.train.metrics_log import MetricsLogger, ProgressBar
from tractable.train.optim import build_optimizer, build_scheduler
from tractable.train.rng import seed_everything, step_generator
from tractable.train.rules import build_rule
from tractable.train.task import Task, build_task, reduce_stats

__all__ = ["Trainer", "resolve_device", "split_batch"]

SUMMARY_FILE = "summary.json"


def resolve_device(spec: str, key: str = "train.device") -> torch.device:
    """``auto`` → ``cuda:<local rank>`` when CUDA is available, else ``cpu``; otherwise ``torch.device(spec)``.

    A device that does not exist here (CUDA without CUDA, ``cuda:3`` on a 2-GPU machine, MPS off a Mac) is a
    one-line ``ValueError`` naming ``key`` (the config key or command-line flag)."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank())
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{key}: {spec!r} is not a device; accepted values: 'auto', 'cpu', 'cuda', "
                         "'cuda:N', 'mps'") from e
    sep = "=" if "." in key else " "
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{key}{sep}{spec} but CUDA is not available here; use {key}{sep}cpu (or auto)")
        if dev.index is None:
            dev = torch.device("cuda", local_rank())
        elif dev.index >= torch.cuda.device_count():
            raise ValueError(f"{key}{sep}{spec}: no such CUDA device ({torch.cuda.device_count()} available)")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"{key}{sep}{spec} but MPS is not available here; use {key}{sep}cpu (or auto)")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{key}: {spec!r} is not supported; accepted values: 'auto', 'cpu', 'cuda', 'cuda:N', "
                         "'mps'")
    return dev


def split_batch(batch, k: int) -> List[Any]:
    """Split every tensor of a (tuple) batch into ``k`` consecutive parts along dim 0 (empty parts dropped)."""
    if k == 1:
        return [batch]
    if isinstance(batch, torch.Tensor):
        parts = list(batch.tensor_split(k))
        return [p for p in parts if p.shape[0] > 0]
    items = list(batch)
    split = [t.tensor_split(k) if isinstance(t, torch.Tensor) else [t] * k for t in items]
    out = []
    for j in range(k):
        mb = tuple(s[j] for s in split)
        if Task.batch_size(mb) > 0:
            out.append(mb)
    return out


class Trainer:
    """Everything one run needs; see the module docstring for the order of events.

    Attributes hooks may use: ``cfg``, ``model`` (unwrapped), ``forward_model`` (DDP/compiled, used for
    training forwards), ``optimizer``, ``scheduler``, ``scaler``, ``ema``, ``task``, ``rule``, ``device``,
    ``step`` (optimizer steps done), ``epoch`` (current, 0-based), ``batch_index`` (in the epoch),
    ``micro_index``, ``rank``, ``world_size``, ``train_loader``, ``test_loader``, ``train_data``,
    ``run_dir``; methods ``generator(salt)``, ``log_scalars(dict)``, ``autocast()``.
    """

    def __init__(self, cfg, run_dir, *, hooks: Sequence[Hook] = (), task: Optional[Task] = None,
                 model: Optional[nn.Module] = None, train_data=None, test_data=None):
        self.cfg = cfg
        tc = cfg.train
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.rank, self.world_size = rank(), world_size()
        self.is_main = self.rank == 0
        self.device = resolve_device(tc.device)
        if tc.amp == "fp16" and self.device.type == "cpu":
            warnings.warn("train.amp=fp16 on CPU is slow and rarely useful; consider bf16", stacklevel=2)
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[tc.amp]

        # data
        seed_everything(tc.seed)
        if train_data is None:
            train_data = build_dataset(cfg.data, "train")
        else:
            train_data = apply_subset(train_data, cfg.data, "train")
        if test_data is None:
            test_data = build_dataset(cfg.data, "test")
        else:
            test_data = apply_subset(test_data, cfg.data, "test")
        self.train_data, self.test_data = train_data, test_data
        self.info = getattr(train_data, "info", None)
        self.train_loader = build_loader(train_data, cfg.data.batch_size, train=True, cfg=cfg.data, seed=tc.seed,
                                         device=self.device, rank=self.rank, world_size=self.world_size,
                                         grad_accum=tc.grad_accum)
        self.test_loader = build_loader(test_data, cfg.data.eval_batch_size, train=False, cfg=cfg.data,
                                        seed=tc.seed, device=self.device, rank=self.rank,
                                        world_size=self.world_size)
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch < 1:
            raise ValueError(f"the training set ({len(train_data)} samples) gives no batch of "
                             f"data.batch_size={cfg.data.batch_size}")

        # model and learning rule
        seed_everything(tc.seed)  # the initial weights depend on the seed only
        model_fn = self._create_model if model is None else None
        if model is None:
            model = self._create_model()
        else:
            model = self._sync_bn(model)
        self.rule = build_rule(cfg.method)
        self.rule.model_fn = model_fn  # builds the same architecture afresh (subspace endpoints); None if given
        attached = self.rule.attach(model)
        model = model if attached is None else attached
        model.to(self.device)
        self.model = model
        self.task = task if task is not None else build_task(cfg)
        task_hooks = getattr(self.task, "hooks", None)
        self.hooks: List[Hook] = list(self.rule.hooks()) + list(task_hooks() if task_hooks else []) + list(hooks)
        decay = tc.ema if tc.ema is not None else getattr(self.task, "default_ema", 0.0)
        self.ema = ModelEMA(model, decay, warmup=tc.ema_warmup) if decay > 0 else None
        wrapped = wrap_ddp(model, self.device, **self.rule.ddp_kwargs())
        self.ddp = wrapped if wrapped is not model else None
        self.forward_model = torch.compile(wrapped) if tc.compile else wrapped

        # optimisation
        groups = self.rule.param_groups(model)
        if groups is None:
            groups = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(groups, cfg.optim)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, self.steps_per_epoch, tc.epochs)
        self._constant_lr = cfg.schedule.name == "none" and cfg.schedule.warmup_epochs == 0
        self.scaler = torch.amp.GradScaler(self.device.type) if tc.amp == "fp16" else None

        # state
        self.step = 0
        self.epoch = 0
        self.batch_index = 0
        self.micro_index = 0
        self.running: Dict[str, torch.Tensor] = {}
        self.history: List[Dict[str, Any]] = []
        self.images_seen = 0
        self.train_time = 0.0
        self.elapsed_before = 0.0
        self._scalars: Dict[str, float] = {}
        self._last_log = (time.perf_counter(), 0)
        self.logger: Optional[MetricsLogger] = None  # created by fit(): set-up writes nothing to disk

    # -- helpers for hooks ------------------------------------------------------------------------------------
    def generator(self, salt: int = 0, device="cpu") -> torch.Generator:
        """A generator seeded from (seed, step, salt): equal on all ranks and after a resume."""
        return step_generator(self.cfg.train.seed, self.step, salt, device=device)

    def log_scalars(self, values: Dict[str, float]) -> None:
        """Add scalars to the next step record (the latest value of each key is kept)."""
        for k, v in values.items():
            self._scalars[k] = float(v)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    # -- set-up ---------------------------------------------------------------------------------------------
    def _create_model(self) -> nn.Module:
        from tractable.models import create_model, model_defaults

        mc = self.cfg.model
        accepted = model_defaults(mc.name)  # raises for an unknown name, listing the registered ones
        kw = model_shape_kwargs(self.info, accepted) if self.info is not None else {}
        kw.update(dict(mc.kwargs))
        return self._sync_bn(create_model(mc.name, **kw))

    def _sync_bn(self, model: nn.Module) -> nn.Module:
        """``train.sync_bn`` under DDP: BatchNorm → SyncBatchNorm, before any rule re-parametrises the model."""
        if not (self.cfg.train.sync_bn and self.world_size > 1):
            return model
        if self.device.type != "cuda":
            raise ValueError(f"train.sync_bn=true needs CUDA devices: torch's SyncBatchNorm does not run under DDP "
                             f"on {self.device.type}; set train.sync_bn=false")
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def _resume(self) -> bool:
        candidates = resume_candidates(self.ckpt_dir)
        if not candidates:
            if self.is_main:
                warnings.warn(f"resume=true but {self.ckpt_dir} has no checkpoint; starting from scratch",
                              stacklevel=3)
                self.logger.truncate_to(0)
            return False
        damaged = []
        for ckpt in candidates:  # the newest complete one; a damaged one falls back to the one before
            try:
                read_checkpoint(ckpt)
            except CheckpointFileError as e:
                damaged.append(str(e))
                continue
            break
        else:
            raise ValueError(f"resume: no readable checkpoint in {self.ckpt_dir}: " + "; ".join(damaged))
        if damaged and self.is_main:
            warnings.warn(f"resume: {'; '.join(damaged)}; resuming from the previous complete checkpoint {ckpt.name} "
                          "instead", stacklevel=3)
        state = load_checkpoint(ckpt, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                                scaler=self.scaler, ema=self.ema, restore_rng=True)
        extra = state["extra"]
        if extra.get("world_size", self.world_size) != self.world_size:
            warnings.warn(f"resuming a run saved with world size {extra['world_size']} on {self.world_size} "
                          "rank(s): the batches inside an epoch are the same, results are not bitwise equal",
                          stacklevel=3)
        self.step, self.epoch, self.batch_index = int(state["step"]), int(state["epoch"]), int(extra["batch"])
        running = extra.get("running", {})
        # the saved sums are global: restore them on rank 0 only so that the epoch-end all-reduce stays right
        self.running = {k: (v if self.is_main else torch.zeros_like(v)).to(self.device) for k, v in running.items()}
        self.history = list(extra.get("history", []))
        self.images_seen = int(extra.get("images_seen", 0))
        self.train_time = float(extra.get("train_time", 0.0))
        self.elapsed_before = float(extra.get("elapsed", 0.0))
        self._lr = float(extra.get("last_lr", self._lr))
        self.rule.load_state_dict(extra.get("rule", {}))
        hook_states, hooks = extra.get("hooks", []), self.hooks
        if len(hook_states) != len(hooks):  # saved before a stateless hook (e.g. TrAct diagnostics) was added
            hook_states, hooks = [s for s in hook_states if s], [h for h in hooks if h.state_dict()]
        if len(hook_states) != len(hooks):
            raise ValueError(f"resume: the checkpoint has state for {len(hook_states)} hook(s) but the run has "
                             f"{len(self.hooks)}; pass the same hooks as the interrupted run")
        for h, s in zip(hooks, hook_states):
            h.load_state_dict(s)
        self.logger.truncate_to(int(extra.get("log_records", 0)))
        return True

    # -- checkpoints ----------------------------------------------------------------------------------------
    def save(self) -> None:
        """Checkpoint the full training state (all ranks must call; rank 0 writes)."""
        running = {k: v.detach().clone() for k, v in self.running.items()}
        running = {k: v.cpu() for k, v in reduce_stats(running).items()}
        if self.is_main:
            extra = {
                "batch": self.batch_index,
                "running": running,
                "history": self.history,
                "log_records": self.logger.count,
                "rule": self.rule.state_dict(),
                "hooks": [h.state_dict() for h in self.hooks],
                "images_seen": self.images_seen,
                "train_time": self.train_time,
                "elapsed": self._elapsed(),
                "world_size": self.world_size,
                "last_lr": self._lr,
            }
            save_checkpoint(self.ckpt_dir, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                            scaler=self.scaler, ema=self.ema, step=self.step, epoch=self.epoch, extra=extra,
                            keep=self.cfg.train.keep_checkpoints)
        barrier()

    def _elapsed(self) -> float:
        return self.elapsed_before + (time.perf_counter() - self._t_start)

    # -- one optimizer step ---------------------------------------------------------------------------------
    def train_step(self, batch) -> Dict[str, torch.Tensor]:
        tc = self.cfg.train
        self.optimizer.zero_grad(set_to_none=True)
        for h in self.hooks:
            h.before_step(self)
        micro = split_batch(batch, tc.grad_accum)
        n_local = Task.batch_size(batch)
        n_global = self.train_loader.global_batch_size(self.batch_index) if self.world_size > 1 else n_local
        stats_total: Dict[str, torch.Tensor] = {}
        for j, mb in enumerate(micro):
            self.micro_index = j
            weight = Task.batch_size(mb) * self.world_size / n_global
            sync = self.ddp.no_sync() if (self.ddp is not None and j < len(micro) - 1) else contextlib.nullcontext()
            with sync:
                for h in self.hooks:
                    h.before_forward(self, mb)
                with self.autocast():
                    loss, stats = self.task.loss(self.forward_model, mb)
                    for h in self.hooks:
                        extra = h.extra_loss(self, mb)
                        if extra is not None:
                            loss = loss + extra
                if weight != 1.0:
                    loss = loss * weight
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
            Task.accumulate(stats_total, stats)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        for h in self.hooks:
            h.after_backward(self)
        self.rule.before_optimizer_step(self.model)
        grad_norm = None
        if tc.clip_grad is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, tc.clip_grad)
        self._lr = self.optimizer.param_groups[0]["lr"]
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if not self._constant_lr:  # a constant schedule has nothing to step (saves ~10 µs a step)
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        self.images_seen += n_global
        Task.accumulate(self.running, stats_total)
        if grad_norm is not None:
            stats_total["_grad_norm"] = grad_norm.detach()
        for h in self.hooks:
            h.after_step(self)
        return stats_total

    def _log_step(self, stats: Dict[str, torch.Tensor], bar: ProgressBar) -> None:
        grad_norm = stats.pop("_grad_norm", None)
        summary = self.task.summarize(reduce_stats(stats))
        now = time.perf_counter()
        t0, img0 = self._last_log
        img_s = (self.images_seen - img0) / max(now - t0, 1e-9)
        self._last_log = (now, self.images_seen)
        record: Dict[str, Any] = {"kind": "step", "step": self.step,
                                  "epoch": round(self.epoch + self.batch_index / self.steps_per_epoch, 6),
                                  "lr": self._lr}
        record.update({k: v for k, v in summary.items() if k != "n"})
        record["img_s"] = round(img_s, 2)
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        record.update(self._scalars)
        self._scalars = {}
        loss = record.get("loss")
        if isinstance(loss, float) and not math.isfinite(loss) and self.scaler is None:
            raise FloatingPointError(f"the training loss became {loss} at step {self.step} (epoch "
                                     f"{self.epoch + 1}); lower optim.lr, set train.clip_grad, or check the data")
        self.logger.log(record)
        post = {k: record[k] for k in ("loss", "acc") if k in record}
        post["img/s"] = int(img_s)
        bar.set_postfix(**post)

    # -- evaluation -----------------------------------------------------------------------------------------
    def evaluate(self) -> Dict[str, float]:
        for h in self.hooks:
            h.before_eval(self)
        broadcast_buffers(self.model)  # ranks agree on e.g. BatchNorm statistics
        autocast = self.autocast if self.amp_dtype is not None else None
        metrics: Dict[str, float] = {}
        for k, v in self.task.evaluate(self.model, self.test_loader, autocast=autocast).items():
            if k != "n":
                metrics[f"test_{k}"] = v
        if self.ema is not None:
            for k, v in self.task.evaluate(self.ema.module, self.test_loader, autocast=autocast).items():
                if k != "n":
                    metrics[f"ema_test_{k}"] = v
        for h in self.hooks:
            h.after_eval(self, metrics)
        return metrics

    # -- the run ----------------------------------------------------------------------------------------------
    def fit(self) -> Dict[str, Any]:
        tc = self.cfg.train
        self._t_start = time.perf_counter()
        self._lr = self.optimizer.param_groups[0]["lr"]
        self.logger = MetricsLogger(self.run_dir, enabled=self.is_main, tensorboard=tc.tensorboard)
        noise = getattr(self.train_data, "label_noise", None)
        if noise is not None and self.is_main:  # data.label_noise: the noisy labels, saved with the run
            torch.save(noise, self.run_dir / "label_noise.pt")
        for h in self.hooks:
            h.on_start(self)
        if self.cfg.resume:
            self._resume()
        self._last_log = (time.perf_counter(), self.images_seen)
        while self.epoch < tc.epochs:
            self._run_epoch()
        for h in self.hooks:
            h.on_end(self)
        summary = self.summary()
        if self.is_main:
            tmp = self.run_dir / (SUMMARY_FILE + ".tmp")
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
            tmp.replace(self.run_dir / SUMMARY_FILE)
            self.logger.close()
            if tc.plots:
                try:
                    from tractable.train.report import plot_run

                    plot_run(self.run_dir)
                except ImportError as e:
                    warnings.warn(f"no plots written: {e}", stacklevel=2)
        else:
            self.logger.close()
        barrier()
        return summary

    def _run_epoch(self) -> None:
        tc = self.cfg.train
        e = self.epoch
        self.train_loader.set_epoch(e)
        bar = ProgressBar(self.steps_per_epoch, initial=self.batch_index, desc=f"epoch {e + 1}/{tc.epochs}",
                          enabled=tc.progress and self.is_main)
        self.model.train()
        t0 = time.perf_counter()
        try:
            for i, batch in enumerate(self.train_loader.iterate(e, start=self.batch_index), start=self.batch_index):
                self.batch_index = i
                stats = self.train_step(batch)
                self.batch_index = i + 1
                bar.update()
                if self.step % tc.log_every == 0:
                    self._log_step(stats, bar)
                if tc.save_every_steps and self.step % tc.save_every_steps == 0:
                    self.train_time += time.perf_counter() - t0
                    self.save()
                    t0 = time.perf_counter()
        finally:
            bar.close()
        if self.device.type == "cuda":  # count the epoch's queued GPU work in train_time (once per epoch)
            torch.cuda.synchronize(self.device)
        self.train_time += time.perf_counter() - t0
        record: Dict[str, Any] = {"kind": "epoch", "epoch": e + 1, "step": self.step, "lr": self._lr}
        if self.running:
            for k, v in self.task.summarize(reduce_stats(self.running)).items():
                if k != "n":
                    record[f"train_{k}"] = v
        self.running = {}
        last = e + 1 == tc.epochs
        if last or (tc.eval_every and (e + 1) % tc.eval_every == 0):
            record.update(self.evaluate())
        record["time_s"] = round(self._elapsed(), 3)
        self.epoch, self.batch_index = e + 1, 0
        self.history.append(record)
        self.logger.log(record)
        if self.is_main and tc.progress:
            shown = {k: v for k, v in record.items() if k.startswith(("train_", "test_", "ema_test_"))}
            print(f"epoch {e + 1}/{tc.epochs} " + " ".join(f"{k}={v:.4g}" for k, v in shown.items()), flush=True)
        if last or (tc.save_every and (e + 1) % tc.save_every == 0):
            self.save()

    def summary(self) -> Dict[str, Any]:
        primary = self.task.primary_metric
        better = max if self.task.higher_is_better else min
        out: Dict[str, Any] = {
            "name": self.run_dir.name,
            "task": self.cfg.task,
            "method": self.rule.describe(),
            "epochs": self.epoch,
            "steps": self.step,
            "world_size": self.world_size,
            "device": str(self.device),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "time_s": round(self._elapsed(), 3),
            "train_time_s": round(self.train_time, 3),
            "images_per_s": round(self.images_seen / self.train_time, 2) if self.train_time > 0 else None,
        }
        for prefix in ("test_", "ema_test_"):
            evals = [r for r in self.history if any(k.startswith(prefix) for k in r)]
            if not evals:
                continue
            out[f"final_{prefix.rstrip('_')}"] = {k: v for k, v in evals[-1].items() if k.startswith(prefix)}
            key = prefix + primary
            evals = [r for r in evals if key in r]
            if not evals:
                continue
            best = better(evals, key=lambda r: r[key])
            out[f"final_{key}"] = evals[-1][key]
            out[f"best_{key}"] = best[key]
            out[f"best_{prefix}epoch"] = best["epoch"]
            out[key] = [r[key] for r in evals]
            out[f"{prefix}epochs"] = [r["epoch"] for r in evals]
        if self.history:
            out["final_train"] = {k: v for k, v in self.history[-1].items() if k.startswith("train_")}
        return out
