"""Prompt sets and class text embeddings.

Two prompt sets per backbone, both config (``prompts:`` in config.yaml):

``zero_shot`` (zero-shot logits, q̂, GLA's zero-shot term)
    ``auto`` (default): the backbone's own ensemble: CLIP's 80 ImageNet templates
    (``imagenet80``; the list open_clip ships as ``OPENAI_IMAGENET_TEMPLATES``, LIFT's
    ``ZEROSHOT_TEMPLATES['imagenet']``) for real CLIPs, the captions a toy CLIP was
    pre-trained on (``toy``) for toy CLIPs. GLA keeps the ensemble for its zero-shot term.
``head_init`` (text-initialised cosine heads)
    ``single`` (default): LIFT's ``"a photo of a {}."`` (``trainer.py:
    init_head_text_feat``, ``prompt: default``).

Any set name is valid for either: ``imagenet80`` (alias ``imagenet``), ``toy``,
``single``, ``classname`` (``"{}"``, LIFT's ``prompt: classname``).

Class names are cleaned where text is built (:func:`text_classname`): ``_`` becomes a
space, as LIFT (``trainer.py: get_tokenized_prompts``) and GLA (``trainers/zsclip.py``) do;
otherwise the tokenizer emits an extra ``_`` token for 165 of Places-LT's 365 names.
"""

from __future__ import annotations

import contextlib

from lt_bench.errors import UserError

SINGLE_TEMPLATE = "a photo of a {}."
PROMPT_SETS = ("imagenet80", "imagenet", "toy", "single", "classname")
#: what the ``prompts:`` block defaults to
DEFAULT_PROMPTS = {"zero_shot": "auto", "head_init": "single"}
# kept for callers of the old name
TEMPLATE_SETS = PROMPT_SETS


class PromptSetError(UserError, ValueError):
    """An unknown prompt set name."""


def templates_for(kind: str) -> tuple[str, ...]:
    """The templates of a prompt set (format strings with one ``{}``)."""
    from lt_bench.data.toy import CAPTION_TEMPLATES

    if kind == "toy":
        return CAPTION_TEMPLATES
    if kind in ("imagenet", "imagenet80"):
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        # open_clip stores them as callables c -> str; keep them as format strings.
        return tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)
    if kind == "single":
        return (SINGLE_TEMPLATE,)
    if kind == "classname":
        return ("{}",)
    raise PromptSetError(f"unknown prompt template set {kind!r}; valid: {', '.join(PROMPT_SETS)}"
                         " (or auto for zero_shot: the backbone's own ensemble)")


def resolve_prompt_set(which: str, spec, prompts: dict | None = None) -> str | None:
    """The set name used for ``which`` ("zero_shot" / "head_init") by backbone ``spec``.

    None when the backbone has no text tower. ``auto`` means the backbone's own ensemble
    (``spec.templates``: ``imagenet`` -> ``imagenet80``, ``toy`` -> ``toy``).
    """
    if which not in DEFAULT_PROMPTS:
        raise PromptSetError(f"unknown prompt role {which!r}; valid: {', '.join(DEFAULT_PROMPTS)}")
    if not spec.has_text:
        return None
    name = {**DEFAULT_PROMPTS, **(prompts or {})}[which]
    if name == "auto":
        name = {"imagenet": "imagenet80"}.get(spec.templates, spec.templates)
    templates_for(name)  # validates
    return name


def text_classname(name: str) -> str:
    """The class name as it goes into a prompt: ``_`` -> space (LIFT, GLA)."""
    return name.replace("_", " ")


def build_prompts(classnames: list[str], templates: tuple[str, ...]) -> list[list[str]]:
    """Per class, its prompts (one per template), from cleaned class names."""
    return [[t.format(text_classname(c)) for t in templates] for c in classnames]


def class_text_embeddings(model, tokenizer, classnames: list[str], templates: tuple[str, ...],
                          device="cpu", batch_size: int = 1024, amp: bool = False):
    """CLIP prompt ensemble: mean of normalised template embeddings, re-normalised (K, E).

    Class names are cleaned (:func:`text_classname`). Prompts of all classes are encoded
    in batches of ``batch_size`` (iNat2018: 8,142 classes x 80 templates = 651k prompts),
    optionally under fp16 autocast on GPU. Returns a float32 torch tensor.
    """
    import torch  # lazily: this module is on the CLI's start-up path (`lt-bench prompts`)
    import torch.nn.functional as F

    device = torch.device(device)
    texts = [p for per_class in build_prompts(classnames, templates) for p in per_class]
    sums = None
    autocast = (torch.autocast(device.type, dtype=torch.float16) if amp
                else contextlib.nullcontext())
    owner = torch.arange(len(classnames)).repeat_interleave(len(templates))
    for i in range(0, len(texts), batch_size):
        tok = tokenizer(texts[i:i + batch_size]).to(device)
        with torch.no_grad(), autocast:
            emb = model.encode_text(tok)
        emb = F.normalize(emb.float(), dim=-1).cpu()
        if sums is None:
            sums = torch.zeros(len(classnames), emb.shape[1])
        sums.index_add_(0, owner[i:i + batch_size], emb)
    return F.normalize(sums / len(templates), dim=-1)


def prompts_report(dataset: str, split_dir, backbone: str, prompts: dict | None = None) -> dict:
    """The exact prompts used for zero-shot and for head initialisation, per class (JSON-able).

    ``split_dir`` holds the dataset's ``classnames.txt`` (line ``i`` names label ``i``);
    ``prompts`` overrides the ``prompts:`` config block (default: ``DEFAULT_PROMPTS``).
    """
    from pathlib import Path

    from lt_bench.backbones.spec import BACKBONES
    from lt_bench.data.splits import read_classnames

    path = Path(split_dir) / "classnames.txt"
    if not path.is_file():
        raise UserError(f"{path} not found: run `lt-bench prepare {dataset}` (or pass the "
                        "--split-dir that holds the dataset's classnames.txt)")
    names = read_classnames(path)
    spec = BACKBONES.get(backbone)  # registered, or declared by --backbone-spec
    out = {"dataset": dataset, "backbone": backbone, "has_text": spec.has_text,
           "name_cleaning": "'_' -> ' ' (LIFT trainer.py get_tokenized_prompts, GLA zsclip.py)"}
    sets = {role: resolve_prompt_set(role, spec, prompts) for role in DEFAULT_PROMPTS}
    built = {role: (build_prompts(names, templates_for(s)) if s else None)
             for role, s in sets.items()}
    for role, s in sets.items():
        out[role] = {"set": s, "templates": list(templates_for(s)) if s else None}
    out["classes"] = [
        {"label": i, "classname": c, "text_name": text_classname(c),
         **{role: (built[role][i] if built[role] is not None else None) for role in sets}}
        for i, c in enumerate(names)]
    return out
