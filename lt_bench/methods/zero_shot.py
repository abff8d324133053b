"""Zero-shot CLIP: ``z = s · cos(e(x), t_k)`` with the prompt-ensembled class texts."""

from lt_bench.methods.base import METHODS, FitContext, FitResult, Method
from lt_bench.methods.predictor import LinearPredictor, LinearTerm


@METHODS.register("zero_shot")
class ZeroShot(Method):
    name = "zero_shot"
    needs_text = True
    description = "CLIP text classifier (prompt ensemble), no training"

    def fit(self, ctx: FitContext) -> FitResult:
        if ctx.text.embeddings is None or ctx.text.logit_scale is None:
            raise ValueError("zero_shot needs a backbone with a text tower; "
                             f"backbone {ctx.text.meta.get('backbone')!r} has none")
        term = LinearTerm(ctx.text.embeddings, scale=ctx.text.logit_scale)
        return FitResult(LinearPredictor([term]), info={"logit_scale": ctx.text.logit_scale})
