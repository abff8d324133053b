"""The causal backdoor adjustment over M backbones (the paper's method; DESIGN §1).

Not trained per backbone: it combines the finished ``la`` runs of the suite's backbones
on the same dataset and seed (``lt-bench backdoor``, Snakemake rule ``backdoor``) into
``results/runs/{dataset}/ensemble/backdoor/seed{seed}/``. See
``lt_bench.methods.backdoor_ops`` for the rule and the reported M-ablation.
"""

from typing import Any, ClassVar

from lt_bench.methods import backdoor_ops  # noqa: F401  registers the "ensemble" predictor
from lt_bench.methods.base import METHODS, FitContext, FitResult, Method


@METHODS.register("backdoor")
class Backdoor(Method):
    name = "backdoor"
    #: an ensemble over backbones: not part of the per-backbone grid
    kind: ClassVar[str] = "ensemble"
    defaults: ClassVar[dict[str, Any]] = {"rule": "sum"}
    requires = ("la",)
    description = "causal backdoor adjustment: Σ over backbones of the la runs' logits"

    def fit(self, ctx: FitContext) -> FitResult:
        raise ValueError("backdoor combines runs of several backbones and is not fitted on "
                         "one backbone's features; use `lt-bench backdoor --members "
                         "RUN_DIR... --out DIR` (Snakemake rule `backdoor`)")
