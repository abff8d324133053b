"""Class-balanced loss (Cui et al. 2019): CE weighted by ``(1 − β)/(1 − β^{n_k})``, mean 1."""

from typing import Any, ClassVar

from lt_bench.methods._base import METHODS, FitContext
from lt_bench.methods._heads import HEAD_DEFAULTS, HeadMethod
from lt_bench.methods._losses import class_balanced_weights, weighted_ce


@METHODS.register()
class ClassBalanced(HeadMethod):
    name = "cb"
    display = "CB"
    defaults: ClassVar[dict[str, Any]] = {**HEAD_DEFAULTS, "beta": 0.9999}
    description = "class-balanced CE, w_k = (1−β)/(1−β^n_k)"

    def setup(self, ctx: FitContext) -> None:
        import torch
        self.weight = torch.as_tensor(
            class_balanced_weights(ctx.train_counts, self.hparams["beta"]), dtype=torch.float32)

    def loss(self, logits, y, epoch: int):
        return weighted_ce(logits, y, self.weight)
