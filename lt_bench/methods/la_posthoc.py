"""Post-hoc logit adjustment (Menon et al. 2021) of the CE run's head: ``z − τ log π``.

Reuses the ``ce`` run's weights; τ chosen on val from ``tau_min..tau_max`` by ``tau_step``
(default when val overlaps train: ``tau`` = 1, the Bayes-consistent value).
"""

from typing import Any, ClassVar

import numpy as np

from lt_bench.methods._base import METHODS, FitContext, FitResult, Method
from lt_bench.methods._predictor import LinearPredictor
from lt_bench.methods._reuse import base_linear, choose, float_grid, top1, val_logits


def adjusted(p: LinearPredictor, shift: np.ndarray) -> LinearPredictor:
    bias = shift if p.bias is None else p.bias + shift
    return LinearPredictor(list(p.terms), np.asarray(bias, dtype=np.float64))


@METHODS.register()
class LogitAdjustedPostHoc(Method):
    name = "la_posthoc"
    display = "LA (post-hoc)"
    defaults: ClassVar[dict[str, Any]] = {"tau": 1.0, "tau_min": 0.0, "tau_max": 2.0,
                                          "tau_step": 0.1, "view": "auto"}
    requires = ("ce",)
    description = "post-hoc logit adjustment z − τ log π of the CE head, τ tuned on val"

    def fit(self, ctx: FitContext) -> FitResult:
        hp = self.hparams
        ce = base_linear(ctx, self.name, "ce")
        z_val = val_logits(ce, ctx).astype(np.float64)  # crop-averaged under TTE
        grid = float_grid(hp["tau_min"], hp["tau_max"], hp["tau_step"])
        tau, info = choose("tau", grid, hp["tau"],
                           lambda t: top1(z_val - t * ctx.log_train_prior, ctx.val.labels), ctx)
        return FitResult(adjusted(ce, -tau * ctx.log_train_prior), info=info)
