"""Class text embeddings of one backbone: the zero-shot ensemble and the head-init prompts.

Both prompt sets come from the ``prompts:`` config block (``backbones/prompts.py``); the
embeddings are unit-norm E-dimensional text-tower outputs, stored in ``text.parquet``
with the image projection that maps a pre-projection feature into their space.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


def text_embeddings(bb, classnames: list[str], prompts: dict | None, device):
    """``(zero-shot K x E, head-init K x E, metadata)``; ``(None, None, {})`` without text."""
    from lt_bench.backbones.prompts import (
        class_text_embeddings,
        resolve_prompt_set,
        templates_for,
        text_classname,
    )

    if not bb.spec.has_text:
        return None, None, {}
    sets = {role: resolve_prompt_set(role, bb.spec, prompts) for role in ("zero_shot",
                                                                         "head_init")}
    out, meta = {}, {"logit_scale": bb.logit_scale, "prompt_sets": sets,
                     "text_classnames": [text_classname(c) for c in classnames]}
    for role, name in sets.items():
        templates = templates_for(name)
        if role == "head_init" and name == sets["zero_shot"]:
            out[role] = out["zero_shot"]  # same set: the same embeddings
            continue
        t0 = time.perf_counter()
        out[role] = class_text_embeddings(bb.model, bb.tokenizer, classnames, templates,
                                          device=device, amp=device.type == "cuda").numpy()
        log.info("text embeddings (%s = %s): %d classes x %d templates in %.1f s", role, name,
                 len(classnames), len(templates), time.perf_counter() - t0)
    meta["templates"] = list(templates_for(sets["zero_shot"]))
    meta["init_templates"] = list(templates_for(sets["head_init"]))
    return out["zero_shot"], out["head_init"], meta
