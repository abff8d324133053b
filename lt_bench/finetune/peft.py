"""Parameter-efficient fine-tuning modules injected into open_clip's ViT image tower.

Written after LIFT (``shijxcs/LIFT``: ``models/peft_modules.py`` for the modules,
``models/peft_vit.py`` for where each one sits in a block and for the default sizes). The
paper's fork (``JiahaoChen1/Pre-train-Imbalance``) uses the same modules and defaults.

Where each module sits (``peft_vit.py: Peft_ViT.forward``), for a block input ``x``::

    x   = x_in + attn(ln_1(x_in))                              # VPT: prompts appended to x_in
    out = x + mlp(ln_2(x)) + scale · up(ReLU(down(LN(x))))     # AdaptFormer, parallel to the MLP

AdaptFormer has its **own** LayerNorm (not the MLP's ``ln_2``) and reads the same residual
stream the MLP reads; ``up`` is zero-initialised, so at step 0 the tuned model computes
exactly the frozen model's features. VPT-deep replaces the previous block's prompts by the
block's own ``vpt_length`` learnable tokens (appended after the patch tokens, so the CLS
token stays at position 0). LoRA adds ``x A B / r`` to the query and value projections.

Injection swaps the class of each ``ResidualAttentionBlock`` for a subclass whose forward
adds the modules (held in the block's ``peft`` child), so the frozen parameters keep their
names and ``visual(images)`` / ``encode_image`` run the tuned model.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lt_bench.errors import InputValidationError
from lt_bench.finetune.options import PEFT_KINDS  # noqa: F401  (the one list, torch-free)

#: LIFT's VPT length when none is given (``peft_vit.py``: ``vpt_len = 10``)
VPT_LENGTH = 10


class PeftConfigError(InputValidationError):
    """A PEFT kind, size or target model that cannot be used."""


def adaptformer_bottleneck(num_classes: int, num_blocks: int) -> int:
    """LIFT's bottleneck width ``2^max(0, floor(log2(K / (2 L))))`` (``peft_vit.py``)."""
    if num_classes < 1 or num_blocks < 1:
        raise PeftConfigError(f"bottleneck needs num_classes >= 1 and num_blocks >= 1, got "
                              f"K={num_classes}, L={num_blocks}")
    # max(0, .): fewer classes than 2L gives a width of 1 (LIFT truncates with int(); same result)
    return 2 ** max(0, math.floor(math.log2(num_classes / (2 * num_blocks))))


class AdaptFormer(nn.Module):
    """``scale · up(ReLU(down(LN(x))))`` (``peft_modules.py: AdaptFormer``)."""

    def __init__(self, dim: int, bottleneck: int):
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.scale = nn.Parameter(torch.ones(1))
        nn.init.kaiming_normal_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)  # zero up: the module starts as an exact no-op
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.relu(self.down(self.ln(x)))) * self.scale


class LoRA(nn.Module):
    """``x A B / r`` with A Kaiming-uniform, B zero (``peft_modules.py: LoRA``)."""

    def __init__(self, dim: int, rank: int):
        super().__init__()
        self.lora_a = nn.Parameter(torch.zeros(dim, rank))
        self.lora_b = nn.Parameter(torch.zeros(rank, dim))
        self.scaling = 1.0 / rank
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.lora_a @ self.lora_b) * self.scaling


class BlockPeft(nn.Module):
    """The PEFT parts of one block (any of prompts, AdaptFormer, LoRA on q and v)."""

    def __init__(self, kind: str, dim: int, seq_len: int, patch_area: int, batch_first: bool,
                 bottleneck: int | None = None, vpt_length: int | None = None,
                 lora_rank: int | None = None):
        super().__init__()
        self.seq_len, self.batch_first = seq_len, batch_first
        self.prompt = self.adaptformer = self.lora_q = self.lora_v = None
        if kind == "vpt":
            self.prompt = nn.Parameter(torch.empty(vpt_length, dim))
            # VPT's init (peft_modules.py: VPT): uniform(±sqrt(6 / (3·patch area + dim)))
            bound = math.sqrt(6.0 / float(3 * patch_area + dim))
            nn.init.uniform_(self.prompt, -bound, bound)
        elif kind == "adaptformer":
            self.adaptformer = AdaptFormer(dim, bottleneck)
        elif kind == "lora":
            self.lora_q, self.lora_v = LoRA(dim, lora_rank), LoRA(dim, lora_rank)

    def add_prompts(self, x: torch.Tensor) -> torch.Tensor:
        """Drop the previous block's prompts, append this block's (VPT-deep)."""
        if self.batch_first:
            n = x.shape[0]
            return torch.cat([x[:, :self.seq_len], self.prompt.to(x.dtype).expand(n, -1, -1)], 1)
        n = x.shape[1]
        return torch.cat([x[:self.seq_len], self.prompt.to(x.dtype).unsqueeze(1).expand(-1, n, -1)],
                         0)

    def lora_attention(self, attn: nn.MultiheadAttention, h: torch.Tensor,
                       attn_mask: torch.Tensor | None) -> torch.Tensor:
        """Self-attention with LoRA on q and v (``peft_vit.py``: ``q = q + lora["q"](x)``)."""
        if not self.batch_first:
            h = h.transpose(0, 1)
        n, length, dim = h.shape
        heads = attn.num_heads
        q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        q = q + self.lora_q(h)
        v = v + self.lora_v(h)
        q, k, v = (t.reshape(n, length, heads, dim // heads).transpose(1, 2) for t in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        o = F.linear(o.transpose(1, 2).reshape(n, length, dim), attn.out_proj.weight,
                     attn.out_proj.bias)
        return o if self.batch_first else o.transpose(0, 1)


def _peft_block_forward(self, q_x, k_x=None, v_x=None, attn_mask=None):
    # Mirrors open_clip's ResidualAttentionBlock.forward op for op (so a zero AdaptFormer
    # adds an exact 0), with LIFT's insertion points (peft_vit.py: Peft_ViT.forward).
    if k_x is not None or v_x is not None:
        raise RuntimeError("PEFT blocks are self-attention blocks (k_x, v_x must be None)")
    p = self.peft
    x = p.add_prompts(q_x) if p.prompt is not None else q_x
    h = self.ln_1(x)
    a = (p.lora_attention(self.attn, h, attn_mask) if p.lora_q is not None
         else self.attention(q_x=h, attn_mask=attn_mask))
    x = x + self.ls_1(a)
    out = x + self.ls_2(self.mlp(self.ln_2(x)))
    if p.adaptformer is not None:
        out = out + p.adaptformer(x)
    return out


_PEFT_CLASSES: dict[type, type] = {}


def _peft_class(cls: type) -> type:
    if cls not in _PEFT_CLASSES:
        _PEFT_CLASSES[cls] = type(f"Peft{cls.__name__}", (cls,), {"forward": _peft_block_forward})
    return _PEFT_CLASSES[cls]


def _check_visual(visual: nn.Module) -> None:
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is None or not hasattr(visual, "positional_embedding") or not hasattr(visual, "conv1"):
        raise PeftConfigError(
            f"inject_peft expects an open_clip VisionTransformer (model.visual), got "
            f"{type(visual).__name__}; timm and ResNet towers are not supported")
    names = {type(b).__name__ for b in blocks}
    if any(n.startswith("Peft") for n in names):
        raise PeftConfigError("this image tower already has PEFT modules injected; "
                              "load a fresh model for another fine-tuning")
    if names != {"ResidualAttentionBlock"}:
        raise PeftConfigError(f"unsupported open_clip block type(s) {sorted(names)}; "
                              "expected ResidualAttentionBlock (the plain CLIP ViT)")
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
        raise PeftConfigError("PEFT fine-tuning needs a CLS-token ViT (pool_type 'tok', no "
                              "attentional pooler), as the cosine head reads the CLS feature")


_CFG_KEYS = ("bottleneck", "vpt_length", "lora_rank", "seed")


def peft_sizes(kind: str, num_classes: int, num_blocks: int, **cfg: Any) -> dict[str, int]:
    """The resolved size of ``kind``: ``bottleneck`` / ``vpt_length`` / ``lora_rank``.

    LIFT sizes LoRA's rank with the AdaptFormer formula too (``peft_vit.py``: ``adapter_dim``
    is the bottleneck of adapter, AdaptFormer and LoRA), so ``None`` means the formula.
    """
    if kind not in PEFT_KINDS:
        raise PeftConfigError(f"unknown PEFT kind {kind!r}; valid: {', '.join(PEFT_KINDS)}")
    key = {"adaptformer": "bottleneck", "vpt": "vpt_length", "lora": "lora_rank"}[kind]
    value = cfg.get(key)
    if value is None:
        value = VPT_LENGTH if kind == "vpt" else adaptformer_bottleneck(num_classes, num_blocks)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PeftConfigError(f"{key} must be a positive integer or null, got {value!r}")
    return {key: value}


def inject_peft(visual: nn.Module, kind: str, num_classes: int,
                **cfg: Any) -> list[nn.Parameter]:
    """Add PEFT ``kind`` to every block of an open_clip ``VisionTransformer``, in place.

    Freezes every parameter of ``visual`` and returns the new (trainable) ones. ``cfg``:
    ``bottleneck`` (AdaptFormer), ``vpt_length`` (VPT, default 10), ``lora_rank`` (LoRA);
    ``None`` = LIFT's default; ``seed`` makes the random inits reproducible without touching
    torch's global generator. The new modules take the device and dtype of ``visual``.
    """
    unknown = set(cfg) - set(_CFG_KEYS)
    if unknown:
        raise PeftConfigError(f"unknown PEFT option(s) {sorted(unknown)}; valid: {list(_CFG_KEYS)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise PeftConfigError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    _check_visual(visual)
    blocks = visual.transformer.resblocks
    sizes = peft_sizes(kind, num_classes, len(blocks), **cfg)
    for p in visual.parameters():
        p.requires_grad_(False)
    dim = visual.positional_embedding.shape[-1]
    seq_len = visual.positional_embedding.shape[0]
    kh, kw = visual.conv1.kernel_size
    ref = visual.conv1.weight
    new_params: list[nn.Parameter] = []
    seed = cfg.get("seed")
    with torch.random.fork_rng(devices=[]):  # leave the caller's generator as it was
        if seed is not None:
            torch.manual_seed(int(seed))
        for block in blocks:
            parts = BlockPeft(kind, dim, seq_len, kh * kw, visual.transformer.batch_first, **sizes)
            parts.to(device=ref.device, dtype=ref.dtype)
            block.add_module("peft", parts)
            block.__class__ = _peft_class(type(block))
            new_params.extend(parts.parameters())
    for p in new_params:
        p.requires_grad_(True)
    return new_params


def peft_parameter_count(kind: str, dim: int, num_blocks: int, num_classes: int,
                         **cfg: Any) -> int:
    """The formula for the trainable PEFT parameters (the head not included).

    AdaptFormer per block: LN (2D) + down (Db + b) + up (bD + D) + scale (1);
    VPT-deep: ``vpt_length · D``; LoRA: q and v, ``2 · 2 D r``.
    """
    sizes = peft_sizes(kind, num_classes, num_blocks, **cfg)
    if kind == "adaptformer":
        b = sizes["bottleneck"]
        per_block = 2 * dim + dim * b + b + b * dim + dim + 1
    elif kind == "vpt":
        per_block = sizes["vpt_length"] * dim
    else:
        per_block = 2 * 2 * dim * sizes["lora_rank"]
    return num_blocks * per_block


def pre_projection_features(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The ``ln_post`` CLS token before ``visual.proj`` (LIFT's head input, ``peft_vit.py``).

    Uses open_clip's own ``_embeds`` / ``transformer`` / ``_pool`` so it is the feature
    ``visual.forward`` projects.
    """
    x = visual._embeds(images)
    x = visual.transformer(x)
    pooled, _ = visual._pool(x)
    return pooled


class CosineHead(nn.Module):
    """``scale · cos(x, w_k)`` (LIFT ``models/classifiers.py: CosineClassifier``, scale 25)."""

    def __init__(self, weight: torch.Tensor, scale: float):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone().float())
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(x, dim=-1), F.normalize(self.weight, dim=-1)) * self.scale
