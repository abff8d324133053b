"""The backdoor adjustment as the paper runs it: the sum over backbones of the
**fine-tuned** AdaptFormer-LA runs' raw logits (the authors' protocol), beside the
frozen-feature ``backdoor`` (LA heads) so the report shows both tracks' ensembles."""

from typing import Any, ClassVar

from lt_bench.methods._base import METHODS
from lt_bench.methods._ensemble import EnsembleMethod


@METHODS.register()
class BackdoorFinetuned(EnsembleMethod):
    name = "backdoor_finetuned"
    display = "backdoor (AdaptFormer-LA members)"
    defaults: ClassVar[dict[str, Any]] = {"rule": "sum", "members": "adaptformer_la"}
    description = "causal backdoor adjustment over the fine-tuned AdaptFormer-LA runs"
