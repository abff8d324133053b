"""Backbone specs, the registry, and one loader for every kind of backbone.

Toy CLIPs are open_clip models with a custom config; they load through the same
``open_clip.create_model_and_transforms(..., pretrained=<path>)`` call as a real
CLIP with a local checkpoint, so the toy world exercises the real code path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lt_bench.registry import Registry

log = logging.getLogger(__name__)

_CONFIG_DIR = Path(__file__).parent / "model_configs"
_configs_added = False


def ensure_model_configs() -> None:
    """Register lt-bench's custom open_clip model configs (idempotent)."""
    global _configs_added
    if not _configs_added:
        import open_clip

        open_clip.add_model_config(_CONFIG_DIR)
        _configs_added = True


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    #: "open_clip" (real or local checkpoint), "toy" (pre-trained by the pipeline), "timm"
    library: str
    model: str
    #: open_clip pretrained tag or timm pretrained flag; None for toy backbones
    pretrained: str | None = None
    #: CLIP-style models have a text tower, so zero-shot and text-initialised heads
    has_text: bool = True
    #: prompt templates for class text embeddings ("imagenet" = CLIP's 80 templates)
    templates: str = "imagenet"
    #: toy backbones: index into the pre-training seeds (its own class order)
    toy_index: int | None = None
    description: str = ""
    extra: dict = field(default_factory=dict)


BACKBONES: Registry[BackboneSpec] = Registry("backbone")


@dataclass
class LoadedBackbone:
    spec: BackboneSpec
    model: torch.nn.Module
    preprocess: Callable
    tokenizer: Callable | None
    pretrained: str | None  # what was actually loaded (tag or checkpoint path)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        if self.spec.library == "timm":
            return self.model(images)
        return self.model.encode_image(images)

    @property
    def logit_scale(self) -> float | None:
        ls = getattr(self.model, "logit_scale", None)
        return float(ls.exp()) if ls is not None else None


def resolve_spec(name: str) -> BackboneSpec:
    """Registered name, or ``local:<open_clip model>:<checkpoint path>`` for any local ckpt."""
    if name.startswith("local:"):
        try:
            _, model, path = name.split(":", 2)
        except ValueError:
            raise ValueError(
                f"backbone {name!r}: expected 'local:<open_clip model name>:<checkpoint path>'"
            ) from None
        return BackboneSpec(name=name, library="open_clip", model=model, pretrained=path)
    return BACKBONES.get(name)


def load_backbone(name: str, checkpoint: str | Path | None = None,
                  device: str | torch.device = "cpu") -> LoadedBackbone:
    """Build a backbone in eval mode.

    ``checkpoint`` is required for toy backbones (the pipeline's pre-trained file) and
    overrides the pretrained tag of an open_clip backbone otherwise.
    """
    spec = resolve_spec(name)
    if spec.library == "timm":
        import timm
        from timm.data import create_transform, resolve_data_config

        model = timm.create_model(spec.model, pretrained=checkpoint is None and bool(spec.pretrained),
                                  num_classes=0,
                                  pretrained_cfg_overlay=({"file": str(checkpoint)} if checkpoint else None))
        preprocess = create_transform(**resolve_data_config({}, model=model))
        loaded = LoadedBackbone(spec, model, preprocess, None, str(checkpoint or spec.pretrained))
    else:
        import open_clip

        ensure_model_configs()
        pretrained = str(checkpoint) if checkpoint is not None else spec.pretrained
        if spec.library == "toy" and checkpoint is None:
            raise ValueError(f"backbone {name!r} is a toy CLIP: pass its checkpoint "
                             "(results/backbones/{name}/checkpoint.pt, made by `lt-bench pretrain`)")
        if pretrained and Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors") \
                and not Path(pretrained).is_file():
            raise FileNotFoundError(f"checkpoint for backbone {name!r} not found: {pretrained}")
        model, _, preprocess = open_clip.create_model_and_transforms(
            spec.model, pretrained=pretrained, device=device)
        tokenizer = open_clip.get_tokenizer(spec.model)
        loaded = LoadedBackbone(spec, model, preprocess, tokenizer, pretrained)
    loaded.model.eval().to(device)
    return loaded
