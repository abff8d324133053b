"""LDAM (Cao et al. 2019): margin ``m_y ∝ n_y^(−1/4)`` (largest 0.5) subtracted from the
true class's cosine, i.e. ``z_y − s · m_y`` with the head scale s; optional DRW.

DRW (deferred re-weighting): from epoch ``drw_epoch`` on (0-based; ``null`` = off, the
default) each sample's loss is weighted by its class-balanced weight
``(1 − β)/(1 − β^{n_y})`` (β = ``drw_beta``, mean 1). The reference code switches at 4/5 of
training: kaidic/LDAM-DRW ``cifar_train.py`` ``idx = epoch // 160`` of 200 epochs (betas
``[0, 0.9999]``), i.e. ``drw_epoch: 8`` of LIFT's 10 epochs, 16 of iNat2018's 20
(config.yaml ``method_overrides`` of the paper's datasets).

A run is labelled by what ran (:meth:`LDAM.label`): "LDAM-DRW" with a DRW epoch, "LDAM"
without.
"""

from typing import Any, ClassVar

from lt_bench.methods._base import METHODS, FitContext
from lt_bench.methods._heads import HEAD_DEFAULTS, HeadMethod
from lt_bench.methods._losses import class_balanced_weights, ldam_loss, ldam_margins


@METHODS.register()
class LDAM(HeadMethod):
    name = "ldam"
    display = "LDAM"
    defaults: ClassVar[dict[str, Any]] = {**HEAD_DEFAULTS, "max_margin": 0.5,
                                          "drw_epoch": None, "drw_beta": 0.9999}
    description = "label-distribution-aware margin z_y − s·m_y (optional DRW)"

    @staticmethod
    def label(hparams: dict[str, Any]) -> str:
        """The display name of a run with these hyper-parameters: the paper's LDAM-DRW only
        where DRW ran."""
        return "LDAM" if hparams.get("drw_epoch") is None else "LDAM-DRW"

    def setup(self, ctx: FitContext) -> None:
        import torch
        hp = self.hparams
        self.margins = torch.as_tensor(ldam_margins(ctx.train_counts, hp["max_margin"]),
                                       dtype=torch.float32)
        self.drw_weight = torch.as_tensor(
            class_balanced_weights(ctx.train_counts, hp["drw_beta"]), dtype=torch.float32)

    def loss(self, logits, y, epoch: int):
        drw = self.hparams["drw_epoch"]
        weight = self.drw_weight if drw is not None and epoch >= drw else None
        return ldam_loss(logits, y, self.margins, self.hparams["scale"], weight)
