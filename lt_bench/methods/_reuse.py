"""Shared pieces of the post-hoc methods: reuse a base run's head, tune one knob on val.

Post-hoc and never retrain: they take the predictors of finished runs
(``ctx.base_predictors``) and change how logits are formed. A knob is chosen by top-1 on the tune
split (val, class-balanced); where val overlaps train (``ctx.tune`` False) the knob keeps
its default and the run records why.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lt_bench.errors import InputValidationError
from lt_bench.methods._base import FitContext
from lt_bench.methods._predictor import LinearPredictor, split_features_logits

NO_TUNE_REASON = ("the tune split overlaps train (Dataset.val_overlaps_train): knobs of heads "
                  "trained on train are not tuned on it; the default is used")


def base_linear(ctx: FitContext, method: str, name: str) -> LinearPredictor:
    """The linear predictor of base run ``name`` (a head whose weights can be reused)."""
    if name not in ctx.base_predictors:
        raise InputValidationError(f"method {method!r} builds on a {name!r} run; none was given (--base)")
    p = ctx.base_predictors[name]
    if getattr(p, "kind", None) != "linear":
        raise InputValidationError(f"method {method!r} needs the {name!r} run's linear head; that run "
                                   f"has a predictor of kind {getattr(p, 'kind', None)!r}")
    return p


def val_logits(predictor, ctx: FitContext) -> np.ndarray:
    """``predictor``'s val logits as the run reports them: averaged over the test-time
    crops where val has them (five-crop TTE), so a knob is tuned on what is reported."""
    return split_features_logits(predictor, ctx.val)


def float_grid(lo: float, hi: float, step: float) -> list[float]:
    """``lo, lo + step, …, hi`` (inclusive, rounded to 6 digits)."""
    if step <= 0 or hi < lo:
        raise InputValidationError(f"bad grid: min {lo}, max {hi}, step {step} (need step > 0, max >= min)")
    n = int(np.floor((hi - lo) / step + 1e-9)) + 1
    return [round(lo + i * step, 6) for i in range(n)]


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(logits).argmax(1) == labels).mean())


def choose(knob: str, grid: Sequence[Any], default: Any, val_top1: Callable[[Any], float],
           ctx: FitContext) -> tuple[Any, dict[str, Any]]:
    """Pick ``knob`` from ``grid`` by val top-1 (ties: the value nearest the default, then
    the first); without tuning, the default. Returns the value and what to record."""
    if not ctx.tune:
        return default, {knob: default, "tuned": False, "tune_note": NO_TUNE_REASON}
    scores = {v: val_top1(v) for v in grid}
    best = max(scores.values())
    ties = [v for v in grid if scores[v] == best]
    chosen = min(ties, key=lambda v: abs(float(v) - float(default)))
    return chosen, {knob: chosen, "tuned": True, "tune_split": "val",
                    f"val_top1_by_{knob}": {str(v): s for v, s in scores.items()}}
