"""Logit-adjusted loss (Menon et al. 2021): ``CE(z + τ log π, y)``; τ = 1 is Balanced Softmax.

At test time the raw logits ``z`` are used, which is what removes the train prior.
"""

from typing import Any, ClassVar

from lt_bench.methods._base import METHODS, FitContext
from lt_bench.methods._heads import HEAD_DEFAULTS, HeadMethod


@METHODS.register()
class LogitAdjusted(HeadMethod):
    name = "la"
    display = "LA"
    defaults: ClassVar[dict[str, Any]] = {**HEAD_DEFAULTS, "tau": 1.0}
    description = "logit-adjusted loss CE(z + τ log π, y)"

    def setup(self, ctx: FitContext) -> None:
        import torch
        self.adjust = self.hparams["tau"] * torch.as_tensor(ctx.log_train_prior, dtype=torch.float32)

    def loss(self, logits, y, epoch: int):
        import torch.nn.functional as F
        return F.cross_entropy(logits + self.adjust, y)
