"""τ-normalisation (Kang et al. 2020) of the CE run's head: rows ``w_k / ‖w_k‖^τ``.

Post hoc: reuses the ``ce`` run's weights, τ chosen on val from ``tau_min..tau_max`` by
``tau_step`` (default when val overlaps train: ``tau``). The CE head is a cosine classifier,
i.e. τ = 1 reproduces it; τ = 0 uses the raw weights, whose norms grow with class frequency.
"""

from typing import Any, ClassVar

from lt_bench.methods._base import METHODS, FitContext, FitResult, Method
from lt_bench.methods._predictor import LinearPredictor, LinearTerm
from lt_bench.methods._reuse import base_linear, choose, float_grid, top1, val_logits


def tau_normalised(p: LinearPredictor, tau: float) -> LinearPredictor:
    terms = [LinearTerm(t.weight, t.scale, t.normalize_features, weight_power=tau)
             for t in p.terms]
    return LinearPredictor(terms, p.bias)


@METHODS.register()
class TauNorm(Method):
    name = "tau_norm"
    display = "τ-norm"
    defaults: ClassVar[dict[str, Any]] = {"tau": 1.0, "tau_min": 0.0, "tau_max": 2.0,
                                          "tau_step": 0.1, "view": "auto"}
    requires = ("ce",)
    description = "post-hoc τ-normalisation of the CE head, τ tuned on val"

    def fit(self, ctx: FitContext) -> FitResult:
        hp = self.hparams
        ce = base_linear(ctx, self.name, "ce")
        grid = float_grid(hp["tau_min"], hp["tau_max"], hp["tau_step"])
        tau, info = choose("tau", grid, hp["tau"],
                           lambda t: top1(val_logits(tau_normalised(ce, t), ctx),
                                          ctx.val.labels), ctx)
        return FitResult(tau_normalised(ce, tau), info=info)
