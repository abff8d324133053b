"""One registry type for every family (datasets, backbones, methods, predictor kinds).

Modelled on timm's ``register_model`` / ``create_model`` / ``list_models``: one
decorator to add an entry, one lookup, and an error that lists the valid names. An entry
may be registered lazily as ``"package.module:attr"`` (:meth:`Registry.add_lazy`),
imported on its first lookup: a kind whose module is heavy (scipy) or lives on a higher
floor is named without importing it.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised when a name is not registered; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._lazy: dict[str, str] = {}  # name -> "module:attr" not imported yet

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: ``@METHODS.register("la")`` (name defaults to ``obj.name``)."""

        def deco(obj: T) -> T:
            key = name or getattr(obj, "name", None) or obj.__name__  # type: ignore[attr-defined]
            if key in self._lazy:  # the lazily named module registers the entry itself
                del self._lazy[key]
            elif key in self._entries and self._entries[key] is not obj:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = obj
            return obj

        return deco

    def add(self, name: str, obj: T) -> T:
        """Register an object that is built at runtime (e.g. a backbone spec)."""
        return self.register(name)(obj)

    def add_lazy(self, name: str, target: str) -> None:
        """Register ``"package.module:attr"`` (``attr`` may be dotted, e.g.
        ``Class.method``), imported on the first :meth:`get` of ``name``."""
        if name in self._entries and self._lazy.get(name) != target:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = None  # type: ignore[assignment]
        self._lazy[name] = target

    def get(self, name: str) -> T:
        try:
            obj = self._entries[name]
        except (KeyError, TypeError):
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(self.names())}"
            ) from None
        if name in self._lazy:
            module, _, attr = self._lazy[name].partition(":")
            obj = import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
            self._lazy.pop(name, None)
            self._entries[name] = obj
        return obj

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def items(self):
        return [(name, self.get(name)) for name in self.names()]
