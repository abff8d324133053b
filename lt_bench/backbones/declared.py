"""Backbones declared in config.yaml: the one way to bring your own weights (README.md,
"Benchmark your own method").

    backbones:
      my_clip: {library: open_clip, model: ViT-B-16, pretrained: /models/my_clip.pt,
                finetuned_from: laion2b_s34b_b88k, sha256: <64 hex>}
      my_vit:  {library: timm, model: vit_base_patch16_224, pretrained: augreg_in21k}

A declared name is a backbone everywhere a registered one is (suites, the workflow's
backbone wildcard, ``doctor``, ``fetch-weights``, the smoke run); it may not clash with a
built-in or plugin backbone, nor be ``ensemble`` (the ensembles' folder). Keys:

``library``
    ``open_clip`` (a CLIP: zero-shot and text-initialised heads) or ``timm`` (an image
    model without a text tower: heads start from class means, no zero-shot).
``model``
    An open_clip model config name (``open_clip.list_models()``; the config fixes the
    architecture *and* the activation: ``-quickgelu`` configs use QuickGELU) or a timm
    architecture (``timm.list_models()``).
``pretrained``
    A pretrained tag of that model (open_clip/timm download it; ``fetch-weights`` pins it)
    or a local file (a path: it contains ``/`` or ends in .pt/.pth/.bin/.safetensors/.ckpt;
    relative to the project folder) holding a plain state dict.
``sha256`` (optional)
    The file's sha256, checked at every load like ``resources/weights.lock``.
``finetuned_from`` (optional, with a local file)
    The pretrained tag the file descends from: its preprocessing is used and its
    activation is checked against ``model``.
``templates`` (optional, open_clip)
    The zero-shot prompt ensemble of ``prompts.zero_shot: auto`` (default ``imagenet80``,
    CLIP's 80 templates; ``toy`` for a toy CLIP's checkpoint).
``description`` (optional)

**What follows the weights.** Preprocessing (mean, std, interpolation, resize mode): a tag's
own pretrained config (open_clip's table; timm's pretrained cfg); for a local file, the tag
of ``finetuned_from`` if given, else the model config's defaults (open_clip: OpenAI's mean
and std unless the config says otherwise). Activation: the model config's. Mismatches that
can be detected are refused (:func:`check_architecture`): a tag trained with QuickGELU
(open_clip's pretrained cfg ``quick_gelu: True``: OpenAI, MetaCLIP, DFN) on a config without
it, and a ``-quickgelu`` config with a tag trained with plain GELU. A local state dict cannot
tell: QuickGELU has no parameters, so the same tensors load into either config and give other
features silently; name the ``-quickgelu`` config for weights of that lineage, or give
``finetuned_from`` so it is checked.

In the workflow the plan reads declarations from the config (:func:`resolve_spec` with the
``backbones:`` mapping; nothing heavy is imported) and a job receives its backbone's as
``--backbone-spec '<JSON>'`` (quoted through ``{x:q}``), which :func:`declare_backbone`
registers in that process with origin ``config``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

from lt_bench.backbones.prompts import PROMPT_SETS
from lt_bench.backbones.spec import BACKBONES, BackboneSpec, looks_like_file
from lt_bench.errors import UserError

CONFIG_ORIGIN = "config"
LIBRARIES = ("open_clip", "timm")
KEYS = ("library", "model", "pretrained", "sha256", "finetuned_from", "templates",
        "description")
#: the schema's name pattern (workflow/schemas/config.schema.yaml $defs/name)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: the backbone folder of ensembles over backbones (plan.py, runs/)
RESERVED = ("ensemble",)
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_QUICK = "-quickgelu"


class BackboneDeclarationError(UserError, ValueError):
    """A backbone declaration that cannot be used (a key, a value, a clash, an activation)."""


def spec_from_declaration(name: str, entry: Any) -> BackboneSpec:
    """The :class:`BackboneSpec` of ``backbones.<name>``; refuses a bad declaration in one
    line naming the key. Imports nothing heavy (planning calls it)."""
    where = f"backbones.{name}"

    def bad(msg: str) -> BackboneDeclarationError:
        return BackboneDeclarationError(f"{where}: {msg}")

    if not isinstance(name, str) or not NAME.match(name) or name in RESERVED:
        raise bad(f"{name!r} is not a usable backbone name; expected letters, digits, "
                  f"'_', '.', '-' (not {', '.join(RESERVED)})")
    if not isinstance(entry, dict):
        raise bad(f"expected a mapping {{library, model, pretrained, ...}}, got {entry!r}")
    unknown = sorted(set(entry) - set(KEYS))
    if unknown:
        raise bad(f"unknown key(s) {', '.join(unknown)}; valid: {', '.join(KEYS)}")
    for key in ("library", "model", "pretrained"):
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            raise bad(f"{key} is required (a non-empty string)")
    library, pretrained = entry["library"], entry["pretrained"]
    if library not in LIBRARIES:
        raise bad(f"library {library!r} is not one of {', '.join(LIBRARIES)} (a toy CLIP's "
                  "checkpoint: library open_clip, model lt-toy-vit-p8, pretrained: its file)")
    sha = entry.get("sha256")
    if sha is not None and not (isinstance(sha, str) and _SHA256.match(sha)):
        raise bad(f"sha256 {sha!r} is not 64 hexadecimal digits")
    if entry.get("finetuned_from") is not None and not looks_like_file(pretrained):
        raise bad("finetuned_from goes with a local file in pretrained (a tag is its own "
                  f"preprocessing); pretrained is the tag {pretrained!r}")
    templates = entry.get("templates")
    if templates is not None and (library != "open_clip" or templates not in PROMPT_SETS):
        raise bad(f"templates {templates!r}: expected one of {', '.join(PROMPT_SETS)} "
                  "(open_clip only: timm models have no text tower)")
    if name in BACKBONES and BACKBONES.origin(name) != CONFIG_ORIGIN:
        raise bad(f"the name clashes with the {BACKBONES.origin(name)} backbone {name!r}; "
                  "choose another name")
    clip = library == "open_clip"
    return BackboneSpec(
        name=name, library=library, model=entry["model"], pretrained=pretrained,
        has_text=clip, templates=templates or ("imagenet" if clip else "none"),
        sha256=sha.lower() if sha else None, finetuned_from=entry.get("finetuned_from"),
        description=entry.get("description") or f"declared in config.yaml: {library} "
                                                 f"{entry['model']} / {pretrained}")


def resolve_spec(name: str, declared: Mapping[str, Any] | None = None) -> BackboneSpec:
    """A backbone declared in ``declared`` (config.yaml's ``backbones:`` mapping), else a
    registered one (built-in, plugin, or declared in this process by ``--backbone-spec``)."""
    if declared and name in declared:
        return spec_from_declaration(name, declared[name])
    return BACKBONES.get(name)


def declare_backbone(name: str, entry: Any) -> str:
    """Register ``entry`` (a declaration, e.g. ``--backbone-spec``) as backbone ``name`` in
    this process (origin ``config``); returns ``name`` for :func:`load_backbone`."""
    BACKBONES.declare(name, spec_from_declaration(name, entry), CONFIG_ORIGIN)
    return name


def _quick_twin(model: str) -> str:
    return model[: -len(_QUICK)] if model.endswith(_QUICK) else model + _QUICK


def _act(quick: bool) -> str:
    return "QuickGELU" if quick else "GELU"


def check_architecture(spec: BackboneSpec) -> None:
    """The model exists, its tag exists for it, and the tag's activation is the model
    config's (see the module docstring). Imports open_clip or timm; every load calls it."""
    if spec.library == "timm":
        _check_timm(spec)
    elif spec.library == "open_clip":
        _check_open_clip(spec)


def _close(name: str, names: list[str]) -> str:
    near = difflib.get_close_matches(name, names, n=3)
    return f" (close: {', '.join(near)})" if near else ""


def _check_open_clip(spec: BackboneSpec) -> None:
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    from lt_bench.backbones.spec import ensure_model_configs

    ensure_model_configs()
    models = open_clip.list_models()
    if spec.model not in models:
        raise BackboneDeclarationError(
            f"backbone {spec.name!r}: open_clip has no model config {spec.model!r}"
            f"{_close(spec.model, models)}; see open_clip.list_models()")
    tag = spec.preprocess_tag
    if tag is None:  # a local file without finetuned_from: the config decides (docstring)
        return
    key = "finetuned_from" if spec.finetuned_from else "pretrained"
    quick = bool((open_clip.get_model_config(spec.model) or {}).get("quick_gelu"))
    twin = _quick_twin(spec.model)
    if tag not in list_pretrained_tags_by_model(spec.model):
        if twin in models and tag in list_pretrained_tags_by_model(twin):
            trained = bool(get_pretrained_cfg(twin, tag).get("quick_gelu"))
            raise BackboneDeclarationError(
                f"backbone {spec.name!r}: {key} tag {tag!r} is published for open_clip "
                f"model {twin!r} (trained with {_act(trained)}), not {spec.model!r} "
                f"({_act(quick)}); use model {twin}")
        raise BackboneDeclarationError(
            f"backbone {spec.name!r}: open_clip has no {key} tag {tag!r} for model "
            f"{spec.model!r}; its tags: {', '.join(list_pretrained_tags_by_model(spec.model))}")
    trained = bool(get_pretrained_cfg(spec.model, tag).get("quick_gelu"))
    if trained != quick:
        raise BackboneDeclarationError(
            f"backbone {spec.name!r}: weights {tag!r} were trained with {_act(trained)} but "
            f"model config {spec.model!r} uses {_act(quick)} (the features would be silently "
            f"wrong); use model {twin if twin in models else 'with the matching activation'}")


def _check_timm(spec: BackboneSpec) -> None:
    import timm

    if not timm.is_model(spec.model):
        raise BackboneDeclarationError(
            f"backbone {spec.name!r}: timm has no architecture {spec.model!r}"
            f"{_close(spec.model, timm.list_models())}; see timm.list_models()")
    tag = spec.preprocess_tag
    if tag and spec.timm_name not in timm.list_pretrained(spec.model + ".*"):
        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(spec.model + ".*")]
        raise BackboneDeclarationError(
            f"backbone {spec.name!r}: timm has no pretrained tag {tag!r} for {spec.model!r}; "
            f"its tags: {', '.join(tags) or '(none)'}")


# --- the CLI side: ``--backbone-spec`` of the verbs that load a backbone ---------------------

def add_backbone_spec_argument(parser) -> None:
    from lt_bench.argtypes import json_object

    parser.add_argument(
        "--backbone-spec", type=json_object, metavar="JSON",
        help="declaration of a backbone that is not registered, as in config.yaml's "
             "backbones: '{\"library\": \"open_clip\", \"model\": \"ViT-B-16\", "
             "\"pretrained\": \"/models/my_clip.pt\"}' (the workflow passes it)")


def declare_backbone_arg(args) -> None:
    """Declare ``--backbone-spec`` under ``--backbone`` in this process (if given)."""
    if getattr(args, "backbone_spec", None) is not None:
        declare_backbone(args.backbone, args.backbone_spec)
