"""Typed run configuration: dataclasses, YAML loading, ``a.b=value`` overrides and validation.

A run is described by one :class:`RunConfig` with the sections ``data``, ``model``, ``method``, ``optim``,
``schedule`` and ``train`` plus the top-level keys ``out_dir``, ``name``, ``resume``, ``task`` and ``task_kwargs``
(the task's own options, validated by the task when it is built). The top-level
keys may also be written under a ``run:`` section (``run.resume=true`` is the same as ``resume=true``).

:func:`load_config` reads an optional YAML file, applies overrides such as ``optim.lr=0.05`` or
``schedule.milestones=[30,60]`` (each value parsed as a YAML scalar or list) and validates everything against
the dataclass annotations: unknown keys, wrong types and values outside an enumeration raise
:class:`ConfigError` naming the key and what is accepted. ``method.name`` and ``task`` are checked against the
learning-rule and task registries. Numbers written as ``1e-3`` (which YAML 1.1 reads as a string) are accepted
for float fields.
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

import yaml

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "MethodConfig",
    "OptimConfig",
    "ScheduleConfig",
    "TrainConfig",
    "RunConfig",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "save_config",
    "apply_overrides",
]


class ConfigError(ValueError):
    """An invalid configuration: unknown key, wrong type, value outside an enumeration, missing key."""


@dataclass
class DataConfig:
    """Dataset and loader. ``name`` goes to :func:`tractable.data.load_dataset`; ``kwargs`` are passed on."""

    name: str
    root: Optional[str] = None
    download: bool = False
    batch_size: int = 128  # global batch (summed over ranks and accumulation micro-batches)
    eval_batch_size: int = 512
    augment: Optional[Literal["crop_flip", "flip", "crop", "randaugment"]] = None
    pad: int = 4  # crop padding for augment
    subset: Optional[int] = None  # first n training samples
    test_subset: Optional[int] = None
    drop_last: bool = False
    num_workers: int = 4  # streaming datasets only
    mean: Optional[List[float]] = None  # per-channel normalisation override (default: the dataset's own)
    std: Optional[List[float]] = None
    kwargs: Dict[str, Any] = field(default_factory=dict)
    label_noise: float = 0.0  # fraction of training labels resampled uniformly (fixed permutation, saved in the run)
    label_noise_seed: int = 0  # the permutation's seed: the same noisy labels for every train.seed


@dataclass
class ModelConfig:
    """Model from the registry: ``create_model(name, num_classes=..., in_channels=..., image_size=..., **kwargs)``."""

    name: str
    kwargs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class MethodConfig:
    """Learning rule attached to the model before the optimizer is built (see :mod:`tractable.train.rules`).

    ``name`` selects the rule; every other key of the ``method`` section is one of *that rule's* typed options
    (its ``Options`` dataclass, listed by ``tractable list rules``), e.g. ``method.name=tract method.l=0.05``.
    ``options`` holds the validated ``Options`` instance; ``cfg.method.<option>`` reads it. In YAML and in the
    saved ``config.yaml`` the options sit flat next to ``name``.
    """

    name: str = "normal"
    options: Any = None

    def __post_init__(self):
        if self.options is None:
            self.options = _build_method({"name": self.name}, "method").options

    def __getattr__(self, key):  # only reached when normal lookup fails: the rule's options
        if key.startswith("__") or key == "options":
            raise AttributeError(key)
        options = self.__dict__.get("options")
        try:
            return getattr(options, key)
        except AttributeError:
            raise AttributeError(f"learning rule {self.__dict__.get('name')!r} has no option {key!r}") from None


@dataclass
class OptimConfig:
    """Optimizer. ``betas``/``eps`` are used by adam/adamw (lion uses ``betas``); ``momentum``/``nesterov`` by sgd."""

    lr: float
    name: Literal["sgd", "adam", "adamw", "lion"] = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: Tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, stepped once per optimizer step.

    ``cosine``: from the base lr to ``min_lr`` over the iterations after warm-up. ``step``: multiply by
    ``gamma`` at each epoch in ``milestones``. ``warmup_epochs`` (any schedule): linear warm-up from
    ``lr/warmup_iters`` to ``lr``.
    """

    name: Literal["none", "cosine", "step"] = "none"
    warmup_epochs: float = 0.0
    milestones: List[float] = field(default_factory=list)
    gamma: float = 0.1
    min_lr: float = 0.0


@dataclass
class TrainConfig:
    """The loop. ``ema`` is the EMA decay (0 = off; null = the task's default: off for classification, 0.9999 for
    diffusion), with the warm-up of :class:`~tractable.train.ema.ModelEMA` unless ``ema_warmup`` is false;
    ``eval_every``/``save_every`` in epochs (0 = only at the end); ``save_every_steps`` in optimizer steps (0 = off)."""

    epochs: int
    seed: int = 0
    device: str = "auto"
    amp: Literal["none", "bf16", "fp16"] = "none"
    compile: bool = False
    grad_accum: int = 1
    label_smoothing: float = 0.0
    ema: Optional[float] = None
    ema_warmup: bool = True
    clip_grad: Optional[float] = None
    eval_every: int = 1
    save_every: int = 1
    save_every_steps: int = 0
    keep_checkpoints: int = 3
    log_every: int = 50
    progress: bool = True
    tensorboard: Optional[bool] = None  # None: if installed; True: required; False: off
    plots: bool = True
    sync_bn: bool = False  # under torchrun: BatchNorm → SyncBatchNorm (statistics over all ranks)


@dataclass
class RunConfig:
    """A whole run. The run directory is ``out_dir/name`` (name default ``{model}-{method}-{data}-s{seed}-{time}``)."""

    data: DataConfig
    model: ModelConfig
    optim: OptimConfig
    train: TrainConfig
    method: MethodConfig = field(default_factory=MethodConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    out_dir: str = "runs"
    name: Optional[str] = None
    resume: bool = False
    task: str = "classification"
    task_kwargs: Dict[str, Any] = field(default_factory=dict)  # the task's own options (e.g. diffusion's schedule)


_TOP_LEVEL = ("out_dir", "name", "resume", "task", "task_kwargs")
_RUN_ALIAS = "run"


# -- validation ---------------------------------------------------------------------------------------------

def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin is Union:
        args = typing.get_args(tp)
        inner = [a for a in args if a is not type(None)]
        names = " | ".join(_type_name(a) for a in inner)
        return f"{names} | null" if len(inner) < len(args) else names
    if origin in (list, List, Sequence):
        (a,) = typing.get_args(tp) or (Any,)
        return f"list of {_type_name(a)}"
    if origin in (tuple, Tuple):
        return "list of " + ", ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (dict, Dict):
        return "mapping"
    if tp is Any:
        return "any value"
    return getattr(tp, "__name__", str(tp))


def _coerce(value, tp, key: str):
    """Check ``value`` against annotation ``tp``; returns the (possibly converted) value or raises ConfigError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: {value!r} is not accepted; accepted values: {', '.join(map(repr, choices))}")
    if origin is Union:
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key}: null is not allowed; expected {_type_name(tp)}")
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if origin in (list, List, Sequence):
        (a,) = typing.get_args(tp) or (Any,)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
        return [_coerce(v, a, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (tuple, Tuple):
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values ({_type_name(tp)}), got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r} ({type(value).__name__})")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected a bool (true/false), got {value!r} ({type(value).__name__})")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an int, got {value!r} ({type(value).__name__})")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a float, got {value!r} ({type(value).__name__})")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r} ({type(value).__name__})")
    if tp is MethodConfig:
        return _build_method(value, key)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    raise TypeError(f"config: unsupported annotation {tp!r} for {key}")  # a bug in this module, not user input


def _build(cls, data, prefix: str):
    if isinstance(data, cls):
        data = config_to_dict(data)
    where = prefix or "the top level"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {data!r} ({type(data).__name__})")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(
            f"unknown key {_join(prefix, unknown[0])!r} in {where}; valid keys: {', '.join(fields)}"
        )
    kwargs = {}
    for name, f in fields.items():
        key = _join(prefix, name)
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            if hints[name] is MethodConfig:
                kwargs[name] = _build_method({}, key)
            elif dataclasses.is_dataclass(hints[name]):
                kwargs[name] = _build(hints[name], {}, key)  # reports the section's missing keys
            else:
                raise ConfigError(f"missing required key {key!r}")
    return cls(**kwargs)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


#: keys every ``method`` section carried before options belonged to their rule, with their old defaults: a
#: config written then (e.g. a run directory's config.yaml with ``name: normal, l: 0.1, exact: false``) still
#: loads when a key the rule does not know holds its old default
_LEGACY_METHOD_DEFAULTS = {"l": 0.1, "exact": False, "layer": None, "kwargs": {}}


def _build_method(data, prefix: str = "method") -> MethodConfig:
    """The ``method`` section: ``name`` picks the rule, the other keys are validated against its ``Options``."""
    from tractable.train.rules import rule_class, rules_with_option

    if isinstance(data, MethodConfig):
        data = config_to_dict(data)
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping (name and the rule's options), got {data!r} "
                          f"({type(data).__name__})")
    name = _coerce(data.get("name", "normal"), str, _join(prefix, "name"))
    try:
        cls = rule_class(name)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    option_fields = [f.name for f in dataclasses.fields(cls.Options)]
    rest = {}
    for k, v in data.items():
        if k == "name":
            continue
        if k not in option_fields:
            if k in _LEGACY_METHOD_DEFAULTS and _LEGACY_METHOD_DEFAULTS[k] == v:
                continue
            owners = [r for r in rules_with_option(k) if r != name]
            hint = f" ({k!r} is an option of {', '.join(map(repr, owners))})" if owners else ""
            valid = ", ".join(["name", *option_fields])
            raise ConfigError(f"unknown key {_join(prefix, k)!r} for learning rule {name!r}{hint}; valid keys: "
                              f"{valid}")
        rest[k] = v
    options = _build(cls.Options, rest, prefix)
    validate = getattr(options, "validate", None)
    if validate is not None:
        try:
            validate()
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return MethodConfig(name=name, options=options)


def _check_semantics(cfg: RunConfig) -> None:
    from tractable.train.task import list_tasks

    if cfg.task not in list_tasks():
        raise ConfigError(f"task: {cfg.task!r} is not a registered task; accepted values: "
                          f"{', '.join(map(repr, list_tasks()))}")
    positive = {"data.batch_size": cfg.data.batch_size, "data.eval_batch_size": cfg.data.eval_batch_size,
                "train.epochs": cfg.train.epochs, "train.grad_accum": cfg.train.grad_accum,
                "train.log_every": cfg.train.log_every, "train.keep_checkpoints": cfg.train.keep_checkpoints}
    for key, v in positive.items():
        if v < 1:
            raise ConfigError(f"{key}: must be >= 1, got {v}")
    non_negative = {"train.eval_every": cfg.train.eval_every, "train.save_every": cfg.train.save_every,
                    "train.save_every_steps": cfg.train.save_every_steps, "optim.lr": cfg.optim.lr,
                    "optim.weight_decay": cfg.optim.weight_decay, "schedule.warmup_epochs": cfg.schedule.warmup_epochs,
                    "schedule.min_lr": cfg.schedule.min_lr, "data.num_workers": cfg.data.num_workers}
    for key, v in non_negative.items():
        if v < 0:
            raise ConfigError(f"{key}: must be >= 0, got {v}")
    for key, v in (("data.subset", cfg.data.subset), ("data.test_subset", cfg.data.test_subset)):
        if v is not None and v < 1:
            raise ConfigError(f"{key}: must be >= 1 or null, got {v}")
    if cfg.train.ema is not None and not 0.0 <= cfg.train.ema < 1.0:
        raise ConfigError(f"train.ema: the EMA decay must be in [0, 1) (0 = off, null = the task's default), got "
                          f"{cfg.train.ema}")
    if not 0.0 <= cfg.data.label_noise < 1.0:
        raise ConfigError(f"data.label_noise: the fraction of resampled labels must be in [0, 1), got "
                          f"{cfg.data.label_noise}")
    if not 0.0 <= cfg.train.label_smoothing < 1.0:
        raise ConfigError(f"train.label_smoothing: must be in [0, 1), got {cfg.train.label_smoothing}")
    if cfg.train.clip_grad is not None and cfg.train.clip_grad <= 0:
        raise ConfigError(f"train.clip_grad: must be > 0 or null (off), got {cfg.train.clip_grad}")
    if cfg.optim.nesterov and (cfg.optim.name != "sgd" or cfg.optim.momentum <= 0):
        raise ConfigError("optim.nesterov: needs optim.name='sgd' and optim.momentum > 0")
    if cfg.name is not None and (not cfg.name or "/" in cfg.name or cfg.name in (".", "..")):
        raise ConfigError(f"name: must be a plain directory name without '/', got {cfg.name!r}")


# -- public functions ---------------------------------------------------------------------------------------

def _parse_value(text: str):
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def _fold_run_alias(data: dict) -> dict:
    data = dict(data)
    run = data.pop(_RUN_ALIAS, None)
    if run is None:
        return data
    if not isinstance(run, dict):
        raise ConfigError(f"run: expected a mapping of {', '.join(_TOP_LEVEL)}, got {run!r}")
    for k, v in run.items():
        if k not in _TOP_LEVEL:
            raise ConfigError(f"unknown key 'run.{k}' in run; valid keys: {', '.join(_TOP_LEVEL)}")
        data[k] = v
    return data


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Apply ``a.b=value`` strings to a nested dict (returns a new dict; values parsed as YAML).

    A ``method.name=...`` override that changes the learning rule is applied first and starts the ``method``
    section afresh: the options of a file's or preset's rule belong to that rule (``--preset
    open_tract_cifar100_resnet method.name=normal`` drops its ``l: 0.05``); the other ``method.*`` overrides are
    then applied on top, in any order.
    """
    data = copy.deepcopy(data)
    overrides = list(overrides)
    for item in overrides:
        key, sep, text = item.partition("=")
        if sep and key.strip() == "method.name":
            method = data.get("method")
            name = _parse_value(text)
            old = method.get("name", "normal") if isinstance(method, dict) else None
            if old != name:
                data["method"] = {"name": name}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. optim.lr=0.1")
        key, text = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r}: empty key component in {key!r}")
        node = data
        for i, p in enumerate(parts[:-1]):
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[:i + 1])!r} is not a section")
            node = child
        node[parts[-1]] = _parse_value(text)
    return data


def config_from_dict(data: dict) -> RunConfig:
    """Validate a nested dict (as read from YAML) into a :class:`RunConfig`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(data).__name__}")
    cfg = _build(RunConfig, _fold_run_alias(data), "")
    _check_semantics(cfg)
    from tractable.train.task import prepare_config

    prepare_config(cfg)  # the task's own defaults for the rest of the run (e.g. diffusion's folder transform)
    return cfg


def load_config(path: Union[str, Path, None] = None, overrides: Sequence[str] = ()) -> RunConfig:
    """YAML file (or nothing) plus ``key=value`` overrides → validated :class:`RunConfig`."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        with open(path) as f:
            loaded = yaml.safe_load(f)
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
        data = loaded or {}
    data = _fold_run_alias(data)
    data = apply_overrides(data, list(overrides))
    return config_from_dict(data)


def _plain(v):
    if isinstance(v, MethodConfig):  # the rule's options sit flat next to its name
        return {"name": v.name, **_plain(v.options)}
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def config_to_dict(cfg) -> dict:
    """Plain nested dict (tuples as lists) of a config dataclass; round-trips through :func:`config_from_dict`."""
    return _plain(cfg)


def save_config(cfg: RunConfig, path: Union[str, Path]) -> None:
    """Write the resolved config as YAML."""
    with open(path, "w") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False, default_flow_style=False)
