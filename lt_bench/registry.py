"""One registry type for every family (datasets, backbones, methods, predictor kinds), and
their plugins.

Modelled on timm's ``register_model`` / ``create_model`` / ``list_models``: one
decorator to add an entry, one lookup, and an error that lists the valid names. An entry
may be registered lazily as ``"package.module:attr"`` (:meth:`Registry.add_lazy`),
imported on its first lookup: a kind whose module is heavy (scipy) or lives on a higher
floor is named without importing it.

Plugins (README, "Benchmark your own method"): an installed distribution adds entries
through the entry-point groups ``lt_bench.methods``, ``lt_bench.backbones`` and
``lt_bench.datasets`` (:data:`PLUGIN_GROUPS`). An entry point names a module (or an object
in one); importing it runs its ``@METHODS.register(...)`` / ``BACKBONES.add(...)`` lines, so
a plugin registers exactly as a built-in does. Each entry records its origin: ``built-in``,
or the name of the distribution whose entry point registered it (``lt-bench list``).

Loaded once, lazily: a family's entry points are imported on its registry's first lookup
(``get``, ``names``, ``in``, ``items``), never at import or CLI start-up, after every
built-in family is registered (so a plugin's entries are its own, and a plugin name equal to
a built-in one is caught). A broken entry point (its import raises, or it registers a name
twice) is recorded as a :class:`PluginError` — one line naming the distribution and the
entry point — and raised by every lookup of *that* registry only: the commands that do not
use the family keep working, and ``lt-bench list`` shows the broken entry as a line.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

from lt_bench.errors import DuplicateNameError, UserError

T = TypeVar("T")

BUILT_IN = "built-in"
#: registry kind -> entry-point group
PLUGIN_GROUPS = {"method": "lt_bench.methods", "backbone": "lt_bench.backbones",
                 "dataset": "lt_bench.datasets"}
# the modules registering the built-ins of each family, imported before any plugin
# (strings: the registry sits on the lowest floor and imports nothing above it)
_BUILT_IN_MODULES = ("lt_bench.data", "lt_bench.backbones", "lt_bench.methods")
#: the origin recorded by ``register`` (a distribution's name while its plugin loads)
_origin = BUILT_IN


class UnknownNameError(UserError, KeyError):
    """Raised when a name is not registered; the message lists the valid names. A
    ``KeyError`` too, for callers that look a name up and catch a missing one."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class PluginError(UserError):
    """An installed plugin that could not be loaded (import error, a name registered twice)."""

    def __init__(self, message: str, dist: str, entry_point: str):
        super().__init__(message)
        self.dist = dist
        self.entry_point = entry_point


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._origins: dict[str, str] = {}
        self._group = PLUGIN_GROUPS.get(kind)
        self._plugins_loaded = self._group is None
        self._broken: list[PluginError] = []
        self._lazy: dict[str, str] = {}  # name -> "module:attr" not imported yet

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: ``@METHODS.register("la")`` (name defaults to ``obj.name``)."""

        def deco(obj: T) -> T:
            key = name or getattr(obj, "name", None) or obj.__name__  # type: ignore[attr-defined]
            if key in self._lazy:  # the lazily named module registers the entry itself
                del self._lazy[key]
            elif key in self._entries and self._entries[key] is not obj:
                raise DuplicateNameError(f"{self.kind} {key!r} is registered twice (first by "
                                         f"{self._origins[key]})")
            self._entries[key] = obj
            self._origins[key] = _origin
            return obj

        return deco

    def add(self, name: str, obj: T) -> T:
        """Register an object that is built at runtime (e.g. a backbone spec)."""
        return self.register(name)(obj)

    def add_lazy(self, name: str, target: str) -> None:
        """Register ``"package.module:attr"`` (``attr`` may be dotted, e.g.
        ``Class.method``), imported on the first :meth:`get` of ``name``."""
        if name in self._entries and self._lazy.get(name) != target:
            raise DuplicateNameError(f"{self.kind} {name!r} is registered twice (first by "
                                     f"{self._origins[name]})")
        self._entries[name] = None  # type: ignore[assignment]
        self._origins[name] = _origin
        self._lazy[name] = target

    def declare(self, name: str, obj: T, origin: str) -> T:
        """Register an entry declared at run time (a config's backbone, ``origin="config"``):
        a later declaration of the same origin replaces it; any other entry of that name
        is a clash."""
        self._load()
        if name in self._entries and self._origins[name] != origin:
            raise DuplicateNameError(f"{self.kind} {name!r} is declared in the {origin} but is "
                                     f"already registered ({self._origins[name]}); choose "
                                     "another name")
        self._entries[name] = obj
        self._origins[name] = origin
        return obj

    def undeclare(self, origin: str) -> list[str]:
        """Forget every entry declared with ``origin`` (a process that resolves another
        config, the tests); their names."""
        gone = [n for n, o in self._origins.items() if o == origin]
        for n in gone:
            del self._entries[n], self._origins[n]
        return gone

    # -- lookups (each loads the plugins first, and refuses a broken one)

    def get(self, name: str) -> T:
        self._check()
        try:
            obj = self._entries[name]
        except (KeyError, TypeError):
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(self.names())}"
            ) from None
        if name in self._lazy:
            module, _, attr = self._lazy[name].partition(":")
            obj = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
            self._lazy.pop(name, None)
            self._entries[name] = obj
        return obj

    def names(self) -> list[str]:
        self._check()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._check()
        return name in self._entries

    def items(self):
        self._check()
        return [(name, self.get(name)) for name in self.names()]

    def origin(self, name: str) -> str:
        """``built-in``, a plugin's distribution name, or what declared it (``config``)."""
        self._load()
        return self._origins[name]

    def listing(self) -> tuple[list[tuple[str, T, str]], list[PluginError]]:
        """(name, entry, origin) of every entry and the broken plugins, without raising
        (``lt-bench list`` shows both)."""
        self._load()
        return ([(k, self._entries[k], self._origins[k]) for k in sorted(self._entries)],
                list(self._broken))

    # -- plugins

    def _check(self) -> None:
        self._load()
        if self._broken:
            raise self._broken[0]

    def _load(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True  # first: a plugin that looks names up must not recurse
        for module in _BUILT_IN_MODULES:
            importlib.import_module(module)
        self._broken = load_plugins(self._group)


def load_plugins(group: str) -> list[PluginError]:
    """Import every entry point of ``group``; returns the broken ones (one line each)."""
    global _origin
    from importlib.metadata import entry_points

    broken = []
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        dist = ep.dist.name if ep.dist is not None else "?"
        where = f"{group}: {ep.name} = {ep.value}"
        _origin = dist
        try:
            ep.load()
        except Exception as e:  # noqa: BLE001  (any failure of a plugin is the plugin's)
            first = (str(e).strip().splitlines() or [""])[0]
            broken.append(PluginError(
                f"plugin {dist!r} (entry point {where}) failed to load: "
                f"{type(e).__name__}: {first}; fix it, or uninstall it "
                f"(pip uninstall {dist})", dist, where))
        finally:
            _origin = BUILT_IN
    return broken
