"""Generalised re-weighting: CE weighted by ``π_k^(−exponent)`` (mean 1; 1 = inverse frequency)."""

from typing import Any, ClassVar

import torch

from lt_bench.methods.base import METHODS, FitContext
from lt_bench.methods.heads import HEAD_DEFAULTS, HeadMethod
from lt_bench.methods.losses import inverse_frequency_weights, weighted_ce


@METHODS.register("grw")
class GeneralisedReweighting(HeadMethod):
    name = "grw"
    defaults: ClassVar[dict[str, Any]] = {**HEAD_DEFAULTS, "exponent": 1.0}
    description = "inverse-frequency weighted CE, w_k ∝ π_k^(−exponent)"

    def setup(self, ctx: FitContext) -> None:
        self.weight = torch.as_tensor(
            inverse_frequency_weights(ctx.train_counts, self.hparams["exponent"]),
            dtype=torch.float32)

    def loss(self, logits: torch.Tensor, y: torch.Tensor, epoch: int) -> torch.Tensor:
        return weighted_ce(logits, y, self.weight)
