"""Prompt ensembles and class text embeddings.

Real CLIPs use CLIP's 80 ImageNet templates ("a bad photo of a {}.", ...; the list open_clip
ships as ``OPENAI_IMAGENET_TEMPLATES``) for every dataset, as LIFT does for its zero-shot
baselines; toy CLIPs use the captions they were pre-trained on.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from lt_bench.data.toy import CAPTION_TEMPLATES

TEMPLATE_SETS = ("imagenet", "toy")


def templates_for(kind: str) -> tuple[str, ...]:
    if kind == "toy":
        return CAPTION_TEMPLATES
    if kind == "imagenet":
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        # open_clip stores them as callables c -> str; keep them as format strings.
        return tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)
    raise ValueError(f"unknown prompt template set {kind!r}; valid: {', '.join(TEMPLATE_SETS)}")


@torch.no_grad()
def class_text_embeddings(model, tokenizer, classnames: list[str], templates: tuple[str, ...],
                          device="cpu", batch_size: int = 1024, amp: bool = False) -> torch.Tensor:
    """CLIP prompt ensemble: mean of normalised template embeddings, re-normalised (K, D).

    Prompts of all classes are encoded in batches of ``batch_size`` (iNat2018: 8,142
    classes x 80 templates = 651k prompts), optionally under fp16 autocast on GPU.
    """
    device = torch.device(device)
    texts = [t.format(name) for name in classnames for t in templates]
    sums = None
    autocast = (torch.autocast(device.type, dtype=torch.float16) if amp
                else contextlib.nullcontext())
    owner = torch.arange(len(classnames)).repeat_interleave(len(templates))
    for i in range(0, len(texts), batch_size):
        tok = tokenizer(texts[i:i + batch_size]).to(device)
        with autocast:
            emb = model.encode_text(tok)
        emb = F.normalize(emb.float(), dim=-1).cpu()
        if sums is None:
            sums = torch.zeros(len(classnames), emb.shape[1])
        sums.index_add_(0, owner[i:i + batch_size], emb)
    return F.normalize(sums / len(templates), dim=-1)
