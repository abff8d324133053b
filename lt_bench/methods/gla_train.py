"""Both priors in the loss (the paper's Eq. 6): ``CE(z + log π + log q̂, y)``.

``π`` is the downstream train prior, ``q̂`` the backbone's estimated pre-training prior
(``lt-bench prior``). Test logits are the raw ``z``.
"""

from typing import Any, ClassVar

import numpy as np

from lt_bench.errors import InputValidationError
from lt_bench.methods._base import METHODS, FitContext
from lt_bench.methods._heads import HEAD_DEFAULTS, HeadMethod


@METHODS.register()
class GLATrain(HeadMethod):
    name = "gla_train"
    display = "GLA (trained)"
    defaults: ClassVar[dict[str, Any]] = dict(HEAD_DEFAULTS)
    needs_prior = True
    description = "cosine head, CE(z + log π + log q̂, y)"

    def setup(self, ctx: FitContext) -> None:
        import torch
        if ctx.pretrain_prior is None:
            raise InputValidationError("gla_train needs the backbone's estimated prior q̂ (--prior)")
        adjust = ctx.log_train_prior + np.log(np.asarray(ctx.pretrain_prior, dtype=np.float64))
        self.adjust = torch.as_tensor(adjust, dtype=torch.float32)

    def loss(self, logits, y, epoch: int):
        import torch.nn.functional as F
        return F.cross_entropy(logits + self.adjust, y)
