"""The causal backdoor adjustment over M backbones (the paper's method; DESIGN §1 →
docs/architecture.md, "Methods").

``P(y | do(x)) = Σ_c P(y | f_c(x), c) · P(c)``, one foundation model per confounder value
c, ``P(c) = 1/M``. It consumes finished runs, not features: the ``la`` runs of the suite's
backbones on the same dataset and seed (``backdoor.members`` in config.yaml picks another
method, e.g. the fine-tuned ``adaptformer_la``). The run layer (``lt_bench.runs.ensemble``)
combines their logits with ``rule`` (``sum`` of raw logits, the authors' code; or
``prob_mean``) and reports the M-ablation.
"""

from typing import Any, ClassVar

from lt_bench.errors import InputValidationError
from lt_bench.methods._base import METHODS, Method

RULES = ("sum", "prob_mean")


@METHODS.register("backdoor")
class Backdoor(Method):
    name = "backdoor"
    consumes: ClassVar[str] = "runs"
    defaults: ClassVar[dict[str, Any]] = {"rule": "sum", "members": "la"}
    description = "causal backdoor adjustment: Σ over backbones of the member runs' logits"

    def validate(self) -> None:
        if self.hparams["rule"] not in RULES:
            raise InputValidationError(f"method 'backdoor': rule = {self.hparams['rule']!r}; "
                                       f"valid: {', '.join(RULES)}")
        if not isinstance(self.hparams["members"], str):
            raise InputValidationError("method 'backdoor': members must be a method name "
                                       f"(e.g. 'la'), got {self.hparams['members']!r}")
