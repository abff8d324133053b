"""Generalised logit adjustment (Zhu et al. 2023), post hoc:
``z_zs/T − log q̂ + z_la``.

The zero-shot logits debiased by the backbone's estimated pre-training prior q̂, plus the
``la`` run's logits (already free of the downstream prior). ``z_zs/T`` is the
temperature-calibrated zero-shot logit that q̂ was estimated on (``lt-bench prior``;
T = 1 where the prior file records none). Nothing is trained or tuned.
"""

import numpy as np

from lt_bench.methods._base import METHODS, FitContext, FitResult, Method
from lt_bench.methods._predictor import LinearPredictor, LinearTerm
from lt_bench.methods._reuse import base_linear


@METHODS.register("gla")
class GLA(Method):
    name = "gla"
    requires = ("la",)
    needs_prior = True
    description = "post-hoc ensemble z_zs/T − log q̂ + z_la (debiased zero-shot + LA head)"

    def fit(self, ctx: FitContext) -> FitResult:
        if ctx.text.embeddings is None or ctx.text.logit_scale is None:
            raise ValueError("gla needs a backbone with a text tower (zero-shot logits); "
                             f"backbone {ctx.text.meta.get('backbone')!r} has none")
        if ctx.pretrain_prior is None:
            raise ValueError("gla needs the backbone's estimated prior q̂ (--prior)")
        la = base_linear(ctx, self.name, "la")
        t = float(ctx.pretrain_prior_temperature or 1.0)
        zs = LinearTerm(ctx.text.embeddings, scale=ctx.text.logit_scale / t,
                        projection=getattr(ctx.text, "projection", None))
        bias = -np.log(np.asarray(ctx.pretrain_prior, dtype=np.float64))
        if la.bias is not None:
            bias = bias + la.bias
        return FitResult(LinearPredictor([zs, *la.terms], bias),
                         info={"temperature": t, "logit_scale": ctx.text.logit_scale})
