"""VPT-LA: VPT-deep (10 prompts per block), logit-adjusted loss — a fine-tuning run from images (docs/architecture.md §4; LIFT's recipe)."""

from lt_bench.methods._base import METHODS
from lt_bench.methods._finetune import FinetuneMethod


@METHODS.register()
class VptLa(FinetuneMethod):
    name = "vpt_la"
    display = "VPT + LA"
    peft = "vpt"
    loss = "la"
    description = "VPT-deep (10 prompts per block), logit-adjusted loss"
