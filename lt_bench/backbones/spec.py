"""The backbone spec and the registry of backbones: the floor every other backbones module
stands on (declarations, prompts and the weights lock read specs; :mod:`base` loads them).
Nothing here imports a heavy library: planning and the CLI's start-up read specs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lt_bench.registry import Registry

_CONFIG_DIR = Path(__file__).parent / "model_configs"
_configs_added = False
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


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
    #: open_clip model config name, or timm architecture name (without the tag)
    model: str
    #: open_clip pretrained tag / checkpoint path, or timm pretrained tag; None for toy
    pretrained: str | None = None
    #: CLIP-style models have a text tower, so zero-shot and text-initialised heads
    has_text: bool = True
    #: prompt templates for class text embeddings ("imagenet" = CLIP's 80 templates)
    templates: str = "imagenet"
    #: toy backbones: index into the pre-training seeds (its own class order)
    toy_index: int | None = None
    #: dimension of the stored image feature (None where unknown, e.g. local checkpoints):
    #: the pre-projection width for open_clip ViTs (768 for ViT-B/16)
    feature_dim: int | None = None
    #: dimension of the joint image-text space (``encode_image``); None without text
    embed_dim: int | None = None
    description: str = ""
    #: the weights' sha256 where declared (config ``backbones.<name>.sha256``): checked at
    #: every load like ``resources/weights.lock``
    sha256: str | None = None
    #: for a local file: the pretrained tag it was fine-tuned from (its preprocessing is
    #: used, its activation checked against ``model``; lt_bench.backbones.declared)
    finetuned_from: str | None = None

    @property
    def preprocess_tag(self) -> str | None:
        """The pretrained tag whose preprocessing the weights expect (None: the model's)."""
        if self.finetuned_from:
            return self.finetuned_from
        return None if looks_like_file(self.pretrained) else self.pretrained

    @property
    def timm_name(self) -> str:
        """``architecture.tag`` as timm names pretrained weights."""
        tag = self.preprocess_tag
        return f"{self.model}.{tag}" if tag else self.model


BACKBONES: Registry[BackboneSpec] = Registry("backbone")


def looks_like_file(value: str | None) -> bool:
    """Whether a ``pretrained`` value names a local file (a checkpoint suffix or a path),
    not a pretrained tag."""
    return bool(value) and (Path(value).suffix in _CHECKPOINT_SUFFIXES or "/" in value)
