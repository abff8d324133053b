"""Method registry. Every public module in this package is a method and is imported, so a
new method is one file with a ``@METHODS.register("name")`` class (CONTRIBUTING.md);
infrastructure modules carry timm's ``_`` prefix and are not auto-imported."""

import importlib
import pkgutil

from lt_bench.methods._base import (
    CONSUMES,
    METHODS,
    FitContext,
    FitResult,
    Method,
    get_method,
)

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["CONSUMES", "METHODS", "FitContext", "FitResult", "Method", "get_method"]
