"""Balanced Softmax (Ren et al. 2020): the logit-adjusted loss with τ fixed to 1."""

from typing import Any, ClassVar

from lt_bench.methods._base import METHODS, FitContext
from lt_bench.methods._heads import HEAD_DEFAULTS
from lt_bench.methods.la import LogitAdjusted


@METHODS.register()
class BalancedSoftmax(LogitAdjusted):
    name = "bs"
    display = "BS"
    defaults: ClassVar[dict[str, Any]] = dict(HEAD_DEFAULTS)  # no τ: it is fixed to 1
    description = "balanced softmax CE(z + log π, y) (= la at τ = 1)"

    def setup(self, ctx: FitContext) -> None:
        import torch
        self.adjust = torch.as_tensor(ctx.log_train_prior, dtype=torch.float32)
