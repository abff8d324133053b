"""AdaptFormer-CE: AdaptFormer, plain cross-entropy (the reviewers' control) — a fine-tuning run from images (docs/architecture.md §4; LIFT's recipe)."""

from lt_bench.methods._base import METHODS
from lt_bench.methods._finetune import FinetuneMethod


@METHODS.register()
class AdaptformerCe(FinetuneMethod):
    name = "adaptformer_ce"
    display = "AdaptFormer + CE"
    peft = "adaptformer"
    loss = "ce"
    description = "AdaptFormer, plain cross-entropy (the reviewers' control)"
