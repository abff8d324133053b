"""Method registry. Every module in this package is imported, so a new method is one
file with a ``@METHODS.register("name")`` class (see CONTRIBUTING.md)."""

import importlib
import pkgutil

from lt_bench.methods.base import METHODS, FitContext, FitResult, Method, get_method

_INFRA = {"base", "predictor", "heads", "losses", "cli", "prior", "backdoor_ops"}
for _m in pkgutil.iter_modules(__path__):
    if _m.name not in _INFRA and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["METHODS", "FitContext", "FitResult", "Method", "get_method"]
