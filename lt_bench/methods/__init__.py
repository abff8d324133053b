"""Method registry. Every public module in this package is a method and is imported, so a
new method is one file with a ``@METHODS.register()`` class that carries its name, display
name, defaults and validate() (CONTRIBUTING.md); infrastructure modules carry timm's ``_``
prefix and are not auto-imported. A config's variants of registered methods resolve in
``_variants`` (:func:`resolve_method`)."""

import importlib
import pkgutil

from lt_bench.methods._base import (
    CONSUMES,
    METHODS,
    FitContext,
    FitResult,
    Method,
    display_of,
    get_method,
)
from lt_bench.methods._variants import (
    config_variants,
    declare_variants,
    registered_names,
    resolve_method,
)

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["CONSUMES", "METHODS", "FitContext", "FitResult", "Method", "config_variants",
           "declare_variants", "display_of", "get_method", "registered_names", "resolve_method"]
