"""Prompt ensembles and class text embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lt_bench.data.toy import CAPTION_TEMPLATES


def templates_for(kind: str) -> tuple[str, ...]:
    if kind == "toy":
        return CAPTION_TEMPLATES
    if kind == "imagenet":
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        # open_clip stores them as callables c -> str; keep them as format strings.
        return tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)
    raise ValueError(f"unknown prompt template set {kind!r}; valid: toy, imagenet")


@torch.no_grad()
def class_text_embeddings(model, tokenizer, classnames: list[str], templates: tuple[str, ...],
                          device="cpu", batch_size: int = 256) -> torch.Tensor:
    """CLIP prompt ensemble: mean of normalised template embeddings, re-normalised (K, D)."""
    out = []
    for name in classnames:
        texts = [t.format(name) for t in templates]
        embs = []
        for i in range(0, len(texts), batch_size):
            tok = tokenizer(texts[i:i + batch_size]).to(device)
            embs.append(F.normalize(model.encode_text(tok).float(), dim=-1))
        out.append(F.normalize(torch.cat(embs).mean(0), dim=-1))
    return torch.stack(out)
