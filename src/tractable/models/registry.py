"""The model registry: ``register_model(name)``, ``create_model(name, **kwargs)``, ``list_models()``.

Builders are plain callables (functions or classes) taking keyword arguments and returning an ``nn.Module``.
Names are snake_case. ``create_model`` checks the keyword arguments against the builder's signature before
calling it, so a typo (``num_class=10``) fails with a ``TypeError`` that lists the accepted names instead of
being silently swallowed; bad *values* are the builders' business and raise ``ValueError``.

Every built-in builder accepts the common keywords ``num_classes``, ``in_channels`` and ``image_size`` (1-D
models: ``input_size``), plus its own; :func:`model_defaults` lists them with their defaults.
"""
from __future__ import annotations

import difflib
import fnmatch
import inspect
import re
from typing import Any, Callable, Dict, List, Optional

import torch.nn as nn

__all__ = ["register_model", "unregister_model", "create_model", "list_models", "model_defaults", "model_task"]

_NAME = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
_REGISTRY: Dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``builder`` under the snake_case ``name``; returns the builder unchanged.

    >>> @register_model("my_net")
    ... def my_net(*, num_classes=10, in_channels=3, image_size=32):
    ...     ...
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"register_model: name must be snake_case (lowercase letters, digits, '_'), got {name!r}")

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if not callable(builder):
            raise TypeError(f"register_model({name!r}): expected a callable builder, got {type(builder).__name__}")
        old = _REGISTRY.get(name)
        if old is not None and _qualname(old) != _qualname(builder):
            raise ValueError(f"register_model: the name {name!r} is already registered to {_qualname(old)}")
        _REGISTRY[name] = builder  # same qualname: a module reload, replace silently
        return builder

    return decorator


def unregister_model(name: str) -> Callable[..., nn.Module]:
    """Remove ``name`` from the registry and return its builder (for tests and interactive re-definition)."""
    builder = _lookup(name)
    del _REGISTRY[name]
    return builder


def list_models(pattern: Optional[str] = None) -> List[str]:
    """Sorted registered names, optionally filtered by a shell-style ``pattern`` (``"resnet*"``)."""
    names = sorted(_REGISTRY)
    if pattern is not None:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return names


def model_defaults(name: str) -> Dict[str, Any]:
    """The keyword arguments ``create_model(name, ...)`` accepts, with their defaults."""
    builder = _lookup(name)
    out = {}
    for p in inspect.signature(builder).parameters.values():
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            out[p.name] = None if p.default is p.empty else p.default
    return out


def model_task(name: str) -> Optional[str]:
    """The runner task a builder declares (``builder.task``, e.g. ``"masked_autoencoding"``), or None."""
    return getattr(_lookup(name), "task", None)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with keyword arguments ``kwargs``.

    Raises ``ValueError`` for an unknown name (listing the registered ones) and ``TypeError`` for an unknown
    keyword (listing the accepted ones).
    """
    builder = _lookup(name)
    params = inspect.signature(builder).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        accepted = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise TypeError(
                f"create_model({name!r}): unknown keyword argument(s) {', '.join(map(repr, unknown))}; "
                f"accepted: {', '.join(accepted)}"
            )
    model = builder(**kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"create_model({name!r}): the builder returned {type(model).__name__}, not an nn.Module")
    return model


def _lookup(name: str) -> Callable[..., nn.Module]:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        hint = ""
        if isinstance(name, str):
            close = difflib.get_close_matches(name.lower().replace("-", "_"), list(_REGISTRY), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"unknown model name {name!r}{hint}; registered models: {', '.join(sorted(_REGISTRY))}"
        ) from None


def _qualname(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
