"""The causal backdoor adjustment over M backbones (the paper's method; docs/architecture.md,
"Methods"), and the first of the ensemble methods (``backdoor_*.py`` are its controls).

``P(y | do(x)) = Σ_c P(y | f_c(x), c) · P(c)``, one foundation model per confounder value
c, ``P(c) = 1/M``. It consumes finished runs, not features: the ``la`` runs of the suite's
backbones on the same dataset and seed (``backdoor.members`` in config.yaml picks another
method, e.g. the fine-tuned ``adaptformer_la``), and combines their logits with ``rule``
(``sum`` of raw logits, the authors' code; or ``prob_mean``; lt_bench/methods/_combine.py).
The run layer reports the M-ablation, the best member and the compute of the members.
"""

from typing import Any, ClassVar

from lt_bench.methods._base import METHODS
from lt_bench.methods._ensemble import EnsembleMethod


@METHODS.register()
class Backdoor(EnsembleMethod):
    name = "backdoor"
    display = "backdoor"
    defaults: ClassVar[dict[str, Any]] = {"rule": "sum", "members": "la"}
    description = "causal backdoor adjustment: Σ over backbones of the member runs' logits"
