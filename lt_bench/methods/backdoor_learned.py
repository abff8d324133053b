"""Control of the backdoor: ``Σ_c w_c z_c`` with one weight ``w_c ≥ 0`` per member, fitted
by minimising the **val** NLL (never test; ``fit_member_weights`` in
lt_bench/methods/_combine.py: convex in w, L-BFGS-B from w = 1, so deterministic). Equal
weights (the backdoor) are one point of that family: the row shows what tuning them on val
adds. ``max_weight`` bounds the weights where val is separable (the NLL would fall forever).
"""

from typing import Any, ClassVar

from lt_bench.methods._base import METHODS, check_number
from lt_bench.methods._combine import fit_member_weights
from lt_bench.methods._ensemble import EnsembleMethod


@METHODS.register()
class BackdoorLearned(EnsembleMethod):
    name = "backdoor_learned"
    display = "backdoor (learned weights)"
    rules: ClassVar[tuple[str, ...]] = ("weighted_sum",)
    defaults: ClassVar[dict[str, Any]] = {"rule": "weighted_sum", "members": "la",
                                          "max_weight": 100.0}
    description = "control: member weights fitted on val (min. NLL), Σ_c w_c z_c"

    def validate(self) -> None:
        super().validate()
        check_number(self.name, "max_weight", self.hparams["max_weight"], above=0)

    def fit(self, val_logits, labels, names=None):
        if len(val_logits) == 1:  # a positive scale leaves a single member's argmax alone
            return {"rule": "weighted_sum", "weights": [1.0]}, {}
        w, fit_info = fit_member_weights(val_logits, labels, float(self.hparams["max_weight"]))
        weights = w.tolist()
        names = [str(n) for n in (names or range(len(weights)))]
        total = sum(weights) or 1.0  # the weights also set a temperature: shares compare
        info = {"weights": dict(zip(names, weights, strict=True)),
                "weight_shares": {n: x / total for n, x in zip(names, weights, strict=True)},
                "weights_fitted_on": "val", "weight_fit": fit_info}
        return {"rule": "weighted_sum", "weights": weights}, info

    def n_params(self, state):
        return len(state["weights"])  # the M weights are fitted too

