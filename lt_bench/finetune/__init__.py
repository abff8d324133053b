"""The fine-tuning track: PEFT modules (AdaptFormer, VPT-deep, LoRA) in open_clip's ViT and a
resumable fine-tuning loop (LIFT's recipe).

``peft``: :data:`~lt_bench.finetune.peft.PEFT_KINDS`, :func:`~lt_bench.finetune.peft.inject_peft`,
:func:`~lt_bench.finetune.peft.adaptformer_bottleneck`; ``loop``:
:func:`~lt_bench.finetune.loop.finetune`, :class:`~lt_bench.finetune.loop.FinetuneResult`,
:data:`~lt_bench.finetune.loop.FINETUNE_DEFAULTS`. Nothing heavy is imported here
(``loop`` imports torch only when it runs), so config code may import the defaults freely.
"""
