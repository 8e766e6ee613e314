"""The training runner: config → data → model → learning rule → optimizer → loop → run directory.

>>> from tractable.train import load_config, train
>>> cfg = load_config("configs/tract_cifar.yaml", ["optim.lr=0.05", "run.name=try1"])  # doctest: +SKIP
>>> result = train(cfg)                                                                # doctest: +SKIP

Extension points: learning rules (:mod:`~tractable.train.rules`, ``@register_rule``), hooks
(:mod:`~tractable.train.hooks`), tasks (:mod:`~tractable.train.task`, ``@register_task``). Files of a run:
``config.yaml``, ``metrics.jsonl``/``metrics.csv``, ``checkpoints/``, ``plots/*.png``, ``summary.json``.
"""
from tractable.train.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from tractable.train.config import (
    ConfigError,
    DataConfig,
    MethodConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    load_run_config,
    save_config,
)
from tractable.train.distributed import (
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    cleanup,
    init_distributed,
    is_distributed,
    is_main,
    rank,
    skip_interpreter_teardown,
    unwrap_model,
    world_size,
    wrap_ddp,
)
from tractable.train.ema import ModelEMA
from tractable.train.hooks import Hook
from tractable.train.loaders import StreamLoader, build_dataset, build_loader
from tractable.train.loop import Trainer, resolve_device, split_batch
from tractable.train.metrics_log import MetricsLogger, ProgressBar, read_metrics
from tractable.train.optim import build_optimizer, build_scheduler, lr_factor
from tractable.train.report import compare_runs, plot_compare, plot_run, read_summary
from tractable.train.rng import get_rng_state, mix_seed, seed_everything, set_rng_state, step_generator
from tractable.train.rules import LearningRule, NormalRule, StackedRule, build_rule, list_rules, register_rule
from tractable.train.run import RunResult, default_run_name, main, prepare_run_dir, train, write_run_config
from tractable.train.task import Classification, Task, build_task, list_tasks, register_task

__all__ = [
    # config
    "ConfigError",
    "DataConfig",
    "MethodConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "ScheduleConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "load_run_config",
    "save_config",
    # running
    "RunResult",
    "Trainer",
    "default_run_name",
    "main",
    "prepare_run_dir",
    "resolve_device",
    "split_batch",
    "train",
    "write_run_config",
    # extension points
    "Hook",
    "LearningRule",
    "NormalRule",
    "StackedRule",
    "TrActRule",
    "build_rule",
    "list_rules",
    "register_rule",
    "Task",
    "Classification",
    "build_task",
    "list_tasks",
    "register_task",
    # optimisation
    "build_optimizer",
    "build_scheduler",
    "lr_factor",
    "ModelEMA",
    # data
    "StreamLoader",
    "build_dataset",
    "build_loader",
    # checkpoints
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_weights",
    "save_checkpoint",
    # randomness
    "get_rng_state",
    "mix_seed",
    "seed_everything",
    "set_rng_state",
    "step_generator",
    # distributed
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "cleanup",
    "skip_interpreter_teardown",
    "init_distributed",
    "is_distributed",
    "is_main",
    "rank",
    "unwrap_model",
    "world_size",
    "wrap_ddp",
    # logging and reports
    "MetricsLogger",
    "ProgressBar",
    "read_metrics",
    "compare_runs",
    "plot_compare",
    "plot_run",
    "read_summary",
]


def __getattr__(name):
    # TrAct's runner rule lives with its family (experiments/tract/rules.py), which imports this package
    if name == "TrActRule":
        from tractable.experiments.tract.rules import TrActRule

        return TrActRule
    raise AttributeError(f"module 'tractable.train' has no attribute {name!r}")
