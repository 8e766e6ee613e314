"""A named registry of classes (learning rules, tasks): ``@registry.register("name")``, lookup, listing.

Every extension point of the runner that is chosen by a config string uses one of these, so registering,
the duplicate check and the "accepted values" error read the same everywhere.
"""
from __future__ import annotations

from typing import Callable, Dict, List


class ClassRegistry:
    """Classes by name. ``what`` names an entry in messages ("learning rule"); ``key`` is the config key that
    selects one ("method.name"); ``base`` returns the class every entry must subclass (resolved lazily)."""

    def __init__(self, what: str, key: str, base: Callable[[], type]):
        self.what, self.key, self._base = what, key, base
        self._classes: Dict[str, type] = {}

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
        return sorted(self._classes)

    def get(self, name: str) -> type:
        if name not in self._classes:
            raise ValueError(f"{self.key}: unknown {self.what} {name!r}; accepted values: "
                             f"{', '.join(map(repr, self.names()))}")
        return self._classes[name]
