"""A named registry of classes (learning rules, tasks): ``@registry.register("name")``, lookup, listing.

Every extension point of the runner that is chosen by a config string uses one of these, so registering,
the duplicate check and the "accepted values" error read the same everywhere.
"""
from __future__ import annotations

import importlib
from typing import Callable, Dict, List, Optional


class ClassRegistry:
    """Classes by name. ``what`` names an entry in messages ("learning rule"); ``key`` is the config key that
    selects one ("method.name"); ``base`` returns the class every entry must subclass (resolved lazily).
    ``modules``: names of modules that register further entries (one per family), imported the first time the
    registry is read; the list is read live, so names appended later are imported too."""

    def __init__(self, what: str, key: str, base: Callable[[], type], modules: Optional[List[str]] = None):
        self.what, self.key, self._base = what, key, base
        self._classes: Dict[str, type] = {}
        self._modules = modules if modules is not None else []
        self._loaded: List[str] = []

    def _load_modules(self) -> None:
        for name in self._modules:
            if name not in self._loaded:
                self._loaded.append(name)
                importlib.import_module(name)

    def register(self, name: str) -> Callable[[type], type]:
        """Class decorator: make a subclass of the base available under ``name`` (also sets ``cls.name``)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"register: a {self.what} name must be a non-empty string, got {name!r}")

        def deco(cls):
            base = self._base()
            if not (isinstance(cls, type) and issubclass(cls, base)):
                raise TypeError(f"register({name!r}): expected a {base.__name__} subclass, got {cls!r}")
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(f"register: a {self.what} named {name!r} is already registered "
                                 f"({self._classes[name].__qualname__})")
            self._classes[name] = cls
            cls.name = name
            return cls

        return deco

    def names(self) -> List[str]:
        self._load_modules()
        return sorted(self._classes)

    def get(self, name: str) -> type:
        self._load_modules()
        if name not in self._classes:
            raise ValueError(f"{self.key}: unknown {self.what} {name!r}; accepted values: "
                             f"{', '.join(map(repr, self.names()))}")
        return self._classes[name]
