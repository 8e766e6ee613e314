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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

import yaml

from tractable.train.rules import STACK_SEPARATOR, check_stack, rule_class, rules_with_option
from tractable.train.schema import ConfigError, build as _build, coerce as _coerce, join as _join, plain as _plain
from tractable.train.task import list_tasks

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
    "load_run_config",
    "apply_overrides",
]


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
    """Learning rule(s) attached to the model before the optimizer is built (see :mod:`tractable.train.rules`).

    ``name`` selects one rule, or TrAct stacked with one other rule (``tract+fa``, ``tract+subspace``; see
    :func:`tractable.train.rules.check_stack` for the pairs that compose). ``rules`` maps each rule of ``name`` to
    its validated ``Options`` instance (``tractable list rules`` shows them).

    Written in YAML or as overrides, one rule keeps its options flat next to ``name``
    (``method.name=tract method.l=0.05``; ``method.tract.l=0.05`` is accepted too); a stack puts each rule's
    options under the rule's name (``method.name=tract+fa method.tract.l=0.1 method.fa.granularity=layer``). The
    saved ``config.yaml`` uses the same forms and records every option of every rule.

    ``cfg.method.options`` is the single rule's ``Options``; ``cfg.method.<option>`` reads one of them;
    ``cfg.method.<rule>`` is that rule's ``Options`` (single rule or stack).
    """

    name: str = "normal"
    rules: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not self.rules:
            self.rules = _build_method({"name": self.name}, "method").rules

    @property
    def stacked(self) -> bool:
        """True when ``name`` stacks two rules (``tract+<rule>``)."""
        return len(self.rules) > 1

    @property
    def options(self):
        """The one rule's ``Options`` (a stack has one per rule: ``rules[<rule>]``)."""
        if self.stacked:
            raise AttributeError(f"method {self.name!r} stacks several rules: read cfg.method.rules[<rule>] or "
                                 f"cfg.method.<rule> ({', '.join(self.rules)})")
        return next(iter(self.rules.values()))

    def __getattr__(self, key):  # only reached when normal lookup fails: a rule's options, or one option
        if key.startswith("__") or key in ("rules", "options", "name"):
            raise AttributeError(key)
        rules = self.__dict__.get("rules") or {}
        if key in rules:
            return rules[key]
        name = self.__dict__.get("name")
        if len(rules) == 1:
            try:
                return getattr(next(iter(rules.values())), key)
            except AttributeError:
                pass
            raise AttributeError(f"learning rule {name!r} has no option {key!r}")
        raise AttributeError(f"method {name!r} stacks several rules: read cfg.method.<rule>.{key} "
                             f"({', '.join(rules)})")

    @classmethod
    def from_config_value(cls, value, key: str) -> "MethodConfig":
        return _build_method(value, key)

    def to_plain(self) -> Dict[str, Any]:
        if not self.stacked:  # the rule's options sit flat next to its name
            return {"name": self.name, **_plain(self.options)}
        return {"name": self.name, **{rule: _plain(opts) for rule, opts in self.rules.items()}}


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


#: keys every ``method`` section carried before options belonged to their rule, with their old defaults: a
#: config written then (e.g. a run directory's config.yaml with ``name: normal, l: 0.1, exact: false``) still
#: loads when a key the rule does not know holds its old default
_LEGACY_METHOD_DEFAULTS = {"l": 0.1, "exact": False, "layer": None, "kwargs": {}}


def _build_method(data, prefix: str = "method", *, legacy: bool = False) -> MethodConfig:
    """The ``method`` section: ``name`` picks the rule(s), the other keys are validated against their ``Options``.

    ``legacy``: the section comes from a saved ``config.yaml`` written before options belonged to their rule; a
    key of :data:`_LEGACY_METHOD_DEFAULTS` holding its old default is then dropped. Anywhere else (command line,
    a user's YAML) every key the chosen rule does not have is an error, whatever its value.
    """
    if isinstance(data, MethodConfig):
        data = data.to_plain()
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping (name and the rule's options), got {data!r} "
                          f"({type(data).__name__})")
    name = _coerce(data.get("name", "normal"), str, _join(prefix, "name"))
    parts = name.split(STACK_SEPARATOR)
    try:
        classes = {part: rule_class(part) for part in parts}
    except ValueError as e:
        raise ConfigError(str(e)) from None
    reason = check_stack(parts)
    if reason is not None:
        raise ConfigError(f"{_join(prefix, 'name')}: {name!r} cannot be stacked: {reason}")
    given: Dict[str, Dict[str, Any]] = {part: {} for part in parts}
    for k, v in data.items():
        if k == "name":
            continue
        if k in classes and (len(parts) > 1 or isinstance(v, dict)):  # method.<rule>.<option>
            if not isinstance(v, dict):
                raise ConfigError(f"{_join(prefix, k)}: expected the options of rule {k!r} as a mapping "
                                  f"(e.g. {_join(prefix, k)}.<option>=...), got {v!r}")
            for opt, value in v.items():
                if opt in given[k] and given[k][opt] != value:
                    raise ConfigError(f"{_join(prefix, k + '.' + opt)}: given twice with different values "
                                      f"({given[k][opt]!r} and {value!r})")
                given[k][opt] = value
            continue
        if len(parts) == 1:
            rule = parts[0]
            fields = [f.name for f in dataclasses.fields(classes[rule].Options)]
            if k not in fields:
                if legacy and k in _LEGACY_METHOD_DEFAULTS and _LEGACY_METHOD_DEFAULTS[k] == v:
                    continue
                raise ConfigError(_unknown_option(prefix, k, rule, fields))
            if k in given[rule] and given[rule][k] != v:
                raise ConfigError(f"{_join(prefix, k)}: given twice with different values ({given[rule][k]!r} "
                                  f"and {v!r})")
            given[rule][k] = v
            continue
        owners = [p for p in parts if k in {f.name for f in dataclasses.fields(classes[p].Options)}]
        if owners:
            raise ConfigError(f"unknown key {_join(prefix, k)!r} for stacked rules {name!r}: in a stack each "
                              f"rule's options go under its name, e.g. {_join(prefix, owners[0] + '.' + k)}")
        if k in _all_rule_names():
            raise ConfigError(f"unknown key {_join(prefix, k)!r}: rule {k!r} is not part of method.name={name!r}")
        raise ConfigError(f"unknown key {_join(prefix, k)!r} for stacked rules {name!r}; valid keys: name, "
                          f"{', '.join(parts)}")
    rules = {}
    for part in parts:
        sub = prefix if len(parts) == 1 else _join(prefix, part)
        fields = [f.name for f in dataclasses.fields(classes[part].Options)]
        for k in given[part]:
            if k not in fields:
                raise ConfigError(_unknown_option(sub, k, part, fields))
        options = _build(classes[part].Options, given[part], sub)
        validate = getattr(options, "validate", None)
        if validate is not None:
            try:
                validate()
            except ConfigError:
                raise
            except ValueError as e:
                msg = str(e)
                if sub != prefix and msg.startswith(prefix + "."):  # method.l: ... -> method.tract.l: ...
                    msg = sub + msg[len(prefix):]
                raise ConfigError(msg) from None
        rules[part] = options
    return MethodConfig(name=name, rules=rules)


def _all_rule_names() -> List[str]:
    from tractable.train.rules import list_rules

    return list_rules()


def _unknown_option(prefix: str, key: str, rule: str, fields: List[str]) -> str:
    if key in _all_rule_names():
        return (f"unknown key {_join(prefix, key)!r} for learning rule {rule!r}: {key!r} is a rule of its own; "
                f"to stack it write method.name=tract+{key}" if rule == "tract" else
                f"unknown key {_join(prefix, key)!r} for learning rule {rule!r}: {key!r} is a rule of its own, "
                f"not an option of {rule!r}")
    owners = [r for r in rules_with_option(key) if r != rule]
    hint = f" ({key!r} is an option of {', '.join(map(repr, owners))})" if owners else ""
    return (f"unknown key {_join(prefix, key)!r} for learning rule {rule!r}{hint}; valid keys: "
            f"{', '.join(['name', *fields]) if prefix.count('.') == 0 else ', '.join(fields)}")


def _check_semantics(cfg: RunConfig) -> None:
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


def _rule_options(method: dict, rule: str, parts: List[str]) -> dict:
    """The options a ``method`` mapping gives ``rule`` (flat keys for a single rule, ``method.<rule>`` for all)."""
    out = {}
    if len(parts) == 1:
        out.update({k: v for k, v in method.items() if k != "name" and k != rule})
    nested = method.get(rule)
    if isinstance(nested, dict):
        out.update(nested)
    return out


def _carry_options(method, name) -> dict:
    """A fresh ``method`` section for rule(s) ``name``, keeping the options of rules that were already there."""
    new: Dict[str, Any] = {"name": name}
    if not isinstance(method, dict) or not isinstance(name, str):
        return new
    old = str(method.get("name", "normal")).split(STACK_SEPARATOR)
    parts = name.split(STACK_SEPARATOR)
    for rule in parts:
        if rule not in old:
            continue
        opts = _rule_options(method, rule, old)
        if not opts:
            continue
        if len(parts) == 1:
            new.update(opts)
        else:
            new[rule] = opts
    return new


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Apply ``a.b=value`` strings to a nested dict (returns a new dict; values parsed as YAML).

    A ``method.name=...`` override that changes the learning rule is applied first and starts the ``method``
    section afresh: the options of a file's or preset's rule belong to that rule (``--preset
    open_tract_cifar100_resnet method.name=normal`` drops its ``l: 0.05``), except that a rule kept in the new
    name keeps its options (``method.name=tract+subspace`` on that preset keeps λ = 0.05, now under
    ``method.tract``); the other ``method.*`` overrides are then applied on top, in any order.
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
                data["method"] = _carry_options(method, name)
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


def config_from_dict(data: dict, *, saved: bool = False) -> RunConfig:
    """Validate a nested dict (as read from YAML) into a :class:`RunConfig`.

    ``saved``: ``data`` is a run directory's ``config.yaml``, possibly written by an earlier version of tractable
    (see :func:`load_run_config`); only then are the old ``method`` keys that held their old defaults dropped.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(data).__name__}")
    data = _fold_run_alias(data)
    if saved and "method" in data:
        data = {**data, "method": _build_method(data["method"], "method", legacy=True)}
    cfg = _build(RunConfig, data, "")
    _check_semantics(cfg)
    from tractable.train.task import prepare_config

    prepare_config(cfg)  # the task's own defaults for the rest of the run (e.g. diffusion's folder transform)
    return cfg


def load_config(path: Union[str, Path, None] = None, overrides: Sequence[str] = ()) -> RunConfig:
    """YAML file (or nothing) plus ``key=value`` overrides → validated :class:`RunConfig`.

    The file may be a run directory's saved ``config.yaml`` from an early version: its ``method`` keys that every
    rule carried then (``l: 0.1, exact: false, layer: null, kwargs: {}``) are dropped where the rule does not
    have them; an override naming a key the rule does not have is an error whatever its value.
    """
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
    if path is not None and isinstance(data.get("method"), dict):
        data["method"] = _drop_legacy_keys(data["method"])  # a run's saved config.yaml given as the file
    data = apply_overrides(data, list(overrides))
    return config_from_dict(data)


def _drop_legacy_keys(method: dict) -> dict:
    """A file's ``method`` section without the keys early versions wrote for every rule (holding their old
    defaults) that its rule does not have; the overrides given with it are checked strictly afterwards."""
    name = method.get("name", "normal")
    if not isinstance(name, str) or STACK_SEPARATOR in name:
        return method
    try:
        fields = {f.name for f in dataclasses.fields(rule_class(name).Options)}
    except ValueError:
        return method
    return {k: v for k, v in method.items()
            if not (k in _LEGACY_METHOD_DEFAULTS and k not in fields and _LEGACY_METHOD_DEFAULTS[k] == v)}


def config_to_dict(cfg) -> dict:
    """Plain nested dict (tuples as lists) of a config dataclass; round-trips through :func:`config_from_dict`."""
    return _plain(cfg)


def load_run_config(run_dir: Union[str, Path]) -> RunConfig:
    """The validated config of a run directory (``run_dir/config.yaml``, as :func:`save_config` wrote it).

    Raises ``FileNotFoundError`` naming the directory when it holds no ``config.yaml`` (not a run of ``tractable
    train``) and :class:`ConfigError` naming the file when the file is not a valid config.
    """
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        what = "does not exist" if not run_dir.exists() else (
            "is not a directory" if not run_dir.is_dir() else "has no config.yaml")
        raise FileNotFoundError(f"{run_dir} is not a run directory of `tractable train` ({what})")
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a readable YAML file ({type(e).__name__})") from None
    try:
        return config_from_dict(data, saved=True)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def save_config(cfg: RunConfig, path: Union[str, Path]) -> None:
    """Write the resolved config as YAML."""
    with open(path, "w") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False, default_flow_style=False)
