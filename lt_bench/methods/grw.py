"""Generalised re-weighting: CE weighted by ``π_k^(−exponent)`` (mean 1; 1 = inverse frequency)."""

from typing import Any, ClassVar

from lt_bench.methods._base import METHODS, FitContext
from lt_bench.methods._heads import HEAD_DEFAULTS, HeadMethod
from lt_bench.methods._losses import inverse_frequency_weights, weighted_ce


@METHODS.register()
class GeneralisedReweighting(HeadMethod):
    name = "grw"
    display = "GRW"
    defaults: ClassVar[dict[str, Any]] = {**HEAD_DEFAULTS, "exponent": 1.0}
    description = "inverse-frequency weighted CE, w_k ∝ π_k^(−exponent)"

    def setup(self, ctx: FitContext) -> None:
        import torch
        self.weight = torch.as_tensor(
            inverse_frequency_weights(ctx.train_counts, self.hparams["exponent"]),
            dtype=torch.float32)

    def loss(self, logits, y, epoch: int):
        return weighted_ce(logits, y, self.weight)
