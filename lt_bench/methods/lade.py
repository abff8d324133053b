"""LADE (Hong et al. 2021): logit-adjusted loss (LADE-CE, ``CE(z + log π, y)``) plus
``α ·`` the LADE regulariser (``lt_bench.methods._losses.lade_regulariser``), α = 0.1.

At test time the raw logits ``z`` are used: LADE's post-compensation to a uniform
target prior (log 1/K) only shifts all logits by a constant.
"""

from typing import Any, ClassVar

from lt_bench.methods._base import METHODS, FitContext
from lt_bench.methods._heads import HEAD_DEFAULTS, HeadMethod
from lt_bench.methods._losses import lade_regulariser


@METHODS.register()
class LADE(HeadMethod):
    name = "lade"
    display = "LADE"
    defaults: ClassVar[dict[str, Any]] = {**HEAD_DEFAULTS, "alpha": 0.1, "remine_lambda": 0.1}
    description = "LADE: CE(z + log π, y) + α·LADE regulariser"

    def setup(self, ctx: FitContext) -> None:
        import torch
        self.prior = torch.as_tensor(ctx.train_counts / ctx.train_counts.sum(),
                                     dtype=torch.float32)

    def loss(self, logits, y, epoch: int):
        import torch
        import torch.nn.functional as F
        ce = F.cross_entropy(logits + torch.log(self.prior + 1e-9), y)
        reg = lade_regulariser(logits, y, self.prior, self.hparams["remine_lambda"])
        return ce + self.hparams["alpha"] * reg
