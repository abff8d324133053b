"""LoRA-LA: LoRA on the attention projections, logit-adjusted loss — a fine-tuning run from images (docs/architecture.md §4; LIFT's recipe)."""

from lt_bench.methods._base import METHODS
from lt_bench.methods._finetune import FinetuneMethod


@METHODS.register()
class LoraLa(FinetuneMethod):
    name = "lora_la"
    display = "LoRA + LA"
    peft = "lora"
    loss = "la"
    description = "LoRA on the attention projections, logit-adjusted loss"
