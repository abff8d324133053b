"""What one toy-CLIP pre-training step sees: rendered image batches, the caption bank, the
compact token embedding and the contrastive loss (why each is shaped so: ``toy_clip.py``).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from lt_bench.data.toy import CAPTION_TEMPLATES, render

# OpenAI normalisation, as open_clip's preprocess applies at extraction time.
_MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
_STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
_RENDER_CHUNK = 4096


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    return (x - _MEAN) / _STD


def render_tensor(labels: np.ndarray, rng: np.random.Generator, num_classes: int,
                  image_size: int, regime: str) -> torch.Tensor:
    """Normalised image batch (N, 3, S, S), rendered in chunks to bound memory."""
    return torch.cat([_to_tensor(render(labels[i:i + _RENDER_CHUNK], rng, num_classes,
                                        image_size, regime))
                      for i in range(0, len(labels), _RENDER_CHUNK)])


class CompactEmbedding(torch.nn.Module):
    """The rows of a token embedding the corpus uses, behind a token-id lookup table."""

    def __init__(self, full: torch.nn.Embedding, used: torch.Tensor):
        super().__init__()
        self.register_buffer("lut", torch.zeros(full.num_embeddings, dtype=torch.long))
        self.lut[used] = torch.arange(len(used))
        self.weight = torch.nn.Parameter(full.weight.detach()[used].clone())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(self.lut[ids], self.weight)


@contextlib.contextmanager
def compact_token_embedding(model, tokens: torch.Tensor):
    """Train only the embedding rows of ``tokens``; write them back into the full table."""
    full = model.token_embedding
    used = torch.unique(tokens)
    model.token_embedding = compact = CompactEmbedding(full, used)
    try:
        yield
    finally:
        with torch.no_grad():
            full.weight[used] = compact.weight.detach()
        model.token_embedding = full


class CaptionBank:
    """Every (class, template) caption of the corpus, tokenised once: (K, T, ctx)."""

    def __init__(self, tokenizer, names: list[str]):
        self.num_classes, self.num_templates = len(names), len(CAPTION_TEMPLATES)
        self.tokens = tokenizer([t.format(n) for n in names for t in CAPTION_TEMPLATES]
                                ).view(self.num_classes, self.num_templates, -1)

    def encode_template(self, model, template: int) -> torch.Tensor:
        """Normalised text features of the K class captions under one template (K, E)."""
        return F.normalize(model.encode_text(self.tokens[:, template]), dim=-1)


def contrastive_loss(model, bank: CaptionBank, images: torch.Tensor, y: torch.Tensor,
                     template: int, caption_ce_weight: float, clip_loss) -> torch.Tensor:
    """(1 - w) ClipLoss(image, its caption) + w CE(image vs the K class captions).

    One template per step for every pair and for the class captions: the text tower then
    encodes K captions per step (each distinct caption of the step once, gathered for
    the pairs - the same loss and gradients as encoding every pair's caption), not one
    per pair plus K prompts. Today's step (``benchmarks/toy_pretrain.py``, ``old_loss``)
    drew a template per pair and always used "a photo of a {}." for the CE term; here the
    CE term sees every template over the run, as the zero-shot prompt ensemble does.
    """
    w = caption_ce_weight
    txt = bank.encode_template(model, template)
    img_f = F.normalize(model.encode_image(images), dim=-1)
    scale = model.logit_scale.exp()
    loss = (1 - w) * clip_loss(img_f, txt[y], scale)
    if w > 0:
        loss = loss + w * F.cross_entropy(scale * img_f @ txt.T, y)
    return loss
