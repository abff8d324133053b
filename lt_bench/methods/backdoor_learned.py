"""Control of the backdoor (issue 13 §1): ``Σ_c w_c z_c`` with one weight ``w_c ≥ 0`` per
member, fitted by minimising the **val** NLL (never test; the run layer's
``fit_member_weights``: convex in w, L-BFGS-B from w = 1, so deterministic). Equal weights
(the backdoor) are one point of that family: the row shows what tuning them on val adds.
``max_weight`` bounds the weights where val is separable (the NLL would fall forever)."""

from typing import Any, ClassVar

from lt_bench.methods._base import METHODS, check_number
from lt_bench.methods._ensemble import EnsembleMethod


@METHODS.register("backdoor_learned")
class BackdoorLearned(EnsembleMethod):
    name = "backdoor_learned"
    rules: ClassVar[tuple[str, ...]] = ("weighted_sum",)
    defaults: ClassVar[dict[str, Any]] = {"rule": "weighted_sum", "members": "la",
                                          "max_weight": 100.0}
    description = "control: member weights fitted on val (min. NLL), Σ_c w_c z_c"

    def validate(self) -> None:
        super().validate()
        check_number(self.name, "max_weight", self.hparams["max_weight"], above=0)
