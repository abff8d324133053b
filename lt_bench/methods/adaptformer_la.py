"""AdaptFormer-LA: AdaptFormer in every block, logit-adjusted loss (the paper's members) — a fine-tuning run from images (docs/architecture.md §4; LIFT's recipe)."""

from lt_bench.methods._base import METHODS
from lt_bench.methods._finetune import FinetuneMethod


@METHODS.register()
class AdaptformerLa(FinetuneMethod):
    name = "adaptformer_la"
    display = "AdaptFormer + LA"
    peft = "adaptformer"
    loss = "la"
    description = "AdaptFormer in every block, logit-adjusted loss (the paper's members)"
