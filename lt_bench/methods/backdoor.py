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

from lt_bench.methods._base import METHODS
from lt_bench.methods._ensemble import EnsembleMethod

#: every rule the run layer knows (lt_bench.runs.ensemble.RULES; not imported: methods
#: never import the run layer)
RULES = ("sum", "prob_mean", "weighted_sum")


@METHODS.register("backdoor")
class Backdoor(EnsembleMethod):
    name = "backdoor"
    defaults: ClassVar[dict[str, Any]] = {"rule": "sum", "members": "la"}
    description = "causal backdoor adjustment: Σ over backbones of the member runs' logits"
