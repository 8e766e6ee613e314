"""Typed validation of configuration sections: the annotations of a dataclass are the schema.

:func:`build` turns a mapping (as read from YAML or ``key=value`` overrides) into an instance of a dataclass,
checking every key against the fields' annotations with :func:`coerce` — bool, int, float (``1e-3`` written as
a string is accepted), str, ``Literal[...]``, ``Optional``, lists, tuples, mappings and nested dataclasses. An
unknown key, a wrong type, a value outside an enumeration or a missing required key is a :class:`ConfigError`
naming the key and what is accepted (:func:`type_name`). A dataclass with a ``from_config_value(value, key)``
classmethod builds itself (the ``method`` section, whose keys depend on the chosen rule).

The run configuration (:mod:`tractable.train.config`), the learning rules' and the tasks' ``Options`` all use
this module; it imports nothing else of the package.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Dict, List, Literal, Sequence, Tuple, Union

__all__ = ["ConfigError", "type_name", "coerce", "build", "join", "plain"]


class ConfigError(ValueError):
    """An invalid configuration: unknown key, wrong type, value outside an enumeration, missing key."""


def plain(v):
    """A plain nested dict/list of a config value (dataclasses as dicts, tuples as lists). A dataclass with a
    ``to_plain()`` method writes itself (the ``method`` section)."""
    to_plain = getattr(v, "to_plain", None)
    if to_plain is not None and not isinstance(v, type):
        return to_plain()
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    return v


def type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin is Union:
        args = typing.get_args(tp)
        inner = [a for a in args if a is not type(None)]
        names = " | ".join(type_name(a) for a in inner)
        return f"{names} | null" if len(inner) < len(args) else names
    if origin in (list, List, Sequence):
        (a,) = typing.get_args(tp) or (Any,)
        return f"list of {type_name(a)}"
    if origin in (tuple, Tuple):
        return "list of " + ", ".join(type_name(a) for a in typing.get_args(tp))
    if origin in (dict, Dict):
        return "mapping"
    if tp is Any:
        return "any value"
    return getattr(tp, "__name__", str(tp))


def coerce(value, tp, key: str):
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
            raise ConfigError(f"{key}: null is not allowed; expected {type_name(tp)}")
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, key)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{key}: expected {type_name(tp)}, got {value!r} ({type(value).__name__})")
    if origin in (list, List, Sequence):
        (a,) = typing.get_args(tp) or (Any,)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected {type_name(tp)}, got {value!r} ({type(value).__name__})")
        return [coerce(v, a, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (tuple, Tuple):
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values ({type_name(tp)}), got {value!r}")
        return tuple(coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
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
    special = getattr(tp, "from_config_value", None)
    if special is not None:  # a section with its own builder (the ``method`` section)
        return special(value, key)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    raise TypeError(f"config: unsupported annotation {tp!r} for {key}")  # a bug in this module, not user input


def build(cls, data, prefix: str):
    if isinstance(data, cls):
        data = plain(data)
    where = prefix or "the top level"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {data!r} ({type(data).__name__})")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(
            f"unknown key {join(prefix, unknown[0])!r} in {where}; valid keys: {', '.join(fields)}"
        )
    kwargs = {}
    for name, f in fields.items():
        key = join(prefix, name)
        if name in data:
            kwargs[name] = coerce(data[name], hints[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            special = getattr(hints[name], "from_config_value", None)
            if special is not None:
                kwargs[name] = special({}, key)
            elif dataclasses.is_dataclass(hints[name]):
                kwargs[name] = build(hints[name], {}, key)  # reports the section's missing keys
            else:
                raise ConfigError(f"missing required key {key!r}")
    return cls(**kwargs)


def join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
