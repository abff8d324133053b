"""The causal backdoor adjustment over M backbones (the paper's method; DESIGN §1 →
docs/architecture.md, "Methods"), and the base of its controls (``backdoor_*.py``, issue 13).

``P(y | do(x)) = Σ_c P(y | f_c(x), c) · P(c)``, one foundation model per confounder value
c, ``P(c) = 1/M``. It consumes finished runs, not features: the ``la`` runs of the suite's
backbones on the same dataset and seed (``backdoor.members`` in config.yaml picks another
method, e.g. the fine-tuned ``adaptformer_la``). The run layer (``lt_bench.runs.ensemble``)
combines their logits with ``rule`` (``sum`` of raw logits, the authors' code; or
``prob_mean``) and reports the M-ablation and the compute of the members.
"""

from typing import Any, ClassVar

from lt_bench.errors import InputValidationError
from lt_bench.methods._base import METHODS, Method

#: every rule the run layer knows (lt_bench.runs.ensemble.RULES; not imported: methods
#: never import the run layer)
RULES = ("sum", "prob_mean", "weighted_sum")


class EnsembleMethod(Method):
    """A method combining finished runs. ``vary``: what its members differ in
    ("backbone", or "seed" for the same-backbone control); ``rules``: the accepted values
    of the ``rule`` hyper-parameter; ``members``: the member runs' method."""

    consumes: ClassVar[str] = "runs"
    vary: ClassVar[str] = "backbone"
    rules: ClassVar[tuple[str, ...]] = ("sum", "prob_mean")

    def validate(self) -> None:
        rule = self.hparams["rule"]
        if rule not in self.rules:
            raise InputValidationError(f"method {self.name!r}: rule = {rule!r}; "
                                       f"valid: {', '.join(self.rules)}")
        members = self.hparams["members"]
        if not isinstance(members, str) or not members:
            raise InputValidationError(f"method {self.name!r}: members must be a method name "
                                       f"(e.g. 'la'), got {members!r}")


@METHODS.register("backdoor")
class Backdoor(EnsembleMethod):
    name = "backdoor"
    defaults: ClassVar[dict[str, Any]] = {"rule": "sum", "members": "la"}
    description = "causal backdoor adjustment: Σ over backbones of the member runs' logits"
