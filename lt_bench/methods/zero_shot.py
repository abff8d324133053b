"""Zero-shot CLIP: ``z = s · cos(e(x), t_k)`` with the prompt-ensembled class texts.

``e(x) = f @ P``: the cached feature is the pre-projection CLS token (LIFT's head feature),
so the stored projection P maps it to open_clip's ``encode_image`` first.
"""

from typing import Any, ClassVar

from lt_bench.methods._base import METHODS, FitContext, FitResult, Method
from lt_bench.methods._predictor import LinearPredictor, LinearTerm


@METHODS.register()
class ZeroShot(Method):
    name = "zero_shot"
    display = "zero-shot"
    defaults: ClassVar[dict[str, Any]] = {"view": "auto"}  # eval_views.split_view
    description = "CLIP text classifier (prompt ensemble), no training"

    def fit(self, ctx: FitContext) -> FitResult:
        if ctx.text.embeddings is None or ctx.text.logit_scale is None:
            from lt_bench.features.store import NoTextTowerError

            raise NoTextTowerError("zero_shot needs a backbone with a text tower; "
                                   f"backbone {ctx.text.meta.get('backbone')!r} has none")
        term = LinearTerm(ctx.text.embeddings, scale=ctx.text.logit_scale,
                          projection=ctx.text.projection)
        return FitResult(LinearPredictor([term]), info={"logit_scale": ctx.text.logit_scale})
