"""``la_focal``: the focal loss on logit-adjusted logits, a loss not in lt-bench's grid.

    loss = −(1 − p_y)^γ · log p_y,   p = softmax(z + τ · log π)

τ = 1 makes the logits those of Balanced Softmax / LA (Menon et al. 2021), γ > 0 then
down-weights the examples the adjusted model already gets right (Lin et al. 2017); γ = 0
is exactly ``la``, τ = 0 exactly ``focal``. At test time the raw logits z are used, as for
``la``. Written as lt-bench's own head methods are (lt_bench/methods/la.py, focal.py): the
cosine head, its LIFT recipe and every metric come from ``HeadMethod``; a method only says
its loss.
"""

from typing import Any, ClassVar

from lt_bench.methods._base import METHODS, FitContext, check_number
from lt_bench.methods._heads import HEAD_DEFAULTS, HeadMethod
from lt_bench.methods._losses import focal_loss


@METHODS.register("la_focal")
class LogitAdjustedFocal(HeadMethod):
    name = "la_focal"
    #: every accepted hyper-parameter with its default; anything else is a config error
    defaults: ClassVar[dict[str, Any]] = {**HEAD_DEFAULTS, "tau": 1.0, "gamma": 2.0}
    description = "focal loss on logit-adjusted logits −(1−p_y)^γ log p_y, p = softmax(z + τ log π)"

    def validate(self) -> None:
        super().validate()
        check_number(self.name, "gamma", self.hparams["gamma"], minimum=0)
        check_number(self.name, "tau", self.hparams["tau"])

    def setup(self, ctx: FitContext) -> None:
        import torch

        self.adjust = self.hparams["tau"] * torch.as_tensor(ctx.log_train_prior,
                                                            dtype=torch.float32)

    def loss(self, logits, y, epoch: int):
        return focal_loss(logits + self.adjust, y, self.hparams["gamma"])
