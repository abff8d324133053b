"""Generalised logit adjustment (Zhu et al. 2023), post hoc:
``z_zs/T_zs − log q̂ + z_la/T_la`` (GLA-FS: each term calibrated by its own T on val).

The zero-shot logits debiased by the backbone's estimated pre-training prior q̂, plus the
``la`` run's logits (already free of the downstream prior). ``z_zs/T`` is the
temperature-calibrated zero-shot logit that q̂ was estimated on (``lt-bench prior``;
T = 1 where the prior file records none); T_la by confidence = accuracy on val. Nothing is trained.
"""

from typing import Any, ClassVar

import numpy as np

from lt_bench.errors import InputValidationError
from lt_bench.methods._base import METHODS, FitContext, FitResult, Method
from lt_bench.methods._predictor import LinearPredictor, LinearTerm
from lt_bench.methods._reuse import base_linear, val_logits


@METHODS.register()
class GLA(Method):
    name = "gla"
    display = "GLA"
    defaults: ClassVar[dict[str, Any]] = {"view": "auto"}  # q̂, T_la fitted on this view
    requires = ("la",)
    needs_prior = True
    description = "post-hoc ensemble z_zs/T − log q̂ + z_la (debiased zero-shot + LA head)"

    def fit(self, ctx: FitContext) -> FitResult:
        if ctx.text.embeddings is None or ctx.text.logit_scale is None:
            from lt_bench.features.store import NoTextTowerError

            raise NoTextTowerError("gla needs a backbone with a text tower (zero-shot logits); "
                                   f"backbone {ctx.text.meta.get('backbone')!r} has none")
        if ctx.pretrain_prior is None:
            raise InputValidationError("gla needs the backbone's estimated prior q̂ (--prior)")
        from lt_bench.prior import calibrate_temperature

        la = base_linear(ctx, self.name, "la")
        t = float(ctx.pretrain_prior_temperature or 1.0)
        # GLA-FS (BeierZhu/GLA) calibrates both terms, each by its own T on val; the LA
        # head's T needs a val split disjoint from train (on iNat2018's default policy val
        # is a subset of train, where the head is over-confident): there T_la = 1, recorded
        if ctx.tune:
            t_la = calibrate_temperature(val_logits(la, ctx).astype(np.float64),
                                         ctx.val.labels)  # crop-averaged under TTE
        else:
            t_la = 1.0
        la = LinearPredictor([LinearTerm(x.weight, x.scale / t_la, x.normalize_features,
                                         x.weight_power, x.projection) for x in la.terms],
                             None if la.bias is None else la.bias / t_la)
        zs = LinearTerm(ctx.text.embeddings, scale=ctx.text.logit_scale / t,
                        projection=ctx.text.projection)
        bias = -np.log(np.asarray(ctx.pretrain_prior, dtype=np.float64))
        if la.bias is not None:
            bias = bias + la.bias
        return FitResult(LinearPredictor([zs, *la.terms], bias),
                         info={"temperature": t, "temperature_la": float(t_la),
                               "temperature_la_calibrated": bool(ctx.tune),
                               "logit_scale": ctx.text.logit_scale})
