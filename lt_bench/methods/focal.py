"""Focal loss (Lin et al. 2017): ``−(1 − p_y)^γ · log p_y``, γ = 2."""

from typing import Any, ClassVar

from lt_bench.methods._base import METHODS
from lt_bench.methods._heads import HEAD_DEFAULTS, HeadMethod
from lt_bench.methods._losses import focal_loss


@METHODS.register()
class Focal(HeadMethod):
    name = "focal"
    display = "focal"
    defaults: ClassVar[dict[str, Any]] = {**HEAD_DEFAULTS, "gamma": 2.0}
    description = "focal loss −(1−p_y)^γ log p_y"

    def loss(self, logits, y, epoch: int):
        return focal_loss(logits, y, self.hparams["gamma"])
