"""Focal loss (Lin et al. 2017): ``−(1 − p_y)^γ · log p_y``, γ = 2."""

from typing import Any, ClassVar

import torch

from lt_bench.methods.base import METHODS
from lt_bench.methods.heads import HEAD_DEFAULTS, HeadMethod
from lt_bench.methods.losses import focal_loss


@METHODS.register("focal")
class Focal(HeadMethod):
    name = "focal"
    defaults: ClassVar[dict[str, Any]] = {**HEAD_DEFAULTS, "gamma": 2.0}
    description = "focal loss −(1−p_y)^γ log p_y"

    def loss(self, logits: torch.Tensor, y: torch.Tensor, epoch: int) -> torch.Tensor:
        return focal_loss(logits, y, self.hparams["gamma"])
