"""AdaptFormer-LA with LIFT's five-crop test-time ensembling, from the same fine-tuning as
``adaptformer_la``: its member stores both views (``tte: both``), this run reports the
five-crop one, so the TTE-off and TTE-on rows differ by the test-time views only."""

from typing import Any, ClassVar

from lt_bench.methods._base import METHODS
from lt_bench.methods._finetune import FinetunedViewMethod


@METHODS.register()
class AdaptFormerLATTE(FinetunedViewMethod):
    name = "adaptformer_la_tte"
    display = "AdaptFormer + LA (TTE)"  # as a frozen twin: "LA (TTE)"
    defaults: ClassVar[dict[str, Any]] = {"members": "adaptformer_la", "seed_offsets": [0],
                                          "view": "tte"}
    description = "AdaptFormer-LA, five-crop test-time ensembling (the same fine-tuning)"
